/* node_internal.h — shared inside node/ only. */
#ifndef CLOUDLET_NODE_INTERNAL_H
#define CLOUDLET_NODE_INTERNAL_H

#include "node.h"

#include <stdio.h>
#include <zstd.h>

/* Writes the sentence of a failure into err (NODE_ERRMSG bytes, truncated to fit; err may be
 * NULL). Every node/ function that takes `char err[NODE_ERRMSG]` fills it through this. */
void node__errf(char err[NODE_ERRMSG], const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The monotonic clock in seconds, for the stage times reports give. */
double node__now_s(void);

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

/* ---- libvirt save files (vm_savefile.c, docs/savefile.md) ---- */

#define NODE__SAVEFILE_MAX_BLOCKS 256u

typedef struct node__savefile_block {
    char name[256];  /* QEMU's RAM block id, e.g. pc.ram */
    uint64_t length; /* used length: a whole number of 4 KiB pages */
} node__savefile_block;

/* What the parser learnt; pointers point into the parsed buffer. */
typedef struct node__savefile_info {
    uint8_t header[92];        /* the libvirt header (a FIFO-style file's final one), magic
                                  LibvirtQemudSave */
    uint32_t data_len;         /* the XML region's length */
    uint32_t cookie_off;       /* the cookie's offset in the region (0: none) */
    uint32_t was_running;
    const uint8_t *region;     /* the XML region: domain XML, NUL, cookie, NUL, zero padding */
    size_t xml_len;            /* the domain XML's length (without its NUL) */
    size_t stream_off, stream_end; /* QEMU's stream in the buffer */
    char machine[64];          /* the machine type of the CONFIGURATION section, if any */
    size_t nblocks;
    node__savefile_block blocks[NODE__SAVEFILE_MAX_BLOCKS];
    uint64_t ram_bytes;        /* sum of the blocks' lengths */
    uint64_t pages;            /* page records (ZERO and PAGE) in the stream */
    uint64_t state_stream_len; /* bytes given to the kept callback */
    uint64_t insert_at;        /* where, in those bytes, the rebuilt page records go */
    size_t vmdesc_len;         /* bytes of the trailing JSON VM description */
} node__savefile_info;

/* Callbacks of the save file parser (each may be NULL); returning non-zero stops the parse
 * with that code. Pointers are valid during the call only (they point into the buffer). */
typedef struct node__savefile_visitor {
    /* The RAM block list is known (once, before any page). */
    int (*blocks)(const node__savefile_info *info, void *arg);
    /* A page record, in stream order: later records of a page replace earlier ones. data is
     * the page's 4096 bytes, or NULL for a ZERO record whose every byte is fill. at is the
     * record's byte offset in the file. */
    int (*page)(size_t block, uint64_t offset, const uint8_t *data, uint8_t fill, size_t at,
                void *arg);
    /* The next bytes of the state stream: QEMU's stream without its page records. */
    int (*kept)(const uint8_t *p, size_t n, void *arg);
} node__savefile_visitor;

/* Parses a whole libvirt save file held in memory (a pure function of the bytes). Errors are
 * CS_EFORMAT or CS_EVERSION, or a callback's code, with err naming the byte offset. */
int node__savefile_parse(const uint8_t *buf, size_t len, const node__savefile_visitor *v,
                         void *arg, node__savefile_info *info, char err[NODE_ERRMSG]);

/* The images a save file added to a manifest: m->images[first .. first + nimages), the RAM
 * blocks then "state"; status[i] holds a CS_CHUNK_* per position of image first + i. */
typedef struct node__memimport {
    size_t first, nimages;
    uint8_t **status;
    char *xml;          /* the domain XML of the save file's header (malloc'd) */
    cs_put_stats stats; /* added to by the import */
} node__memimport;
void node__memimport_free(node__memimport *mi);

/* Parses save file buf and stores its RAM and state images into the store, appending them to
 * m. The caller holds cs_ingest_begin(). On error m may hold some of the images (the caller
 * drops it) and stored chunks stay unreferenced until gc. */
int node__savefile_import(cs_store *st, const uint8_t *buf, size_t len, cs_manifest *m,
                          node__memimport *out, cs_progress_fn progress, void *arg,
                          char err[NODE_ERRMSG]);

#endif
