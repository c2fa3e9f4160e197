/*
 * cs_file.c — importing a file into the store as an image, and writing an image back.
 *
 * Design notes: import maps the file's data extents first (SEEK_DATA/SEEK_HOLE, on the calling
 * thread, since lseek moves the shared offset). Then workers claim 4 MiB batches with an atomic
 * counter, pread only the chunks that touch data (one pread per run of them), and prepare them
 * (hash, duplicate check, compression: cs__put_prepare), while the calling thread commits the
 * prepared batches in the order they were queued, each in its own transaction. So a commit's
 * write-back and flush overlap the next batches' CPU work even with one worker. The commits
 * are lazy (cs__write_lazy: atomic, one flush each instead of two) and one cs__sync at the end
 * makes the whole import durable before it returns. The queue is bounded (back-pressure on the
 * workers). Only the committing thread writes im->chunks, status, stats and progress, after
 * each commit. Holes never reach the store: this is how blocks a guest discarded (TRIM punches
 * holes in a raw image) cost nothing.
 */
#define _GNU_SOURCE
#include "cs_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BATCH  1024u /* chunks per prepared job: 4 MiB */
#define QUEUED 4u    /* prepared batches waiting per worker, at most */

struct extent {
    uint64_t start, end; /* bytes, [start, end) */
};

/* One batch of chunk positions [first, last): the n that touch data are at pos[]. */
struct batch {
    struct batch *next;
    uint64_t first, last;
    size_t n;
    uint64_t *pos;
    cs_id *ids;
    uint8_t *status;
    cs__put_job *job; /* NULL when n == 0 */
};

struct import {
    cs_store *st;
    int fd;
    cs_image *im;
    struct extent *ext;
    size_t n_ext;
    uint64_t nbatches;
    atomic_uint_fast64_t batch;
    atomic_int rc;
    pthread_mutex_t mu; /* guards the queue and running */
    pthread_cond_t cv;
    struct batch *head, **tail;
    size_t queued, max_queued;
    unsigned running; /* workers not yet finished */
};

/* The data extents of [0, length), merged; a file system without SEEK_DATA reports one. */
static int map_extents(int fd, uint64_t length, struct extent **out, size_t *n)
{
    size_t cap = 16, k = 0;
    struct extent *e = malloc(cap * sizeof *e);
    if (!e) return -ENOMEM;
    uint64_t pos = 0;
    while (pos < length) {
        off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
        if (d < 0) {
            if (errno == ENXIO) break; /* only a hole remains */
            if (errno == EINVAL || errno == ESPIPE) {
                d = (off_t)pos; /* no hole support: all data */
            } else {
                free(e);
                return -errno;
            }
        }
        if ((uint64_t)d >= length) break;
        off_t h = lseek(fd, d, SEEK_HOLE);
        uint64_t end = h < 0 ? length : (uint64_t)h;
        if (end > length) end = length;
        if (k == cap) {
            struct extent *p = realloc(e, (cap *= 2) * sizeof *e);
            if (!p) {
                free(e);
                return -ENOMEM;
            }
            e = p;
        }
        e[k++] = (struct extent){(uint64_t)d, end};
        pos = end;
        if (h < 0) break;
    }
    *out = e, *n = k;
    return 0;
}

static bool touches_data(const struct import *im, uint64_t from, uint64_t to)
{
    size_t lo = 0, hi = im->n_ext;
    while (lo < hi) { /* first extent ending after from */
        size_t mid = (lo + hi) / 2;
        if (im->ext[mid].end <= from) lo = mid + 1;
        else hi = mid;
    }
    return lo < im->n_ext && im->ext[lo].start < to;
}

static int read_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    while (len) {
        ssize_t r = pread(fd, buf, len, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -EIO; /* the file shrank while being read */
        buf += r, len -= (size_t)r, off += (uint64_t)r;
    }
    return 0;
}

static void batch_free(struct batch *b)
{
    if (!b) return;
    cs__put_free(b->job);
    free(b->pos), free(b->ids), free(b->status);
    free(b);
}

static void fail(struct import *j, int rc)
{
    int expected = 0;
    atomic_compare_exchange_strong(&j->rc, &expected, rc);
    pthread_mutex_lock(&j->mu);
    pthread_cond_broadcast(&j->cv); /* wakes workers waiting for room in the queue */
    pthread_mutex_unlock(&j->mu);
}

/* Reads and prepares one batch; NULL with *rc set on failure. */
static struct batch *prepare_batch(struct import *j, uint8_t *buf, uint64_t b, int *rc)
{
    struct batch *bt = calloc(1, sizeof *bt);
    if (!bt || !(bt->pos = malloc(BATCH * sizeof *bt->pos)) ||
        !(bt->ids = malloc(BATCH * sizeof *bt->ids)) || !(bt->status = malloc(BATCH))) {
        batch_free(bt);
        *rc = -ENOMEM;
        return NULL;
    }
    uint64_t length = j->im->length;
    bt->first = b * BATCH;
    bt->last = bt->first + BATCH < j->im->nchunks ? bt->first + BATCH : j->im->nchunks;
    *rc = 0;
    /* Runs of adjacent chunks that touch data are read with one pread each (holes inside a
     * run read as zeros); chunks wholly in a hole are skipped: zero id, already there. */
    for (uint64_t c = bt->first; c < bt->last && *rc == 0;) {
        uint64_t c2 = c;
        while (c2 < bt->last) {
            uint64_t off = c2 * CS_CHUNK_SIZE;
            if (!touches_data(j, off, off + CS_CHUNK_SIZE < length ? off + CS_CHUNK_SIZE : length))
                break;
            bt->pos[bt->n + (c2 - c)] = c2;
            c2++;
        }
        if (c2 == c) {
            c++;
            continue;
        }
        uint64_t off = c * CS_CHUNK_SIZE;
        uint64_t end = c2 * CS_CHUNK_SIZE < length ? c2 * CS_CHUNK_SIZE : length;
        uint8_t *dst = buf + bt->n * CS_CHUNK_SIZE;
        if (end - off < (c2 - c) * CS_CHUNK_SIZE) /* a short tail: zero-padded */
            memset(dst + (c2 - c - 1) * CS_CHUNK_SIZE, 0, CS_CHUNK_SIZE);
        *rc = read_full(j->fd, dst, (size_t)(end - off), off);
        bt->n += (size_t)(c2 - c);
        c = c2;
    }
    if (*rc == 0 && bt->n)
        *rc = cs__put_prepare(j->st, buf, bt->n, NULL, bt->ids, bt->status, NULL, &bt->job);
    if (*rc) {
        batch_free(bt);
        return NULL;
    }
    return bt;
}

static void *import_worker(void *arg)
{
    struct import *j = arg;
    uint8_t *buf = malloc((size_t)BATCH * CS_CHUNK_SIZE);
    if (!buf) fail(j, -ENOMEM);
    while (atomic_load(&j->rc) == 0) {
        uint64_t b = atomic_fetch_add(&j->batch, 1);
        if (b >= j->nbatches) break;
        int rc;
        struct batch *bt = prepare_batch(j, buf, b, &rc);
        if (!bt) {
            fail(j, rc);
            break;
        }
        pthread_mutex_lock(&j->mu);
        while (j->queued >= j->max_queued && atomic_load(&j->rc) == 0)
            pthread_cond_wait(&j->cv, &j->mu);
        *j->tail = bt, j->tail = &bt->next;
        j->queued++;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
    }
    free(buf);
    pthread_mutex_lock(&j->mu);
    j->running--;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* The calling thread's part: commits what the workers prepared, one batch per transaction,
 * until they are done. One batch, not all that are queued: a transaction rewrites (copy on
 * write) every index page it touches, and the pages freed by the last transactions cannot be
 * reused yet, so the store file's high-water mark grows with the keys per transaction. Measured
 * on 1 GiB (docs/PERFORMANCE.md): grouping what was queued took the file from 1.08 to 1.10-1.11
 * times its compressed payload, for no measurable gain in speed. */
static void commit_loop(struct import *j, cs_put_stats *stats, uint8_t *status,
                        cs_progress_fn progress, void *arg)
{
    uint64_t done = 0, length = j->im->length;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        while (!j->head && j->running) pthread_cond_wait(&j->cv, &j->mu);
        struct batch *b = j->head;
        if (b) {
            j->head = b->next;
            if (!j->head) j->tail = &j->head;
            j->queued--;
            pthread_cond_broadcast(&j->cv); /* room in the queue again */
        }
        pthread_mutex_unlock(&j->mu);
        if (!b) break;
        if (atomic_load(&j->rc) == 0 && b->job) {
            int rc = cs__put_commit(j->st, &b->job, 1, false);
            if (rc) fail(j, rc);
        }
        if (atomic_load(&j->rc) == 0) {
            for (size_t i = 0; i < b->n; i++) j->im->chunks[b->pos[i]] = b->ids[i];
            if (status)
                for (size_t i = 0; i < b->n; i++) status[b->pos[i]] = b->status[i];
            uint64_t holes = (b->last - b->first) - b->n;
            if (b->job) cs__put_stats(b->job, stats);
            stats->chunks += holes;
            stats->zero += holes;
            done += (b->last - b->first) * CS_CHUNK_SIZE;
            if (progress) progress(done < length ? done : length, length, arg);
        }
        batch_free(b);
    }
}

int cs_image_import_fd(cs_store *st, int fd, cs_image *im, unsigned threads,
                       cs_progress_fn progress, void *arg, cs_put_stats *stats, uint8_t *status)
{
    if (st->readonly) return -EROFS;
    if (threads == 0) threads = 2;
    if (threads > 16) threads = 16;
    struct import j = {.st = st, .fd = fd, .im = im, .max_queued = QUEUED * threads};
    j.tail = &j.head;
    int rc = map_extents(fd, im->length, &j.ext, &j.n_ext);
    if (rc) return rc;
    memset(im->chunks, 0, im->nchunks * sizeof *im->chunks);
    if (status) memset(status, CS_CHUNK_ZERO, im->nchunks); /* holes stay zero */
    j.nbatches = (im->nchunks + BATCH - 1) / BATCH;
    atomic_init(&j.batch, 0);
    atomic_init(&j.rc, 0);
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    pthread_t tid[16];
    unsigned started = 0;
    j.running = threads;
    for (; started < threads && started < j.nbatches; started++)
        if ((rc = pthread_create(&tid[started], NULL, import_worker, &j)) != 0) break;
    pthread_mutex_lock(&j.mu);
    j.running -= threads - started; /* those never started */
    pthread_mutex_unlock(&j.mu);
    if (started == 0 && j.nbatches) fail(&j, -rc);
    cs_put_stats ps = {0};
    commit_loop(&j, &ps, status, progress, arg);
    if (atomic_load(&j.rc) == 0) {
        /* The batches were committed lazily: this one flush makes them all durable. */
        int src = cs__sync(st);
        if (src) fail(&j, src);
    }
    for (unsigned t = 0; t < started; t++) pthread_join(tid[t], NULL);
    pthread_cond_destroy(&j.cv);
    pthread_mutex_destroy(&j.mu);
    free(j.ext);
    rc = atomic_load(&j.rc);
    if (rc == 0 && stats) {
        stats->chunks += ps.chunks;
        stats->zero += ps.zero;
        stats->dup += ps.dup;
        stats->added += ps.added;
        stats->stored_bytes += ps.stored_bytes;
    }
    return rc;
}

/* ---- export ---------------------------------------------------------------------------------- */

static int write_full(int fd, const uint8_t *buf, size_t len, uint64_t off, bool seekable)
{
    while (len) {
        ssize_t w = seekable ? pwrite(fd, buf, len, (off_t)off) : write(fd, buf, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno == ENOSPC || errno == EFBIG || errno == EDQUOT ? CS_EFULL : -errno;
        buf += w, len -= (size_t)w, off += (uint64_t)w;
    }
    return 0;
}

int cs_image_export_fd(cs_store *st, const cs_image *im, int fd, cs_progress_fn progress,
                       void *arg, uint64_t *bad)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0) return -errno;
    bool sparse = S_ISREG(sb.st_mode) && lseek(fd, 0, SEEK_CUR) == 0;
    if (sparse && ftruncate(fd, 0) != 0) return -errno;
    if (sparse && ftruncate(fd, (off_t)im->length) != 0)
        return errno == EFBIG || errno == ENOSPC ? CS_EFULL : -errno;
    cs_reader *r = NULL;
    int rc = cs_reader_open(st, im, 0, &r);
    uint64_t first;
    size_t n;
    const uint8_t *data;
    while (rc == 0 && (rc = cs_reader_next(r, &first, &n, &data, bad)) == 0 && n) {
        /* Runs of chunks to write: all of them to a pipe, the non-zero ones to a file. */
        for (size_t i = 0; i < n && rc == 0;) {
            if (sparse && cs_id_is_zero(&im->chunks[first + i])) {
                i++;
                continue;
            }
            size_t k = i + 1;
            while (k < n && !(sparse && cs_id_is_zero(&im->chunks[first + k]))) k++;
            uint64_t off = (first + i) * CS_CHUNK_SIZE;
            uint64_t end = (first + k) * CS_CHUNK_SIZE;
            if (end > im->length) end = im->length;
            rc = write_full(fd, data + i * CS_CHUNK_SIZE, (size_t)(end - off), off, sparse);
            i = k;
        }
        uint64_t done = (first + n) * CS_CHUNK_SIZE;
        if (rc == 0 && progress) progress(done < im->length ? done : im->length, im->length, arg);
    }
    cs_reader_close(r);
    return rc;
}
