/* cs_internal.h — private to chunkstore/. */
#ifndef CLOUDLET_CS_INTERNAL_H
#define CLOUDLET_CS_INTERNAL_H

#include "chunkstore.h"

#include <lmdb.h>
#include <pthread.h>
#include <zstd.h>

/* Chunks per segment: 64 x 4 KiB = 256 KiB before compression (see docs/store.md). */
#define CS__SEG_SLOTS 64u
#define CS__SEG_HDR 8u
#define CS__SEG_MAX (CS__SEG_HDR + CS__SEG_SLOTS * CS_CHUNK_SIZE)
#define CS__ZSTD_LEVEL 3
#define CS__FORMAT_VERSION 1u
#define CS__MAP_INITIAL (64ull << 20)

/* Index value: where a chunk lives and how many manifest positions name it.
 * loc == 0 means "named by a manifest but not held yet". */
typedef struct cs__idx_val {
    uint64_t loc; /* segment id * 256 + slot */
    uint64_t refs;
} cs__idx_val;

#define CS__LOC(seg, slot) ((uint64_t)(seg) * 256u + (slot))
#define CS__LOC_SEG(loc) ((loc) / 256u)
#define CS__LOC_SLOT(loc) ((unsigned)((loc) % 256u))

struct cs_store {
    MDB_env *env;
    MDB_dbi idx;       /* chunk id (32) -> cs__idx_val */
    MDB_dbi segs;      /* segment id (u64, integer key) -> segment bytes */
    MDB_dbi manifests; /* manifest id (32) -> encoded manifest */
    MDB_dbi pins;      /* manifest id (32) -> u64 pin count */
    MDB_dbi names;     /* name -> manifest id (32) */
    MDB_dbi notes;     /* manifest id (32) -> a note (bytes) */
    MDB_dbi meta;      /* string key -> u64 counters and the format version */
    bool readonly;
    char *dir;

    /* Held shared by every transaction of this process, exclusively to change the map size:
     * LMDB requires that no transaction of the process is active then. */
    pthread_rwlock_t maplock;

    /* The shared ingest lock (flock on dir/gc.lock), counted per handle. */
    pthread_mutex_t ingest_mu;
    int ingest_fd;
    unsigned ingest_depth;

    /* Chunks on their way in (cs_arrivals_begin): how many fetches run, and a count of the
     * commits of chunks made meanwhile, which readers waiting for a chunk watch. */
    pthread_mutex_t arr_mu;
    pthread_cond_t arr_cv;
    unsigned arr_fetches;
    uint64_t arr_commits;

    /* zstd contexts, reused across calls. */
    pthread_mutex_t ctx_mu;
    ZSTD_CCtx *cctx[4];
    ZSTD_DCtx *dctx[4];
    unsigned ncctx, ndctx;
};

/* Chunks were committed: wakes readers waiting in cs__arrival_wait. */
void cs__arrivals_committed(cs_store *st);

/* Error translation: an LMDB return code to the project convention. */
int cs__lmdb_err(int rc);
/* A write transaction's failure, translated (rc in the project convention): -EIO from a short
 * write becomes CS_EFULL when the data file cannot grow (see cs_error.c). */
int cs__write_err(cs_store *st, int rc);

/* Transactions. begin takes the map lock shared and handles MDB_MAP_RESIZED from other
 * processes; end commits (write) or aborts (read) and releases it. */
int cs__txn_begin(cs_store *st, bool write, MDB_txn **txn);
void cs__txn_abort(cs_store *st, MDB_txn *txn);
int cs__txn_commit(cs_store *st, MDB_txn *txn);
/* Runs body in a write transaction and commits; when the map is full it aborts, grows the map
 * and runs body again, so body must have no effect outside the transaction. Durable on return.
 * (The environment defers meta-page flushes, MDB_NOMETASYNC: a write committed any other way,
 * with cs__txn_commit or cs__write_lazy, is atomic but durable only after cs__sync or the next
 * cs__write.) */
int cs__write(cs_store *st, int (*body)(cs_store *st, MDB_txn *txn, void *arg), void *arg);
int cs__write_lazy(cs_store *st, int (*body)(cs_store *st, MDB_txn *txn, void *arg), void *arg);
int cs__sync(cs_store *st);
/* Bodies return MDB_MAP_FULL as is (so cs__write grows the map) and everything else in the
 * project convention: cs__body_err translates an LMDB code that way. */
int cs__body_err(int rc);

/* Values kept in the meta database (the format version, the next segment id). */
int cs__meta_get(MDB_txn *txn, cs_store *st, const char *key, uint64_t *val);
int cs__meta_set(MDB_txn *txn, cs_store *st, const char *key, uint64_t val);

/* zstd context pool. */
ZSTD_CCtx *cs__cctx_get(cs_store *st);
void cs__cctx_put(cs_store *st, ZSTD_CCtx *c);
ZSTD_DCtx *cs__dctx_get(cs_store *st);
void cs__dctx_put(cs_store *st, ZSTD_DCtx *d);

/*
 * Segments (cs_segment.c). Layout: u8 version (1), u8 codec (0 raw, 1 zstd), u16 LE slot count,
 * u32 LE payload length, then the payload: the slots' 4 KiB chunks back to back, raw or as one
 * zstd frame with its content checksum.
 * encode: out must hold CS__SEG_MAX bytes. decode checks the header against len, decompresses
 * into out (CS__SEG_SLOTS * CS_CHUNK_SIZE bytes) and sets *nslots; CS_ECORRUPT on any mismatch.
 * peek reads the slot count without decompressing.
 */
int cs__seg_encode(ZSTD_CCtx *cctx, const uint8_t *chunks, unsigned nslots, uint8_t *out,
                   size_t *len);
int cs__seg_decode(ZSTD_DCtx *dctx, const uint8_t *seg, size_t len, uint8_t *out,
                   unsigned *nslots);
int cs__seg_peek(const uint8_t *seg, size_t len, unsigned *nslots);

/* cs_put with a CS_CHUNK_* status per chunk (status may be NULL); durable false is
 * cs_put_nosync. */
int cs__put(cs_store *st, const void *chunks, size_t n, const cs_id *expect, cs_id *ids_out,
            uint8_t *status, size_t *bad, cs_put_stats *stats, bool durable);

/* cs__put in two steps (cs_store.c). prepare hashes (checking expect), drops zero, repeated and
 * held chunks and compresses the rest, outside any write transaction; it keeps ids_out and
 * status (which it and commit fill) but not chunks. commit stores any number of prepared jobs in
 * one write transaction, durable when it returns 0 if durable is set (else see cs__write_lazy).
 * put_stats adds a committed job's figures. */
typedef struct cs__put_job cs__put_job;
int cs__put_prepare(cs_store *st, const void *chunks, size_t n, const cs_id *expect,
                    cs_id *ids_out, uint8_t *status, size_t *bad, cs__put_job **out);
int cs__put_commit(cs_store *st, cs__put_job *const *jobs, size_t njobs, bool durable);
void cs__put_stats(const cs__put_job *job, cs_put_stats *stats);
void cs__put_free(cs__put_job *job);

/* Stores encoded segments in a write transaction under fresh ids, the first in *first_seg and
 * the rest following. Used by put and by GC. */
int cs__seg_store(cs_store *st, MDB_txn *txn, const uint8_t *const *segbufs,
                  const size_t *seglens, size_t nsegs, uint64_t *first_seg);

/* Manifest decoding with a bound on the total number of chunk positions (the fuzz target uses a
 * small bound; the public decoder uses CS__MANIFEST_MAX_CHUNKS). */
/* A decoded manifest holds one 32-byte id per position: 2^25 positions (128 GiB of images)
 * bound what a hostile manifest of a few bytes can make a node allocate to 1 GiB. */
#define CS__MANIFEST_MAX_CHUNKS (1ull << 25)
int cs__manifest_decode(const uint8_t *buf, size_t len, uint64_t max_chunks, cs_manifest **out);
/* Calls fn for every explicit non-zero chunk position of a decoded (unresolved) manifest. */
int cs__manifest_each_explicit(const cs_manifest *m, int (*fn)(const cs_id *id, void *arg),
                               void *arg);

/* Takes (+1) or drops (-1) one reference per explicit non-zero position of m (cs_mstore.c). */
int cs__manifest_refs(cs_store *st, MDB_txn *txn, const cs_manifest *m, int delta);
/* Reads an encoded manifest's parent without decoding it; false when it has none. */
bool cs__manifest_peek_parent(const uint8_t *buf, size_t len, cs_id *parent);

/* The file offset of the bytes of the segment that holds chunk id (for corruption tests). */
int cs__debug_chunk_file_offset(cs_store *st, const cs_id *id, uint64_t *offset, size_t *len);

#endif
