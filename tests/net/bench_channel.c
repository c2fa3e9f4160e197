/*
 * bench_channel — ceilings of the network path on this machine (figures in
 * docs/PERFORMANCE.md): plain loopback TCP, one secretstream (seal and open on one core), the
 * whole channel over a real loopback connection (net_conn on one libuv loop, both ends in this
 * process), and what a handshake costs a responder (an outsider's rejected initiation against a
 * full one). Usage: bench_channel [MiB] (default 512).
 */
#include "net.h"
#include "testlib.h"

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- plain TCP over 127.0.0.1 -------------------------------------------------------------- */

typedef struct tcp_job {
    int fd;
    uint64_t bytes;
} tcp_job;

static void *tcp_reader(void *arg)
{
    tcp_job *j = arg;
    static uint8_t buf[1 << 18];
    uint64_t got = 0;
    while (got < j->bytes) {
        ssize_t n = read(j->fd, buf, sizeof buf);
        if (n <= 0) break;
        got += (uint64_t)n;
    }
    j->bytes = got;
    return NULL;
}

static double bench_tcp(uint64_t bytes)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&a, sizeof a) == 0 && listen(ls, 1) == 0);
    CHECK(getsockname(ls, (struct sockaddr *)&a, &al) == 0);
    int cs = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(cs, (struct sockaddr *)&a, sizeof a) == 0);
    int ss = accept(ls, NULL, NULL);
    CHECK(ss >= 0);
    tcp_job j = {ss, bytes};
    pthread_t t;
    static uint8_t buf[1 << 18];
    tl_fill_random(buf, sizeof buf, 1);
    double t0 = now_s();
    CHECK_OK(pthread_create(&t, NULL, tcp_reader, &j));
    for (uint64_t sent = 0; sent < bytes;) {
        ssize_t n = write(cs, buf, sizeof buf);
        CHECK(n > 0);
        sent += (uint64_t)n;
    }
    pthread_join(t, NULL);
    double dt = now_s() - t0;
    close(cs);
    close(ss);
    close(ls);
    return (double)bytes / dt / 1e6;
}

/* ---- one secretstream, both ends on one core ----------------------------------------------- */

static void channel_pair(net_channel *x, net_channel *y)
{
    net_hs_result k1, k2;
    uint8_t hx[NET_STREAM_HEADER_BYTES], hy[NET_STREAM_HEADER_BYTES];
    randombytes_buf(k1.tx, 32);
    randombytes_buf(k1.rx, 32);
    memcpy(k2.tx, k1.rx, 32);
    memcpy(k2.rx, k1.tx, 32);
    CHECK_OK(net_channel_init(x, &k1, hx));
    CHECK_OK(net_channel_init(y, &k2, hy));
    CHECK_OK(net_channel_accept_header(x, hy, sizeof hy));
    CHECK_OK(net_channel_accept_header(y, hx, sizeof hx));
}

static void bench_stream(uint64_t bytes, size_t msg, double *seal_mbs, double *open_mbs)
{
    net_channel x, y;
    channel_pair(&x, &y);
    uint8_t *p = malloc(msg), *f = malloc(msg + 64), *o = malloc(msg + 64);
    tl_fill_random(p, msg, 2);
    uint64_t n = bytes / msg;
    double ts = 0, to = 0;
    for (uint64_t i = 0; i < n; i++) {
        size_t fl, pl;
        uint8_t type;
        double t0 = now_s();
        CHECK_OK(net_channel_seal(&x, 0x20, p, msg, f, &fl));
        double t1 = now_s();
        CHECK_OK(net_channel_open(&y, f, fl, &type, o, &pl));
        to += now_s() - t1;
        ts += t1 - t0;
    }
    *seal_mbs = (double)(n * msg) / ts / 1e6;
    *open_mbs = (double)(n * msg) / to / 1e6;
    free(p);
    free(f);
    free(o);
}

/* ---- the channel over a loopback connection ------------------------------------------------ */

typedef struct conn_bench {
    uint64_t to_send, sent, received, bytes;
    size_t msg;
    uint8_t *payload;
    bool done, established, closed, ep_closed;
    net_conn *client;
} conn_bench;

static conn_bench cb_state;

static void cb_more(net_conn *c)
{
    conn_bench *b = &cb_state;
    b->established = true;
    while (b->sent < b->to_send) {
        int rc = net_conn_send(c, 0x20, b->payload, b->msg);
        if (rc == NET_EAGAIN) return;
        CHECK_OK(rc);
        b->sent++;
    }
}

static void cb_message(net_conn *c, uint8_t type, const uint8_t *p, size_t len)
{
    cb_state.received++;
    cb_state.bytes += len;
    if (cb_state.received == cb_state.to_send) cb_state.done = true;
}

static void cb_close(net_conn *c, int status)
{
    if (!net_conn_incoming(c)) cb_state.closed = true;
}

static const net_conn_cbs sender_cbs = {cb_more, NULL, cb_more, cb_close};
static const net_conn_cbs receiver_cbs = {NULL, cb_message, NULL, cb_close};

static void cb_accept(net_endpoint *ep, net_conn *c)
{
    net_conn_set_cbs(c, &receiver_cbs, NULL);
}

static void cb_ep_closed(net_endpoint *ep)
{
    int *n = net_endpoint_data(ep);
    (*n)++;
}

static double bench_conn(uint64_t bytes, size_t msg)
{
    uv_loop_t loop;
    CHECK_OK(uv_loop_init(&loop));
    uint8_t fleet[32];
    net_keys keys;
    net_keypair ka, kb;
    randombytes_buf(fleet, sizeof fleet);
    net_fleet_keys(&keys, fleet);
    net_keypair_generate(&ka);
    net_keypair_generate(&kb);
    net_endpoint *a, *b;
    int closed = 0;
    CHECK_OK(net_endpoint_new(&loop, &ka, &keys, NULL, &a));
    CHECK_OK(net_endpoint_new(&loop, &kb, &keys, NULL, &b));
    net_endpoint_set_data(a, &closed);
    net_endpoint_set_data(b, &closed);
    CHECK_OK(net_endpoint_listen(a, "127.0.0.1", 0, cb_accept));
    memset(&cb_state, 0, sizeof cb_state);
    cb_state.msg = msg;
    cb_state.to_send = bytes / msg;
    cb_state.payload = malloc(msg);
    tl_fill_random(cb_state.payload, msg, 3);
    CHECK_OK(net_connect(b, "127.0.0.1", net_endpoint_port(a), ka.pk, NET_ROLE_PEER, NULL,
                         &sender_cbs, NULL, &cb_state.client));
    while (!cb_state.established) uv_run(&loop, UV_RUN_ONCE);
    double t0 = now_s();
    while (!cb_state.done) uv_run(&loop, UV_RUN_ONCE);
    double dt = now_s() - t0;
    net_conn_close(cb_state.client);
    while (!cb_state.closed) uv_run(&loop, UV_RUN_ONCE);
    net_endpoint_close(a, cb_ep_closed);
    net_endpoint_close(b, cb_ep_closed);
    while (closed < 2) uv_run(&loop, UV_RUN_ONCE);
    CHECK_OK(uv_loop_close(&loop));
    free(cb_state.payload);
    return (double)cb_state.bytes / dt / 1e6;
}

/* ---- handshake costs ----------------------------------------------------------------------- */

static void bench_handshake(int n, double *reject_us, double *accept_us)
{
    uint8_t fleet[32], other[32], e[32], ts[12], init[NET_HS_INIT_BYTES], out[NET_HS_RESP_BYTES];
    net_keys keys, okeys;
    net_keypair r, i;
    randombytes_buf(fleet, 32);
    randombytes_buf(other, 32);
    net_fleet_keys(&keys, fleet);
    net_fleet_keys(&okeys, other);
    net_keypair_generate(&r);
    net_keypair_generate(&i);
    net_hs_responder *resp;
    net_hs_initiator st;
    net_hs_result res;
    CHECK_OK(net_hs_responder_new(&r, &okeys, 0, &resp));
    randombytes_buf(e, 32);
    net_tai64n(1, ts);
    CHECK_OK(net_hs_initiate(&st, &i, &keys, NET_ROLE_PEER, r.pk, e, ts, init));
    double t0 = now_s();
    for (int k = 0; k < n; k++)
        CHECK(net_hs_respond(resp, init, sizeof init, e, out, &res) == NET_EMAC);
    *reject_us = (now_s() - t0) / n * 1e6;
    net_hs_responder_free(resp);
    CHECK_OK(net_hs_responder_new(&r, &keys, 0, &resp));
    double total = 0;
    for (int k = 0; k < n; k++) {
        net_tai64n(2 + (uint64_t)k, ts);
        CHECK_OK(net_hs_initiate(&st, &i, &keys, NET_ROLE_PEER, r.pk, e, ts, init));
        double t1 = now_s();
        CHECK_OK(net_hs_respond(resp, init, sizeof init, e, out, &res));
        total += now_s() - t1;
    }
    *accept_us = total / n * 1e6;
    net_hs_responder_free(resp);
}

int main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 512;
    if (!mib) mib = 1;
    if (sodium_init() < 0) return 1;
    uint64_t bytes = mib << 20;
    printf("bench_channel: %" PRIu64 " MiB per figure\n", mib);
    printf("loopback TCP, plain bytes (256 KiB writes):   %8.0f MB/s\n", bench_tcp(bytes));
    const size_t sizes[] = {4096, 65536, NET_PAYLOAD_MAX};
    for (size_t k = 0; k < 3; k++) {
        double s, o;
        bench_stream(bytes, sizes[k], &s, &o);
        printf("secretstream %7zu B messages: seal %6.0f MB/s, open %6.0f MB/s, both %6.0f MB/s\n",
               sizes[k], s, o, 1.0 / (1.0 / s + 1.0 / o));
    }
    for (size_t k = 0; k < 3; k++)
        printf("net_conn over 127.0.0.1, %7zu B messages, one loop: %6.0f MB/s\n", sizes[k],
               bench_conn(bytes, sizes[k]));
    double rej, acc;
    bench_handshake(mib > 16 ? 2000 : 50, &rej, &acc);
    printf("responder cost: rejected initiation (bad mac1) %.2f us, accepted initiation %.1f us\n",
           rej, acc);
    return 0;
}
