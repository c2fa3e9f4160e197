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
#define REP_ACK          1u
#define REP_SERVER       2u
#define REP_INFO         3u
#define REP_ERR_UNSUP    0x80000001u
#define REP_ERR_UNKNOWN  0x80000006u
#define CMD_READ         0u
#define CMD_WRITE        1u
#define CMD_DISC         2u
#define CMD_FLUSH        3u
#define CMD_TRIM         4u
#define CMD_WRITE_ZEROES 6u
#define CMD_BLOCK_STATUS 7u
#define TFLAGS           0x107u /* HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN */

/* The image: 40 whole chunks (5..9 and 30 zero, 20 a copy of 2) and a 1000-byte tail. */
#define NCHUNKS 41u
#define LENGTH  (40u * CS_CHUNK_SIZE + 1000u)
/* The export: the image rounded up to whole sectors, zeros after its end. */
#define EXPORT_SIZE ((LENGTH + 511u) / 512u * 512u)
/* The chunk the "missing" fixture leaves out of the store. */
#define MISSING_POS 12u

struct fx {
    char *dir;
    char sock[256];
    cs_store *st;
    cs_manifest *m;
    cs_image *im;
    uint8_t *data; /* the image's bytes */
    uint8_t missing[CS_CHUNK_SIZE];
    node_nbd *srv;
};

static void fx_open(struct fx *f, bool with_missing)
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
    if (with_missing) {
        /* A chunk the image names but the store does not hold yet. */
        tl_fill_random(f->missing, CS_CHUNK_SIZE, 99);
        memcpy(f->data + MISSING_POS * CS_CHUNK_SIZE, f->missing, CS_CHUNK_SIZE);
        cs_chunk_id(f->missing, &f->im->chunks[MISSING_POS]);
    }
    char err[NODE_ERRMSG] = "";
    if (node_nbd_start(f->st, f->im, f->sock, NULL, &f->srv, err)) TL_FAIL("start: %s", err);
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

/* NBD_OPT_GO (or INFO) for name, answered with the export's size, flags and block sizes. */
static void cl_go_opt(int fd, uint32_t opt, const char *name)
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
            CHECK(get64(r + 2) == EXPORT_SIZE);
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
    cl_opt(fd, 8, NULL, 0); /* STRUCTURED_REPLY */
    CHECK_EQ(cl_rep(fd, 8, r, sizeof r, &len), REP_ERR_UNSUP);
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
    CHECK_OK(cs_put(f.st, f.missing, 1, NULL, NULL, NULL, NULL));
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
    CHECK_OK(node_nbd_start(f.st, f.im, f.sock, &me, &f.srv, err));
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
        TL_CASE(start_replaces_a_stale_socket_only), TL_CASE(session_result_says_how_it_ended))
