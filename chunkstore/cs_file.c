/*
 * cs_file.c — importing a file into the store as an image, and writing an image back.
 *
 * Design notes: import maps the file's data extents first (SEEK_DATA/SEEK_HOLE, on the calling
 * thread, since lseek moves the shared offset), then workers claim 4 MiB batches with an atomic
 * counter, pread only the chunks that touch data, and cs_put them; each worker writes ids into
 * its own positions of im->chunks, so no lock guards the result. Holes never reach the store:
 * this is how blocks a guest discarded (TRIM punches holes in a raw image) cost nothing.
 */
#define _GNU_SOURCE
#include "cs_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BATCH 1024u /* chunks per put: 4 MiB */

struct extent {
    uint64_t start, end; /* bytes, [start, end) */
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
    pthread_mutex_t mu; /* guards the fields below and progress calls */
    uint64_t done;
    cs_put_stats stats;
    uint8_t *status; /* may be NULL */
    cs_progress_fn progress;
    void *arg;
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

static void *import_worker(void *arg)
{
    struct import *j = arg;
    uint8_t *buf = malloc((size_t)BATCH * CS_CHUNK_SIZE);
    uint64_t *pos = malloc(BATCH * sizeof *pos);
    cs_id *ids = malloc(BATCH * sizeof *ids);
    uint8_t *st = malloc(BATCH);
    if (!buf || !pos || !ids || !st) atomic_store(&j->rc, -ENOMEM);
    uint64_t length = j->im->length;
    while (atomic_load(&j->rc) == 0) {
        uint64_t b = atomic_fetch_add(&j->batch, 1);
        if (b >= j->nbatches) break;
        uint64_t first = b * BATCH, last = first + BATCH;
        if (last > j->im->nchunks) last = j->im->nchunks;
        size_t n = 0;
        int rc = 0;
        for (uint64_t c = first; c < last && rc == 0; c++) {
            uint64_t off = c * CS_CHUNK_SIZE;
            uint64_t end = off + CS_CHUNK_SIZE < length ? off + CS_CHUNK_SIZE : length;
            if (!touches_data(j, off, end)) continue; /* a hole: zero id, already there */
            uint8_t *dst = buf + n * CS_CHUNK_SIZE;
            if (end - off < CS_CHUNK_SIZE) memset(dst, 0, CS_CHUNK_SIZE);
            rc = read_full(j->fd, dst, (size_t)(end - off), off);
            pos[n++] = c;
        }
        cs_put_stats ps = {0};
        if (rc == 0 && n) rc = cs__put(j->st, buf, n, NULL, ids, st, NULL, &ps);
        if (rc) {
            int expected = 0;
            atomic_compare_exchange_strong(&j->rc, &expected, rc);
            break;
        }
        for (size_t i = 0; i < n; i++) j->im->chunks[pos[i]] = ids[i];
        if (j->status)
            for (size_t i = 0; i < n; i++) j->status[pos[i]] = st[i];
        pthread_mutex_lock(&j->mu);
        uint64_t holes = (last - first) - n;
        j->stats.chunks += ps.chunks + holes;
        j->stats.zero += ps.zero + holes;
        j->stats.dup += ps.dup;
        j->stats.added += ps.added;
        j->stats.stored_bytes += ps.stored_bytes;
        j->done += (last - first) * CS_CHUNK_SIZE;
        if (j->done > length) j->done = length;
        if (j->progress) j->progress(j->done, length, j->arg);
        pthread_mutex_unlock(&j->mu);
    }
    free(buf), free(pos), free(ids), free(st);
    return NULL;
}

int cs_image_import_fd(cs_store *st, int fd, cs_image *im, unsigned threads,
                       cs_progress_fn progress, void *arg, cs_put_stats *stats, uint8_t *status)
{
    if (threads == 0) threads = 2;
    if (threads > 16) threads = 16;
    struct import j = {.st = st, .fd = fd, .im = im, .status = status, .progress = progress,
                       .arg = arg};
    int rc = map_extents(fd, im->length, &j.ext, &j.n_ext);
    if (rc) return rc;
    memset(im->chunks, 0, im->nchunks * sizeof *im->chunks);
    if (status) memset(status, CS_CHUNK_ZERO, im->nchunks); /* holes stay zero */
    j.nbatches = (im->nchunks + BATCH - 1) / BATCH;
    atomic_init(&j.batch, 0);
    atomic_init(&j.rc, 0);
    pthread_mutex_init(&j.mu, NULL);
    pthread_t tid[16];
    unsigned started = 0;
    for (; started < threads && started < j.nbatches; started++)
        if (pthread_create(&tid[started], NULL, import_worker, &j) != 0) break;
    if (started == 0 && j.nbatches) import_worker(&j);
    for (unsigned t = 0; t < started; t++) pthread_join(tid[t], NULL);
    pthread_mutex_destroy(&j.mu);
    free(j.ext);
    rc = atomic_load(&j.rc);
    if (rc == 0 && stats) {
        stats->chunks += j.stats.chunks;
        stats->zero += j.stats.zero;
        stats->dup += j.stats.dup;
        stats->added += j.stats.added;
        stats->stored_bytes += j.stats.stored_bytes;
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
