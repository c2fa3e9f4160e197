/* Fuzz target: the overlay package parser (header, trailing hash, carried manifest) and its
 * stream reader and delta decoder, on untrusted bytes (packages arrive from apps and other
 * machines). */
#include "node_internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The fuzzer's memory budget needs a smaller window than the 2^27 bytes an importer allows. */
#define FUZZ_WLOG_MAX 22u
/* Enough items to reach every part of the seed packages, few enough to keep runs fast. */
#define FUZZ_ITEMS 4096u

static void parse_and_read(const uint8_t *data, size_t size)
{
    static ZSTD_DCtx *dctx;
    static uint8_t chunk[CS_CHUNK_SIZE], z[NODE__DELTA_MAX];
    static const uint8_t base[CS_CHUNK_SIZE] = {1, 2, 3};
    if (!dctx) dctx = ZSTD_createDCtx();
    char err[NODE_ERRMSG];
    node__overlay_pkg pkg;
    if (node__overlay_parse(data, size, &pkg, err) == 0) {
        cs_manifest *m;
        if (cs_manifest_decode_limit(pkg.manifest, pkg.mlen, 1u << 16, &m) == 0) cs_manifest_free(m);
        node__overlay_stream s;
        if (node__overlay_stream_open(&s, &pkg, FUZZ_WLOG_MAX) == 0) {
            int rc = 0;
            size_t i = 0;
            for (; rc == 0 && i < pkg.ncarried && i < FUZZ_ITEMS; i++) {
                bool delta = pkg.carried[i] & 1;
                size_t zlen = 0;
                rc = node__overlay_stream_item(&s, delta, chunk, z, &zlen, err);
                if (rc == 0 && delta) node__overlay_delta_decode(dctx, base, z, zlen, chunk);
            }
            if (rc == 0 && i == pkg.ncarried) node__overlay_stream_end(&s, err);
            node__overlay_stream_close(&s);
        }
    }
    node__overlay_pkg_free(&pkg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_and_read(data, size);
    /* Mutations almost never keep the trailing hash right: parse a copy with the hash made
     * right as well, so everything behind it gets fuzzed too. */
    if (size > 32) {
        uint8_t *copy = malloc(size);
        memcpy(copy, data, size);
        crypto_generichash(copy + size - 32, 32, copy, size - 32, NULL, 0);
        parse_and_read(copy, size);
        free(copy);
    }
    return 0;
}
