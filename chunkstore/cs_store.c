/*
 * cs_store.c — opening the store, transactions, and the chunk operations (put, get, has).
 *
 * Design notes:
 * - Every change is one LMDB write transaction; LMDB's copy-on-write B-trees and meta-page
 *   flip make each commit atomic and durable, so a store killed at any instant reopens in the
 *   state of its last commit, with no index entry pointing at a segment that was not written.
 * - put does the CPU work (hashing, the duplicate check in a read transaction, compression)
 *   before it takes LMDB's single write lock, so callers on several threads overlap that work
 *   and queue only for the short write. A chunk that another writer stored in between is left
 *   as a dead slot in its segment (GC reclaims it).
 * - A put is two steps inside: prepare (all the CPU work, no write lock) and commit (one write
 *   transaction for one or several prepared jobs; durable when it returns). cs_put runs both;
 *   the file importer prepares batches on its workers and commits them from another thread,
 *   so that commits (write-back, fsync) overlap the hashing and compression of what follows.
 * - A commit flushes twice: the data pages, then the meta page that makes them the store's
 *   state. The environment defers the second flush (MDB_NOMETASYNC, which keeps the order and
 *   so the store's integrity at any crash); cs__write flushes before it returns, while the
 *   importer commits lazily and flushes once at the end (each commit's data flush also makes
 *   the previous meta page durable). An import thus pays one flush per batch, not two.
 * - The map grows by itself: a write that hits MDB_MAP_FULL is aborted, the map is enlarged
 *   while no transaction of this process is open (the map lock), and the write runs again.
 *   Another process that grew the map shows up as MDB_MAP_RESIZED at begin, handled likewise.
 */
#define _GNU_SOURCE
#include "cs_internal.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- transactions and the map ---------------------------------------------------------------- */

static int grow_map(cs_store *st, size_t need_at_least)
{
    pthread_rwlock_wrlock(&st->maplock);
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    size_t cur = info.me_mapsize;
    size_t step = cur < (64u << 20) ? (64u << 20) : cur;
    if (step > (16ull << 30)) step = 16ull << 30;
    size_t next = cur + step;
    if (next < need_at_least) next = need_at_least;
    int rc = cs__lmdb_err(mdb_env_set_mapsize(st->env, next));
    pthread_rwlock_unlock(&st->maplock);
    return rc;
}

int cs__txn_begin(cs_store *st, bool write, MDB_txn **txn)
{
    if (write && st->readonly) return -EROFS;
    for (;;) {
        pthread_rwlock_rdlock(&st->maplock);
        int rc = mdb_txn_begin(st->env, NULL, write ? 0 : MDB_RDONLY, txn);
        if (rc == 0) return 0;
        pthread_rwlock_unlock(&st->maplock);
        if (rc != MDB_MAP_RESIZED) return cs__lmdb_err(rc);
        /* Another process grew the map: adopt its size (0 = the size in the meta page). */
        pthread_rwlock_wrlock(&st->maplock);
        rc = mdb_env_set_mapsize(st->env, 0);
        pthread_rwlock_unlock(&st->maplock);
        if (rc) return cs__lmdb_err(rc);
    }
}

void cs__txn_abort(cs_store *st, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&st->maplock);
}

int cs__txn_commit(cs_store *st, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&st->maplock);
    return rc;
}

int cs__sync(cs_store *st)
{
    return cs__write_err(st, cs__lmdb_err(mdb_env_sync(st->env, 1)));
}

static int write_txn(cs_store *st, int (*body)(cs_store *st, MDB_txn *txn, void *arg), void *arg,
                     bool durable)
{
    /* A reader killed inside a transaction leaves its slot in the lock file, and LMDB reuses no
     * page that slot's snapshot may still see: every later commit would grow the file. Clear
     * the slots of dead processes first (a scan of the reader table, one fcntl per process). */
    mdb_reader_check(st->env, NULL);
    for (;;) {
        MDB_txn *txn;
        int rc = cs__txn_begin(st, true, &txn);
        if (rc) return rc;
        rc = body(st, txn, arg);
        if (rc == 0) {
            rc = cs__txn_commit(st, txn); /* raw LMDB code */
            if (rc == MDB_MAP_FULL) goto grow;
            if (rc) return cs__write_err(st, cs__lmdb_err(rc));
            return durable ? cs__sync(st) : 0;
        }
        cs__txn_abort(st, txn);
        if (rc != MDB_MAP_FULL) return cs__write_err(st, rc > 0 ? cs__lmdb_err(rc) : rc);
    grow:
        rc = grow_map(st, 0);
        if (rc) return rc;
    }
}

int cs__write(cs_store *st, int (*body)(cs_store *st, MDB_txn *txn, void *arg), void *arg)
{
    return write_txn(st, body, arg, true);
}

int cs__write_lazy(cs_store *st, int (*body)(cs_store *st, MDB_txn *txn, void *arg), void *arg)
{
    return write_txn(st, body, arg, false);
}

int cs__body_err(int rc)
{
    return rc == MDB_MAP_FULL ? rc : cs__lmdb_err(rc);
}

/* ---- meta counters ------------------------------------------------------------------------- */

int cs__meta_get(MDB_txn *txn, cs_store *st, const char *key, uint64_t *val)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    *val = 0;
    int rc = mdb_get(txn, st->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return cs__lmdb_err(rc);
    if (v.mv_size != sizeof *val) return CS_ECORRUPT;
    memcpy(val, v.mv_data, sizeof *val);
    return 0;
}

int cs__meta_set(MDB_txn *txn, cs_store *st, const char *key, uint64_t val)
{
    MDB_val k = {strlen(key), (void *)key}, v = {sizeof val, &val};
    return cs__body_err(mdb_put(txn, st->meta, &k, &v, 0));
}

/* ---- zstd context pool --------------------------------------------------------------------- */

ZSTD_CCtx *cs__cctx_get(cs_store *st)
{
    ZSTD_CCtx *c = NULL;
    pthread_mutex_lock(&st->ctx_mu);
    if (st->ncctx) c = st->cctx[--st->ncctx];
    pthread_mutex_unlock(&st->ctx_mu);
    if (!c) {
        c = ZSTD_createCCtx();
        if (!c) return NULL;
        ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, CS__ZSTD_LEVEL);
        ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
        ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
    }
    return c;
}

void cs__cctx_put(cs_store *st, ZSTD_CCtx *c)
{
    pthread_mutex_lock(&st->ctx_mu);
    if (st->ncctx < 4) st->cctx[st->ncctx++] = c, c = NULL;
    pthread_mutex_unlock(&st->ctx_mu);
    ZSTD_freeCCtx(c);
}

ZSTD_DCtx *cs__dctx_get(cs_store *st)
{
    ZSTD_DCtx *d = NULL;
    pthread_mutex_lock(&st->ctx_mu);
    if (st->ndctx) d = st->dctx[--st->ndctx];
    pthread_mutex_unlock(&st->ctx_mu);
    return d ? d : ZSTD_createDCtx();
}

void cs__dctx_put(cs_store *st, ZSTD_DCtx *d)
{
    pthread_mutex_lock(&st->ctx_mu);
    if (st->ndctx < 4) st->dctx[st->ndctx++] = d, d = NULL;
    pthread_mutex_unlock(&st->ctx_mu);
    ZSTD_freeDCtx(d);
}

/* ---- open / close -------------------------------------------------------------------------- */

/* Opens (creating them in a writable store) the named databases and checks the format. */
static int open_dbs(cs_store *st, MDB_txn *txn, bool create)
{
    struct {
        MDB_dbi *dbi;
        const char *name;
        unsigned flags;
    } dbs[] = {
        {&st->idx, "idx", 0},           {&st->segs, "segs", MDB_INTEGERKEY},
        {&st->manifests, "manifests", 0}, {&st->pins, "pins", 0},
        {&st->names, "names", 0},       {&st->meta, "meta", 0},
        {&st->notes, "notes", 0},
    };
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        int rc = mdb_dbi_open(txn, dbs[i].name, dbs[i].flags | (create ? MDB_CREATE : 0), dbs[i].dbi);
        if (rc) return rc == MDB_NOTFOUND ? CS_EFORMAT : cs__body_err(rc);
    }
    uint64_t version = 0;
    int rc = cs__meta_get(txn, st, "format", &version);
    if (rc) return rc;
    if (version == 0 && create) return cs__meta_set(txn, st, "format", CS__FORMAT_VERSION);
    return version == CS__FORMAT_VERSION ? 0 : version == 0 ? CS_EFORMAT : CS_EVERSION;
}

static int init_body(cs_store *st, MDB_txn *txn, void *arg)
{
    (void)arg;
    return open_dbs(st, txn, true);
}

static int open_dbs_readonly(cs_store *st)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    if ((rc = open_dbs(st, txn, false))) {
        cs__txn_abort(st, txn);
        return rc;
    }
    return cs__lmdb_err(cs__txn_commit(st, txn)); /* keeps the dbi handles */
}

/* A data file shorter than LMDB's two meta pages is a creation that did not finish (killed, or
 * the disk filled during its first write). LMDB refuses it as invalid, yet it holds nothing:
 * removes it, and says whether it did. (A creator in progress holds LMDB's exclusive lock, so an
 * open that got that answer did not race with one.) */
static bool remove_unfinished(const char *dir)
{
    char *data = NULL;
    if (asprintf(&data, "%s/data.mdb", dir) < 0) return false;
    struct stat sb;
    bool removed = stat(data, &sb) == 0 && sb.st_size < 2 * sysconf(_SC_PAGESIZE) &&
                   unlink(data) == 0;
    free(data);
    return removed;
}

int cs_open(const char *dir, unsigned flags, cs_store **out)
{
    bool readonly = flags & CS_OPEN_READONLY;
    if (flags & CS_OPEN_CREATE && !readonly) {
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) return -errno;
    }
    char *data = NULL;
    if (asprintf(&data, "%s/data.mdb", dir) < 0) return -ENOMEM;
    struct stat sb;
    int exists = stat(data, &sb) == 0;
    free(data);
    if (!exists && !(flags & CS_OPEN_CREATE)) return CS_ENOTFOUND;

    cs_store *st = calloc(1, sizeof *st);
    if (!st) return -ENOMEM;
    st->readonly = readonly;
    st->ingest_fd = -1;
    pthread_rwlock_init(&st->maplock, NULL);
    pthread_mutex_init(&st->ingest_mu, NULL);
    pthread_mutex_init(&st->ctx_mu, NULL);
    pthread_mutex_init(&st->arr_mu, NULL);
    pthread_cond_init(&st->arr_cv, NULL);
    int rc = -ENOMEM;
    if (!(st->dir = strdup(dir))) goto fail;
    if ((rc = cs__lmdb_err(mdb_env_create(&st->env)))) goto fail;
    mdb_env_set_maxdbs(st->env, 16);
    mdb_env_set_maxreaders(st->env, 254);
    /* MDB_NOTLS: read transactions are not tied to threads (worker pools hand work around).
     * MDB_NOMETASYNC: a commit still flushes its data pages before it writes the meta page that
     * points at them (so no crash can leave a meta page naming unwritten pages), but leaves the
     * meta page to the next flush; cs__write flushes it before returning, cs__write_lazy leaves
     * it to the next commit or cs__sync. Durable on return stays true of every public call. */
    rc = mdb_env_open(st->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : MDB_NOMETASYNC), 0600);
    if (rc) {
        rc = cs__lmdb_err(rc);
        goto fail;
    }
    if (!readonly) {
        MDB_envinfo info;
        mdb_env_info(st->env, &info);
        if (info.me_mapsize < CS__MAP_INITIAL &&
            (rc = cs__lmdb_err(mdb_env_set_mapsize(st->env, CS__MAP_INITIAL))))
            goto fail;
        rc = cs__write(st, init_body, NULL);
    } else {
        rc = open_dbs_readonly(st);
    }
    if (rc) goto fail;
    *out = st;
    return 0;
fail:
    cs_close(st);
    /* The second attempt creates the file afresh: should that run out of room too, LMDB says
     * ENOSPC (CS_EFULL), so this retries at most once. */
    if (rc == CS_EVERSION && flags & CS_OPEN_CREATE && !readonly && remove_unfinished(dir))
        return cs_open(dir, flags, out);
    return rc;
}

void cs_close(cs_store *st)
{
    if (!st) return;
    if (st->env) mdb_env_close(st->env);
    if (st->ingest_fd >= 0) close(st->ingest_fd);
    for (unsigned i = 0; i < st->ncctx; i++) ZSTD_freeCCtx(st->cctx[i]);
    for (unsigned i = 0; i < st->ndctx; i++) ZSTD_freeDCtx(st->dctx[i]);
    pthread_rwlock_destroy(&st->maplock);
    pthread_mutex_destroy(&st->ingest_mu);
    pthread_mutex_destroy(&st->ctx_mu);
    pthread_mutex_destroy(&st->arr_mu);
    pthread_cond_destroy(&st->arr_cv);
    free(st->dir);
    free(st);
}

/* ---- the ingest lock ----------------------------------------------------------------------- */

int cs_ingest_begin(cs_store *st)
{
    if (st->readonly) return -EROFS;
    int rc = 0;
    pthread_mutex_lock(&st->ingest_mu);
    if (st->ingest_depth == 0) {
        char *path = NULL;
        if (asprintf(&path, "%s/gc.lock", st->dir) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        free(path);
        if (fd < 0) {
            rc = -errno;
            goto out;
        }
        while (flock(fd, LOCK_SH) != 0) {
            if (errno != EINTR) {
                rc = -errno;
                close(fd);
                goto out;
            }
        }
        st->ingest_fd = fd;
    }
    st->ingest_depth++;
out:
    pthread_mutex_unlock(&st->ingest_mu);
    return rc;
}

void cs_ingest_end(cs_store *st)
{
    pthread_mutex_lock(&st->ingest_mu);
    if (st->ingest_depth && --st->ingest_depth == 0) {
        close(st->ingest_fd); /* releases the flock */
        st->ingest_fd = -1;
    }
    pthread_mutex_unlock(&st->ingest_mu);
}

/* ---- put ------------------------------------------------------------------------------------- */

/* A prepared put: everything but the write. The compressed segments sit back to back in one
 * arena sized for the worst case; only the pages they touch are ever faulted in. */
struct cs__put_job {
    const cs_id *ids;  /* the caller's, or ids_own */
    cs_id *ids_own;
    uint8_t *status;   /* may be NULL */
    size_t n;
    size_t nnew;       /* chunks to store, in order */
    size_t *newidx;    /* their indexes in chunks[] */
    uint8_t *arena;
    uint8_t **segbuf;  /* encoded segments, pointers into arena */
    size_t *seglen;
    size_t nsegs;
    uint64_t zero, dup, added, dup_late, stored_bytes;
};

static int cmp_idx_by_id(const void *a, const void *b, void *arg)
{
    const cs_id *ids = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = memcmp(ids[x].b, ids[y].b, CS_ID_BYTES);
    return c ? c : (x > y) - (x < y);
}

int cs__seg_store(cs_store *st, MDB_txn *txn, const uint8_t *const *segbufs,
                  const size_t *seglens, size_t nsegs, uint64_t *first_seg)
{
    uint64_t next = 0;
    int rc = cs__meta_get(txn, st, "next_seg", &next);
    if (rc) return rc;
    if (next == 0) next = 1; /* segment 0 is never used: loc 0 means absent */
    *first_seg = next;
    for (size_t s = 0; s < nsegs; s++) {
        size_t key = (size_t)(next + s);
        MDB_val k = {sizeof key, &key}, v = {seglens[s], (void *)segbufs[s]};
        if ((rc = mdb_put(txn, st->segs, &k, &v, MDB_APPEND))) return cs__body_err(rc);
    }
    return cs__meta_set(txn, st, "next_seg", next + nsegs);
}

/* Stores one prepared job inside txn. Runs again from the start when the map had to grow. */
static int put_job_body(cs_store *st, MDB_txn *txn, cs__put_job *job)
{
    job->added = job->dup_late = 0;
    if (job->nnew == 0) return 0;
    if (job->status)
        for (size_t j = 0; j < job->nnew; j++) job->status[job->newidx[j]] = CS_CHUNK_NEW;
    uint64_t first;
    int rc = cs__seg_store(st, txn, (const uint8_t *const *)job->segbuf, job->seglen, job->nsegs,
                           &first);
    if (rc) return rc;
    for (size_t j = 0; j < job->nnew; j++) {
        const cs_id *id = &job->ids[job->newidx[j]];
        cs__idx_val val = {CS__LOC(first + j / CS__SEG_SLOTS, j % CS__SEG_SLOTS), 0};
        MDB_val k = {CS_ID_BYTES, (void *)id->b}, v = {sizeof val, &val};
        /* One descent for the usual case, a new id; on MDB_KEYEXIST v points at the entry. */
        rc = mdb_put(txn, st->idx, &k, &v, MDB_NOOVERWRITE);
        if (rc == MDB_KEYEXIST) {
            cs__idx_val old;
            if (v.mv_size != sizeof old) return CS_ECORRUPT;
            memcpy(&old, v.mv_data, sizeof old);
            if (old.loc != 0) { /* stored by another writer (or an earlier job) since our check */
                job->dup_late++;
                if (job->status) job->status[job->newidx[j]] = CS_CHUNK_DUP;
                continue;
            }
            val.refs = old.refs; /* a manifest named it before it arrived */
            v.mv_size = sizeof val, v.mv_data = &val;
            rc = mdb_put(txn, st->idx, &k, &v, 0);
        }
        if (rc) return cs__body_err(rc);
        job->added++;
    }
    return 0;
}

struct put_group {
    cs__put_job *const *jobs;
    size_t n;
};

static int put_body(cs_store *st, MDB_txn *txn, void *arg)
{
    const struct put_group *g = arg;
    for (size_t i = 0; i < g->n; i++) {
        int rc = put_job_body(st, txn, g->jobs[i]);
        if (rc) return rc;
    }
    return 0;
}

void cs__put_free(cs__put_job *job)
{
    if (!job) return;
    free(job->arena);
    free(job->segbuf);
    free(job->seglen);
    free(job->newidx);
    free(job->ids_own);
    free(job);
}

int cs__put_prepare(cs_store *st, const void *chunks, size_t n, const cs_id *expect,
                    cs_id *ids_out, uint8_t *status, size_t *bad, cs__put_job **out)
{
    if (st->readonly) return -EROFS;
    const uint8_t *data = chunks;
    cs__put_job *job = calloc(1, sizeof *job);
    if (!job) return -ENOMEM;
    job->n = n;
    job->status = status;
    cs_id *ids = ids_out ? ids_out : (job->ids_own = malloc((n ? n : 1) * sizeof *ids));
    job->ids = ids;
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    uint8_t *isnew = calloc(n ? n : 1, 1);
    job->newidx = malloc((n ? n : 1) * sizeof *job->newidx);
    size_t maxsegs = (n + CS__SEG_SLOTS - 1) / CS__SEG_SLOTS;
    job->segbuf = calloc(maxsegs ? maxsegs : 1, sizeof *job->segbuf);
    job->seglen = calloc(maxsegs ? maxsegs : 1, sizeof *job->seglen);
    uint8_t *staging = NULL;
    ZSTD_CCtx *cctx = NULL;
    int rc = -ENOMEM;
    if (!ids || !order || !isnew || !job->newidx || !job->segbuf || !job->seglen) goto out;

    /* 1. Hash, and check what the caller promised. */
    for (size_t i = 0; i < n; i++) {
        cs_chunk_id(data + i * CS_CHUNK_SIZE, &ids[i]);
        if (expect && !cs_id_equal(&ids[i], &expect[i])) {
            if (bad) *bad = i;
            rc = CS_ECORRUPT;
            goto out;
        }
    }

    /* 2. Drop zero chunks, repeats within the batch, and chunks already held. */
    size_t nz = 0;
    for (size_t i = 0; i < n; i++) {
        if (status) status[i] = CS_CHUNK_DUP; /* NEW and ZERO are set below */
        if (cs_id_is_zero(&ids[i])) {
            job->zero++;
            if (status) status[i] = CS_CHUNK_ZERO;
        } else {
            order[nz++] = i;
        }
    }
    qsort_r(order, nz, sizeof *order, cmp_idx_by_id, ids);
    MDB_txn *rtxn;
    if (nz && (rc = cs__txn_begin(st, false, &rtxn))) goto out;
    for (size_t j = 0; j < nz; j++) {
        size_t i = order[j];
        if (j > 0 && cs_id_equal(&ids[i], &ids[order[j - 1]])) {
            job->dup++;
            continue;
        }
        MDB_val k = {CS_ID_BYTES, ids[i].b}, v;
        int r = mdb_get(rtxn, st->idx, &k, &v);
        cs__idx_val val = {0, 0};
        if (r == 0 && v.mv_size == sizeof val) memcpy(&val, v.mv_data, sizeof val);
        else if (r != 0 && r != MDB_NOTFOUND) {
            cs__txn_abort(st, rtxn);
            rc = cs__lmdb_err(r);
            goto out;
        }
        if (val.loc) job->dup++;
        else isnew[i] = 1;
    }
    if (nz) cs__txn_abort(st, rtxn);
    /* Keep the caller's order: it is the order chunks are read back in, and the order that
     * compresses best (neighbouring chunks of one image). */
    for (size_t i = 0; i < n; i++)
        if (isnew[i]) job->newidx[job->nnew++] = i;

    /* 3. Compress, outside any transaction: straight from the caller's buffer when a segment's
     * chunks are adjacent there (the usual case), else gathered into a staging buffer first. */
    size_t nsegs_new = (job->nnew + CS__SEG_SLOTS - 1) / CS__SEG_SLOTS;
    if (job->nnew) {
        job->arena = malloc(nsegs_new * CS__SEG_MAX);
        cctx = cs__cctx_get(st);
        rc = -ENOMEM;
        if (!job->arena || !cctx) goto out;
    }
    size_t used = 0;
    for (size_t j = 0; j < job->nnew; j += CS__SEG_SLOTS) {
        unsigned k = (unsigned)(job->nnew - j < CS__SEG_SLOTS ? job->nnew - j : CS__SEG_SLOTS);
        const uint8_t *src = data + job->newidx[j] * CS_CHUNK_SIZE;
        if (job->newidx[j + k - 1] - job->newidx[j] != k - 1) {
            rc = -ENOMEM;
            if (!staging && !(staging = malloc(CS__SEG_SLOTS * CS_CHUNK_SIZE))) goto out;
            for (unsigned s = 0; s < k; s++)
                memcpy(staging + (size_t)s * CS_CHUNK_SIZE,
                       data + job->newidx[j + s] * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
            src = staging;
        }
        size_t sidx = job->nsegs;
        job->segbuf[sidx] = job->arena + used;
        if ((rc = cs__seg_encode(cctx, src, k, job->segbuf[sidx], &job->seglen[sidx]))) goto out;
        job->nsegs++;
        used += job->seglen[sidx];
        job->stored_bytes += job->seglen[sidx];
    }
    rc = 0;
out:
    if (cctx) cs__cctx_put(st, cctx);
    free(staging);
    free(isnew);
    free(order);
    if (rc) {
        cs__put_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

int cs__put_commit(cs_store *st, cs__put_job *const *jobs, size_t njobs, bool durable)
{
    bool any = false;
    for (size_t i = 0; i < njobs; i++) any = any || jobs[i]->nnew;
    struct put_group g = {jobs, njobs};
    if (!any) return 0;
    int rc = durable ? cs__write(st, put_body, &g) : cs__write_lazy(st, put_body, &g);
    if (rc == 0) cs__arrivals_committed(st);
    return rc;
}

void cs_arrivals_begin(cs_store *st)
{
    pthread_mutex_lock(&st->arr_mu);
    st->arr_fetches++;
    pthread_mutex_unlock(&st->arr_mu);
}

void cs_arrivals_end(cs_store *st)
{
    pthread_mutex_lock(&st->arr_mu);
    if (st->arr_fetches) st->arr_fetches--;
    pthread_cond_broadcast(&st->arr_cv);
    pthread_mutex_unlock(&st->arr_mu);
}

void cs__arrivals_committed(cs_store *st)
{
    pthread_mutex_lock(&st->arr_mu);
    st->arr_commits++;
    if (st->arr_fetches) pthread_cond_broadcast(&st->arr_cv);
    pthread_mutex_unlock(&st->arr_mu);
}

/* A reader met chunk id missing: waits until a commit made while fetches run, then returns 0
 * when the store has id (read again), CS_ENOTFOUND when no fetch runs any more and it is still
 * missing, or -ECANCELED when stop(arg) says so (asked every 100 ms). */
static int arrival_wait(cs_store *st, const cs_id *id, bool (*stop)(void *), void *arg)
{
    for (;;) {
        pthread_mutex_lock(&st->arr_mu);
        uint64_t seen = st->arr_commits;
        unsigned fetches = st->arr_fetches;
        pthread_mutex_unlock(&st->arr_mu);
        uint8_t bit = 0;
        int64_t held = cs_has(st, id, 1, &bit);
        if (held < 0) return (int)held;
        if (held > 0) return 0;
        if (!fetches) return CS_ENOTFOUND;
        /* Wait for the next commit (or the last fetch to end), waking now and then to see
         * whether the caller gives up. */
        pthread_mutex_lock(&st->arr_mu);
        while (st->arr_commits == seen && st->arr_fetches) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&st->arr_cv, &st->arr_mu, &ts);
            if (stop) { /* the caller's callback may take its own locks: not under arr_mu */
                pthread_mutex_unlock(&st->arr_mu);
                if (stop(arg)) return -ECANCELED;
                pthread_mutex_lock(&st->arr_mu);
            }
        }
        pthread_mutex_unlock(&st->arr_mu);
    }
}

/* The first chunk of ids[from..n) the store lacks, n when it holds them all. */
static int64_t first_missing(cs_store *st, const cs_id *ids, size_t from, size_t n)
{
    uint8_t bits[512];
    while (from < n) {
        size_t k = n - from < sizeof bits * 8 ? n - from : sizeof bits * 8;
        int64_t held = cs_has(st, ids + from, k, bits);
        if (held < 0) return held;
        if ((size_t)held < k)
            for (size_t i = 0; i < k; i++)
                if (!(bits[i / 8] & (1u << (i % 8)))) return (int64_t)(from + i);
        from += k;
    }
    return (int64_t)n;
}

int cs_get_arriving(cs_store *st, const cs_id *ids, size_t n, void *out, size_t *bad,
                    bool (*stop)(void *), void *arg)
{
    size_t from = 0; /* without out: ids[0..from) are known held */
    for (;;) {
        size_t b = 0;
        int rc;
        if (out) {
            rc = cs_get(st, ids, n, out, &b);
        } else {
            int64_t m = first_missing(st, ids, from, n);
            if (m < 0) return (int)m;
            rc = (size_t)m < n ? CS_ENOTFOUND : 0;
            b = from = (size_t)m;
        }
        if (rc == CS_ENOTFOUND && (rc = arrival_wait(st, &ids[b], stop, arg)) == 0)
            continue; /* it came: read again */
        if (bad) *bad = b;
        return rc;
    }
}

void cs__put_stats(const cs__put_job *job, cs_put_stats *stats)
{
    stats->chunks += job->n;
    stats->zero += job->zero;
    stats->dup += job->dup + job->dup_late;
    stats->added += job->added;
    stats->stored_bytes += job->stored_bytes;
}

int cs_put(cs_store *st, const void *chunks, size_t n, const cs_id *expect, cs_id *ids_out,
           size_t *bad, cs_put_stats *stats)
{
    return cs__put(st, chunks, n, expect, ids_out, NULL, bad, stats, true);
}

int cs_put_nosync(cs_store *st, const void *chunks, size_t n, const cs_id *expect,
                  cs_id *ids_out, size_t *bad, cs_put_stats *stats)
{
    return cs__put(st, chunks, n, expect, ids_out, NULL, bad, stats, false);
}

int cs_sync(cs_store *st)
{
    return st->readonly ? 0 : cs__sync(st);
}

int cs__put(cs_store *st, const void *chunks, size_t n, const cs_id *expect, cs_id *ids_out,
            uint8_t *status, size_t *bad, cs_put_stats *stats, bool durable)
{
    if (st->readonly) return -EROFS;
    if (n == 0) return 0;
    cs__put_job *job;
    int rc = cs__put_prepare(st, chunks, n, expect, ids_out, status, bad, &job);
    if (rc) return rc;
    rc = cs__put_commit(st, &job, 1, durable);
    if (rc == 0 && stats) cs__put_stats(job, stats);
    cs__put_free(job);
    return rc;
}

/* ---- get / has ------------------------------------------------------------------------------- */

struct get_ref {
    uint64_t loc;
    size_t i;
};

static int cmp_ref(const void *a, const void *b)
{
    const struct get_ref *x = a, *y = b;
    return (x->loc > y->loc) - (x->loc < y->loc);
}

int cs_get(cs_store *st, const cs_id *ids, size_t n, void *out, size_t *bad)
{
    uint8_t *dst = out;
    struct get_ref *refs = malloc((n ? n : 1) * sizeof *refs);
    uint8_t *segbuf = malloc(CS__SEG_SLOTS * CS_CHUNK_SIZE);
    ZSTD_DCtx *dctx = cs__dctx_get(st);
    size_t nref = 0;
    int rc = -ENOMEM;
    if (!refs || !segbuf || !dctx) goto out;

    MDB_txn *txn;
    if ((rc = cs__txn_begin(st, false, &txn))) goto out;
    for (size_t i = 0; i < n; i++) {
        if (cs_id_is_zero(&ids[i])) {
            memset(dst + i * CS_CHUNK_SIZE, 0, CS_CHUNK_SIZE);
            continue;
        }
        MDB_val k = {CS_ID_BYTES, (void *)ids[i].b}, v;
        int r = mdb_get(txn, st->idx, &k, &v);
        cs__idx_val val = {0, 0};
        if (r == 0 && v.mv_size == sizeof val) memcpy(&val, v.mv_data, sizeof val);
        else if (r == 0) r = MDB_CORRUPTED;
        if (r != 0 || val.loc == 0) {
            rc = r && r != MDB_NOTFOUND ? cs__lmdb_err(r) : CS_ENOTFOUND;
            if (bad) *bad = i;
            cs__txn_abort(st, txn);
            goto out;
        }
        refs[nref++] = (struct get_ref){val.loc, i};
    }
    /* One decompression per segment, in segment order. */
    qsort(refs, nref, sizeof *refs, cmp_ref);
    for (size_t j = 0; j < nref;) {
        size_t seg = (size_t)CS__LOC_SEG(refs[j].loc);
        MDB_val k = {sizeof seg, &seg}, v;
        unsigned nslots = 0;
        int r = mdb_get(txn, st->segs, &k, &v);
        rc = r == 0 ? cs__seg_decode(dctx, v.mv_data, v.mv_size, segbuf, &nslots)
                    : (r == MDB_NOTFOUND ? CS_ECORRUPT : cs__lmdb_err(r));
        for (; j < nref && CS__LOC_SEG(refs[j].loc) == seg; j++) {
            unsigned slot = CS__LOC_SLOT(refs[j].loc);
            if (rc == 0 && slot >= nslots) rc = CS_ECORRUPT;
            if (rc) {
                if (bad) *bad = refs[j].i;
                cs__txn_abort(st, txn);
                goto out;
            }
            memcpy(dst + refs[j].i * CS_CHUNK_SIZE, segbuf + (size_t)slot * CS_CHUNK_SIZE,
                   CS_CHUNK_SIZE);
        }
    }
    cs__txn_abort(st, txn);
    /* Never serve bytes that do not match their name. */
    for (size_t j = 0; j < nref; j++) {
        cs_id got;
        size_t i = refs[j].i;
        cs_chunk_id(dst + i * CS_CHUNK_SIZE, &got);
        if (!cs_id_equal(&got, &ids[i])) {
            if (bad) *bad = i;
            rc = CS_ECORRUPT;
            goto out;
        }
    }
    rc = 0;
out:
    if (dctx) cs__dctx_put(st, dctx);
    free(segbuf);
    free(refs);
    return rc;
}

int64_t cs_has(cs_store *st, const cs_id *ids, size_t n, uint8_t *bitmap)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    memset(bitmap, 0, (n + 7) / 8);
    int64_t held = 0;
    for (size_t i = 0; i < n; i++) {
        bool have = cs_id_is_zero(&ids[i]);
        if (!have) {
            MDB_val k = {CS_ID_BYTES, (void *)ids[i].b}, v;
            int r = mdb_get(txn, st->idx, &k, &v);
            if (r && r != MDB_NOTFOUND) {
                cs__txn_abort(st, txn);
                return cs__lmdb_err(r);
            }
            cs__idx_val val = {0, 0};
            if (r == 0 && v.mv_size == sizeof val) memcpy(&val, v.mv_data, sizeof val);
            have = val.loc != 0;
        }
        if (have) {
            bitmap[i / 8] |= (uint8_t)(1u << (i % 8));
            held++;
        }
    }
    cs__txn_abort(st, txn);
    return held;
}

int cs__debug_chunk_file_offset(cs_store *st, const cs_id *id, uint64_t *offset, size_t *len)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_val k = {CS_ID_BYTES, (void *)id->b}, v;
    cs__idx_val val = {0, 0};
    rc = mdb_get(txn, st->idx, &k, &v);
    if (rc == 0) {
        memcpy(&val, v.mv_data, sizeof val);
        size_t seg = (size_t)CS__LOC_SEG(val.loc);
        MDB_val sk = {sizeof seg, &seg};
        rc = mdb_get(txn, st->segs, &sk, &v);
    }
    uint8_t *copy = NULL;
    size_t clen = 0;
    if (rc == 0 && (copy = malloc(v.mv_size))) memcpy(copy, v.mv_data, clen = v.mv_size);
    cs__txn_abort(st, txn);
    if (rc) return cs__lmdb_err(rc);
    if (!copy) return -ENOMEM;
    /* LMDB does not expose its map's base address: find the value's bytes in the file. */
    char *path = NULL;
    rc = CS_ENOTFOUND;
    FILE *f = asprintf(&path, "%s/data.mdb", st->dir) < 0 ? NULL : fopen(path, "rb");
    free(path);
    if (f) {
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        uint8_t *file = size > 0 ? malloc((size_t)size) : NULL;
        rewind(f);
        if (file && fread(file, 1, (size_t)size, f) == (size_t)size) {
            const uint8_t *at = memmem(file, (size_t)size, copy, clen);
            if (at) {
                *offset = (uint64_t)(at - file);
                *len = clen;
                rc = 0;
            }
        }
        free(file);
        fclose(f);
    }
    free(copy);
    return rc;
}
