/* node_internal.h — shared inside node/ only. */
#ifndef CLOUDLET_NODE_INTERNAL_H
#define CLOUDLET_NODE_INTERNAL_H

#include "node.h"

#include <stdio.h>
#include <zstd.h>

/* Writes the sentence of a failure into err (NODE_ERRMSG bytes, truncated to fit; err may be
 * NULL). Every node/ function that takes `char err[NODE_ERRMSG]` fills it through this. */
void node__errf(char err[NODE_ERRMSG], const char *fmt, ...) __attribute__((format(printf, 2, 3)));

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

/* ---- the fetch planner (fetch_plan.c) ---- */

/* Which source each of n missing chunks (indexes 0..n-1) comes from: neighbours 0..npeers-1,
 * or the origin. Callers drive it: offer work to a source with room in flight (next), report
 * what arrives (received, verified or not), what a source says it lacks (not_held), a
 * neighbour gone (peer_gone), and expire requests older than timeout (expire). Time is the
 * caller's, in any unit consistent with timeout. */
#define NODE_PLAN_ORIGIN (-1)
typedef struct node_plan node_plan;
typedef struct node_plan_stats_t {
    uint64_t total, done;
    uint64_t origin_pending;  /* pending chunks no live neighbour holds */
    uint64_t origin_inflight, origin_received;
} node_plan_stats_t;

node_plan *node_plan_new(size_t n, unsigned npeers, uint64_t timeout);
void node_plan_free(node_plan *p);
/* holdings[i]: bitmap of the chunks neighbour i holds (bit c = byte c/8, 1 << c%8), NULL for a
 * neighbour that did not answer. Chunks nobody holds go to the origin's queue. */
int node_plan_start(node_plan *p, const uint8_t *const *holdings);
/* Up to max chunk indexes for source to fetch now (written to out); 0 when it has none. */
size_t node_plan_next(node_plan *p, int source, size_t max, uint32_t *out, uint64_t now);
void node_plan_received(node_plan *p, int source, uint32_t chunk, bool verified);
void node_plan_not_held(node_plan *p, int source, uint32_t chunk);
void node_plan_peer_gone(node_plan *p, unsigned peer);
/* Requests older than the timeout go back to the pool, counted against their source; returns
 * how many. */
size_t node_plan_expire(node_plan *p, uint64_t now);
void node_plan_stats(const node_plan *p, node_plan_stats_t *s);
uint64_t node_plan_peer_received(const node_plan *p, unsigned peer);
uint64_t node_plan_peer_inflight(const node_plan *p, unsigned peer);
uint64_t node_plan_peer_failures(const node_plan *p, unsigned peer);
bool node_plan_done(const node_plan *p);

#endif
