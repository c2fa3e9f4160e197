/*
 * cs_reader.c — reading an image in order while workers fetch ahead.
 *
 * Design notes: a ring of 2 × threads slots, each one batch of 256 chunks. Workers claim the
 * next batch number, wait until its slot has been consumed (so at most the ring is buffered:
 * back-pressure), fill it with cs_get (LMDB lookup, zstd decompression, BLAKE2b check) and
 * mark it ready. The consumer takes batches strictly in order, so a sequential writer (a pipe,
 * a FIFO into `virsh restore`, a save-file rebuilder) overlaps with the decompression of the
 * batches behind it. An error in batch k is reported when the consumer reaches batch k.
 * While chunks are on their way in (cs_arrivals_begin), a missing chunk makes its worker wait
 * for it rather than fail, so the consumer follows a fetch.
 */
#include "cs_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define READER_BATCH 256u

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY };

struct slot {
    uint64_t batch;
    int state;
    int rc;
    size_t bad; /* position within the image of a failing chunk */
    uint8_t *data;
};

struct cs_reader {
    cs_store *st;
    const cs_image *im;
    uint64_t nbatches, next_claim, next_read;
    unsigned nslots, nthreads;
    struct slot *slots;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    struct slot *held; /* handed to the consumer, freed at its next call */
};

static bool closing(void *arg)
{
    cs_reader *r = arg;
    pthread_mutex_lock(&r->mu);
    bool stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

static void *worker(void *arg)
{
    cs_reader *r = arg;
    cs_id *ids = malloc(READER_BATCH * sizeof *ids);
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->stop || r->next_claim >= r->nbatches) break;
        uint64_t b = r->next_claim++;
        struct slot *s = &r->slots[b % r->nslots];
        /* The slot is b's once every earlier batch of that slot has been consumed: a worker
         * that ran ahead must not take it before a slower one's earlier batch. */
        while (!r->stop && (s->state != SLOT_FREE || b >= r->next_read + r->nslots))
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) break;
        s->state = SLOT_FILLING;
        s->batch = b;
        pthread_mutex_unlock(&r->mu);

        uint64_t first = b * READER_BATCH;
        size_t n = (size_t)(r->im->nchunks - first < READER_BATCH ? r->im->nchunks - first : READER_BATCH);
        size_t bad = 0;
        int rc = ids ? 0 : -ENOMEM;
        if (rc == 0) memcpy(ids, r->im->chunks + first, n * sizeof *ids);
        /* A chunk still on its way (cs_arrivals_begin) is waited for; -ECANCELED means the
         * reader is closing, and the slot is never read. */
        if (rc == 0) rc = cs_get_arriving(r->st, ids, n, s->data, &bad, closing, r);

        pthread_mutex_lock(&r->mu);
        s->rc = rc;
        s->bad = (size_t)first + bad;
        s->state = SLOT_READY;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    free(ids);
    return NULL;
}

void cs_reader_close(cs_reader *r)
{
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (unsigned t = 0; t < r->nthreads; t++) pthread_join(r->threads[t], NULL);
    for (unsigned i = 0; i < r->nslots; i++) free(r->slots[i].data);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->slots);
    free(r->threads);
    free(r);
}

int cs_reader_open(cs_store *st, const cs_image *im, unsigned threads, cs_reader **out)
{
    if (threads == 0) threads = 2;
    if (threads > 16) threads = 16;
    cs_reader *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    r->st = st;
    r->im = im;
    r->nbatches = (im->nchunks + READER_BATCH - 1) / READER_BATCH;
    r->nslots = 2 * threads;
    r->slots = calloc(r->nslots, sizeof *r->slots);
    r->threads = calloc(threads, sizeof *r->threads);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    int rc = r->slots && r->threads ? 0 : -ENOMEM;
    for (unsigned i = 0; i < r->nslots && rc == 0; i++)
        if (!(r->slots[i].data = malloc((size_t)READER_BATCH * CS_CHUNK_SIZE))) rc = -ENOMEM;
    for (; rc == 0 && r->nthreads < threads; r->nthreads++)
        if (pthread_create(&r->threads[r->nthreads], NULL, worker, r) != 0) rc = -EAGAIN;
    if (rc) {
        cs_reader_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

int cs_reader_next(cs_reader *r, uint64_t *first, size_t *n, const uint8_t **data, uint64_t *bad)
{
    pthread_mutex_lock(&r->mu);
    if (r->held) {
        r->held->state = SLOT_FREE;
        r->held = NULL;
        pthread_cond_broadcast(&r->cv);
    }
    if (r->next_read >= r->nbatches) {
        pthread_mutex_unlock(&r->mu);
        *n = 0;
        *data = NULL;
        return 0;
    }
    uint64_t b = r->next_read;
    struct slot *s = &r->slots[b % r->nslots];
    while (!(s->state == SLOT_READY && s->batch == b)) pthread_cond_wait(&r->cv, &r->mu);
    int rc = s->rc;
    if (rc) {
        if (bad) *bad = s->bad;
    } else {
        r->next_read++;
        r->held = s;
        pthread_cond_broadcast(&r->cv); /* next_read moved: a batch may now take its slot */
        *first = b * READER_BATCH;
        *n = (size_t)(r->im->nchunks - *first < READER_BATCH ? r->im->nchunks - *first : READER_BATCH);
        *data = s->data;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}
