/* Fuzz target: the libvirt save file parser (node__savefile_parse) on untrusted bytes: save
 * files come from users and, through launches, from other machines. The callbacks touch what
 * they are given, so a sanitizer sees any pointer the parser hands out past the input. */
#include "node_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned sink;

static int on_blocks(const node__savefile_info *info, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < info->nblocks; i++) sink += (unsigned)info->blocks[i].length + info->blocks[i].name[0];
    return 0;
}

static int on_page(size_t block, uint64_t offset, const uint8_t *data, uint8_t fill, size_t at, void *arg)
{
    const node__savefile_info *info = arg;
    if (block >= info->nblocks || offset + 4096 > info->blocks[block].length) abort();
    sink += data ? data[0] + data[4095] : fill;
    sink += (unsigned)at;
    return 0;
}

static int on_kept(const uint8_t *p, size_t n, void *arg)
{
    (void)arg;
    if (n == 0) abort();
    sink += p[0] + p[n - 1];
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static node__savefile_info info;
    static const node__savefile_visitor v = {on_blocks, on_page, on_kept};
    char err[NODE_ERRMSG];
    /* A private copy: the parser must never read past size, which ASan checks on the heap. */
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    int rc = node__savefile_parse(copy, size, &v, &info, &info, err);
    if (rc == 0 && (info.insert_at > info.state_stream_len || info.stream_end > size)) abort();
    free(copy);
    return 0;
}
