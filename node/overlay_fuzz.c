/* Fuzz target: the overlay package parser and its block and delta decoders, on untrusted
 * bytes (packages arrive from apps and other machines). */
#include "node_internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ZSTD_DCtx *dctx;
static uint8_t *out;

static int on_block(const cs_id *ids, uint32_t n, const uint8_t *z, size_t zlen, size_t at, void *arg)
{
    (void)ids, (void)at, (void)arg;
    node__overlay_block_decode(dctx, z, zlen, n, out);
    return 0;
}

static int on_delta(uint32_t image, uint64_t pos, const cs_id *id, const uint8_t *z, size_t zlen,
                    size_t at, void *arg)
{
    (void)image, (void)pos, (void)id, (void)at, (void)arg;
    static const uint8_t base[CS_CHUNK_SIZE] = {1, 2, 3};
    node__overlay_delta_decode(dctx, base, z, zlen, out);
    return 0;
}

static int on_manifest(const uint8_t *buf, size_t len, void *arg)
{
    (void)arg;
    cs_manifest *m;
    /* The import decodes with the store's bound; the fuzzer's memory budget needs a smaller one. */
    if (cs_manifest_decode_limit(buf, len, 1u << 16, &m) == 0) cs_manifest_free(m);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dctx) dctx = ZSTD_createDCtx();
    if (!out) out = malloc(1024u * CS_CHUNK_SIZE);
    static const node__overlay_visitor v = {on_manifest, on_block, on_delta};
    char err[NODE_ERRMSG];
    node__overlay_parse(data, size, &v, NULL, err);
    /* Mutations almost never keep the trailing hash right: parse a copy with the hash made
     * right as well, so the records behind it get fuzzed too. */
    if (size > 32) {
        uint8_t *copy = malloc(size);
        memcpy(copy, data, size);
        crypto_generichash(copy + size - 32, 32, copy, size - 32, NULL, 0);
        node__overlay_parse(copy, size, &v, NULL, err);
        free(copy);
    }
    return 0;
}
