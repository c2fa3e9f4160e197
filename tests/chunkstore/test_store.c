/* Chunk store behaviour: put, get, has, integrity, growth. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "cs_internal.h"
#include "testlib.h"

#include <fcntl.h>
#include <unistd.h>

static cs_store *open_new(char **dir)
{
    *dir = tl_tmpdir();
    char *path;
    if (asprintf(&path, "%s/store", *dir) < 0) abort();
    cs_store *st;
    CHECK_OK(cs_open(path, CS_OPEN_CREATE, &st));
    free(path);
    return st;
}

/* n chunks of compressible, distinct content. */
static uint8_t *make_chunks(size_t n, uint64_t seed)
{
    uint8_t *b = malloc(n * CS_CHUNK_SIZE);
    for (size_t i = 0; i < n; i++) {
        uint8_t *c = b + i * CS_CHUNK_SIZE;
        memset(c, 'a' + (int)(i % 26), CS_CHUNK_SIZE);
        tl_fill_random(c, 64, seed * 1000003 + i); /* distinct head */
    }
    return b;
}

static void put_then_get_returns_same_bytes(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    size_t n = 200;
    uint8_t *data = make_chunks(n, 1);
    cs_id *ids = calloc(n, sizeof *ids);
    cs_put_stats ps = {0};
    CHECK_OK(cs_put(st, data, n, NULL, ids, NULL, &ps));
    CHECK_EQ(ps.added, n);
    CHECK(ps.stored_bytes < n * CS_CHUNK_SIZE / 4);
    uint8_t *out = malloc(n * CS_CHUNK_SIZE);
    CHECK_OK(cs_get(st, ids, n, out, NULL));
    CHECK_MEM(out, data, n * CS_CHUNK_SIZE);
    /* In reverse order as well: reads are not tied to the order of the put. */
    cs_id *rev = calloc(n, sizeof *rev);
    for (size_t i = 0; i < n; i++) rev[i] = ids[n - 1 - i];
    CHECK_OK(cs_get(st, rev, n, out, NULL));
    for (size_t i = 0; i < n; i++)
        CHECK_MEM(out + i * CS_CHUNK_SIZE, data + (n - 1 - i) * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    cs_close(st);
    /* And after reopening. */
    char *path;
    if (asprintf(&path, "%s/store", dir) < 0) abort();
    CHECK_OK(cs_open(path, CS_OPEN_READONLY, &st));
    CHECK_OK(cs_get(st, ids, n, out, NULL));
    CHECK_MEM(out, data, n * CS_CHUNK_SIZE);
    cs_close(st);
    free(path), free(rev), free(out), free(ids), free(data);
    tl_rmtree(dir);
    free(dir);
}

/* A put that does not wait for the disk is still a put: visible at once, checked against the
 * expected ids like cs_put, there after cs_sync and a reopen. */
static void put_nosync_is_visible_at_once_and_kept_after_sync(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    size_t n = 100;
    uint8_t *data = make_chunks(n, 7);
    cs_id *ids = calloc(n, sizeof *ids), *wrong = calloc(n, sizeof *wrong);
    for (size_t i = 0; i < n; i++) cs_chunk_id(data + i * CS_CHUNK_SIZE, &ids[i]);
    memcpy(wrong, ids, n * sizeof *ids);
    wrong[3].b[0] ^= 1;
    size_t bad = 0;
    CHECK_EQ(cs_put_nosync(st, data, n, wrong, NULL, &bad, NULL), CS_ECORRUPT);
    CHECK_EQ(bad, 3);
    uint8_t bits[(100 + 7) / 8];
    CHECK_EQ(cs_has(st, ids, n, bits), 0);
    cs_put_stats ps = {0};
    CHECK_OK(cs_put_nosync(st, data, n, ids, NULL, NULL, &ps));
    CHECK_EQ(ps.added, n);
    uint8_t *out = malloc(n * CS_CHUNK_SIZE);
    CHECK_OK(cs_get(st, ids, n, out, NULL));
    CHECK_MEM(out, data, n * CS_CHUNK_SIZE);
    CHECK_OK(cs_sync(st));
    cs_close(st);
    char *path;
    if (asprintf(&path, "%s/store", dir) < 0) abort();
    CHECK_OK(cs_open(path, CS_OPEN_READONLY, &st));
    CHECK_OK(cs_sync(st)); /* nothing to flush on a read-only store */
    CHECK_OK(cs_get(st, ids, n, out, NULL));
    CHECK_MEM(out, data, n * CS_CHUNK_SIZE);
    cs_close(st);
    free(path), free(out), free(wrong), free(ids), free(data);
    tl_rmtree(dir);
    free(dir);
}

static void chunk_id_is_blake2b_and_zero_chunk_is_zero_id(void)
{
    uint8_t chunk[CS_CHUNK_SIZE] = {0};
    cs_id id;
    cs_chunk_id(chunk, &id);
    CHECK(cs_id_is_zero(&id));
    chunk[4095] = 1;
    cs_chunk_id(chunk, &id);
    CHECK(!cs_id_is_zero(&id));
    char hex[CS_ID_HEX + 1];
    cs_id_to_hex(&id, hex);
    cs_id back;
    CHECK_OK(cs_id_from_hex(hex, &back));
    CHECK(cs_id_equal(&id, &back));
    CHECK_EQ(cs_id_from_hex("12", &back), CS_EFORMAT);
    CHECK_EQ(cs_id_from_hex("zz6ac5f6a8b1e84d1ff6ea7a5c9a8b7e64e42bbfce3d2fc64ae0d0c5ae6c2a7f", &back),
             CS_EFORMAT);
}

static void zero_and_duplicate_chunks_are_not_stored_again(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    uint8_t *data = make_chunks(4, 2);
    memset(data + CS_CHUNK_SIZE, 0, CS_CHUNK_SIZE);                 /* chunk 1: zero */
    memcpy(data + 3 * CS_CHUNK_SIZE, data, CS_CHUNK_SIZE);          /* chunk 3 = chunk 0 */
    cs_id ids[4];
    cs_put_stats ps = {0};
    CHECK_OK(cs_put(st, data, 4, NULL, ids, NULL, &ps));
    CHECK_EQ(ps.zero, 1);
    CHECK_EQ(ps.dup, 1);
    CHECK_EQ(ps.added, 2);
    CHECK(cs_id_is_zero(&ids[1]));
    CHECK(cs_id_equal(&ids[0], &ids[3]));
    cs_put_stats again = {0};
    CHECK_OK(cs_put(st, data, 4, NULL, NULL, NULL, &again));
    CHECK_EQ(again.added, 0);
    CHECK_EQ(again.dup, 3);
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.chunks, 2);
    CHECK_EQ(s.logical_bytes, 2 * CS_CHUNK_SIZE);
    CHECK(s.stored_bytes > 0);
    CHECK(s.disk_bytes >= s.stored_bytes);
    uint8_t out[4 * CS_CHUNK_SIZE];
    CHECK_OK(cs_get(st, ids, 4, out, NULL));
    CHECK_MEM(out, data, sizeof out);
    cs_close(st);
    free(data);
    tl_rmtree(dir);
    free(dir);
}

static void put_with_wrong_expected_id_stores_nothing(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    uint8_t *data = make_chunks(3, 3);
    cs_id ids[3];
    for (int i = 0; i < 3; i++) cs_chunk_id(data + i * CS_CHUNK_SIZE, &ids[i]);
    ids[2].b[5] ^= 1;
    size_t bad = 99;
    CHECK_EQ(cs_put(st, data, 3, ids, NULL, &bad, NULL), CS_ECORRUPT);
    CHECK_EQ(bad, 2);
    uint8_t bm[1];
    CHECK_EQ(cs_has(st, ids, 2, bm), 0);
    cs_close(st);
    free(data);
    tl_rmtree(dir);
    free(dir);
}

static void has_sets_bits_of_held_chunks(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    uint8_t *data = make_chunks(10, 4);
    cs_id ids[10];
    for (int i = 0; i < 10; i++) cs_chunk_id(data + i * CS_CHUNK_SIZE, &ids[i]);
    CHECK_OK(cs_put(st, data, 5, NULL, NULL, NULL, NULL)); /* first five only */
    ids[9] = cs_zero_id;
    uint8_t bm[2];
    CHECK_EQ(cs_has(st, ids, 10, bm), 6);
    CHECK_EQ(bm[0], 0x1f);
    CHECK_EQ(bm[1], 0x02);
    uint8_t out[CS_CHUNK_SIZE];
    size_t bad = 99;
    CHECK_EQ(cs_get(st, &ids[7], 1, out, &bad), CS_ENOTFOUND);
    CHECK_EQ(bad, 0);
    cs_close(st);
    free(data);
    tl_rmtree(dir);
    free(dir);
}

static void flipped_byte_is_reported_by_verify_and_refused_by_get(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    size_t n = 3 * CS__SEG_SLOTS;
    uint8_t *data = make_chunks(n, 5);
    /* One raw (incompressible) segment as well as compressed ones. */
    tl_fill_random(data + (n - CS__SEG_SLOTS) * CS_CHUNK_SIZE, CS__SEG_SLOTS * CS_CHUNK_SIZE, 9);
    cs_id *ids = calloc(n, sizeof *ids);
    CHECK_OK(cs_put(st, data, n, NULL, ids, NULL, NULL));
    size_t victims[2] = {5, n - 3}; /* one in a zstd segment, one in the raw segment */
    uint64_t off[2];
    size_t len[2];
    for (int v = 0; v < 2; v++) CHECK_OK(cs__debug_chunk_file_offset(st, &ids[victims[v]], &off[v], &len[v]));
    cs_close(st);
    char *path;
    if (asprintf(&path, "%s/store/data.mdb", dir) < 0) abort();
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    for (int v = 0; v < 2; v++) {
        /* zstd: the middle of the payload; raw: inside the victim's own slot. */
        uint64_t at = v == 0 ? off[v] + len[v] / 2
                             : off[v] + CS__SEG_HDR + (uint64_t)(CS__SEG_SLOTS - 3) * CS_CHUNK_SIZE + 100;
        uint8_t b;
        CHECK_EQ(pread(fd, &b, 1, (off_t)at), 1);
        b ^= 0x40;
        CHECK_EQ(pwrite(fd, &b, 1, (off_t)at), 1);
    }
    close(fd);
    free(path);
    if (asprintf(&path, "%s/store", dir) < 0) abort();
    CHECK_OK(cs_open(path, 0, &st));
    uint8_t out[CS_CHUNK_SIZE];
    size_t bad = 99;
    CHECK_EQ(cs_get(st, &ids[victims[0]], 1, out, &bad), CS_ECORRUPT);
    CHECK_EQ(cs_get(st, &ids[victims[1]], 1, out, &bad), CS_ECORRUPT);
    /* Other chunks of the raw segment are still served. */
    CHECK_OK(cs_get(st, &ids[n - 4], 1, out, NULL));
    CHECK_MEM(out, data + (n - 4) * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    cs_verify_report rep;
    CHECK_OK(cs_verify(st, NULL, NULL, NULL, &rep));
    CHECK_EQ(rep.chunks_checked, n);
    /* The damaged zstd segment loses all its slots; the raw one exactly the victim. */
    CHECK_EQ(rep.bad_chunks, CS__SEG_SLOTS + 1);
    cs_close(st);
    free(path), free(ids), free(data);
    tl_rmtree(dir);
    free(dir);
}

static void map_grows_past_its_initial_size(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    size_t batch = 1024, batches = 24; /* 96 MiB of random data, over the 64 MiB initial map */
    uint8_t *data = malloc(batch * CS_CHUNK_SIZE);
    cs_id *ids = calloc(batch * batches, sizeof *ids);
    for (size_t b = 0; b < batches; b++) {
        tl_fill_random(data, batch * CS_CHUNK_SIZE, 100 + b);
        CHECK_OK(cs_put(st, data, batch, NULL, ids + b * batch, NULL, NULL));
    }
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.chunks, batch * batches);
    CHECK(s.map_bytes > CS__MAP_INITIAL);
    uint8_t *out = malloc(batch * CS_CHUNK_SIZE);
    CHECK_OK(cs_get(st, ids, batch, out, NULL));
    tl_fill_random(data, batch * CS_CHUNK_SIZE, 100);
    CHECK_MEM(out, data, batch * CS_CHUNK_SIZE);
    cs_close(st);
    free(out), free(ids), free(data);
    tl_rmtree(dir);
    free(dir);
}

static void readonly_open_of_missing_store_is_notfound(void)
{
    char *dir = tl_tmpdir();
    cs_store *st = NULL;
    CHECK_EQ(cs_open(dir, CS_OPEN_READONLY, &st), CS_ENOTFOUND);
    CHECK(st == NULL);
    tl_rmtree(dir);
    free(dir);
}

TL_MAIN(TL_CASE(put_then_get_returns_same_bytes), TL_CASE(put_nosync_is_visible_at_once_and_kept_after_sync),
        TL_CASE(chunk_id_is_blake2b_and_zero_chunk_is_zero_id),
        TL_CASE(zero_and_duplicate_chunks_are_not_stored_again),
        TL_CASE(put_with_wrong_expected_id_stores_nothing), TL_CASE(has_sets_bits_of_held_chunks),
        TL_CASE(flipped_byte_is_reported_by_verify_and_refused_by_get),
        TL_CASE(map_grows_past_its_initial_size), TL_CASE(readonly_open_of_missing_store_is_notfound))
