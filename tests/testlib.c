#define _GNU_SOURCE
#include "testlib.h"

#include <ftw.h>
#include <stdint.h>
#include <unistd.h>

char *tl_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    char *path = NULL;
    if (asprintf(&path, "%s/cloudlet-test-XXXXXX", base) < 0) abort();
    if (!mkdtemp(path)) TL_FAIL("mkdtemp(%s): %s", path, strerror(errno));
    return path;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void tl_rmtree(const char *path)
{
    if (path) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void tl_fill_random(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t k = len - i < 8 ? len - i : 8;
        memcpy(p + i, &x, k);
    }
}
