/*
 * chunkstore.h — cloudlet's content-addressed store of 4 KiB chunks and manifests.
 *
 * One LMDB environment holds everything: chunks grouped into zstd-compressed segments, an index
 * chunk id -> (segment, slot, reference count), manifests by id, names, pins and counters. Every
 * mutation is one LMDB write transaction, so a process killed at any instant leaves a consistent
 * store. No sockets, no libvirt: callers run these blocking functions on worker threads.
 *
 * Conventions: functions return 0 on success, a negative errno for OS errors, or a CS_E* code;
 * cs_strerror() names any of them. Every function is safe to call from several threads at once
 * on the same cs_store, and several processes may open the same store (one writes at a time).
 */
#ifndef CLOUDLET_CHUNKSTORE_H
#define CLOUDLET_CHUNKSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CS_CHUNK_SIZE 4096u
#define CS_ID_BYTES 32u
#define CS_ID_HEX 64u

#if defined(__GNUC__)
#define CS_WUR __attribute__((warn_unused_result))
#else
#define CS_WUR
#endif

/* Project error codes: a reserved negative range, apart from -errno. */
enum {
    CS_ECORRUPT = -30001,  /* stored or received bytes do not match their id or format */
    CS_ENOTFOUND = -30002, /* no such chunk, manifest or name */
    CS_EFORMAT = -30003,   /* malformed input (manifest, argument) */
    CS_EVERSION = -30004,  /* store or manifest written by an unknown version */
    CS_EFULL = -30005,     /* the disk (or file size limit) is full */
    CS_ELMDB = -30006,     /* an LMDB failure with no errno equivalent */
    CS_EZSTD = -30007,     /* zstd failed to compress (decompression failures are CS_ECORRUPT) */
    CS_EBUSY = -30008,     /* another process holds a lock this operation needs */
    CS_EMISSING = -30009,  /* an operation needs chunks or a parent that the store lacks */
};

/* A string for any code these functions return; never NULL, valid forever. */
const char *cs_strerror(int err);

/* A chunk id: BLAKE2b-256 of the chunk's 4096 bytes (a short tail is zero-padded first).
 * The all-zero chunk is the exception: its id is 32 zero bytes (a value BLAKE2b does not yield
 * in practice), so a zero-filled array of ids stands for zero chunks. */
typedef struct cs_id {
    uint8_t b[CS_ID_BYTES];
} cs_id;

/* The id of the all-zero chunk (32 zero bytes). That chunk is never stored and never sent. */
extern const cs_id cs_zero_id;

void cs_chunk_id(const void *chunk, cs_id *out);
bool cs_id_is_zero(const cs_id *id);
bool cs_id_equal(const cs_id *a, const cs_id *b);
/* Lowercase hex, NUL-terminated: out must hold CS_ID_HEX + 1 bytes. Returns out. */
char *cs_id_to_hex(const cs_id *id, char out[CS_ID_HEX + 1]);
/* Exactly 64 hex digits, either case. Returns 0 or CS_EFORMAT. */
int cs_id_from_hex(const char *hex, cs_id *out) CS_WUR;

/* ---- the store handle ---------------------------------------------------------------------- */

typedef struct cs_store cs_store;

enum {
    CS_OPEN_CREATE = 1u << 0,   /* create the directory and the store if missing */
    CS_OPEN_READONLY = 1u << 1, /* never write; concurrent with a writer in another process */
};

/* Opens the store in directory dir. *out is set only on success; close it with cs_close. */
int cs_open(const char *dir, unsigned flags, cs_store **out) CS_WUR;
/* Waits for nothing: the caller must have finished every call on other threads. NULL is fine. */
void cs_close(cs_store *st);

/* ---- chunks -------------------------------------------------------------------------------- */

typedef struct cs_put_stats {
    uint64_t chunks;       /* chunks offered */
    uint64_t zero;         /* all-zero chunks (not stored) */
    uint64_t dup;          /* already in the store or repeated within the batch */
    uint64_t added;        /* newly stored */
    uint64_t stored_bytes; /* compressed bytes written for the added chunks */
} cs_put_stats;

/*
 * Stores n chunks (n * CS_CHUNK_SIZE contiguous bytes). ids_out (may be NULL) receives every
 * chunk's id, cs_zero_id for zero chunks. When expect is not NULL, each chunk must hash to
 * expect[i]: on the first mismatch nothing is stored and CS_ECORRUPT is returned with *bad set
 * to its index (bad may be NULL). A successful return means the chunks are durable. New chunks
 * start with no references: garbage collection frees them unless a manifest refers to them, so
 * writers hold cs_ingest_begin() between storing chunks and storing the manifest that names them.
 * stats (may be NULL) is added to, not overwritten.
 */
int cs_put(cs_store *st, const void *chunks, size_t n, const cs_id *expect, cs_id *ids_out,
           size_t *bad, cs_put_stats *stats) CS_WUR;

/*
 * cs_put that does not wait for the disk: the batch is stored atomically (a crash leaves all of
 * it or none, and never an index entry without its bytes) but is durable only after a later
 * cs_sync or durable write. For bulk transfers (a pull) that sync once, before they record
 * that they are done; a crash in between costs only chunks to fetch again.
 */
int cs_put_nosync(cs_store *st, const void *chunks, size_t n, const cs_id *expect,
                  cs_id *ids_out, size_t *bad, cs_put_stats *stats) CS_WUR;
/* Makes every write committed so far durable. 0 on a read-only store. */
int cs_sync(cs_store *st) CS_WUR;

/*
 * Reads n chunks into out (n * CS_CHUNK_SIZE bytes). The zero id reads as zeros. Every chunk is
 * re-hashed before it is returned: CS_ECORRUPT (with *bad, may be NULL, set to the index) means
 * the stored bytes are damaged; CS_ENOTFOUND means a chunk is absent. out is undefined on error.
 */
int cs_get(cs_store *st, const cs_id *ids, size_t n, void *out, size_t *bad) CS_WUR;

/* Sets bit i of bitmap ((n + 7) / 8 bytes, bit i = byte i/8, 1 << (i%8)) when chunk i is held
 * (the zero id always counts as held). Returns the number held, or a negative error. */
int64_t cs_has(cs_store *st, const cs_id *ids, size_t n, uint8_t *bitmap);

/*
 * Garbage collection needs every chunk that a writer is about to name in a manifest to survive
 * until that manifest is stored. cs_ingest_begin takes a shared lock that cs_gc waits for
 * (across processes); cs_ingest_end releases it. Nests per handle.
 */
int cs_ingest_begin(cs_store *st) CS_WUR;
void cs_ingest_end(cs_store *st);

/* ---- manifests ----------------------------------------------------------------------------- */

enum cs_image_kind {
    CS_IMAGE_FILE = 0,  /* a plain file stored with `cloudlet store add` */
    CS_IMAGE_DISK = 1,  /* a raw disk image */
    CS_IMAGE_RAM = 2,   /* one guest RAM block, page-aligned at its guest offset */
    CS_IMAGE_STATE = 3, /* the rest of a memory snapshot (headers, device state) */
    CS_IMAGE_KIND_MAX = 3,
};

/*
 * One image of a manifest, decoded. chunks[i] is the chunk at byte offset i * CS_CHUNK_SIZE.
 * For a derived manifest (one with a parent), chunks[] is the image as resolved against the
 * parent only after cs_manifest_resolve(); as decoded it holds the explicit positions alone and
 * `explicit_mask` marks them.
 */
typedef struct cs_image {
    uint8_t kind;      /* enum cs_image_kind */
    char *name;        /* NUL-terminated, 1..255 bytes, unique within the manifest */
    uint64_t length;   /* bytes */
    uint64_t nchunks;  /* ceil(length / CS_CHUNK_SIZE) */
    cs_id *chunks;     /* nchunks ids; cs_zero_id for zero chunks */
    uint8_t *explicit_mask; /* derived manifests only: bit i set = position i differs from parent */
} cs_image;

typedef struct cs_manifest {
    bool has_parent;
    cs_id parent;
    char *xml;     /* libvirt domain XML, NUL-terminated; may be empty, never NULL */
    size_t nimages;
    cs_image *images;
} cs_manifest;

/* Allocates an empty manifest (no images, empty XML). Free with cs_manifest_free (NULL ok). */
cs_manifest *cs_manifest_new(void);
void cs_manifest_free(cs_manifest *m);
/* Sets the XML (copied). */
int cs_manifest_set_xml(cs_manifest *m, const char *xml) CS_WUR;
/* Appends an image with all-zero content; returns it (owned by m) or NULL on ENOMEM or a bad
 * name. The pointer stays valid until the next cs_manifest_add_image on m. */
cs_image *cs_manifest_add_image(cs_manifest *m, uint8_t kind, const char *name, uint64_t length);
/* Finds an image by name, or NULL. */
cs_image *cs_manifest_find_image(const cs_manifest *m, const char *name);

/*
 * Canonical encoding. For a derived manifest, parent (the decoded parent manifest, resolved)
 * must be given: only positions that differ from it are written. Returns 0 and a malloc'd
 * buffer in *buf (caller frees), with *len and the manifest id in *id (id may be NULL).
 */
int cs_manifest_encode(const cs_manifest *m, const cs_manifest *parent, uint8_t **buf,
                       size_t *len, cs_id *id) CS_WUR;
/* Decodes untrusted bytes; CS_EFORMAT or CS_EVERSION on anything malformed or non-canonical.
 * The decoded manifest holds 32 bytes per chunk position; cs_manifest_decode accepts up to
 * 2^25 positions in all (128 GiB of images), cs_manifest_decode_limit up to max_positions. */
int cs_manifest_decode(const uint8_t *buf, size_t len, cs_manifest **out) CS_WUR;
int cs_manifest_decode_limit(const uint8_t *buf, size_t len, uint64_t max_positions,
                             cs_manifest **out) CS_WUR;
/* Fills a derived manifest's inherited positions from its resolved parent. */
int cs_manifest_resolve(cs_manifest *m, const cs_manifest *parent) CS_WUR;
/* The id of encoded manifest bytes. */
void cs_manifest_id(const uint8_t *buf, size_t len, cs_id *id);

/*
 * Stores an encoded manifest (decoded and checked first) and takes a reference on every chunk it
 * names explicitly. Its parent, if any, must already be stored (else CS_EMISSING). Storing a
 * manifest that is already there changes nothing. With pin, the manifest is pinned if it was
 * not (its pin count becomes at least 1). The chunks need not all be present yet: the index
 * records the ids it names, and cs_has tells which are held.
 */
int cs_manifest_put(cs_store *st, const uint8_t *buf, size_t len, bool pin, cs_id *id) CS_WUR;
/* Loads a manifest by id, decoded and, for a derived one, resolved through all its parents. */
int cs_manifest_get(cs_store *st, const cs_id *id, cs_manifest **out) CS_WUR;
/* The stored encoded bytes of a manifest (malloc'd, caller frees). */
int cs_manifest_get_raw(cs_store *st, const cs_id *id, uint8_t **buf, size_t *len) CS_WUR;
/* Pin count +1 / -1 (never below 0). Unpinned manifests that no stored manifest has as parent
 * are removed by cs_gc. */
int cs_manifest_pin(cs_store *st, const cs_id *id) CS_WUR;
int cs_manifest_unpin(cs_store *st, const cs_id *id) CS_WUR;

/* A note: a small blob (at most 1 MiB) kept with a stored manifest and removed with it, e.g.
 * the report of the import that made it. Setting replaces. get gives a malloc'd copy. */
int cs_manifest_note_set(cs_store *st, const cs_id *id, const void *buf, size_t len) CS_WUR;
int cs_manifest_note_get(cs_store *st, const cs_id *id, uint8_t **buf, size_t *len) CS_WUR;

/* Calls fn for every stored manifest; stops early when fn returns non-zero (returned as is). */
typedef struct cs_manifest_info {
    cs_id id;
    bool has_parent;
    cs_id parent;
    uint64_t pins;
    size_t encoded_len;
} cs_manifest_info;
int cs_manifest_list(cs_store *st, int (*fn)(const cs_manifest_info *info, void *arg), void *arg);

/* Names: a name (1..255 bytes, no NUL) refers to one manifest id. Setting replaces. */
int cs_name_set(cs_store *st, const char *name, const cs_id *id) CS_WUR;
int cs_name_get(cs_store *st, const char *name, cs_id *id) CS_WUR;
int cs_name_del(cs_store *st, const char *name) CS_WUR;
/* Calls fn(name, id, arg) for every name, in name order; stops when fn returns non-zero. */
int cs_name_list(cs_store *st, int (*fn)(const char *name, const cs_id *id, void *arg), void *arg);

/* ---- files ------------------------------------------------------------------------------------ */

/* Progress reports: done and total in bytes (or chunks, as each function says). Called from any
 * of the function's threads, one call at a time. */
typedef void (*cs_progress_fn)(uint64_t done, uint64_t total, void *arg);

/* What happened to each chunk of an import (cs_image_import_fd's status array). */
enum {
    CS_CHUNK_ZERO = 0, /* the zero chunk (or a hole): not stored */
    CS_CHUNK_DUP = 1,  /* already held, or an earlier position of the same import holds it */
    CS_CHUNK_NEW = 2,  /* stored by this import */
};

/*
 * Chunks the first im->length bytes of fd (a regular file or block device, read with pread)
 * into the store and fills im->chunks. Holes (SEEK_DATA/SEEK_HOLE) and all-zero blocks become
 * zero chunks without being stored; a short tail is zero-padded. threads (0 = 2) workers hash
 * and compress in parallel. The caller holds cs_ingest_begin() until the manifest naming
 * these chunks is stored. stats (may be NULL) is added to; status (may be NULL) receives one
 * CS_CHUNK_* per chunk position.
 */
int cs_image_import_fd(cs_store *st, int fd, cs_image *im, unsigned threads,
                       cs_progress_fn progress, void *arg, cs_put_stats *stats,
                       uint8_t *status) CS_WUR;

/*
 * Writes an image (its chunks must be resolved) to fd: exactly im->length bytes. A seekable
 * regular file is written sparse (zero chunks stay holes; the file is truncated to the length
 * first); anything else is written sequentially. Every chunk is verified on the way
 * (CS_ECORRUPT names a damaged chunk, CS_ENOTFOUND one the store lacks, with *bad set to its
 * position when bad is not NULL).
 */
int cs_image_export_fd(cs_store *st, const cs_image *im, int fd, cs_progress_fn progress,
                       void *arg, uint64_t *bad) CS_WUR;

/*
 * An ordered reader of an image's chunks: `threads` workers (0 = 2) fetch, decompress and
 * verify batches ahead of the consumer, a bounded number at a time. cs_reader_next gives the
 * next batch in order: n chunks (zero chunks as zeros) starting at chunk position *first,
 * valid until the next call; n == 0 at the end. On a damaged or missing chunk it returns
 * CS_ECORRUPT or CS_ENOTFOUND with *bad (may be NULL) set to the chunk's position.
 */
typedef struct cs_reader cs_reader;
/*
 * Chunks on their way in: between cs_arrivals_begin and the matching cs_arrivals_end (a fetch
 * of this process that stores chunks as they arrive), an ordered reader that meets a chunk the
 * store lacks waits for it to be stored instead of failing, and fails with CS_ENOTFOUND only
 * when no fetch runs any more. So a VM can be written while its chunks still stream in.
 */
void cs_arrivals_begin(cs_store *st);
void cs_arrivals_end(cs_store *st);
/*
 * cs_get of chunks that may still be on their way in: a chunk the store lacks is waited for
 * while a fetch runs (cs_arrivals_begin), and is CS_ENOTFOUND (*bad its index) only once none
 * runs any more. With out NULL it only waits until the store holds all n. stop (may be NULL)
 * is asked every 100 ms while waiting; when it returns true the call returns -ECANCELED.
 */
int cs_get_arriving(cs_store *st, const cs_id *ids, size_t n, void *out, size_t *bad,
                    bool (*stop)(void *), void *arg) CS_WUR;
int cs_reader_open(cs_store *st, const cs_image *im, unsigned threads, cs_reader **out) CS_WUR;
int cs_reader_next(cs_reader *r, uint64_t *first, size_t *n, const uint8_t **data,
                   uint64_t *bad) CS_WUR;
void cs_reader_close(cs_reader *r);

/* ---- maintenance --------------------------------------------------------------------------- */

typedef struct cs_stats {
    uint64_t chunks;         /* distinct non-zero chunks held */
    uint64_t logical_bytes;  /* chunks * CS_CHUNK_SIZE */
    uint64_t stored_bytes;   /* compressed payload bytes of all segments, live or not */
    uint64_t segments;
    uint64_t manifests;
    uint64_t pinned;
    uint64_t referenced_missing; /* chunks named by stored manifests but not yet held */
    uint64_t disk_bytes;     /* bytes the store's files take on disk (allocated blocks) */
    uint64_t map_bytes;      /* current LMDB map size */
} cs_stats;
int cs_stats_get(cs_store *st, cs_stats *out) CS_WUR;

typedef struct cs_verify_report {
    uint64_t chunks_checked;
    uint64_t bad_chunks;     /* damaged or unreadable; their ids were passed to on_bad */
    uint64_t bad_manifests;
    uint64_t bad_index;      /* index entries that point at missing segments or slots */
} cs_verify_report;
/* Re-reads and re-hashes every chunk and manifest. on_bad (may be NULL) is called with each bad
 * chunk id (what is NULL for chunks, else "manifest" / "index"). Returns 0 even when something is
 * bad: look at the report. progress (may be NULL) gets (done, total) chunks now and then. */
int cs_verify(cs_store *st, void (*on_bad)(const cs_id *id, const char *what, void *arg),
              void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg,
              cs_verify_report *report) CS_WUR;

typedef struct cs_gc_report {
    uint64_t manifests_removed;
    uint64_t chunks_removed;
    uint64_t segments_rewritten;
    uint64_t segments_removed;
    uint64_t bytes_reclaimed; /* compressed bytes no longer stored */
} cs_gc_report;
/* Removes unpinned, unreferenced manifests, then chunks no manifest refers to, then rewrites
 * segments whose live share has dropped below half. Waits for running ingests to end; with
 * nowait it returns CS_EBUSY instead. */
int cs_gc(cs_store *st, bool nowait, cs_gc_report *report) CS_WUR;

#ifdef __cplusplus
}
#endif
#endif
