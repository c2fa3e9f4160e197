/*
 * test_nbd.c — the NBD export (node/vm_nbd.c) against a small client written here, over the
 * real Unix socket, serving an image from a real store.
 */
#define _GNU_SOURCE
#include "testlib.h"
#include "vm_nbd.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define IHAVEOPT         0x49484156454f5054ull
#define REP_MAGIC        0x3e889045565a9ull
#define REQ_MAGIC        0x25609513u
#define REPLY_MAGIC      0x67446698u
#define OPT_EXPORT_NAME  1u
#define OPT_ABORT        2u
#define OPT_LIST         3u
#define OPT_INFO         6u
#define OPT_GO           7u
#define OPT_STRUCTURED   8u
#define OPT_LIST_META    9u
#define OPT_SET_META     10u
#define REP_ACK          1u
#define REP_SERVER       2u
#define REP_INFO         3u
#define REP_META_CONTEXT 4u
#define REP_ERR_UNSUP    0x80000001u
#define REP_ERR_INVALID  0x80000003u
#define REP_ERR_UNKNOWN  0x80000006u
#define CMD_READ         0u
#define CMD_WRITE        1u
#define CMD_DISC         2u
#define CMD_FLUSH        3u
#define CMD_TRIM         4u
#define CMD_WRITE_ZEROES 6u
#define CMD_BLOCK_STATUS 7u
#define TFLAGS           0x107u /* HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN */
#define CMD_FLAG_REQ_ONE (1u << 3)
#define CHUNK_MAGIC      0x668e33efu
#define CHUNK_DONE       1u
#define TYPE_NONE        0u
#define TYPE_DATA        1u
#define TYPE_HOLE        2u
#define TYPE_STATUS      5u
#define TYPE_ERROR       0x8001u
#define STATE_HOLE_ZERO  3u

/* The image: 40 whole chunks (5..9 and 30 zero, 20 a copy of 2) and a 1000-byte tail. */
#define NCHUNKS 41u
#define LENGTH  (40u * CS_CHUNK_SIZE + 1000u)
/* The export: the image rounded up to whole sectors, zeros after its end. */
#define EXPORT_SIZE ((LENGTH + 511u) / 512u * 512u)
/* The chunks the "missing" fixture leaves out of the store: the first at 12, the second at 13
 * (when two are missing) with chunk 15 naming the first again. */
#define MISSING_POS 12u

struct fx {
    char *dir;
    char sock[256];
    cs_store *st;
    cs_manifest *m;
    cs_image *im;
    uint8_t *data; /* the image's bytes */
    uint8_t missing[2][CS_CHUNK_SIZE];
    node_nbd *srv;
};

/* The image served with opts (may be NULL); nmissing (0 to 2) of its chunks not in the store. */
static void fx_open_opts(struct fx *f, int nmissing, const node_nbd_opts *opts)
{
    f->dir = tl_tmpdir();
    snprintf(f->sock, sizeof f->sock, "%s/nbd.sock", f->dir);
    char path[512];
    snprintf(path, sizeof path, "%s/store", f->dir);
    CHECK_OK(cs_open(path, CS_OPEN_CREATE, &f->st));
    f->data = calloc(1, NCHUNKS * CS_CHUNK_SIZE);
    tl_fill_random(f->data, LENGTH, 11);
    memset(f->data + 5 * CS_CHUNK_SIZE, 0, 5 * CS_CHUNK_SIZE);
    memset(f->data + 30 * CS_CHUNK_SIZE, 0, CS_CHUNK_SIZE);
    memcpy(f->data + 20 * CS_CHUNK_SIZE, f->data + 2 * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    snprintf(path, sizeof path, "%s/disk.raw", f->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, f->data, LENGTH), LENGTH);
    f->m = cs_manifest_new();
    f->im = cs_manifest_add_image(f->m, CS_IMAGE_DISK, "disk", LENGTH);
    CHECK_OK(cs_image_import_fd(f->st, fd, f->im, 2, NULL, NULL, NULL, NULL));
    close(fd);
    CHECK_EQ(f->im->nchunks, NCHUNKS);
    CHECK(cs_id_is_zero(&f->im->chunks[5]));
    /* Chunks the image names but the store does not hold yet. */
    static const unsigned pos[][2] = {{MISSING_POS, MISSING_POS + 3}, {MISSING_POS + 1, 0}};
    for (int i = 0; i < nmissing; i++) {
        tl_fill_random(f->missing[i], CS_CHUNK_SIZE, 99u + (unsigned)i);
        for (int j = 0; j < 2 && pos[i][j]; j++) {
            if (nmissing == 1 && j) break;
            memcpy(f->data + pos[i][j] * CS_CHUNK_SIZE, f->missing[i], CS_CHUNK_SIZE);
            cs_chunk_id(f->missing[i], &f->im->chunks[pos[i][j]]);
        }
    }
    char err[NODE_ERRMSG] = "";
    if (node_nbd_start(f->st, f->im, f->sock, opts, &f->srv, err)) TL_FAIL("start: %s", err);
}

static void fx_open(struct fx *f, bool with_missing)
{
    fx_open_opts(f, with_missing ? 1 : 0, NULL);
}

static void fx_close(struct fx *f)
{
    node_nbd_stop(f->srv);
    cs_manifest_free(f->m);
    cs_close(f->st);
    free(f->data);
    tl_rmtree(f->dir);
    free(f->dir);
}

/* ---- a small NBD client -------------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32)), put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

static struct sockaddr_un unix_addr(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    CHECK(strlen(path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    return sa;
}

static int cl_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_un sa = unix_addr(path);
    CHECK_OK(connect(fd, (struct sockaddr *)&sa, sizeof sa));
    struct timeval tv = {20, 0}; /* a hung server fails the case instead of stalling it */
    CHECK_OK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    return fd;
}

static void cl_send(int fd, const void *buf, size_t n)
{
    CHECK_EQ(send(fd, buf, n, MSG_NOSIGNAL), n);
}

/* Exactly n bytes: 0, or -1 when the server closed the connection first. */
static int cl_recv(int fd, void *buf, size_t n)
{
    for (uint8_t *p = buf; n;) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0) {
            CHECK(r == 0 || errno == ECONNRESET);
            return -1;
        }
        p += r, n -= (size_t)r;
    }
    return 0;
}

/* True when the server has closed the connection (and sends nothing before). */
static bool cl_closed(int fd)
{
    uint8_t b;
    return cl_recv(fd, &b, 1) == -1;
}

/* No byte arrives within ms milliseconds. */
static bool cl_quiet(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, ms) == 0;
}

static void cl_hello(int fd, uint32_t cflags)
{
    uint8_t h[18];
    CHECK_OK(cl_recv(fd, h, sizeof h));
    CHECK(get64(h) == 0x4e42444d41474943ull);
    CHECK(get64(h + 8) == IHAVEOPT);
    CHECK_EQ(h[16] << 8 | h[17], 3); /* FIXED_NEWSTYLE | NO_ZEROES */
    uint8_t c[4];
    put32(c, cflags);
    cl_send(fd, c, 4);
}

static void cl_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    put64(h, IHAVEOPT);
    put32(h + 8, opt);
    put32(h + 12, len);
    cl_send(fd, h, sizeof h);
    if (len) cl_send(fd, data, len);
}

/* One option reply to opt: its type; its data into buf (at most cap bytes), length in *len. */
static uint32_t cl_rep(int fd, uint32_t opt, uint8_t *buf, size_t cap, uint32_t *len)
{
    uint8_t h[20];
    CHECK_OK(cl_recv(fd, h, sizeof h));
    CHECK(get64(h) == REP_MAGIC);
    CHECK_EQ(get32(h + 8), opt);
    *len = get32(h + 16);
    CHECK(*len <= cap);
    CHECK_OK(cl_recv(fd, buf, *len));
    return get32(h + 12);
}

/* INFO or GO data for export name, asking for the block sizes. */
static uint32_t go_data(uint8_t *d, const char *name)
{
    uint32_t n = (uint32_t)strlen(name);
    put32(d, n);
    memcpy(d + 4, name, n);
    d[4 + n] = 0, d[5 + n] = 1;
    d[6 + n] = 0, d[7 + n] = 3; /* NBD_INFO_BLOCK_SIZE */
    return n + 8;
}

/* NBD_OPT_GO (or INFO) for name, answered with the export's size (size), flags and block
 * sizes. */
static void cl_go_opt_size(int fd, uint32_t opt, const char *name, uint64_t size)
{
    uint8_t d[300], r[300];
    cl_opt(fd, opt, d, go_data(d, name));
    uint32_t len, type;
    bool export = false, bsize = false;
    while ((type = cl_rep(fd, opt, r, sizeof r, &len)) == REP_INFO) {
        CHECK(len >= 2);
        unsigned info = r[0] << 8 | r[1];
        if (info == 0) {
            CHECK_EQ(len, 12);
            CHECK(get64(r + 2) == size);
            CHECK_EQ(r[10] << 8 | r[11], TFLAGS);
            export = true;
        } else if (info == 3) {
            CHECK_EQ(len, 14);
            CHECK_EQ(get32(r + 2), 1);
            CHECK_EQ(get32(r + 6), 4096);
            CHECK_EQ(get32(r + 10), 32u << 20);
            bsize = true;
        }
    }
    CHECK_EQ(type, REP_ACK);
    CHECK_EQ(len, 0);
    CHECK(export && bsize);
}

static void cl_go_opt(int fd, uint32_t opt, const char *name)
{
    cl_go_opt_size(fd, opt, name, EXPORT_SIZE);
}

/* A connection in transmission through NBD_OPT_GO. */
static int cl_open_go(const char *path)
{
    int fd = cl_connect(path);
    cl_hello(fd, 3);
    cl_go_opt(fd, OPT_GO, "disk");
    return fd;
}

static void cl_request(int fd, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len)
{
    uint8_t q[28] = {0};
    put32(q, REQ_MAGIC);
    q[6] = (uint8_t)(type >> 8), q[7] = (uint8_t)type;
    put64(q + 8, cookie);
    put64(q + 16, off);
    put32(q + 24, len);
    cl_send(fd, q, sizeof q);
}

/* A simple reply to cookie: its error. */
static uint32_t cl_reply(int fd, uint64_t cookie)
{
    uint8_t r[16];
    CHECK_OK(cl_recv(fd, r, sizeof r));
    CHECK_EQ(get32(r), REPLY_MAGIC);
    CHECK(get64(r + 8) == cookie);
    return get32(r + 4);
}

/* Reads [off, off + len) into out: the reply's error (out filled only when 0). */
static uint32_t cl_read(int fd, uint64_t off, uint32_t len, uint8_t *out)
{
    static uint64_t cookie = 1000;
    cl_request(fd, CMD_READ, ++cookie, off, len);
    uint32_t e = cl_reply(fd, cookie);
    if (e == 0) CHECK_OK(cl_recv(fd, out, len));
    return e;
}

static void check_read(struct fx *f, int fd, uint64_t off, uint32_t len)
{
    uint8_t *buf = malloc(len);
    CHECK_EQ(cl_read(fd, off, len, buf), 0);
    if (memcmp(buf, f->data + off, len) != 0)
        TL_FAIL("read at %llu of %u bytes differs", (unsigned long long)off, len);
    free(buf);
}

static void cl_disc(int fd)
{
    cl_request(fd, CMD_DISC, 1, 0, 0);
    CHECK(cl_closed(fd));
    close(fd);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- structured replies ---------------------------------------------------------------------- */

/* LIST_META_CONTEXT or SET_META_CONTEXT data: export name, then the queries (NULL-ended). */
static uint32_t meta_data(uint8_t *d, const char *name, const char *const *queries)
{
    uint32_t n = (uint32_t)strlen(name), at = 8 + n, count = 0;
    put32(d, n);
    memcpy(d + 4, name, n);
    for (; queries[count]; count++) {
        uint32_t q = (uint32_t)strlen(queries[count]);
        put32(d + at, q);
        memcpy(d + at + 4, queries[count], q);
        at += 4 + q;
    }
    put32(d + 4 + n, count);
    return at;
}

/* Sends a meta context option; the contexts the server names before its final reply go to
 * names (each NUL-terminated, at most 4) and their ids to ids. Returns the final reply's type
 * and the count of contexts in *n. */
static uint32_t cl_meta(int fd, uint32_t opt, const char *const *queries, char names[4][64],
                        uint32_t ids[4], unsigned *n)
{
    uint8_t d[512], r[300];
    cl_opt(fd, opt, d, meta_data(d, "disk", queries));
    uint32_t len, type;
    for (*n = 0; (type = cl_rep(fd, opt, r, sizeof r, &len)) == REP_META_CONTEXT; ++*n) {
        CHECK(*n < 4 && len > 4 && len - 4 < 64);
        ids[*n] = get32(r);
        memcpy(names[*n], r + 4, len - 4);
        names[*n][len - 4] = 0;
    }
    return type;
}

/* A connection to an export of size bytes in transmission with structured replies and, with
 * meta, base:allocation selected (its id in *ctx). */
static int cl_open_structured_size(const char *path, bool meta, uint32_t *ctx, uint64_t size)
{
    int fd = cl_connect(path);
    cl_hello(fd, 3);
    uint8_t r[16];
    uint32_t len;
    cl_opt(fd, OPT_STRUCTURED, NULL, 0);
    CHECK_EQ(cl_rep(fd, OPT_STRUCTURED, r, sizeof r, &len), REP_ACK);
    CHECK_EQ(len, 0);
    if (meta) {
        char names[4][64];
        uint32_t ids[4];
        unsigned n;
        const char *q[] = {"base:allocation", NULL};
        CHECK_EQ(cl_meta(fd, OPT_SET_META, q, names, ids, &n), REP_ACK);
        CHECK_EQ(n, 1);
        CHECK_STR(names[0], "base:allocation");
        *ctx = ids[0];
    }
    cl_go_opt_size(fd, OPT_GO, "disk", size);
    return fd;
}

static int cl_open_structured(const char *path, bool meta, uint32_t *ctx)
{
    return cl_open_structured_size(path, meta, ctx, EXPORT_SIZE);
}

/* The header of a structured reply chunk to cookie: its type; *done whether it is the last;
 * the payload's length in *len (left unread). */
static uint32_t cl_chunk(int fd, uint64_t cookie, bool *done, uint32_t *len)
{
    uint8_t h[20];
    CHECK_OK(cl_recv(fd, h, sizeof h));
    CHECK_EQ(get32(h), CHUNK_MAGIC);
    CHECK(get64(h + 8) == cookie);
    *done = (h[4] << 8 | h[5]) & CHUNK_DONE;
    *len = get32(h + 16);
    return (uint32_t)(h[6] << 8 | h[7]);
}

/* An ERROR chunk's payload (len bytes): its error. */
static uint32_t cl_chunk_error(int fd, uint32_t len)
{
    uint8_t e[6 + 4096];
    CHECK(len >= 6 && len <= sizeof e);
    CHECK_OK(cl_recv(fd, e, len));
    CHECK_EQ(6u + (e[4] << 8 | e[5]), len);
    CHECK(get32(e) != 0);
    return get32(e);
}

/* The whole structured reply to a request without data: its error (0 for a NONE chunk). */
static uint32_t cl_reply_structured(int fd, uint64_t cookie)
{
    bool done;
    uint32_t len, type = cl_chunk(fd, cookie, &done, &len);
    CHECK(done);
    if (type == TYPE_NONE) {
        CHECK_EQ(len, 0);
        return 0;
    }
    CHECK_EQ(type, TYPE_ERROR);
    return cl_chunk_error(fd, len);
}

/* A structured read of [off, off + len) into out: the error of its ERROR chunk, or 0 with
 * every byte covered by exactly one OFFSET_DATA or OFFSET_HOLE chunk inside the request. The
 * chunks of each kind are counted into *data and *holes. */
static uint32_t cl_read_structured(int fd, uint64_t off, uint32_t len, uint8_t *out, unsigned *data,
                                   unsigned *holes)
{
    static uint64_t cookie = 5000;
    cl_request(fd, CMD_READ, ++cookie, off, len);
    uint8_t *seen = calloc(1, len);
    uint32_t error = 0;
    *data = *holes = 0;
    for (bool done = false; !done;) {
        uint32_t clen, type = cl_chunk(fd, cookie, &done, &clen);
        uint8_t p[12];
        if (type == TYPE_ERROR) {
            error = cl_chunk_error(fd, clen);
            continue;
        }
        CHECK(type == TYPE_DATA || type == TYPE_HOLE);
        CHECK(type == TYPE_DATA ? clen > 8 : clen == 12);
        CHECK_OK(cl_recv(fd, p, type == TYPE_DATA ? 8 : 12));
        uint64_t at = get64(p);
        uint32_t n = type == TYPE_DATA ? clen - 8 : get32(p + 8);
        CHECK(n > 0 && at >= off && at - off <= len - n);
        for (uint32_t i = 0; i < n; i++) CHECK(!seen[at - off + i]++);
        if (type == TYPE_DATA) {
            CHECK_OK(cl_recv(fd, out + (at - off), n));
            ++*data;
        } else {
            memset(out + (at - off), 0, n);
            ++*holes;
        }
    }
    for (uint32_t i = 0; error == 0 && i < len; i++) CHECK(seen[i]);
    free(seen);
    return error;
}

struct extent {
    uint32_t length, flags;
};

/* NBD_CMD_BLOCK_STATUS: 0 with the extents (at most max) in ext and their count in *n, or the
 * error of the reply's ERROR chunk. */
static uint32_t cl_block_status(int fd, uint32_t ctx, uint16_t flags, uint64_t off, uint32_t len,
                                struct extent *ext, size_t max, size_t *n)
{
    static uint64_t cookie = 9000;
    uint8_t q[28] = {0};
    put32(q, REQ_MAGIC);
    q[4] = (uint8_t)(flags >> 8), q[5] = (uint8_t)flags;
    q[7] = CMD_BLOCK_STATUS;
    put64(q + 8, ++cookie);
    put64(q + 16, off);
    put32(q + 24, len);
    cl_send(fd, q, sizeof q);
    bool done;
    uint32_t clen, type = cl_chunk(fd, cookie, &done, &clen);
    CHECK(done);
    if (type == TYPE_ERROR) return cl_chunk_error(fd, clen);
    CHECK_EQ(type, TYPE_STATUS);
    CHECK(clen >= 12 && (clen - 4) % 8 == 0 && (clen - 4) / 8 <= max);
    uint8_t *p = malloc(clen);
    CHECK_OK(cl_recv(fd, p, clen));
    CHECK_EQ(get32(p), ctx);
    *n = (clen - 4) / 8;
    for (size_t i = 0; i < *n; i++) {
        ext[i].length = get32(p + 4 + 8 * i);
        ext[i].flags = get32(p + 8 + 8 * i);
        CHECK(ext[i].length > 0);
    }
    free(p);
    return 0;
}

/* ---- cases --------------------------------------------------------------------------------- */

/* After NBD_OPT_GO, reads aligned or not, across zero chunks and into the partial last chunk,
 * return the image's bytes (zeros up to the end of its last sector), and the counters follow. */
static void go_then_reads_return_the_image_bytes(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_open_go(f.sock);
    check_read(&f, fd, 0, CS_CHUNK_SIZE);
    check_read(&f, fd, 3 * CS_CHUNK_SIZE, 4 * CS_CHUNK_SIZE); /* into the zero run */
    check_read(&f, fd, 1, 1);
    check_read(&f, fd, 4095, 2);                                    /* across a chunk boundary */
    check_read(&f, fd, 7 * CS_CHUNK_SIZE + 100, 5 * CS_CHUNK_SIZE); /* partial, whole, partial */
    check_read(&f, fd, 40 * CS_CHUNK_SIZE, 1000);                   /* the whole tail */
    check_read(&f, fd, LENGTH - 10, 10);
    check_read(&f, fd, LENGTH - 10, EXPORT_SIZE - LENGTH + 10); /* zeros after the image */
    check_read(&f, fd, 0, EXPORT_SIZE);                         /* everything at once */
    cl_disc(fd);
    node_nbd_stats s;
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.connections, 1);
    CHECK_EQ(s.requests, 9);
    CHECK_EQ(s.read_bytes, 4096 + 4 * 4096 + 1 + 2 + 5 * 4096 + 1000 + 10 +
                               (EXPORT_SIZE - LENGTH + 10) + EXPORT_SIZE);
    CHECK_EQ(s.waits, 0);
    fx_close(&f);
}

/* NBD_OPT_EXPORT_NAME enters transmission too: size and flags, then 124 zero bytes unless
 * the client set NO_ZEROES. */
static void export_name_handshake_serves_the_same_bytes(void)
{
    struct fx f;
    fx_open(&f, false);
    for (uint32_t cflags = 1; cflags <= 3; cflags += 2) {
        int fd = cl_connect(f.sock);
        cl_hello(fd, cflags);
        cl_opt(fd, OPT_EXPORT_NAME, "disk", 4);
        uint8_t r[10 + 124], zero[124] = {0};
        size_t n = cflags & 2 ? 10 : sizeof r;
        CHECK_OK(cl_recv(fd, r, n));
        CHECK(get64(r) == EXPORT_SIZE);
        CHECK_EQ(r[8] << 8 | r[9], TFLAGS);
        if (n > 10) CHECK_MEM(r + 10, zero, 124);
        check_read(&f, fd, 9 * CS_CHUNK_SIZE + 17, 3 * CS_CHUNK_SIZE);
        cl_disc(fd);
    }
    /* The default export ("") is the same export. */
    int fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    cl_opt(fd, OPT_EXPORT_NAME, "", 0);
    uint8_t r[10];
    CHECK_OK(cl_recv(fd, r, sizeof r));
    check_read(&f, fd, 0, 100);
    cl_disc(fd);
    fx_close(&f);
}

/* Reads outside the image, of length 0 or of more than 32 MiB are EINVAL, and the connection
 * serves the next read. */
static void bad_reads_are_einval_and_the_connection_stays(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_open_go(f.sock);
    uint8_t b[16];
    CHECK_EQ(cl_read(fd, EXPORT_SIZE - 10, 11, b), 22);
    CHECK_EQ(cl_read(fd, EXPORT_SIZE, 1, b), 22);
    CHECK_EQ(cl_read(fd, UINT64_MAX - 1, 4, b), 22); /* offset + length overflows */
    CHECK_EQ(cl_read(fd, 0, 0, b), 22);
    CHECK_EQ(cl_read(fd, 0, (32u << 20) + 1, b), 22);
    check_read(&f, fd, 5, 10);
    cl_request(fd, CMD_BLOCK_STATUS, 7, 0, 4096);
    CHECK_EQ(cl_reply(fd, 7), 22);
    cl_request(fd, 99, 8, 0, 4096);
    CHECK_EQ(cl_reply(fd, 8), 22);
    check_read(&f, fd, 0, 10);
    cl_disc(fd);
    fx_close(&f);
}

/* The export is read-only: writes (their payload read and dropped), TRIM and WRITE_ZEROES are
 * EPERM; FLUSH succeeds. */
static void writes_are_eperm_and_flush_succeeds(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_open_go(f.sock);
    uint8_t payload[5000];
    memset(payload, 0xab, sizeof payload);
    cl_request(fd, CMD_WRITE, 1, 0, sizeof payload);
    cl_send(fd, payload, sizeof payload);
    CHECK_EQ(cl_reply(fd, 1), 1);
    cl_request(fd, CMD_TRIM, 2, 0, 4096);
    CHECK_EQ(cl_reply(fd, 2), 1);
    cl_request(fd, CMD_WRITE_ZEROES, 3, 0, 4096);
    CHECK_EQ(cl_reply(fd, 3), 1);
    cl_request(fd, CMD_FLUSH, 4, 0, 0);
    CHECK_EQ(cl_reply(fd, 4), 0);
    check_read(&f, fd, 0, 5000); /* unchanged */
    cl_disc(fd);
    fx_close(&f);
}

/* Options the server does not know are ERR_UNSUP with their data read; LIST names the export;
 * INFO then GO still work after them. */
static void unknown_option_is_unsupported_then_go_works(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    uint8_t r[300];
    uint32_t len;
    cl_opt(fd, 5, NULL, 0); /* STARTTLS */
    CHECK_EQ(cl_rep(fd, 5, r, sizeof r, &len), REP_ERR_UNSUP);
    cl_opt(fd, 1000, "some data", 9);
    CHECK_EQ(cl_rep(fd, 1000, r, sizeof r, &len), REP_ERR_UNSUP);
    cl_opt(fd, OPT_LIST, NULL, 0);
    CHECK_EQ(cl_rep(fd, OPT_LIST, r, sizeof r, &len), REP_SERVER);
    CHECK_EQ(len, 8);
    CHECK_EQ(get32(r), 4);
    CHECK_MEM(r + 4, "disk", 4);
    CHECK_EQ(cl_rep(fd, OPT_LIST, r, sizeof r, &len), REP_ACK);
    cl_go_opt(fd, OPT_INFO, "disk");
    cl_go_opt(fd, OPT_GO, "");
    check_read(&f, fd, 100, 200);
    cl_disc(fd);
    fx_close(&f);
}

/* An unknown export name is ERR_UNKNOWN to GO (the client may try again) and closes the
 * connection after EXPORT_NAME (which has no error reply). */
static void unknown_export_is_err_unknown(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    uint8_t d[300], r[300];
    uint32_t len;
    cl_opt(fd, OPT_GO, d, go_data(d, "nope"));
    CHECK_EQ(cl_rep(fd, OPT_GO, r, sizeof r, &len), REP_ERR_UNKNOWN);
    cl_go_opt(fd, OPT_GO, "disk");
    check_read(&f, fd, 0, 10);
    cl_disc(fd);

    fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    cl_opt(fd, OPT_EXPORT_NAME, "nope", 4);
    CHECK(cl_closed(fd));
    close(fd);
    fx_close(&f);
}

/* NBD_OPT_ABORT is acknowledged and ends the connection. */
static void abort_is_acknowledged_and_closes(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    cl_opt(fd, OPT_ABORT, NULL, 0);
    uint8_t r[16];
    uint32_t len;
    CHECK_EQ(cl_rep(fd, OPT_ABORT, r, sizeof r, &len), REP_ACK);
    CHECK(cl_closed(fd));
    close(fd);
    fx_close(&f);
}

/* While a fetch runs, a read of a chunk the store lacks waits for it and is answered with its
 * bytes once it is stored. */
static void read_waits_for_a_chunk_on_its_way(void)
{
    struct fx f;
    fx_open(&f, true);
    cs_arrivals_begin(f.st);
    int fd = cl_open_go(f.sock);
    uint64_t off = MISSING_POS * CS_CHUNK_SIZE - 10;
    cl_request(fd, CMD_READ, 5, off, 100);
    CHECK(cl_quiet(fd, 200)); /* waiting */
    CHECK_OK(cs_put(f.st, f.missing[0], 1, NULL, NULL, NULL, NULL));
    CHECK_EQ(cl_reply(fd, 5), 0);
    uint8_t buf[100];
    CHECK_OK(cl_recv(fd, buf, sizeof buf));
    CHECK_MEM(buf, f.data + off, sizeof buf);
    cs_arrivals_end(f.st);
    node_nbd_stats s;
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.waits, 1);
    check_read(&f, fd, 0, LENGTH); /* now held: no wait */
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.waits, 1);
    cl_disc(fd);
    fx_close(&f);
}

/* When the fetch ends without the chunk, the waiting read is EIO and the connection stays. */
static void read_of_a_chunk_that_never_came_is_eio(void)
{
    struct fx f;
    fx_open(&f, true);
    cs_arrivals_begin(f.st);
    int fd = cl_open_go(f.sock);
    cl_request(fd, CMD_READ, 5, MISSING_POS * CS_CHUNK_SIZE, 4096);
    CHECK(cl_quiet(fd, 200));
    cs_arrivals_end(f.st);
    CHECK_EQ(cl_reply(fd, 5), 5);
    uint8_t b[8];
    CHECK_EQ(cl_read(fd, MISSING_POS * CS_CHUNK_SIZE + 8, 8, b), 5); /* no fetch runs: at once */
    check_read(&f, fd, 0, MISSING_POS * CS_CHUNK_SIZE);
    cl_disc(fd);
    fx_close(&f);
}

/* Stopping the server while a read waits for a chunk returns within a second and removes the
 * socket; the client sees its connection end (after an EIO reply if the read gave up first). */
static void stop_while_a_read_waits_is_prompt(void)
{
    struct fx f;
    fx_open(&f, true);
    cs_arrivals_begin(f.st);
    int fd = cl_open_go(f.sock);
    cl_request(fd, CMD_READ, 5, MISSING_POS * CS_CHUNK_SIZE, 4096);
    CHECK(cl_quiet(fd, 200));
    double t0 = now_s();
    node_nbd_stop(f.srv);
    f.srv = NULL;
    double took = now_s() - t0;
    if (took >= 1.0) TL_FAIL("node_nbd_stop took %.3f s", took);
    struct stat sb;
    CHECK(lstat(f.sock, &sb) != 0 && errno == ENOENT);
    /* The read gave up: the connection ends, maybe after its EIO reply. */
    uint8_t r[16];
    if (cl_recv(fd, r, sizeof r) == 0) {
        CHECK_EQ(get32(r), REPLY_MAGIC);
        CHECK_EQ(get32(r + 4), 5);
        CHECK(cl_closed(fd));
    }
    close(fd);
    cs_arrivals_end(f.st);
    fx_close(&f);
}

/* A request with a bad magic ends that connection; the server accepts the next one. */
static void bad_request_magic_drops_only_that_connection(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_open_go(f.sock);
    uint8_t q[28] = {0xde, 0xad, 0xbe, 0xef};
    cl_send(fd, q, sizeof q);
    CHECK(cl_closed(fd));
    close(fd);
    fd = cl_open_go(f.sock);
    check_read(&f, fd, 4000, 200);
    cl_disc(fd);
    node_nbd_stats s;
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.connections, 2);
    fx_close(&f);
}

/* Sixteen connections are served at once; the next is closed at once, and once one of the
 * sixteen has left a new one is served. */
static void connections_beyond_sixteen_are_refused(void)
{
    struct fx f;
    fx_open(&f, false);
    int fds[16];
    for (int i = 0; i < 16; i++) fds[i] = cl_open_go(f.sock);
    int extra = cl_connect(f.sock);
    CHECK(cl_closed(extra));
    close(extra);
    /* The session closes its socket and counts itself out under one lock: once the client
     * sees the end, the next connection finds the slot free. */
    cl_disc(fds[0]);
    int fd = cl_open_go(f.sock);
    check_read(&f, fd, 0, 1000);
    cl_disc(fd);
    for (int i = 1; i < 16; i++) check_read(&f, fds[i], (uint64_t)i * 1000, 1000);
    fx_close(&f); /* cuts the fifteen still open */
    for (int i = 1; i < 16; i++) close(fds[i]);
}

/* A stale socket at the path is replaced; any other file is left alone and refused. */
static void start_replaces_a_stale_socket_only(void)
{
    struct fx f;
    fx_open(&f, false);
    node_nbd_stop(f.srv);
    /* A socket left behind by a process that died. */
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = unix_addr(f.sock);
    CHECK_OK(bind(s, (struct sockaddr *)&sa, sizeof sa));
    close(s);
    char err[NODE_ERRMSG] = "";
    CHECK_OK(node_nbd_start(f.st, f.im, f.sock, NULL, &f.srv, err));
    struct stat sb;
    CHECK_OK(stat(f.sock, &sb));
    CHECK_EQ(sb.st_mode & 0777, 0666);
    int fd = cl_open_go(f.sock);
    check_read(&f, fd, 0, 10);
    cl_disc(fd);
    node_nbd_stop(f.srv);
    f.srv = NULL;
    /* With an owner (QEMU's user): that user's, mode 0600. */
    node_nbd_owner me = {getuid(), getgid()};
    node_nbd_opts opts = {.owner = &me};
    CHECK_OK(node_nbd_start(f.st, f.im, f.sock, &opts, &f.srv, err));
    CHECK_OK(stat(f.sock, &sb));
    CHECK_EQ(sb.st_mode & 0777, 0600);
    CHECK_EQ(sb.st_uid, me.uid);
    CHECK_EQ(sb.st_gid, me.gid);
    fd = cl_open_go(f.sock);
    check_read(&f, fd, 0, 10);
    cl_disc(fd);
    node_nbd_stop(f.srv);
    f.srv = NULL;

    char path[512];
    snprintf(path, sizeof path, "%s/plain", f.dir);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    node_nbd *n = NULL;
    CHECK_EQ(node_nbd_start(f.st, f.im, path, NULL, &n, err), -EEXIST);
    CHECK(strstr(err, "not a socket") != NULL);
    CHECK_OK(stat(path, &sb));
    CHECK(S_ISREG(sb.st_mode));
    fx_close(&f);
}

/* What want heard, for the test to wait on. */
struct want_log {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned calls;
    size_t n;
    cs_id ids[8];
};

static void record_want(const cs_id *ids, size_t n, void *arg)
{
    struct want_log *w = arg;
    pthread_mutex_lock(&w->mu);
    w->calls++;
    w->n = n;
    memcpy(w->ids, ids, (n < 8 ? n : 8) * sizeof *ids);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Waits (at most 10 s) until want has been called: how many times it was. */
static unsigned want_calls(struct want_log *w)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&w->mu);
    while (w->calls == 0 && pthread_cond_timedwait(&w->cv, &w->mu, &until) == 0) {}
    unsigned calls = w->calls;
    pthread_mutex_unlock(&w->mu);
    return calls;
}

/* A read that meets chunks the store lacks tells want their ids once, each once and in image
 * order, before it waits; it is answered once they are stored. Reads of held chunks never
 * call want. */
static void read_tells_want_what_it_lacks_then_waits(void)
{
    struct want_log w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {{{0}}}};
    node_nbd_opts opts = {.want = record_want, .arg = &w};
    struct fx f;
    fx_open_opts(&f, 2, &opts);
    cs_arrivals_begin(f.st);
    int fd = cl_open_go(f.sock);
    check_read(&f, fd, 0, MISSING_POS * CS_CHUNK_SIZE); /* held */
    /* Chunks 11 to 16: 12 and 13 missing, 15 naming 12 again, the rest held. */
    uint64_t off = (MISSING_POS - 1) * CS_CHUNK_SIZE + 100;
    uint32_t len = 5 * CS_CHUNK_SIZE;
    cl_request(fd, CMD_READ, 5, off, len);
    CHECK_EQ(want_calls(&w), 1);
    CHECK_EQ(w.n, 2);
    cs_id id;
    cs_chunk_id(f.missing[0], &id);
    CHECK(cs_id_equal(&w.ids[0], &id));
    cs_chunk_id(f.missing[1], &id);
    CHECK(cs_id_equal(&w.ids[1], &id));
    CHECK(cl_quiet(fd, 100)); /* waiting */
    CHECK_OK(cs_put(f.st, f.missing, 2, NULL, NULL, NULL, NULL));
    CHECK_EQ(cl_reply(fd, 5), 0);
    uint8_t *buf = malloc(len);
    CHECK_OK(cl_recv(fd, buf, len));
    CHECK_MEM(buf, f.data + off, len);
    free(buf);
    check_read(&f, fd, 0, LENGTH); /* all held now */
    cs_arrivals_end(f.st);
    CHECK_EQ(w.calls, 1);
    node_nbd_stats s;
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.waits, 1);
    cl_disc(fd);
    fx_close(&f);
}

/* STRUCTURED_REPLY with data is ERR_INVALID, and the meta context options are ERR_INVALID
 * until structured replies are negotiated; then SET_META_CONTEXT selects base:allocation. */
static void meta_contexts_need_structured_replies(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    char names[4][64];
    uint32_t ids[4], len;
    unsigned n;
    const char *q[] = {"base:allocation", NULL};
    CHECK_EQ(cl_meta(fd, OPT_SET_META, q, names, ids, &n), REP_ERR_INVALID);
    CHECK_EQ(n, 0);
    CHECK_EQ(cl_meta(fd, OPT_LIST_META, q, names, ids, &n), REP_ERR_INVALID);
    uint8_t r[300];
    cl_opt(fd, OPT_STRUCTURED, "x", 1);
    CHECK_EQ(cl_rep(fd, OPT_STRUCTURED, r, sizeof r, &len), REP_ERR_INVALID);
    cl_opt(fd, OPT_STRUCTURED, NULL, 0);
    CHECK_EQ(cl_rep(fd, OPT_STRUCTURED, r, sizeof r, &len), REP_ACK);
    CHECK_EQ(cl_meta(fd, OPT_SET_META, q, names, ids, &n), REP_ACK);
    CHECK_EQ(n, 1);
    CHECK_STR(names[0], "base:allocation");
    cl_go_opt(fd, OPT_GO, "disk");
    struct extent e[4];
    size_t ne;
    CHECK_EQ(cl_block_status(fd, ids[0], 0, 0, 4096, e, 4, &ne), 0);
    cl_disc(fd);
    fx_close(&f);
}

/* LIST_META_CONTEXT names base:allocation for no query, "base:" or its name; SET selects it
 * by name only, once however often asked, ignoring what it does not know; a malformed request
 * is ERR_INVALID, another export ERR_UNKNOWN, and a failed SET leaves nothing selected. */
static void meta_context_options_select_base_allocation_only(void)
{
    struct fx f;
    fx_open(&f, false);
    int fd = cl_connect(f.sock);
    cl_hello(fd, 3);
    uint8_t r[300], d[512];
    uint32_t ids[4], len;
    char names[4][64];
    unsigned n;
    cl_opt(fd, OPT_STRUCTURED, NULL, 0);
    CHECK_EQ(cl_rep(fd, OPT_STRUCTURED, r, sizeof r, &len), REP_ACK);
    const char *none[] = {NULL}, *ns[] = {"base:", NULL}, *other[] = {"x-foo:", "qemu:", NULL};
    const char *many[] = {"qemu:dirty-bitmap:a", "base:allocation", "base:allocation", NULL};
    CHECK_EQ(cl_meta(fd, OPT_LIST_META, none, names, ids, &n), REP_ACK);
    CHECK_EQ(n, 1);
    CHECK_STR(names[0], "base:allocation");
    CHECK_EQ(ids[0], 0);
    CHECK_EQ(cl_meta(fd, OPT_LIST_META, ns, names, ids, &n), REP_ACK);
    CHECK_EQ(n, 1);
    CHECK_STR(names[0], "base:allocation");
    CHECK_EQ(cl_meta(fd, OPT_LIST_META, other, names, ids, &n), REP_ACK);
    CHECK_EQ(n, 0);
    CHECK_EQ(cl_meta(fd, OPT_SET_META, ns, names, ids, &n), REP_ACK);
    CHECK_EQ(n, 0);
    CHECK_EQ(cl_meta(fd, OPT_SET_META, many, names, ids, &n), REP_ACK);
    CHECK_EQ(n, 1);
    CHECK_STR(names[0], "base:allocation");
    /* A query longer than the option's data. */
    uint32_t dl = meta_data(d, "disk", many);
    put32(d + 8 + 4, 1000);
    cl_opt(fd, OPT_SET_META, d, dl);
    CHECK_EQ(cl_rep(fd, OPT_SET_META, r, sizeof r, &len), REP_ERR_INVALID);
    /* Data after the last query. */
    dl = meta_data(d, "disk", ns);
    cl_opt(fd, OPT_LIST_META, d, dl + 1);
    CHECK_EQ(cl_rep(fd, OPT_LIST_META, r, sizeof r, &len), REP_ERR_INVALID);
    cl_opt(fd, OPT_SET_META, d, 3);
    CHECK_EQ(cl_rep(fd, OPT_SET_META, r, sizeof r, &len), REP_ERR_INVALID);
    cl_opt(fd, OPT_SET_META, d, meta_data(d, "nope", many));
    CHECK_EQ(cl_rep(fd, OPT_SET_META, r, sizeof r, &len), REP_ERR_UNKNOWN);
    cl_go_opt(fd, OPT_GO, "disk");
    struct extent e[4];
    size_t ne;
    CHECK_EQ(cl_block_status(fd, 1, 0, 0, 4096, e, 4, &ne), 22); /* nothing selected */
    cl_disc(fd);
    fx_close(&f);
}

/* A structured read of the fixture's [off, off + len): its bytes, in data and hole chunks. */
static void check_read_structured(struct fx *f, int fd, uint64_t off, uint32_t len, unsigned data,
                                  unsigned holes)
{
    uint8_t *buf = malloc(len);
    unsigned nd, nh;
    CHECK_EQ(cl_read_structured(fd, off, len, buf, &nd, &nh), 0);
    if (memcmp(buf, f->data + off, len) != 0)
        TL_FAIL("read at %llu of %u bytes differs", (unsigned long long)off, len);
    CHECK_EQ(nd, data);
    CHECK_EQ(nh, holes);
    free(buf);
}

/* With structured replies a read comes in chunks, OFFSET_HOLE for the image's zero chunks and
 * OFFSET_DATA for the rest, with the image's bytes; errors come as ERROR chunks, and the other
 * requests are answered with a NONE or an ERROR chunk. */
static void structured_reads_send_zero_chunks_as_holes(void)
{
    struct fx f;
    fx_open(&f, true);
    int fd = cl_open_structured(f.sock, false, NULL);
    check_read_structured(&f, fd, 3 * CS_CHUNK_SIZE, 9 * CS_CHUNK_SIZE, 2, 1);
    check_read_structured(&f, fd, 5 * CS_CHUNK_SIZE + 10, 100, 0, 1);
    check_read_structured(&f, fd, 4 * CS_CHUNK_SIZE + 4000, 200, 1, 1); /* data, then hole */
    check_read_structured(&f, fd, LENGTH - 10, EXPORT_SIZE - LENGTH + 10, 1, 0);
    check_read_structured(&f, fd, 0, MISSING_POS * CS_CHUNK_SIZE, 2, 1);
    uint8_t *buf = malloc(EXPORT_SIZE);
    unsigned nd, nh;
    /* The missing chunk, no fetch running: EIO. */
    CHECK_EQ(cl_read_structured(fd, 0, EXPORT_SIZE, buf, &nd, &nh), 5);
    CHECK_EQ(cl_read_structured(fd, EXPORT_SIZE - 10, 11, buf, &nd, &nh), 22);
    CHECK_EQ(cl_read_structured(fd, 0, 0, buf, &nd, &nh), 22);
    free(buf);
    cl_request(fd, CMD_FLUSH, 1, 0, 0);
    CHECK_EQ(cl_reply_structured(fd, 1), 0);
    cl_request(fd, CMD_TRIM, 2, 0, 4096);
    CHECK_EQ(cl_reply_structured(fd, 2), 1);
    cl_request(fd, 99, 3, 0, 4096);
    CHECK_EQ(cl_reply_structured(fd, 3), 22);
    cl_request(fd, CMD_BLOCK_STATUS, 4, 0, 4096); /* no meta context selected */
    CHECK_EQ(cl_reply_structured(fd, 4), 22);
    check_read_structured(&f, fd, 13 * CS_CHUNK_SIZE, 19 * CS_CHUNK_SIZE, 2, 1);
    cl_disc(fd);
    node_nbd_stats s;
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.requests, 13);
    fx_close(&f);
}

static void check_extents(const struct extent *got, size_t n, const struct extent *want,
                          size_t nwant)
{
    CHECK_EQ(n, nwant);
    for (size_t i = 0; i < n; i++) {
        if (got[i].length != want[i].length || got[i].flags != want[i].flags)
            TL_FAIL("extent %zu is %u bytes, flags %u: not %u bytes, flags %u", i, got[i].length,
                    got[i].flags, want[i].length, want[i].flags);
    }
}

/* BLOCK_STATUS for base:allocation reports the image's zero chunks as holes that read as zeros
 * and the rest as data, within the request (one extent with REQ_ONE) and the export. */
static void block_status_reports_zero_chunks_as_holes(void)
{
    struct fx f;
    fx_open(&f, false);
    uint32_t ctx;
    int fd = cl_open_structured(f.sock, true, &ctx);
    struct extent e[16];
    size_t n;
    const uint32_t C = CS_CHUNK_SIZE, H = STATE_HOLE_ZERO;
    CHECK_EQ(cl_block_status(fd, ctx, 0, 0, EXPORT_SIZE, e, 16, &n), 0);
    check_extents(
        e, n,
        (struct extent[]){{5 * C, 0}, {5 * C, H}, {20 * C, 0}, {C, H}, {EXPORT_SIZE - 31 * C, 0}},
        5);
    CHECK_EQ(cl_block_status(fd, ctx, 0, 9 * C, 3 * C, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{C, H}, {2 * C, 0}}, 2);
    CHECK_EQ(cl_block_status(fd, ctx, 0, 5 * C + 100, 2 * C, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{2 * C, H}}, 1);
    CHECK_EQ(cl_block_status(fd, ctx, 0, 30 * C - 512, 2 * C, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{512, 0}, {C, H}, {C - 512, 0}}, 3);
    CHECK_EQ(cl_block_status(fd, ctx, CMD_FLAG_REQ_ONE, 6 * C, 10 * C, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{4 * C, H}}, 1);
    CHECK_EQ(cl_block_status(fd, ctx, CMD_FLAG_REQ_ONE, 0, 100, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{100, 0}}, 1);
    CHECK_EQ(cl_block_status(fd, ctx, CMD_FLAG_REQ_ONE, 0, EXPORT_SIZE, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{5 * C, 0}}, 1);
    CHECK_EQ(cl_block_status(fd, ctx, 0, 40 * C, EXPORT_SIZE - 40 * C, e, 16, &n), 0);
    check_extents(e, n, (struct extent[]){{EXPORT_SIZE - 40 * C, 0}}, 1);
    CHECK_EQ(cl_block_status(fd, ctx, 0, EXPORT_SIZE, 1, e, 16, &n), 22);
    CHECK_EQ(cl_block_status(fd, ctx, 0, EXPORT_SIZE - 512, 1024, e, 16, &n), 22);
    CHECK_EQ(cl_block_status(fd, ctx, 0, UINT64_MAX - 10, 100, e, 16, &n), 22);
    CHECK_EQ(cl_block_status(fd, ctx, 0, 0, 0, e, 16, &n), 22);
    CHECK_EQ(cl_block_status(fd, ctx, 0x100, 0, 4096, e, 16, &n), 22); /* an unknown flag */
    check_read_structured(&f, fd, 0, EXPORT_SIZE, 3, 2);
    cl_disc(fd);
    node_nbd_stats s;
    node_nbd_stats_get(f.srv, &s);
    CHECK_EQ(s.read_bytes, EXPORT_SIZE - 6 * C); /* the holes' zeros are not sent */
    fx_close(&f);
}

/* An image of alternating zero and data chunks: one BLOCK_STATUS reply carries at most 1024
 * extents, and the next request goes on from where it ended. */
static void block_status_caps_the_extents_of_one_reply(void)
{
    struct fx f;
    fx_open(&f, false);
    const uint32_t C = CS_CHUNK_SIZE, nchunks = 1500;
    uint8_t *stripes = calloc(nchunks, C);
    for (uint32_t i = 1; i < nchunks; i += 2) tl_fill_random(stripes + (size_t)i * C, C, i);
    char path[512];
    snprintf(path, sizeof path, "%s/striped.raw", f.dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, stripes, (size_t)nchunks * C), (ssize_t)nchunks * C);
    cs_image *im = cs_manifest_add_image(f.m, CS_IMAGE_DISK, "striped", (uint64_t)nchunks * C);
    CHECK_OK(cs_image_import_fd(f.st, fd, im, 2, NULL, NULL, NULL, NULL));
    close(fd);
    free(stripes);
    snprintf(path, sizeof path, "%s/striped.sock", f.dir);
    node_nbd *srv;
    char err[NODE_ERRMSG] = "";
    CHECK_OK(node_nbd_start(f.st, im, path, NULL, &srv, err));
    uint32_t ctx;
    fd = cl_open_structured_size(path, true, &ctx, (uint64_t)nchunks * C);
    struct extent *e = malloc(2048 * sizeof *e);
    size_t n;
    CHECK_EQ(cl_block_status(fd, ctx, 0, 0, nchunks * C, e, 2048, &n), 0);
    CHECK_EQ(n, 1024);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ(e[i].length, C);
        CHECK_EQ(e[i].flags, i % 2 ? 0u : STATE_HOLE_ZERO);
    }
    CHECK_EQ(cl_block_status(fd, ctx, 0, 1024 * C, (nchunks - 1024) * C, e, 2048, &n), 0);
    CHECK_EQ(n, nchunks - 1024);
    CHECK_EQ(e[n - 1].flags, 0);
    free(e);
    cl_disc(fd);
    node_nbd_stop(srv);
    fx_close(&f);
}

/* The protocol alone, from memory: a session ends with 0 after DISC or ABORT and with an error
 * when the stream ends or breaks the protocol. */
struct mem {
    const uint8_t *in;
    size_t left;
};

static int mem_recv(void *arg, void *buf, size_t n)
{
    struct mem *m = arg;
    if (n > m->left) return -ECONNRESET;
    memcpy(buf, m->in, n);
    m->in += n, m->left -= n;
    return 0;
}

static int mem_send(void *arg, const void *buf, size_t n)
{
    return 0;
}

static int mem_read_at(void *arg, uint64_t off, size_t len, uint8_t *out)
{
    memset(out, 7, len);
    return 0;
}

static int run_session(const uint8_t *in, size_t n, node_nbd_stats *s)
{
    struct mem m = {in, n};
    node__nbd_io io = {mem_recv, mem_send, mem_read_at, &m, 1u << 20};
    return node__nbd_session(&io, s);
}

static void session_result_says_how_it_ended(void)
{
    uint8_t in[256], *p = in;
    put32(p, 3), p += 4;
    put64(p, IHAVEOPT), put32(p + 8, OPT_EXPORT_NAME), put32(p + 12, 4), memcpy(p + 16, "disk", 4);
    p += 20;
    uint8_t *tx = p;
    put32(p, REQ_MAGIC), memset(p + 4, 0, 24), put32(p + 24, 512), p += 28; /* READ 0, 512 */
    put32(p, REQ_MAGIC), memset(p + 4, 0, 24), p[7] = CMD_DISC, p += 28;
    node_nbd_stats s = {0};
    CHECK_EQ(run_session(in, (size_t)(p - in), &s), 0);
    CHECK_EQ(s.requests, 1);
    CHECK_EQ(s.read_bytes, 512);
    CHECK(run_session(in, (size_t)(p - in) - 28, NULL) < 0); /* the stream ends */
    tx[0] ^= 1;
    CHECK(run_session(in, (size_t)(p - in), NULL) < 0); /* bad request magic */

    p = in;
    put32(p, 3), p += 4;
    put64(p, IHAVEOPT), put32(p + 8, OPT_ABORT), put32(p + 12, 0), p += 16;
    CHECK_EQ(run_session(in, (size_t)(p - in), NULL), 0);
    put32(in, 4); /* an unknown client flag */
    CHECK(run_session(in, (size_t)(p - in), NULL) < 0);
}

TL_MAIN(TL_CASE(go_then_reads_return_the_image_bytes),
        TL_CASE(export_name_handshake_serves_the_same_bytes),
        TL_CASE(bad_reads_are_einval_and_the_connection_stays),
        TL_CASE(writes_are_eperm_and_flush_succeeds),
        TL_CASE(unknown_option_is_unsupported_then_go_works),
        TL_CASE(unknown_export_is_err_unknown), TL_CASE(abort_is_acknowledged_and_closes),
        TL_CASE(read_waits_for_a_chunk_on_its_way), TL_CASE(read_of_a_chunk_that_never_came_is_eio),
        TL_CASE(stop_while_a_read_waits_is_prompt),
        TL_CASE(bad_request_magic_drops_only_that_connection),
        TL_CASE(connections_beyond_sixteen_are_refused),
        TL_CASE(start_replaces_a_stale_socket_only), TL_CASE(session_result_says_how_it_ended),
        TL_CASE(read_tells_want_what_it_lacks_then_waits),
        TL_CASE(meta_contexts_need_structured_replies),
        TL_CASE(meta_context_options_select_base_allocation_only),
        TL_CASE(structured_reads_send_zero_chunks_as_holes),
        TL_CASE(block_status_reports_zero_chunks_as_holes),
        TL_CASE(block_status_caps_the_extents_of_one_reply))
