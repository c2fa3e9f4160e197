/*
 * The chunk store's guarantees under stress: a writer or a garbage collection killed at random
 * moments, a full disk (and GC making room on one), and a second process that reads while a
 * writer writes (docs/store.md, "Writes, crashes and the map").
 *
 * Writers run in forked children, each with its own store handle (an LMDB environment must not
 * cross a fork). After every call that returned success, a child reports through a pipe what is
 * now durable: chunk seeds (a chunk's bytes are regenerated from its seed) and manifest ids. The
 * parent checks exactly that and nothing more: what a child did not report may or may not be in
 * the store, but the store must be consistent either way.
 *
 * The test's own randomness comes from one seed, printed first; CLOUDLET_TEST_SEED replays it.
 */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "cs_internal.h" /* the writer reads its map size (mdb_env_info) for its reports */
#include "testlib.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- deterministic chunks ------------------------------------------------------------------ */

/* Chunk contents from a seed: two in three are incompressible, the rest compress well, so
 * segments are stored both raw and zstd-compressed. */
static void chunk_fill(uint8_t *c, uint64_t seed)
{
    if (seed % 3 == 0) {
        memset(c, (int)(seed & 0x7f) + 1, CS_CHUNK_SIZE);
        tl_fill_random(c, 64, seed);
    } else {
        tl_fill_random(c, CS_CHUNK_SIZE, seed);
    }
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

static uint64_t test_seed(void)
{
    const char *s = getenv("CLOUDLET_TEST_SEED");
    uint64_t seed = s && *s ? strtoull(s, NULL, 0) : 0x636c6f75646c6574ull;
    if (seed == 0) seed = 1;
    printf("test seed %llu (replay with CLOUDLET_TEST_SEED=%llu)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    fflush(stdout);
    return seed;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- what a child reports ------------------------------------------------------------------ */

/* REC_WRITING goes out just before a write call, so the parent knows where its kill landed. */
enum { REC_READY = 1, REC_WRITING, REC_CHUNKS, REC_MANIFEST, REC_FULL, REC_ERROR, REC_DONE };

/* Smaller than PIPE_BUF: one write() of a record is atomic, even when the writer is killed. */
struct rec {
    uint32_t kind;
    int32_t rc;     /* REC_FULL, REC_ERROR: the code returned */
    uint64_t first; /* REC_CHUNKS, REC_MANIFEST: seeds first .. first + count - 1 */
    uint64_t count;
    uint64_t map;  /* REC_CHUNKS: the writer's map size after the put */
    cs_id id;      /* REC_MANIFEST */
    char what[64]; /* REC_ERROR: the call that failed */
};

static void rec_send(int fd, const struct rec *r)
{
    if (write(fd, r, sizeof *r) != (ssize_t)sizeof *r) _exit(9);
}

static void child_fail(int fd, const char *what, int rc)
{
    struct rec r = {.kind = REC_ERROR, .rc = rc};
    snprintf(r.what, sizeof r.what, "%s", what);
    rec_send(fd, &r);
    _exit(3);
}

/* Reads one record, waiting at most timeout_ms (< 0: forever). 1 = got one, 0 = timeout,
 * -1 = end of the pipe. */
static int rec_read(int fd, struct rec *r, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0 && errno == EINTR) return 0;
    if (n < 0) TL_FAIL("poll: %s", strerror(errno));
    if (n == 0) return 0;
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t k = read(fd, (char *)r + got, sizeof *r - got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) TL_FAIL("read: %s", strerror(errno));
        if (k == 0) {
            if (got) TL_FAIL("a torn record (%zu bytes)", got);
            return -1;
        }
        got += (size_t)k;
    }
    return 1;
}

/* ---- what the parent knows to be durable --------------------------------------------------- */

struct range {
    uint64_t first, count;
};
struct mrec {
    cs_id id;
    uint64_t first, count;
};
struct durable {
    struct range *r;
    size_t nr, capr;
    struct mrec *m;
    size_t nm, capm;
    uint64_t nchunks;
};

static void durable_add(struct durable *d, const struct rec *r)
{
    if (r->kind == REC_CHUNKS) {
        if (d->nr == d->capr) {
            d->capr = d->capr ? 2 * d->capr : 256;
            if (!(d->r = realloc(d->r, d->capr * sizeof *d->r))) abort();
        }
        d->r[d->nr++] = (struct range){r->first, r->count};
        d->nchunks += r->count;
    } else if (r->kind == REC_MANIFEST) {
        if (d->nm == d->capm) {
            d->capm = d->capm ? 2 * d->capm : 64;
            if (!(d->m = realloc(d->m, d->capm * sizeof *d->m))) abort();
        }
        d->m[d->nm++] = (struct mrec){r->id, r->first, r->count};
    }
}

static void durable_free(struct durable *d)
{
    free(d->r);
    free(d->m);
}

/* Handles one record from a child: durable facts are recorded, an error fails the test. */
static void take_rec(struct durable *d, const struct rec *r)
{
    if (r->kind == REC_ERROR) TL_FAIL("child: %s: %s (%d)", r->what, cs_strerror(r->rc), r->rc);
    durable_add(d, r);
}

/* Checks that every durable chunk reads back with its bytes (get re-hashes them too). */
static void check_chunks(cs_store *st, const struct range *r, size_t nr)
{
    uint8_t *want = malloc(256 * CS_CHUNK_SIZE), *got = malloc(256 * CS_CHUNK_SIZE);
    cs_id *ids = malloc(256 * sizeof *ids);
    if (!want || !got || !ids) abort();
    for (size_t i = 0; i < nr; i++) {
        for (uint64_t done = 0; done < r[i].count;) {
            size_t n = r[i].count - done < 256 ? (size_t)(r[i].count - done) : 256;
            for (size_t k = 0; k < n; k++) {
                chunk_fill(want + k * CS_CHUNK_SIZE, r[i].first + done + k);
                cs_chunk_id(want + k * CS_CHUNK_SIZE, &ids[k]);
            }
            size_t bad = 0;
            int rc = cs_get(st, ids, n, got, &bad);
            if (rc)
                TL_FAIL("durable chunk of seed %llu: %s",
                        (unsigned long long)(r[i].first + done + bad), cs_strerror(rc));
            CHECK_MEM(got, want, n * CS_CHUNK_SIZE);
            done += n;
        }
    }
    free(want), free(got), free(ids);
}

/* Checks that a durable manifest loads and names exactly the chunks it was made of. */
static void check_manifest(cs_store *st, const struct mrec *m)
{
    cs_manifest *man = NULL;
    int rc = cs_manifest_get(st, &m->id, &man);
    if (rc) {
        char hex[CS_ID_HEX + 1];
        TL_FAIL("durable manifest %s: %s", cs_id_to_hex(&m->id, hex), cs_strerror(rc));
    }
    CHECK_EQ(man->nimages, 1);
    CHECK_EQ(man->images[0].nchunks, m->count);
    uint8_t c[CS_CHUNK_SIZE];
    for (uint64_t i = 0; i < m->count; i++) {
        cs_id id;
        chunk_fill(c, m->first + i);
        cs_chunk_id(c, &id);
        CHECK(cs_id_equal(&id, &man->images[0].chunks[i]));
    }
    cs_manifest_free(man);
}

/* Opens the store and checks everything the children reported; returns its map size. */
static uint64_t check_store(const char *dir, const struct durable *d)
{
    cs_store *st = NULL;
    CHECK_OK(cs_open(dir, 0, &st));
    cs_verify_report rep;
    CHECK_OK(cs_verify(st, NULL, NULL, NULL, &rep));
    CHECK_EQ(rep.bad_chunks, 0);
    CHECK_EQ(rep.bad_manifests, 0);
    CHECK_EQ(rep.bad_index, 0);
    CHECK(rep.chunks_checked >= d->nchunks);
    check_chunks(st, d->r, d->nr);
    for (size_t i = 0; i < d->nm; i++) check_manifest(st, &d->m[i]);
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK(s.chunks >= d->nchunks);
    CHECK(s.pinned >= d->nm);
    cs_close(st);
    return s.map_bytes;
}

/* ---- the writer child ------------------------------------------------------------------------ */

#define BATCH_MAX      256u
#define MANIFEST_EVERY 4u /* batches */

/* Encodes a pinned one-image manifest naming ids[0..n-1] and stores it. */
static int put_manifest(cs_store *st, const cs_id *ids, size_t n, const char *xml, cs_id *id)
{
    cs_manifest *m = cs_manifest_new();
    cs_image *im = m ? cs_manifest_add_image(m, CS_IMAGE_FILE, "file", n * CS_CHUNK_SIZE) : NULL;
    if (!im) {
        cs_manifest_free(m);
        return -ENOMEM;
    }
    memcpy(im->chunks, ids, n * sizeof *ids);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = cs_manifest_set_xml(m, xml);
    if (rc == 0) rc = cs_manifest_encode(m, NULL, &buf, &len, NULL);
    if (rc == 0) rc = cs_manifest_put(st, buf, len, true, id);
    free(buf);
    cs_manifest_free(m);
    return rc;
}

/*
 * Ingests chunks of seeds first_seed, first_seed + 1, ... in batches of 16..256, storing a
 * pinned manifest over every MANIFEST_EVERY batches, and reports each success. Stops after
 * limit chunks (0: never; the parent kills it). Never returns.
 */
static void writer_main(const char *dir, int fd, uint64_t first_seed, uint64_t limit, uint64_t rng)
{
    cs_store *st = NULL;
    int rc = cs_open(dir, CS_OPEN_CREATE, &st);
    if (rc) child_fail(fd, "cs_open", rc);
    if ((rc = cs_ingest_begin(st))) child_fail(fd, "cs_ingest_begin", rc);
    rec_send(fd, &(struct rec){.kind = REC_READY});
    uint8_t *buf = malloc(BATCH_MAX * CS_CHUNK_SIZE);
    cs_id *ids = malloc(MANIFEST_EVERY * BATCH_MAX * sizeof *ids);
    if (!buf || !ids) child_fail(fd, "malloc", -ENOMEM);
    uint64_t seed = first_seed, mfirst = first_seed;
    size_t nids = 0;
    for (unsigned batch = 1; limit == 0 || seed - first_seed < limit; batch++) {
        size_t n = 16 + (size_t)(rng_next(&rng) % (BATCH_MAX - 15));
        for (size_t i = 0; i < n; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, seed + i);
        rec_send(fd, &(struct rec){.kind = REC_WRITING});
        if ((rc = cs_put(st, buf, n, NULL, ids + nids, NULL, NULL))) child_fail(fd, "cs_put", rc);
        MDB_envinfo info;
        mdb_env_info(st->env, &info);
        rec_send(fd, &(struct rec){
                         .kind = REC_CHUNKS, .first = seed, .count = n, .map = info.me_mapsize});
        seed += n, nids += n;
        if (batch % MANIFEST_EVERY == 0) {
            struct rec r = {.kind = REC_MANIFEST, .first = mfirst, .count = nids};
            rec_send(fd, &(struct rec){.kind = REC_WRITING});
            if ((rc = put_manifest(st, ids, nids, "<domain/>", &r.id)))
                child_fail(fd, "cs_manifest_put", rc);
            rec_send(fd, &r);
            mfirst = seed, nids = 0;
        }
    }
    cs_ingest_end(st);
    cs_close(st);
    rec_send(fd, &(struct rec){.kind = REC_DONE});
    _exit(0);
}

static pid_t spawn(int *rfd, void (*body)(const char *, int, uint64_t, uint64_t, uint64_t),
                   const char *dir, uint64_t a, uint64_t b, uint64_t c)
{
    int p[2];
    CHECK_OK(pipe2(p, O_CLOEXEC));
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        body(dir, p[1], a, b, c);
        _exit(0);
    }
    close(p[1]);
    *rfd = p[0];
    return pid;
}

static char *store_dir(char **top)
{
    *top = tl_tmpdir();
    char *dir;
    if (asprintf(&dir, "%s/store", *top) < 0) abort();
    return dir;
}

/* ---- 1. crash safety ------------------------------------------------------------------------- */

static uint64_t file_size(const char *dir, const char *name)
{
    char *p;
    struct stat sb;
    if (asprintf(&p, "%s/%s", dir, name) < 0) abort();
    uint64_t n = stat(p, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    free(p);
    return n;
}

enum kill_timing { AT_OPEN, AT_GROWTH, IN_INGEST };

static void killed_ingest_leaves_a_consistent_store(void)
{
    uint64_t rng = test_seed();
    char *top, *dir = store_dir(&top);
    struct durable d = {0};
    const unsigned rounds = 24;
    unsigned grew_in = 0, killed_at_open = 0, aimed_at_growth = 0, killed_writing = 0;
    unsigned killed_unready = 0;
    uint64_t map = 0, map_first = 0;
    for (unsigned round = 0; round < rounds; round++) {
        /* How this round's kill is timed:
         *  - every 8th round, 0..0.4 ms after the fork: often inside cs_open;
         *  - rounds 13 and 21, just as the map fills: when what the child reported brings the
         *    data file within 2 MiB of the map's end, plus 0..50 ms, so the kill lands near
         *    the write that hits MDB_MAP_FULL, the growth, or the retried write;
         *  - round 5, just after the map grew: 0..10 ms after the child reports a put that
         *    grew it, so the kill lands in the first writes into the newly mapped space;
         *  - otherwise 0..40 ms after the child is ready: mostly inside commits, which are
         *    where an ingesting process spends its time. */
        enum kill_timing mode = round % 8 == 2 ? AT_OPEN : round % 8 == 5 ? AT_GROWTH : IN_INGEST;
        double delay = mode == AT_OPEN     ? (double)(rng_next(&rng) % 400) / 1000
                       : mode == AT_GROWTH ? (double)(rng_next(&rng) % 50000) / 1000
                                           : (double)(rng_next(&rng) % 40000) / 1000;
        bool after_growth = round == 5;
        if (after_growth) delay /= 5;
        uint64_t room = 0;
        if (mode == AT_GROWTH && map) {
            uint64_t used = file_size(dir, "data.mdb");
            room = map > used + (2u << 20) ? map - used - (2u << 20) : 0;
        }
        int fd;
        uint64_t child_rng = rng_next(&rng);
        pid_t pid = spawn(&fd, writer_main, dir, (uint64_t)(round + 1) << 32, 0, child_rng);
        if (mode == AT_OPEN) { /* finer than poll() can wait */
            struct timespec ts = {0, (long)(delay * 1e6)};
            nanosleep(&ts, NULL);
        }
        double start = now_ms(), deadline = mode == AT_OPEN ? start : 0;
        double give_up = start + 15000;
        uint64_t round_bytes = 0;
        struct rec r = {0};
        bool ready = false;
        for (;;) {
            double now = now_ms();
            if ((deadline && now >= deadline) || now >= give_up) break;
            int wait = deadline ? (int)(deadline - now) + 1 : (int)(give_up - now) + 1;
            int got = rec_read(fd, &r, wait);
            if (got < 0) TL_FAIL("round %u: the writer died unasked", round);
            if (got == 0) continue;
            take_rec(&d, &r);
            ready |= r.kind == REC_READY;
            if (r.kind == REC_READY && mode == IN_INGEST) deadline = now_ms() + delay;
            if (r.kind == REC_CHUNKS) round_bytes += r.count * CS_CHUNK_SIZE;
            bool near_end =
                after_growth ? r.kind == REC_CHUNKS && r.map > map : round_bytes >= room;
            if (mode == AT_GROWTH && !deadline && near_end) deadline = now_ms() + delay;
        }
        CHECK_OK(kill(pid, SIGKILL));
        /* What the child wrote before it died is durable too. */
        int got;
        while ((got = rec_read(fd, &r, -1)) != -1)
            if (got == 1) take_rec(&d, &r), ready |= r.kind == REC_READY;
        killed_writing += r.kind == REC_WRITING; /* its last word: a write had begun */
        killed_unready += !ready;                /* still in cs_open or cs_ingest_begin */
        close(fd);
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            TL_FAIL("round %u: the writer ended with status %#x, not by the kill", round, status);
        killed_at_open += mode == AT_OPEN;
        aimed_at_growth += mode == AT_GROWTH;

        uint64_t m = check_store(dir, &d);
        if (round == 0) map_first = m;
        if (map && m > map) grew_in++;
        map = m;
    }
    printf("%u kills (%u timed 0-0.4 ms after the fork, %u aimed at the map's end; %u landed in "
           "cs_open, %u inside cs_put or cs_manifest_put); %llu chunks and %zu manifests "
           "durable; the map grew in %u rounds, %llu -> %llu MiB\n",
           rounds, killed_at_open, aimed_at_growth, killed_unready, killed_writing,
           (unsigned long long)d.nchunks, d.nm, grew_in, (unsigned long long)(map_first >> 20),
           (unsigned long long)(map >> 20));
    CHECK(grew_in >= 1);
    CHECK(killed_writing >= rounds / 3);

    /* And the store still takes new work. */
    int fd;
    pid_t pid = spawn(&fd, writer_main, dir, 999ull << 32, 600, 1);
    struct rec r;
    int got;
    while ((got = rec_read(fd, &r, -1)) != -1)
        if (got == 1) take_rec(&d, &r);
    close(fd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    check_store(dir, &d);

    durable_free(&d);
    tl_rmtree(top);
    free(top), free(dir);
}

/* Stores `batches` segments of 64 chunks; for each, a pinned manifest A names the first 20 and
 * a pinned manifest B the other 44, so that unpinning B leaves the segment under half live. */
static void segment_writer_main(const char *dir, int fd, uint64_t first_seed, uint64_t batches,
                                uint64_t unused)
{
    (void)unused;
    cs_store *st = NULL;
    int rc = cs_open(dir, CS_OPEN_CREATE, &st);
    if (rc) child_fail(fd, "cs_open", rc);
    if ((rc = cs_ingest_begin(st))) child_fail(fd, "cs_ingest_begin", rc);
    uint8_t *buf = malloc(64 * CS_CHUNK_SIZE);
    cs_id ids[64];
    if (!buf) child_fail(fd, "malloc", -ENOMEM);
    for (uint64_t b = 0; b < batches; b++) {
        uint64_t seed = first_seed + 64 * b;
        for (size_t i = 0; i < 64; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, seed + i);
        if ((rc = cs_put(st, buf, 64, NULL, ids, NULL, NULL))) child_fail(fd, "cs_put", rc);
        rec_send(fd, &(struct rec){.kind = REC_CHUNKS, .first = seed, .count = 64});
        struct rec a = {.kind = REC_MANIFEST, .first = seed, .count = 20};
        struct rec m = {.kind = REC_MANIFEST, .first = seed + 20, .count = 44};
        if ((rc = put_manifest(st, ids, 20, "<domain/>", &a.id)) ||
            (rc = put_manifest(st, ids + 20, 44, "<domain/>", &m.id)))
            child_fail(fd, "cs_manifest_put", rc);
        rec_send(fd, &a);
        rec_send(fd, &m);
    }
    cs_ingest_end(st);
    cs_close(st);
    rec_send(fd, &(struct rec){.kind = REC_DONE});
    _exit(0);
}

static void gc_main(const char *dir, int fd, uint64_t a, uint64_t b, uint64_t c)
{
    (void)a, (void)b, (void)c;
    cs_store *st = NULL;
    int rc = cs_open(dir, 0, &st);
    if (rc) child_fail(fd, "cs_open", rc);
    rec_send(fd, &(struct rec){.kind = REC_READY});
    cs_gc_report g;
    if ((rc = cs_gc(st, false, &g))) child_fail(fd, "cs_gc", rc);
    cs_close(st);
    rec_send(fd, &(struct rec){
                     .kind = REC_DONE, .first = g.segments_rewritten, .count = g.chunks_removed});
    _exit(0);
}

static void killed_gc_leaves_a_consistent_store(void)
{
    uint64_t rng = test_seed();
    char *top, *dir = store_dir(&top);
    struct durable kept = {0}; /* what the pinned A manifests name */
    /* At least 12 rounds, and on until 4 kills have landed inside a running GC: a GC of this
     * size takes milliseconds, so whether a kill lands inside one is up to the scheduler. */
    const unsigned min_rounds = 12, max_rounds = 96, min_killed_running = 4;
    unsigned rounds = 0, killed_running = 0;
    uint64_t rewritten = 0;
    double gc_ms = 0; /* how long the last GC that finished took: kills aim inside such a run */
    for (unsigned round = 0;
         round < min_rounds || (killed_running < min_killed_running && round < max_rounds);
         round++, rounds++) {
        /* New work for GC: 16 segments whose B manifests are then unpinned. */
        struct durable w = {0};
        int fd;
        pid_t pid = spawn(&fd, segment_writer_main, dir, (uint64_t)(round + 1) << 32, 16, 0);
        struct rec r;
        int got;
        while ((got = rec_read(fd, &r, -1)) != -1)
            if (got == 1) take_rec(&w, &r);
        close(fd);
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        cs_store *st;
        CHECK_OK(cs_open(dir, 0, &st));
        for (size_t i = 0; i < w.nm; i++) {
            if (i % 2) {
                CHECK_OK(cs_manifest_unpin(st, &w.m[i].id));
                continue;
            }
            durable_add(
                &kept,
                &(struct rec){.kind = REC_CHUNKS, .first = w.m[i].first, .count = w.m[i].count});
            durable_add(&kept, &(struct rec){.kind = REC_MANIFEST,
                                             .first = w.m[i].first,
                                             .count = w.m[i].count,
                                             .id = w.m[i].id});
        }
        cs_close(st);
        durable_free(&w);

        /* GC: every fourth round runs to the end (and is timed); the others are killed at a
         * random moment of a run as long as the last one that finished. */
        bool let_finish = round % 4 == 0;
        double delay = (double)(rng_next(&rng) % (uint64_t)(gc_ms * 1200 + 1)) / 1000;
        pid = spawn(&fd, gc_main, dir, 0, 0, 0);
        double started = 0, deadline = 0;
        bool done = false;
        while (!done && (!deadline || now_ms() < deadline)) {
            got = rec_read(fd, &r, deadline ? (int)(deadline - now_ms()) + 1 : 30000);
            if (got < 0) break;
            if (got == 0 && !deadline) TL_FAIL("the GC child is silent for 30 s");
            if (got == 1) take_rec(&kept, &r), done |= r.kind == REC_DONE;
            if (got == 1 && r.kind == REC_READY)
                started = now_ms(), deadline = let_finish ? 0 : started + delay;
        }
        if (done) gc_ms = now_ms() - started;
        CHECK_OK(kill(pid, SIGKILL));
        while ((got = rec_read(fd, &r, -1)) != -1)
            if (got == 1) take_rec(&kept, &r), done |= r.kind == REC_DONE;
        if (done) rewritten += r.first; /* REC_DONE is the last word */
        close(fd);
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        killed_running += !done;
        check_store(dir, &kept);
    }
    /* A GC to the end leaves exactly what the A manifests name, all of it readable. */
    cs_store *st;
    CHECK_OK(cs_open(dir, 0, &st));
    cs_gc_report g;
    CHECK_OK(cs_gc(st, false, &g));
    rewritten += g.segments_rewritten;
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.chunks, kept.nchunks);
    CHECK_EQ(s.manifests, kept.nm);
    cs_close(st);
    check_store(dir, &kept);
    printf("%u GC runs, %u killed while running; %llu segments rewritten by the runs that "
           "finished; %llu chunks kept, all readable\n",
           rounds, killed_running, (unsigned long long)rewritten, (unsigned long long)kept.nchunks);
    CHECK(killed_running >= min_killed_running);
    CHECK(rewritten > 0);
    durable_free(&kept);
    tl_rmtree(top);
    free(top), free(dir);
}

/* ---- 2. full disk ---------------------------------------------------------------------------- */

/*
 * Fills the store until the disk refuses: batches of chunks until a put fails, then single
 * chunks until one fails too, then ever larger manifests naming everything it stored, until one
 * fails. Every write must succeed or return CS_EFULL. Never returns.
 */
static void filler_main(const char *dir, int fd, uint64_t first_seed, uint64_t fsize_limit,
                        uint64_t unused)
{
    (void)unused;
    if (fsize_limit) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl;
        getrlimit(RLIMIT_FSIZE, &rl);
        rl.rlim_cur = fsize_limit;
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) child_fail(fd, "setrlimit", -errno);
    }
    cs_store *st = NULL;
    int rc = cs_open(dir, 0, &st);
    if (rc) child_fail(fd, "cs_open", rc);
    if ((rc = cs_ingest_begin(st))) child_fail(fd, "cs_ingest_begin", rc);
    rec_send(fd, &(struct rec){.kind = REC_READY});
    size_t cap = 1u << 16;
    uint8_t *buf = malloc(64 * CS_CHUNK_SIZE);
    cs_id *ids = malloc(cap * sizeof *ids);
    if (!buf || !ids) child_fail(fd, "malloc", -ENOMEM);
    uint64_t seed = first_seed;
    size_t nids = 0;
    /* Batches of 64, then single chunks: a single chunk may still fit where a batch did not. */
    for (size_t n = 64; n >= 1; n = n == 64 ? 1 : 0) {
        while (nids + n <= cap) {
            for (size_t i = 0; i < n; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, seed + i);
            rc = cs_put(st, buf, n, NULL, ids + nids, NULL, NULL);
            if (rc == CS_EFULL) break;
            if (rc) child_fail(fd, "cs_put", rc);
            rec_send(fd, &(struct rec){.kind = REC_CHUNKS, .first = seed, .count = n});
            seed += n, nids += n;
        }
        if (rc != CS_EFULL) child_fail(fd, "cs_put never reported a full disk", rc);
        rec_send(fd, &(struct rec){.kind = REC_FULL, .rc = rc, .count = n});
    }
    /* Manifests, each with a larger XML, until one does not fit. */
    size_t xlen = 4096;
    for (unsigned k = 0; k < 16; k++, xlen *= 2) {
        char *xml = malloc(xlen + 1);
        if (!xml) child_fail(fd, "malloc", -ENOMEM);
        memset(xml, 'x', xlen);
        xml[0] = (char)('a' + k);
        xml[xlen] = 0;
        struct rec r = {.kind = REC_MANIFEST, .first = first_seed, .count = nids};
        rc = put_manifest(st, ids, nids, xml, &r.id);
        free(xml);
        if (rc == CS_EFULL) break;
        if (rc) child_fail(fd, "cs_manifest_put", rc);
        rec_send(fd, &r);
    }
    if (rc != CS_EFULL) child_fail(fd, "cs_manifest_put never reported a full disk", rc);
    rec_send(fd, &(struct rec){.kind = REC_FULL, .rc = rc, .count = 0});
    /* The handle survives: it still reads, and another write fails the same way or succeeds. */
    if ((rc = cs_get(st, ids, 1, buf, NULL))) child_fail(fd, "cs_get after a full disk", rc);
    for (size_t i = 0; i < 64; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, seed + i);
    rc = cs_put(st, buf, 64, NULL, NULL, NULL, NULL);
    if (rc == 0)
        rec_send(fd, &(struct rec){.kind = REC_CHUNKS, .first = seed, .count = 64});
    else if (rc != CS_EFULL)
        child_fail(fd, "cs_put after a full disk", rc);
    cs_ingest_end(st);
    cs_close(st);
    rec_send(fd, &(struct rec){.kind = REC_DONE});
    _exit(0);
}

/* Runs the filler to the end; d receives what it stored. Returns the chunks it stored. */
static uint64_t run_filler(const char *dir, uint64_t fsize_limit, struct durable *d)
{
    uint64_t before = d->nchunks;
    size_t nm = d->nm;
    unsigned full_puts = 0, full_manifests = 0;
    int fd;
    pid_t pid = spawn(&fd, filler_main, dir, 1ull << 40, fsize_limit, 0);
    struct rec r;
    int got;
    while ((got = rec_read(fd, &r, 30000)) != -1) {
        if (got == 0) TL_FAIL("the filler is silent for 30 s");
        take_rec(d, &r);
        if (r.kind == REC_FULL) {
            CHECK_EQ(r.rc, CS_EFULL);
            if (r.count)
                full_puts++;
            else
                full_manifests++;
        }
    }
    close(fd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        TL_FAIL("the filler ended with status %#x", status);
    CHECK_EQ(full_puts, 2); /* a batch, then a single chunk */
    CHECK_EQ(full_manifests, 1);
    printf("%llu chunks and %zu manifests stored, then CS_EFULL (\"%s\") for a batch, a single "
           "chunk and a manifest\n",
           (unsigned long long)(d->nchunks - before), d->nm - nm, cs_strerror(CS_EFULL));
    CHECK(d->nchunks > before);
    return d->nchunks - before;
}

/* After the limit is lifted: the store opens and verifies, nothing that succeeded is lost
 * (check_store), and new writes succeed. */
static void check_after_full(const char *dir, struct durable *d)
{
    check_store(dir, d);
    cs_store *st;
    CHECK_OK(cs_open(dir, 0, &st));
    size_t n = 512;
    uint8_t *buf = malloc(n * CS_CHUNK_SIZE), *out = malloc(n * CS_CHUNK_SIZE);
    cs_id *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, (3ull << 40) + i);
    cs_put_stats ps = {0};
    CHECK_OK(cs_put(st, buf, n, NULL, ids, NULL, &ps));
    CHECK_EQ(ps.added, n);
    CHECK_OK(cs_get(st, ids, n, out, NULL));
    CHECK_MEM(out, buf, n * CS_CHUNK_SIZE);
    cs_id mid;
    CHECK_OK(put_manifest(st, ids, n, "<domain/>", &mid));
    cs_verify_report rep;
    CHECK_OK(cs_verify(st, NULL, NULL, NULL, &rep));
    CHECK_EQ(rep.bad_chunks + rep.bad_manifests + rep.bad_index, 0);
    cs_close(st);
    free(buf), free(out), free(ids);
}

/* A store with some content before the disk fills. */
static void seed_store(const char *dir, struct durable *d)
{
    int fd;
    pid_t pid = spawn(&fd, writer_main, dir, 2ull << 40, 500, 7);
    struct rec r;
    int got;
    while ((got = rec_read(fd, &r, -1)) != -1)
        if (got == 1) take_rec(d, &r);
    close(fd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void file_size_limit_makes_writes_fail_with_efull_and_loses_nothing(void)
{
    CHECK(strstr(cs_strerror(CS_EFULL), "no space left") != NULL);
    char *top, *dir = store_dir(&top);
    struct durable d = {0};
    seed_store(dir, &d);
    uint64_t limit = file_size(dir, "data.mdb") + (3u << 20);
    printf("file size limit: %llu KiB\n", (unsigned long long)(limit >> 10));
    run_filler(dir, limit, &d);
    CHECK(file_size(dir, "data.mdb") <= limit);
    check_after_full(dir, &d);
    durable_free(&d);
    tl_rmtree(top);
    free(top), free(dir);
}

/*
 * Under a file size limit: stores chunks that nothing names until the disk is full, collects
 * them with cs_gc, and then stores new chunks in the room GC made, without the file growing.
 * Reports the counts in its REC_DONE (first: chunks before GC, count: after). Never returns.
 */
static void collector_main(const char *dir, int fd, uint64_t first_seed, uint64_t fsize_limit,
                           uint64_t unused)
{
    (void)unused;
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = fsize_limit;
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) child_fail(fd, "setrlimit", -errno);
    cs_store *st = NULL;
    int rc = cs_open(dir, 0, &st);
    if (rc) child_fail(fd, "cs_open", rc);
    uint8_t *buf = malloc(64 * CS_CHUNK_SIZE);
    if (!buf) child_fail(fd, "malloc", -ENOMEM);
    uint64_t seed = first_seed, before = 0, after = 0;
    for (;;) {
        for (size_t i = 0; i < 64; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, seed + i);
        if ((rc = cs_put(st, buf, 64, NULL, NULL, NULL, NULL))) break;
        seed += 64, before += 64;
    }
    if (rc != CS_EFULL) child_fail(fd, "cs_put before gc", rc);
    cs_gc_report g;
    if ((rc = cs_gc(st, false, &g))) child_fail(fd, "cs_gc on a full disk", rc);
    if (g.chunks_removed < before) child_fail(fd, "cs_gc left unnamed chunks", CS_EFORMAT);
    for (;;) {
        for (size_t i = 0; i < 64; i++) chunk_fill(buf + i * CS_CHUNK_SIZE, seed + i);
        if ((rc = cs_put(st, buf, 64, NULL, NULL, NULL, NULL))) break;
        rec_send(fd, &(struct rec){.kind = REC_CHUNKS, .first = seed, .count = 64});
        seed += 64, after += 64;
    }
    if (rc != CS_EFULL) child_fail(fd, "cs_put after gc", rc);
    cs_close(st);
    rec_send(fd, &(struct rec){.kind = REC_DONE, .first = before, .count = after});
    _exit(0);
}

static void gc_on_a_full_disk_makes_room_for_new_chunks(void)
{
    char *top, *dir = store_dir(&top);
    struct durable seeded = {0}, kept = {0};
    seed_store(dir, &seeded);
    /* GC keeps what the seed's pinned manifests name, and nothing else it stored. */
    for (size_t i = 0; i < seeded.nm; i++) {
        durable_add(&kept, &(struct rec){.kind = REC_CHUNKS,
                                         .first = seeded.m[i].first,
                                         .count = seeded.m[i].count});
        struct rec m = {.kind = REC_MANIFEST,
                        .first = seeded.m[i].first,
                        .count = seeded.m[i].count,
                        .id = seeded.m[i].id};
        durable_add(&kept, &m);
    }
    uint64_t limit = file_size(dir, "data.mdb") + (3u << 20);
    int fd;
    pid_t pid = spawn(&fd, collector_main, dir, 5ull << 40, limit, 0);
    struct rec r;
    uint64_t before = 0, after = 0;
    int got;
    while ((got = rec_read(fd, &r, 30000)) != -1) {
        if (got == 0) TL_FAIL("the collector is silent for 30 s");
        take_rec(&kept, &r);
        if (r.kind == REC_DONE) before = r.first, after = r.count;
    }
    close(fd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("file size limit %llu KiB: %llu chunks until full, collected; then %llu new chunks "
           "in the room GC made\n",
           (unsigned long long)(limit >> 10), (unsigned long long)before,
           (unsigned long long)after);
    CHECK(before > 0);
    CHECK(after >= before / 2);
    CHECK(file_size(dir, "data.mdb") <= limit);
    check_store(dir, &kept);
    durable_free(&seeded);
    durable_free(&kept);
    tl_rmtree(top);
    free(top), free(dir);
}

/* Mounts a tmpfs of the given size on dir, in a private mount namespace (this process's own:
 * each case runs in its own process). False, with a message, when mounting is impossible. */
static bool mount_private_tmpfs(const char *dir, const char *size)
{
    char opts[64];
    snprintf(opts, sizeof opts, "size=%s,mode=0700", size);
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0) {
        printf("SKIPPED: cannot mount a tmpfs in a private mount namespace here (%s)\n",
               strerror(errno));
        return false;
    }
    return true;
}

static void full_tmpfs_makes_writes_fail_with_efull_and_loses_nothing(void)
{
    char *top, *dir = store_dir(&top);
    CHECK_OK(mkdir(dir, 0700));
    /* The file size limit case covers a full disk where this one cannot run. */
    if (!mount_private_tmpfs(dir, "6m")) {
        tl_rmtree(top);
        free(top), free(dir);
        return;
    }
    struct durable d = {0};
    seed_store(dir, &d);
    printf("a 6 MiB tmpfs\n");
    run_filler(dir, 0, &d);
    CHECK_OK(mount(NULL, dir, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, "size=64m"));
    check_after_full(dir, &d);
    durable_free(&d);
    CHECK_OK(umount(dir));
    tl_rmtree(top);
    free(top), free(dir);
}

/* A store whose creation ran out of room (here LMDB's two meta pages fit only half) opens once
 * there is room, instead of being refused for good as an unknown format. */
static void store_created_on_a_full_disk_opens_once_there_is_room(void)
{
    char *top, *dir = store_dir(&top);
    CHECK_OK(mkdir(dir, 0700));
    if (!mount_private_tmpfs(dir, "8k")) {
        tl_rmtree(top);
        free(top), free(dir);
        return;
    }
    char *store;
    if (asprintf(&store, "%s/store", dir) < 0) abort();
    cs_store *st = NULL;
    CHECK_EQ(cs_open(store, CS_OPEN_CREATE, &st), CS_EFULL);
    printf("creation on a full tmpfs: CS_EFULL, leaving a data file of %llu bytes\n",
           (unsigned long long)file_size(store, "data.mdb"));
    CHECK_OK(mount(NULL, dir, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, "size=64m"));
    CHECK_OK(cs_open(store, CS_OPEN_CREATE, &st));
    uint8_t c[CS_CHUNK_SIZE], out[CS_CHUNK_SIZE];
    cs_id id;
    chunk_fill(c, 1);
    CHECK_OK(cs_put(st, c, 1, NULL, &id, NULL, NULL));
    CHECK_OK(cs_get(st, &id, 1, out, NULL));
    CHECK_MEM(out, c, CS_CHUNK_SIZE);
    cs_close(st);
    free(store);
    CHECK_OK(umount(dir));
    tl_rmtree(top);
    free(top), free(dir);
}

/* ---- 3. a reader in another process ---------------------------------------------------------- */

static void readonly_reader_gets_right_answers_while_a_writer_grows_the_map(void)
{
    uint64_t rng = test_seed();
    char *top, *dir = store_dir(&top);
    struct durable d = {0};
    /* About 290 MiB stored: the map grows from 64 MiB to 128, 256 and 512. */
    const uint64_t total = 100000;
    int fd;
    pid_t pid = spawn(&fd, writer_main, dir, 1ull << 32, total, rng_next(&rng));
    struct rec r;
    int got;
    do {
        got = rec_read(fd, &r, -1);
        if (got == 1) take_rec(&d, &r);
    } while (got == 0 || (got == 1 && r.kind != REC_READY));
    CHECK(got == 1);
    cs_store *st;
    CHECK_OK(cs_open(dir, CS_OPEN_READONLY, &st));
    bool done = false;
    unsigned checks = 0, verifies = 0;
    uint64_t prev_chunks = 0, prev_stored = 0;
    uint8_t *buf = malloc(64 * CS_CHUNK_SIZE), *out = malloc(64 * CS_CHUNK_SIZE);
    cs_id ids[64];
    while (!done) {
        while ((got = rec_read(fd, &r, d.nchunks ? 0 : 1000)) == 1) {
            take_rec(&d, &r);
            done |= r.kind == REC_DONE;
        }
        if (got < 0) done = true;
        /* What is durable now must be visible in every answer below. */
        uint64_t nchunks = d.nchunks;
        size_t nm = d.nm;
        if (nchunks == 0) continue;

        /* get: 64 durable chunks picked at random. */
        for (size_t i = 0; i < 64; i++) {
            uint64_t k = rng_next(&rng) % nchunks;
            size_t j = 0;
            while (k >= d.r[j].count) k -= d.r[j++].count;
            chunk_fill(buf + i * CS_CHUNK_SIZE, d.r[j].first + k);
            cs_chunk_id(buf + i * CS_CHUNK_SIZE, &ids[i]);
        }
        size_t bad = 0;
        int rc = cs_get(st, ids, 64, out, &bad);
        if (rc) TL_FAIL("get while writing: %s (chunk %zu)", cs_strerror(rc), bad);
        CHECK_MEM(out, buf, 64 * CS_CHUNK_SIZE);

        /* has: those 32 first, then 32 that no one ever writes. */
        uint8_t c[CS_CHUNK_SIZE], bits[8];
        for (size_t i = 32; i < 64; i++) {
            chunk_fill(c, (1ull << 62) + rng_next(&rng) % 1000000);
            cs_chunk_id(c, &ids[i]);
        }
        CHECK_EQ(cs_has(st, ids, 64, bits), 32);
        for (size_t i = 0; i < 8; i++) CHECK_EQ(bits[i], i < 4 ? 0xff : 0);

        /* stats: never less than what is durable, never shrinking (nothing is collected). */
        cs_stats s;
        CHECK_OK(cs_stats_get(st, &s));
        CHECK(s.chunks >= nchunks && s.chunks >= prev_chunks);
        CHECK(s.stored_bytes >= prev_stored);
        CHECK(s.manifests >= nm && s.pinned >= nm);
        CHECK_EQ(s.referenced_missing, 0);
        prev_chunks = s.chunks, prev_stored = s.stored_bytes;

        /* A durable manifest loads. */
        if (nm) check_manifest(st, &d.m[rng_next(&rng) % nm]);

        /* verify, every fourth round: it reads the whole store. */
        if (checks++ % 4 == 0) {
            cs_verify_report rep;
            CHECK_OK(cs_verify(st, NULL, NULL, NULL, &rep));
            CHECK_EQ(rep.bad_chunks, 0);
            CHECK_EQ(rep.bad_manifests, 0);
            CHECK_EQ(rep.bad_index, 0);
            CHECK(rep.chunks_checked >= nchunks);
            verifies++;
        }
    }
    close(fd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(d.nchunks >= total);
    /* Once the writer is done, the reader sees all of it. */
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.chunks, d.nchunks);
    check_chunks(st, d.r, d.nr);
    cs_close(st);
    uint64_t map = check_store(dir, &d);
    printf("%u rounds of get/has/stats while writing, %u of them with verify; the map ended at "
           "%llu MiB\n",
           checks, verifies, (unsigned long long)(map >> 20));
    CHECK(checks >= 4 && verifies >= 2);
    CHECK(map >= (256ull << 20)); /* grown at least twice from 64 MiB */
    free(buf), free(out);
    durable_free(&d);
    tl_rmtree(top);
    free(top), free(dir);
}

/* Opens the store read-only, begins a read transaction, says so, and waits to be killed. */
static void stuck_reader_main(const char *dir, int fd, uint64_t a, uint64_t b, uint64_t c)
{
    (void)a, (void)b, (void)c;
    cs_store *st = NULL;
    int rc = cs_open(dir, CS_OPEN_READONLY, &st);
    if (rc) child_fail(fd, "cs_open", rc);
    MDB_txn *txn;
    if ((rc = cs__txn_begin(st, false, &txn))) child_fail(fd, "cs__txn_begin", rc);
    rec_send(fd, &(struct rec){.kind = REC_READY});
    for (;;) pause();
}

/* LMDB cannot reuse pages that an open read transaction may still see. A reader killed inside
 * one leaves its slot in the lock file behind, and unless the store clears such slots, every
 * later commit of a process that had the store open then grows the file. */
static void killed_reader_does_not_make_the_store_grow(void)
{
    char *top, *dir = store_dir(&top);
    struct durable d = {0};
    seed_store(dir, &d);
    CHECK(d.nm > 0);
    int fd;
    pid_t pid = spawn(&fd, stuck_reader_main, dir, 0, 0, 0);
    struct rec r;
    int got;
    while ((got = rec_read(fd, &r, 30000)) == 0) {}
    CHECK_EQ(got, 1);
    take_rec(&d, &r);
    CHECK_EQ(r.kind, REC_READY);
    /* This process has the store open while the reader dies, as a daemon would. */
    cs_store *st;
    CHECK_OK(cs_open(dir, 0, &st));
    CHECK_OK(kill(pid, SIGKILL));
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    close(fd);
    /* Commits that change almost nothing: with the pages they free reused, the file stays. */
    uint64_t before = file_size(dir, "data.mdb");
    for (unsigned i = 0; i < 600; i++) {
        CHECK_OK(cs_manifest_pin(st, &d.m[0].id));
        CHECK_OK(cs_manifest_unpin(st, &d.m[0].id));
    }
    uint64_t after = file_size(dir, "data.mdb");
    printf("1200 small commits after a reader was killed in a transaction: the data file grew "
           "by %llu KiB\n",
           (unsigned long long)((after - before) >> 10));
    if (after - before >= (256u << 10))
        TL_FAIL("the data file grew by %llu KiB", (unsigned long long)((after - before) >> 10));
    cs_close(st);
    check_store(dir, &d);
    durable_free(&d);
    tl_rmtree(top);
    free(top), free(dir);
}

TL_MAIN(TL_CASE(killed_ingest_leaves_a_consistent_store),
        TL_CASE(killed_gc_leaves_a_consistent_store),
        TL_CASE(file_size_limit_makes_writes_fail_with_efull_and_loses_nothing),
        TL_CASE(full_tmpfs_makes_writes_fail_with_efull_and_loses_nothing),
        TL_CASE(gc_on_a_full_disk_makes_room_for_new_chunks),
        TL_CASE(store_created_on_a_full_disk_opens_once_there_is_room),
        TL_CASE(readonly_reader_gets_right_answers_while_a_writer_grows_the_map),
        TL_CASE(killed_reader_does_not_make_the_store_grow))
