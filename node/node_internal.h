/* node_internal.h — shared inside node/ only. */
#ifndef CLOUDLET_NODE_INTERNAL_H
#define CLOUDLET_NODE_INTERNAL_H

#include "node.h"

#include <stdio.h>
#include <zstd.h>

/* Writes s as a JSON string, quotes included. */
void node__json_str(FILE *f, const char *s);

/* ---- overlay packages (vm_overlay.c) ---- */

/* Callbacks of the overlay parser; `at` is the record's byte offset. Returning non-zero stops
 * the parse with that code. Pointers are valid during the call only. */
typedef struct node__overlay_visitor {
    int (*manifest)(const uint8_t *buf, size_t len, void *arg);
    int (*block)(const cs_id *ids, uint32_t n, const uint8_t *z, size_t zlen, size_t at, void *arg);
    int (*delta)(uint32_t image, uint64_t pos, const cs_id *id, const uint8_t *z, size_t zlen,
                 size_t at, void *arg);
} node__overlay_visitor;

#define NODE__DELTA_MAX 8192u
/* A zstd context for deltas at level (no content size, no dictionary id in the frame). */
ZSTD_CCtx *node__delta_cctx(int level);
/* Compresses chunk as a delta against base into out and returns its length when it beats
 * three quarters of the chunk compressed alone (est at level 3); 0 when it does not. */
size_t node__delta_if_smaller(ZSTD_CCtx *dcctx, ZSTD_CCtx *est, const uint8_t *base,
                              const uint8_t *chunk, uint8_t out[NODE__DELTA_MAX]);

/* Parses a whole package held in memory: header, trailing hash, records, end record. */
int node__overlay_parse(const uint8_t *buf, size_t len, const node__overlay_visitor *v, void *arg,
                        char err[NODE_ERRMSG]);
/* A block's zstd frame to exactly n chunks (out holds n * 4 KiB). */
int node__overlay_block_decode(ZSTD_DCtx *d, const uint8_t *z, size_t zlen, uint32_t n,
                               uint8_t *out);
/* A delta against base to exactly one chunk. */
int node__overlay_delta_decode(ZSTD_DCtx *d, const uint8_t *base, const uint8_t *z, size_t zlen,
                               uint8_t out[CS_CHUNK_SIZE]);

#endif
