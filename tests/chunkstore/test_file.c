/* Importing files as images and writing them back. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_file(const char *path, uint64_t size)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK_OK(ftruncate(fd, (off_t)size));
    return fd;
}

static void write_at(int fd, uint64_t off, size_t len, uint64_t seed)
{
    uint8_t *b = malloc(len);
    tl_fill_random(b, len, seed);
    CHECK_EQ(pwrite(fd, b, len, (off_t)off), (ssize_t)len);
    free(b);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat sb;
    CHECK_OK(fstat(fd, &sb));
    uint8_t *b = malloc((size_t)sb.st_size + 1);
    CHECK_EQ(pread(fd, b, (size_t)sb.st_size, 0), sb.st_size);
    close(fd);
    *len = (size_t)sb.st_size;
    return b;
}

/* A 64 MiB sparse file with data in three places, one of them a short tail. */
static void sparse_file_round_trips_and_its_holes_are_never_stored(void)
{
    char *dir = tl_tmpdir(), *in, *out, *sdir;
    if (asprintf(&in, "%s/in", dir) < 0 || asprintf(&out, "%s/out", dir) < 0 ||
        asprintf(&sdir, "%s/store", dir) < 0)
        abort();
    uint64_t size = (64ull << 20) + 1000; /* not a multiple of 4 KiB */
    int fd = make_file(in, size);
    write_at(fd, 0, 10000, 1);
    write_at(fd, 33ull << 20, 1 << 20, 2);
    write_at(fd, size - 500, 500, 3);
    cs_store *st;
    CHECK_OK(cs_open(sdir, CS_OPEN_CREATE, &st));
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", size);
    cs_put_stats ps = {0};
    CHECK_OK(cs_image_import_fd(st, fd, im, 2, NULL, NULL, &ps, NULL));
    close(fd);
    CHECK_EQ(ps.chunks, im->nchunks);
    CHECK_EQ(ps.added, 3 + 256 + 1);          /* 10000 bytes = 3 chunks, 1 MiB, the tail */
    CHECK_EQ(ps.zero, im->nchunks - ps.added);
    CHECK(cs_id_is_zero(&im->chunks[100]));
    fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK_OK(cs_image_export_fd(st, im, fd, NULL, NULL, NULL));
    close(fd);
    size_t la, lb;
    uint8_t *a = slurp(in, &la), *b = slurp(out, &lb);
    CHECK_EQ(la, lb);
    CHECK_MEM(a, b, la);
    struct stat sb;
    CHECK_OK(stat(out, &sb));
    CHECK((uint64_t)sb.st_blocks * 512 < (4u << 20)); /* written sparse */
    free(a), free(b);
    cs_manifest_free(m);
    cs_close(st);
    tl_rmtree(dir);
    free(in), free(out), free(sdir), free(dir);
}

static void import_reports_what_happened_to_each_chunk(void)
{
    char *dir = tl_tmpdir(), *in;
    if (asprintf(&in, "%s/in", dir) < 0) abort();
    int fd = make_file(in, 8 * CS_CHUNK_SIZE);
    write_at(fd, 0, 2 * CS_CHUNK_SIZE, 1);             /* chunks 0, 1: new */
    uint8_t *c0 = malloc(CS_CHUNK_SIZE);
    CHECK_EQ(pread(fd, c0, CS_CHUNK_SIZE, 0), CS_CHUNK_SIZE);
    CHECK_EQ(pwrite(fd, c0, CS_CHUNK_SIZE, 5 * CS_CHUNK_SIZE), CS_CHUNK_SIZE); /* 5 repeats 0 */
    cs_store *st;
    CHECK_OK(cs_open(dir, CS_OPEN_CREATE, &st));
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", 8 * CS_CHUNK_SIZE);
    uint8_t status[8];
    CHECK_OK(cs_image_import_fd(st, fd, im, 1, NULL, NULL, NULL, status));
    uint8_t want[8] = {CS_CHUNK_NEW, CS_CHUNK_NEW, 0, 0, 0, CS_CHUNK_DUP, 0, 0};
    CHECK_MEM(status, want, 8);
    CHECK_OK(cs_image_import_fd(st, fd, im, 1, NULL, NULL, NULL, status)); /* again: all held */
    uint8_t again[8] = {CS_CHUNK_DUP, CS_CHUNK_DUP, 0, 0, 0, CS_CHUNK_DUP, 0, 0};
    CHECK_MEM(status, again, 8);
    close(fd);
    free(c0);
    cs_manifest_free(m);
    cs_close(st);
    tl_rmtree(dir);
    free(in), free(dir);
}

/* Many workers, a consumer that sometimes dawdles: batches still arrive whole and in order. */
static void reader_delivers_batches_in_order_whatever_the_workers_do(void)
{
    char *dir = tl_tmpdir();
    cs_store *st;
    CHECK_OK(cs_open(dir, CS_OPEN_CREATE, &st));
    size_t n = 256 * 40 + 17;
    uint8_t *data = malloc(n * CS_CHUNK_SIZE);
    for (size_t i = 0; i < n; i++) {
        memset(data + i * CS_CHUNK_SIZE, (int)(i % 251), CS_CHUNK_SIZE);
        memcpy(data + i * CS_CHUNK_SIZE, &i, sizeof i);
    }
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", n * CS_CHUNK_SIZE);
    CHECK_OK(cs_put(st, data, n, NULL, im->chunks, NULL, NULL));
    for (unsigned threads = 1; threads <= 8; threads *= 2) {
        cs_reader *r;
        CHECK_OK(cs_reader_open(st, im, threads, &r));
        uint64_t first, expect = 0;
        size_t k;
        const uint8_t *got;
        while (1) {
            CHECK_OK(cs_reader_next(r, &first, &k, &got, NULL));
            if (k == 0) break;
            CHECK_EQ(first, expect);
            CHECK_MEM(got, data + first * CS_CHUNK_SIZE, k * CS_CHUNK_SIZE);
            expect += k;
            if (first % 7 == 0) usleep(2000); /* let the workers run ahead */
        }
        CHECK_EQ(expect, n);
        cs_reader_close(r);
    }
    free(data);
    cs_manifest_free(m);
    cs_close(st);
    tl_rmtree(dir);
    free(dir);
}

static void export_names_the_position_of_a_missing_chunk(void)
{
    char *dir = tl_tmpdir();
    cs_store *st;
    CHECK_OK(cs_open(dir, CS_OPEN_CREATE, &st));
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", 500 * CS_CHUNK_SIZE);
    tl_fill_random(im->chunks[300].b, CS_ID_BYTES, 42); /* an id the store does not hold, in */
    tl_fill_random(im->chunks[3].b, CS_ID_BYTES, 43); /* the second batch and the first */
    int fd = open("/dev/null", O_WRONLY);
    uint64_t bad = 99;
    CHECK_EQ(cs_image_export_fd(st, im, fd, NULL, NULL, &bad), CS_ENOTFOUND);
    CHECK_EQ(bad, 3);
    close(fd);
    cs_manifest_free(m);
    cs_close(st);
    tl_rmtree(dir);
    free(dir);
}

struct feeder {
    cs_store *st;
    const uint8_t *data;
    const cs_id *ids;
    size_t n;
    size_t upto; /* the feeder stores chunks [0, upto) and then ends the arrivals */
};

/* Stores the chunks in batches of 32, last first, with pauses, as a fetch would. */
static void *feed(void *arg)
{
    struct feeder *f = arg;
    for (size_t end = f->upto; end > 0;) {
        size_t k = end < 32 ? end : 32;
        usleep(1000);
        CHECK_OK(cs_put_nosync(f->st, f->data + (end - k) * CS_CHUNK_SIZE, k, f->ids + end - k,
                               NULL, NULL, NULL));
        end -= k;
    }
    cs_arrivals_end(f->st);
    return NULL;
}

/* While chunks are on their way in, a reader waits for the missing ones and delivers every byte
 * in order; when the fetch ends without a chunk, the reader names that chunk. */
static void reader_follows_chunks_as_they_arrive(void)
{
    char *dir = tl_tmpdir();
    cs_store *st;
    CHECK_OK(cs_open(dir, CS_OPEN_CREATE, &st));
    size_t n = 256 * 4 + 5;
    uint8_t *data = malloc(n * CS_CHUNK_SIZE);
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", n * CS_CHUNK_SIZE);
    for (int whole = 1; whole >= 0; whole--) {
        tl_fill_random(data, n * CS_CHUNK_SIZE, 7 + (uint64_t)whole); /* none held yet */
        for (size_t i = 0; i < n; i++) cs_chunk_id(data + i * CS_CHUNK_SIZE, &im->chunks[i]);
        struct feeder f = {st, data, im->chunks, n, whole ? n : n - 1};
        cs_arrivals_begin(st);
        pthread_t t;
        CHECK_OK(pthread_create(&t, NULL, feed, &f));
        cs_reader *r;
        CHECK_OK(cs_reader_open(st, im, 2, &r));
        uint64_t first, expect = 0, bad = 0;
        size_t k;
        const uint8_t *got;
        int rc;
        while ((rc = cs_reader_next(r, &first, &k, &got, &bad)) == 0 && k) {
            CHECK_EQ(first, expect);
            CHECK_MEM(got, data + first * CS_CHUNK_SIZE, k * CS_CHUNK_SIZE);
            expect += k;
        }
        cs_reader_close(r);
        CHECK_OK(pthread_join(t, NULL));
        if (whole) {
            CHECK_OK(rc);
            CHECK_EQ(expect, n);
        } else {
            CHECK_EQ(rc, CS_ENOTFOUND); /* the last chunk never came: it was chunk n - 1 */
            CHECK_EQ(bad, n - 1);
        }
    }
    free(data);
    cs_manifest_free(m);
    cs_close(st);
    tl_rmtree(dir);
    free(dir);
}

static bool stop_now(void *arg)
{
    return __atomic_load_n((int *)arg, __ATOMIC_ACQUIRE) != 0;
}

struct getter {
    cs_store *st;
    const cs_id *ids;
    size_t n;
    int *stop;
    int rc;
    size_t bad;
};

static void *get_waiting(void *arg)
{
    struct getter *g = arg;
    g->rc = cs_get_arriving(g->st, g->ids, g->n, NULL, &g->bad, stop_now, g->stop);
    return NULL;
}

/* cs_get_arriving reads chunks that come while it waits, or only waits for them all (out
 * NULL); it names the chunk a fetch ended without, and gives up when asked to. */
static void get_arriving_waits_names_and_gives_up(void)
{
    char *dir = tl_tmpdir();
    cs_store *st;
    CHECK_OK(cs_open(dir, CS_OPEN_CREATE, &st));
    size_t n = 200;
    uint8_t *data = malloc(n * CS_CHUNK_SIZE), *got = malloc(n * CS_CHUNK_SIZE);
    cs_id *ids = malloc(n * sizeof *ids);
    for (int round = 0; round < 3; round++) {
        tl_fill_random(data, n * CS_CHUNK_SIZE, 100 + (uint64_t)round);
        for (size_t i = 0; i < n; i++) cs_chunk_id(data + i * CS_CHUNK_SIZE, &ids[i]);
        ids[5] = cs_zero_id, memset(data + 5 * CS_CHUNK_SIZE, 0, CS_CHUNK_SIZE);
        struct feeder f = {st, data, ids, n, round == 2 ? n : n - 1};
        cs_arrivals_begin(st);
        pthread_t t;
        CHECK_OK(pthread_create(&t, NULL, feed, &f));
        size_t bad = 0;
        if (round == 0) { /* read: the last chunk never comes, and is named */
            CHECK_EQ(cs_get_arriving(st, ids, n, got, &bad, NULL, NULL), CS_ENOTFOUND);
            CHECK_EQ(bad, n - 1);
            CHECK_OK(pthread_join(t, NULL));
        } else if (round == 1) { /* wait only, and the same */
            CHECK_EQ(cs_get_arriving(st, ids, n, NULL, &bad, NULL, NULL), CS_ENOTFOUND);
            CHECK_EQ(bad, n - 1);
            CHECK_OK(pthread_join(t, NULL));
        } else { /* all come: the bytes are right, and waiting alone ends too */
            CHECK_OK(cs_get_arriving(st, ids, n, got, &bad, NULL, NULL));
            CHECK_MEM(got, data, n * CS_CHUNK_SIZE);
            CHECK_OK(cs_get_arriving(st, ids, n, NULL, &bad, NULL, NULL));
            CHECK_OK(pthread_join(t, NULL));
        }
    }
    /* A chunk that never comes while a fetch runs: the waiter gives up when told to. */
    tl_fill_random(data, CS_CHUNK_SIZE, 999);
    cs_chunk_id(data, &ids[0]);
    cs_arrivals_begin(st);
    int stop = 0;
    struct getter g = {st, ids, 1, &stop, 1, 7};
    pthread_t t;
    CHECK_OK(pthread_create(&t, NULL, get_waiting, &g));
    usleep(150 * 1000);
    CHECK_EQ(g.rc, 1); /* still waiting */
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    CHECK_OK(pthread_join(t, NULL));
    CHECK_EQ(g.rc, -ECANCELED);
    CHECK_EQ(g.bad, 0);
    cs_arrivals_end(st);
    free(data), free(got), free(ids);
    cs_close(st);
    tl_rmtree(dir);
    free(dir);
}

TL_MAIN(TL_CASE(sparse_file_round_trips_and_its_holes_are_never_stored),
        TL_CASE(import_reports_what_happened_to_each_chunk),
        TL_CASE(reader_delivers_batches_in_order_whatever_the_workers_do),
        TL_CASE(export_names_the_position_of_a_missing_chunk),
        TL_CASE(reader_follows_chunks_as_they_arrive),
        TL_CASE(get_arriving_waits_names_and_gives_up))
