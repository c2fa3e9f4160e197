/* node_internal.h — shared inside node/ only. */
#ifndef CLOUDLET_NODE_INTERNAL_H
#define CLOUDLET_NODE_INTERNAL_H

#include "node.h"

#include <stdio.h>
#include <zstd.h>

/* Writes the sentence of a failure into err (NODE_ERRMSG bytes, truncated to fit; err may be
 * NULL). Every node/ function that takes `char err[NODE_ERRMSG]` fills it through this. */
void node__errf(char err[NODE_ERRMSG], const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "disk chunk ID at offset N: why", naming chunk pos of image im, into err. */
void node__disk_chunk_errf(char err[NODE_ERRMSG], const cs_image *im, uint64_t pos,
                           const char *why);
/* cs_image_export_fd of a VM's disk image to fd; a damaged or missing chunk is named in err
 * (other failures leave err to the caller). */
int node__export_disk(cs_store *st, const cs_image *im, int fd, cs_progress_fn progress, void *arg,
                      char err[NODE_ERRMSG]);

/* An unsigned integer of n bytes (1..8) as file and wire formats store it: big-endian (QEMU's
 * stream, NBD) or little-endian (cloudlet's own formats). */
static inline uint64_t node__get_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

static inline void node__put_be(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static inline uint64_t node__get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static inline void node__put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The monotonic clock in seconds, for the stage times reports give. */
double node__now_s(void);

/* Writes s as a JSON string, quotes included. */
void node__json_str(FILE *f, const char *s);

/* ---- overlay packages (vm_overlay.c) ---- */

#define NODE__DELTA_MAX 8192u
/* A zstd context for deltas at level (no content size, no dictionary id in the frame). */
ZSTD_CCtx *node__delta_cctx(int level);
/* Compresses chunk as a delta against base into out and returns its length when it beats
 * three quarters of the chunk compressed alone (est at level 3); 0 when it does not. */
size_t node__delta_if_smaller(ZSTD_CCtx *dcctx, ZSTD_CCtx *est, const uint8_t *base,
                              const uint8_t *chunk, uint8_t out[NODE__DELTA_MAX]);

/* The largest zstd window (log2) a package may declare: what an importer allocates at most. */
#define NODE__OVERLAY_WLOG_MAX 27u

/* A package whose header, trailing hash and carried manifest have been checked. */
typedef struct node__overlay_pkg {
    unsigned wlog;         /* log2 of the window the stream declares it needs */
    cs_id id;              /* the manifest's id, as the header names it */
    const uint8_t *stream; /* the zstd stream, inside the package's bytes */
    size_t slen;
    uint8_t *manifest;     /* the canonical manifest; the ids of carried chunks and of refs
                            * are 0xff bytes until the importer fills them in */
    size_t mlen;
    uint64_t *carried;     /* per carried chunk, in stream order: (offset of its id in
                            * manifest) << 1 | 1 for a delta */
    size_t ncarried;
    struct node__overlay_place {
        uint32_t image;
        uint64_t pos;
    } *delta_at;           /* per delta, in stream order: its place in the manifest */
    size_t ndelta;
    struct node__overlay_ref {
        uint64_t off;      /* of the id in manifest */
        uint32_t image;    /* in the parent, or NODE__OVERLAY_CARRIED */
        uint64_t pos;      /* in that image, or the index of a carried chunk */
    } *refs;               /* places named by a place in the parent or by a carried chunk */
    size_t nrefs;
} node__overlay_pkg;
#define NODE__OVERLAY_CARRIED UINT32_MAX

/* Checks a whole package held in memory (header, version, trailing hash, carried manifest) and
 * fills *out, which points into buf. Free with node__overlay_pkg_free (also after an error). */
int node__overlay_parse(const uint8_t *buf, size_t len, node__overlay_pkg *out,
                        char err[NODE_ERRMSG]);
void node__overlay_pkg_free(node__overlay_pkg *p);

/* A reader of a package's stream: its items in order, then a check that nothing follows.
 * wlog_max bounds the window the decoder accepts (so its memory). */
typedef struct node__overlay_stream {
    ZSTD_DCtx *d;
    ZSTD_inBuffer in;
    size_t hint; /* 0 right after the end of a frame */
} node__overlay_stream;
int node__overlay_stream_open(node__overlay_stream *s, const node__overlay_pkg *p, unsigned wlog_max);
/* The next item: a chunk (into chunk) or, for a delta, its zstd frame (into z, *zlen). */
int node__overlay_stream_item(node__overlay_stream *s, bool delta, uint8_t chunk[CS_CHUNK_SIZE],
                              uint8_t z[NODE__DELTA_MAX], size_t *zlen, char err[NODE_ERRMSG]);
int node__overlay_stream_end(node__overlay_stream *s, char err[NODE_ERRMSG]);
void node__overlay_stream_close(node__overlay_stream *s);
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
/* Chunks wanted now (a running VM waits for them): offered before any other to every source
 * that can give them. Chunks not pending any more are ignored. */
int node_plan_urgent(node_plan *p, const uint32_t *idx, size_t n);
/* Up to max chunk indexes for source to fetch now (written to out); 0 when it has none. The
 * urgent ones first. */
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
