/*
 * Connections over real loopback sockets: what an outsider sees, and that the node keeps
 * serving its real peers. Each case runs its own loop and ends by proving the loop closes with
 * no live handles. A relay on 127.0.0.1 port 0 can flip, duplicate or inject bytes of the
 * client-to-node stream at fixed offsets.
 */
#include "net.h"
#include "testlib.h"

static uv_loop_t loop;
static uv_timer_t tick; /* wakes the loop so deadlines are checked */

/* Offsets in the initiator-to-responder stream (docs/protocol.md). */
#define OFF_HEADER (NET_FRAME_PREFIX + NET_HS_INIT_BYTES)
#define OFF_HELLO  (OFF_HEADER + NET_FRAME_PREFIX + NET_STREAM_HEADER_BYTES)
#define OFF_DATA   (OFF_HELLO + NET_FRAME_PREFIX + NET_FRAME_OVERHEAD + 1)
/* ... and in the responder-to-initiator stream. */
#define DOWN_HEADER (NET_FRAME_PREFIX + NET_HS_RESP_BYTES)
#define DOWN_HELLO  (DOWN_HEADER + NET_FRAME_PREFIX + NET_STREAM_HEADER_BYTES)
#define MSG_TEST    0x20

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void loop_start(void)
{
    CHECK_OK(uv_loop_init(&loop));
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 20, 20);
    uv_unref((uv_handle_t *)&tick);
}

/* Runs the loop until cond holds, failing after ms milliseconds. */
#define WAIT(cond, ms, what)                                                                       \
    do {                                                                                           \
        uint64_t end_ = uv_now(&loop) + (ms);                                                      \
        uv_ref((uv_handle_t *)&tick);                                                              \
        while (!(cond)) {                                                                          \
            if (uv_now(&loop) > end_) TL_FAIL("timed out waiting for %s", what);                   \
            uv_run(&loop, UV_RUN_ONCE);                                                            \
        }                                                                                          \
        uv_unref((uv_handle_t *)&tick);                                                            \
    } while (0)

static void walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Every handle must be closed by its owner; only the tick timer is ours to close here. */
static void loop_finish(void)
{
    uv_close((uv_handle_t *)&tick, NULL);
    for (int i = 0; i < 1000 && uv_loop_alive(&loop); i++) uv_run(&loop, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&loop);
    if (rc != 0) {
        uv_walk(&loop, walk_cb, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        TL_FAIL("the loop still had live handles");
    }
}

/* ---- nodes and peers ------------------------------------------------------------------------ */

typedef struct node {
    net_keypair kp;
    net_keys keys;
    net_endpoint *ep;
    int port;
    bool echo;
    int accepted, closed, last_status;
    net_role last_role;
    uint8_t last_pk[NET_KEY_BYTES];
    uint64_t msgs;
    uint64_t seq_bad; /* messages that were not the expected next one */
    bool ep_closed;
} node;

typedef struct peer {
    net_conn *c;
    bool established, closed;
    int status;
    uint64_t msgs, sent;
    uint64_t to_send; /* for the streaming cases */
    size_t big;       /* size of every 100th message when streaming */
    uint64_t eagain;  /* refusals by the send queue */
} peer;

static void make_keys(node *n, uint8_t fleet_seed, uint64_t key_seed)
{
    uint8_t fleet[NET_KEY_BYTES], sk[NET_KEY_BYTES];
    memset(fleet, fleet_seed, sizeof fleet);
    tl_fill_random(sk, sizeof sk, key_seed);
    CHECK_OK(net_keypair_from_secret(&n->kp, sk));
    net_fleet_keys(&n->keys, fleet);
}

static void make_app_keys(node *n, uint8_t fleet_seed, uint64_t key_seed)
{
    make_keys(n, fleet_seed, key_seed);
    uint8_t client[NET_KEY_BYTES];
    memcpy(client, n->keys.client, sizeof client);
    net_client_keys(&n->keys, client);
}

/* A deterministic payload for message number i of a stream. */
static size_t payload_of(uint64_t i, size_t big, uint8_t *buf)
{
    size_t len = (size_t)(i * 2654435761u % 3000u);
    if (big && i % 100 == 99) len = big;
    tl_fill_random(buf, len, i + 1);
    if (len >= 8) memcpy(buf, &i, 8);
    return len;
}

static uint8_t scratch[NET_PAYLOAD_MAX];

static void server_message(net_conn *c, uint8_t type, const uint8_t *p, size_t len)
{
    node *n = net_conn_data(c);
    if (n->echo) {
        CHECK_OK(net_conn_send(c, type, p, len));
    } else {
        size_t want = payload_of(n->msgs, NET_PAYLOAD_MAX, scratch);
        if (want != len || memcmp(scratch, p, len) != 0) n->seq_bad++;
    }
    n->msgs++;
}

static void server_close(net_conn *c, int status)
{
    node *n = net_conn_data(c);
    n->closed++;
    n->last_status = status;
}

static const net_conn_cbs server_cbs = {NULL, server_message, NULL, server_close};

static void server_accept(net_endpoint *ep, net_conn *c)
{
    node *n = net_endpoint_data(ep);
    n->accepted++;
    n->last_role = net_conn_role(c);
    memcpy(n->last_pk, net_conn_peer_key(c), NET_KEY_BYTES);
    net_conn_set_cbs(c, &server_cbs, n);
}

static void node_start(node *n, uint8_t fleet_seed, uint64_t key_seed, net_endpoint_opts *o)
{
    make_keys(n, fleet_seed, key_seed);
    CHECK_OK(net_endpoint_new(&loop, &n->kp, &n->keys, o, &n->ep));
    net_endpoint_set_data(n->ep, n);
    CHECK_OK(net_endpoint_listen(n->ep, "127.0.0.1", 0, server_accept));
    n->port = net_endpoint_port(n->ep);
    CHECK(n->port > 0);
}

static void client_start(node *n, uint8_t fleet_seed, uint64_t key_seed, bool app)
{
    if (app)
        make_app_keys(n, fleet_seed, key_seed);
    else
        make_keys(n, fleet_seed, key_seed);
    CHECK_OK(net_endpoint_new(&loop, &n->kp, &n->keys, NULL, &n->ep));
    net_endpoint_set_data(n->ep, n);
}

static void ep_closed(net_endpoint *ep)
{
    node *n = net_endpoint_data(ep);
    n->ep_closed = true;
}

static void node_stop(node *n)
{
    net_endpoint_close(n->ep, ep_closed);
    WAIT(n->ep_closed, 5000, "the endpoint to close");
}

static void peer_established(net_conn *c)
{
    peer *p = net_conn_data(c);
    p->established = true;
}

static void peer_message(net_conn *c, uint8_t type, const uint8_t *data, size_t len)
{
    peer *p = net_conn_data(c);
    CHECK_EQ(type, MSG_TEST);
    p->msgs++;
}

static void peer_close(net_conn *c, int status)
{
    peer *p = net_conn_data(c);
    p->closed = true;
    p->status = status;
    p->c = NULL;
}

static const net_conn_cbs peer_cbs = {peer_established, peer_message, NULL, peer_close};

static void peer_connect(node *from, peer *p, int port, const uint8_t *pk, net_role role,
                         const char *bind_ip)
{
    memset(p, 0, sizeof *p);
    CHECK_OK(net_connect(from->ep, "127.0.0.1", port, pk, role, bind_ip, &peer_cbs, p, &p->c));
}

/* A real peer connects from its own address, exchanges n echoed messages and closes cleanly. */
static void exchange(node *server, node *client, const char *bind_ip, net_role role, int n)
{
    peer p;
    server->echo = true;
    peer_connect(client, &p, server->port, server->kp.pk, role, bind_ip);
    WAIT(p.established, 5000, "the handshake");
    for (int i = 0; i < n; i++) CHECK_OK(net_conn_send(p.c, MSG_TEST, "ping", 4));
    WAIT(p.msgs >= (uint64_t)n, 5000, "the echoes");
    net_conn_close(p.c);
    WAIT(p.closed, 5000, "the clean close");
    CHECK_EQ(p.status, 0);
}

/* ---- a relay that tampers with the client-to-node stream ------------------------------------ */

typedef struct relay {
    uv_tcp_t listener, down, up;
    uv_connect_t creq;
    int port, target;
    int64_t flip_at;      /* offset whose byte is XORed with 0x01, or -1 */
    int64_t flip_down_at; /* the same in the node-to-client stream */
    uint64_t off_down;
    int64_t dup_from, dup_to; /* bytes [from, to) are sent twice, or -1 */
    int64_t inject_at;        /* after this many bytes, inject[] is sent, or -1 */
    uint8_t inject[16];
    size_t inject_len;
    uint8_t rec[512]; /* the first bytes of the stream */
    uint64_t off;
    bool have_down, injected, duplicated;
    int handles;
} relay;

static void relay_free_write(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void relay_write(uv_tcp_t *to, const uint8_t *b, size_t n)
{
    if (!n || uv_is_closing((uv_handle_t *)to)) return;
    uv_write_t *w = malloc(sizeof *w + n);
    CHECK(w);
    memcpy(w + 1, b, n);
    uv_buf_t buf = uv_buf_init((char *)(w + 1), (unsigned)n);
    if (uv_write(w, (uv_stream_t *)to, &buf, 1, relay_free_write) != 0) free(w);
}

static void relay_handle_closed(uv_handle_t *h)
{
    relay *r = h->data;
    r->handles--;
}

static void relay_close_pair(relay *r)
{
    if (!uv_is_closing((uv_handle_t *)&r->down))
        uv_close((uv_handle_t *)&r->down, relay_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&r->up)) uv_close((uv_handle_t *)&r->up, relay_handle_closed);
}

static void relay_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(s);
    b->len = s;
}

/* Forwards bytes of the client stream, applying the tampering at its absolute offsets. */
static void relay_forward(relay *r, const uint8_t *b, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, b, n);
    for (size_t i = 0; i < n; i++) {
        uint64_t at = r->off + i;
        if (at < sizeof r->rec) r->rec[at] = b[i];
        if ((int64_t)at == r->flip_at) copy[i] ^= 0x01;
    }
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        uint64_t at = r->off + i;
        /* A cut at the very end of a read fires there, not again at the start of the next. */
        bool inject = !r->injected && (int64_t)at == r->inject_at;
        bool dup = !r->duplicated && (int64_t)at == r->dup_to;
        if ((inject || dup) && i > start) {
            relay_write(&r->up, copy + start, i - start);
            start = i;
        }
        if (inject) {
            relay_write(&r->up, r->inject, r->inject_len);
            r->injected = true;
        }
        if (dup && r->dup_to <= (int64_t)sizeof r->rec) {
            relay_write(&r->up, r->rec + r->dup_from, (size_t)(r->dup_to - r->dup_from));
            r->duplicated = true;
        }
    }
    relay_write(&r->up, copy + start, n - start);
    r->off += n;
    free(copy);
}

static void relay_read_down(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    relay *r = s->data;
    if (n > 0) relay_forward(r, (const uint8_t *)b->base, (size_t)n);
    if (n < 0) relay_close_pair(r);
    free(b->base);
}

static void relay_read_up(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    relay *r = s->data;
    if (n > 0) {
        int64_t at = r->flip_down_at - (int64_t)r->off_down;
        if (at >= 0 && at < n) b->base[at] ^= 0x01;
        r->off_down += (uint64_t)n;
        relay_write(&r->down, (const uint8_t *)b->base, (size_t)n);
    }
    if (n < 0) relay_close_pair(r);
    free(b->base);
}

static void relay_connected(uv_connect_t *req, int status)
{
    relay *r = req->data;
    if (status < 0) {
        relay_close_pair(r);
        return;
    }
    uv_read_start((uv_stream_t *)&r->up, relay_alloc, relay_read_up);
    uv_read_start((uv_stream_t *)&r->down, relay_alloc, relay_read_down);
}

static void relay_accept(uv_stream_t *srv, int status)
{
    relay *r = srv->data;
    CHECK(status == 0 && !r->have_down); /* one connection per relay */
    r->have_down = true;
    uv_tcp_init(&loop, &r->down);
    uv_tcp_init(&loop, &r->up);
    r->down.data = r->up.data = r;
    r->handles += 2;
    CHECK_OK(uv_accept(srv, (uv_stream_t *)&r->down));
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", r->target, &a);
    r->creq.data = r;
    CHECK_OK(uv_tcp_connect(&r->creq, &r->up, (struct sockaddr *)&a, relay_connected));
}

static void relay_start(relay *r, int target)
{
    memset(r, 0, sizeof *r);
    r->target = target;
    r->flip_at = r->flip_down_at = r->dup_from = r->dup_to = r->inject_at = -1;
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_init(&loop, &r->listener);
    r->listener.data = r;
    r->handles = 1;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_OK(uv_tcp_bind(&r->listener, (struct sockaddr *)&a, 0));
    CHECK_OK(uv_listen((uv_stream_t *)&r->listener, 8, relay_accept));
    CHECK_OK(uv_tcp_getsockname(&r->listener, (struct sockaddr *)&ss, &len));
    r->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void relay_stop(relay *r)
{
    uv_close((uv_handle_t *)&r->listener, relay_handle_closed);
    if (r->have_down) relay_close_pair(r);
    WAIT(r->handles == 0, 5000, "the relay to close");
}

/* ---- a raw TCP client that sends bytes and reports what came back --------------------------- */

typedef struct raw {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uint8_t *out;
    size_t out_len;
    size_t got;     /* bytes the node sent back */
    bool eof;       /* the node closed */
    bool closed;    /* our handle is closed */
    bool hold_open; /* send nothing, wait for the node to close */
    int *live;      /* a counter of raw clients in flight, or NULL */
} raw;

static void raw_closed(uv_handle_t *h)
{
    raw *r = h->data;
    r->closed = true;
    if (r->live) (*r->live)--;
    free(r->out);
    r->out = NULL;
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    raw *r = s->data;
    if (n > 0) r->got += (size_t)n;
    if (n < 0) {
        r->eof = true;
        uv_close((uv_handle_t *)&r->tcp, raw_closed);
    }
    free(b->base);
}

static void raw_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void raw_connected(uv_connect_t *req, int status)
{
    raw *r = req->data;
    if (status < 0) {
        r->eof = true;
        uv_close((uv_handle_t *)&r->tcp, raw_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&r->tcp, relay_alloc, raw_read);
    if (r->out_len) {
        uv_write_t *w = malloc(sizeof *w);
        uv_buf_t b = uv_buf_init((char *)r->out, (unsigned)r->out_len);
        if (uv_write(w, (uv_stream_t *)&r->tcp, &b, 1, raw_written) != 0) free(w);
    }
}

/* Starts a raw client; it closes when the node closes. out is copied. */
static void raw_start(raw *r, int port, const uint8_t *out, size_t len, int *live)
{
    memset(r, 0, sizeof *r);
    r->live = live;
    if (live) (*live)++;
    r->out = malloc(len ? len : 1);
    if (len) memcpy(r->out, out, len);
    r->out_len = len;
    uv_tcp_init(&loop, &r->tcp);
    r->tcp.data = r;
    r->creq.data = r;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    CHECK_OK(uv_tcp_connect(&r->creq, &r->tcp, (struct sockaddr *)&a, raw_connected));
}

/* ---- cases ---------------------------------------------------------------------------------- */

static void peers_exchange_messages_and_close_cleanly(void)
{
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&b, 7, 2, false);
    exchange(&a, &b, NULL, NET_ROLE_PEER, 50);
    WAIT(a.closed > 0, 5000, "the node's side to close");
    CHECK_EQ(a.accepted, 1);
    CHECK_EQ(a.last_status, 0);
    CHECK_EQ(a.last_role, NET_ROLE_PEER);
    CHECK_MEM(a.last_pk, b.kp.pk, NET_KEY_BYTES);
    CHECK_EQ(a.msgs, 50);
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

static void outsider_is_rejected_before_any_dh_or_allocation(void)
{
    loop_start();
    node a = {0}, outsider = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&outsider, 8, 3, false); /* another fleet key */
    peer p;
    peer_connect(&outsider, &p, a.port, a.kp.pk, NET_ROLE_PEER, NULL);
    WAIT(p.closed, 5000, "the outsider to be shut out");
    CHECK(!p.established);
    CHECK(p.status != 0);
    const net_endpoint_counters *c = net_endpoint_counters_get(a.ep);
    CHECK_EQ(c->hs.mac1_checked, 1);
    CHECK_EQ(c->hs.mac1_rejected, 1);
    CHECK_EQ(c->hs.dh, 0);
    CHECK_EQ(c->hs.replay_inserts, 0);
    CHECK_EQ(c->rx_buffers, 0);
    CHECK_EQ(c->established, 0);
    /* The node goes on serving its fleet. */
    client_start(&b, 7, 2, false);
    exchange(&a, &b, "127.0.0.2", NET_ROLE_PEER, 3);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->hs.dh, 4);
    node_stop(&outsider);
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

/* One connection through a relay that flips the byte at offset `at` of the client's stream
 * (or, with down, of the node's stream). */
static void flip_one(node *a, node *b, int64_t at, bool handshake_part, bool down)
{
    relay r;
    relay_start(&r, a->port);
    if (down)
        r.flip_down_at = at;
    else
        r.flip_at = at;
    peer p;
    int closed_before = a->closed;
    peer_connect(b, &p, r.port, a->kp.pk, NET_ROLE_PEER, NULL);
    if (!handshake_part) {
        WAIT(p.established, 5000, "the handshake");
        CHECK_OK(net_conn_send(p.c, MSG_TEST, "hello there", 11));
    }
    WAIT(p.closed, 5000, "the tampered connection to close");
    CHECK(p.status != 0);
    if (down) CHECK(!p.established); /* the client never accepts a tampered node */
    if (!handshake_part) {
        WAIT(a->closed > closed_before, 5000, "the node's side to close");
        CHECK(a->last_status == NET_EAUTH || a->last_status == NET_EFORMAT ||
              a->last_status == NET_ETOOBIG);
    }
    relay_stop(&r);
}

static void flipped_byte_in_any_frame_closes_that_connection(void)
{
    loop_start();
    node a = {0}, b = {0};
    net_endpoint_opts o = {.handshake_timeout_ms = 1000, .rate_per_sec = 1000, .rate_burst = 1000};
    node_start(&a, 7, 1, &o);
    client_start(&b, 7, 2, false);
    a.echo = false;
    /* In the initiation (header, ephemeral, static, timestamp, mac1), the header frame, the
     * HELLO, and the first data frame (its body and the top byte of its length prefix). */
    const int64_t hs[] = {5, 10, 40, 90, 120, OFF_HEADER + 10, OFF_HELLO + 4, OFF_HELLO + 10};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) flip_one(&a, &b, hs[i], true, false);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->established, 0);
    flip_one(&a, &b, OFF_DATA + 8, false, false);
    flip_one(&a, &b, OFF_DATA + NET_FRAME_PREFIX + NET_FRAME_OVERHEAD + 3, false, false);
    flip_one(&a, &b, OFF_DATA + 0, false, false); /* 0x00.. -> 0x01..: over the bound */
    CHECK_EQ(a.msgs, 0);
    CHECK_EQ(a.last_status, NET_ETOOBIG);
    /* The node's response, header and HELLO: the client shuts the connection. */
    const int64_t down[] = {NET_FRAME_PREFIX + 10, NET_FRAME_PREFIX + 40,
                            DOWN_HEADER + NET_FRAME_PREFIX + 5, DOWN_HELLO + NET_FRAME_PREFIX + 3};
    for (size_t i = 0; i < sizeof down / sizeof down[0]; i++) flip_one(&a, &b, down[i], true, true);
    /* Untampered, it works. */
    exchange(&a, &b, NULL, NET_ROLE_PEER, 2);
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

static void replayed_initiation_is_rejected(void)
{
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&b, 7, 2, false);
    relay r;
    relay_start(&r, a.port);
    peer p;
    a.echo = true;
    peer_connect(&b, &p, r.port, a.kp.pk, NET_ROLE_PEER, NULL);
    WAIT(p.established, 5000, "the handshake");
    net_conn_close(p.c);
    WAIT(p.closed, 5000, "the close");
    /* The exact initiation frame, sent again by someone else. */
    raw x;
    raw_start(&x, a.port, r.rec, OFF_HEADER, NULL);
    WAIT(x.closed, 5000, "the replay to be shut out");
    CHECK_EQ(x.got, 0);
    const net_endpoint_counters *c = net_endpoint_counters_get(a.ep);
    CHECK_EQ(c->hs.replay_rejected, 1);
    CHECK_EQ(c->established, 1);
    relay_stop(&r);
    exchange(&a, &b, "127.0.0.2", NET_ROLE_PEER, 2);
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

static void replayed_frame_is_rejected(void)
{
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&b, 7, 2, false);
    a.echo = false;
    relay r;
    relay_start(&r, a.port);
    /* The first data frame (4 + 17 + 1 + 5 bytes) arrives twice. */
    r.dup_from = OFF_DATA;
    r.dup_to = OFF_DATA + NET_FRAME_PREFIX + NET_FRAME_OVERHEAD + 1 + 5;
    peer p;
    peer_connect(&b, &p, r.port, a.kp.pk, NET_ROLE_PEER, NULL);
    WAIT(p.established, 5000, "the handshake");
    CHECK_OK(net_conn_send(p.c, MSG_TEST, "abcde", 5));
    WAIT(p.closed, 5000, "the connection to close");
    WAIT(a.closed > 0, 5000, "the node's side to close");
    CHECK_EQ(a.msgs, 1); /* the original was delivered, the copy was not */
    CHECK_EQ(a.last_status, NET_EAUTH);
    relay_stop(&r);
    exchange(&a, &b, NULL, NET_ROLE_PEER, 2); /* and the node goes on serving */
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

static void truncated_stream_is_detected(void)
{
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&b, 7, 2, false);
    a.echo = false;
    peer p;
    peer_connect(&b, &p, a.port, a.kp.pk, NET_ROLE_PEER, NULL);
    WAIT(p.established, 5000, "the handshake");
    uint8_t buf[4096];
    size_t len = payload_of(0, 0, buf);
    CHECK_OK(net_conn_send(p.c, MSG_TEST, buf, len));
    /* The sender stops without its FINAL: what the node sees is a cut stream. */
    net_conn_abort(p.c, NET_ECLOSED);
    WAIT(p.closed, 5000, "the abort");
    WAIT(a.closed > 0, 5000, "the node's side to close");
    CHECK_EQ(a.last_status, NET_ETRUNCATED);
    CHECK_EQ(a.msgs, 1);
    exchange(&a, &b, NULL, NET_ROLE_PEER, 2); /* and the node goes on serving */
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

static void oversized_length_prefix_is_rejected_without_allocating(void)
{
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&b, 7, 2, false);
    /* From an outsider, as the first frame. */
    const uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    raw x;
    raw_start(&x, a.port, huge, sizeof huge, NULL);
    WAIT(x.closed, 5000, "the oversized prefix to be shut out");
    CHECK_EQ(x.got, 0);
    const net_endpoint_counters *c = net_endpoint_counters_get(a.ep);
    CHECK_EQ(c->hs.mac1_checked, 0);
    CHECK_EQ(c->rx_buffers, 0);
    /* From an authenticated peer, after its HELLO: the full bound applies, no more. */
    relay r;
    relay_start(&r, a.port);
    r.inject_at = OFF_DATA;
    net_frame_put_prefix(r.inject, NET_FRAME_MAX_BODY + 1);
    r.inject_len = 4;
    peer p;
    peer_connect(&b, &p, r.port, a.kp.pk, NET_ROLE_PEER, NULL);
    WAIT(p.established, 5000, "the handshake");
    CHECK_OK(net_conn_send(p.c, MSG_TEST, "x", 1));
    WAIT(p.closed, 5000, "the connection to close");
    WAIT(a.closed > 0, 5000, "the node's side to close");
    CHECK_EQ(a.last_status, NET_ETOOBIG);
    CHECK_EQ(a.msgs, 0);
    relay_stop(&r);
    exchange(&a, &b, NULL, NET_ROLE_PEER, 2); /* and the node goes on serving */
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

static void client_key_is_accepted_with_the_client_role(void)
{
    loop_start();
    node a = {0}, app = {0}, stranger = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&app, 7, 5, true);
    exchange(&a, &app, NULL, NET_ROLE_CLIENT, 3);
    WAIT(a.closed > 0, 5000, "the node's side to close");
    CHECK_EQ(a.last_role, NET_ROLE_CLIENT);
    CHECK_MEM(a.last_pk, app.kp.pk, NET_KEY_BYTES);
    /* An app cannot ask for the peer role, and another fleet's client key is shut out. */
    peer p;
    CHECK_EQ(
        net_connect(app.ep, "127.0.0.1", a.port, a.kp.pk, NET_ROLE_PEER, NULL, &peer_cbs, &p, &p.c),
        NET_EROLE);
    client_start(&stranger, 9, 6, true);
    peer_connect(&stranger, &p, a.port, a.kp.pk, NET_ROLE_CLIENT, NULL);
    WAIT(p.closed, 5000, "the stranger to be shut out");
    CHECK(!p.established);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->hs.mac1_rejected, 1);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->established, 1);
    node_stop(&stranger);
    node_stop(&app);
    node_stop(&a);
    loop_finish();
}

static void silent_connections_time_out(void)
{
    loop_start();
    node a = {0};
    net_endpoint_opts o = {.handshake_timeout_ms = 200};
    node_start(&a, 7, 1, &o);
    raw x;
    raw_start(&x, a.port, NULL, 0, NULL);
    WAIT(x.closed, 5000, "the silent connection to be closed");
    CHECK_EQ(x.got, 0);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->handshake_failed, 1);
    node_stop(&a);
    loop_finish();
}

static void half_open_connections_make_room_for_newcomers(void)
{
    loop_start();
    node a = {0}, b = {0};
    net_endpoint_opts o = {.max_half_open = 8, .rate_per_sec = 100000, .rate_burst = 100000};
    node_start(&a, 7, 1, &o);
    client_start(&b, 7, 2, false);
    static raw xs[50];
    int live = 0;
    for (int i = 0; i < 50; i++) raw_start(&xs[i], a.port, NULL, 0, &live);
    WAIT(net_endpoint_counters_get(a.ep)->accepted >= 50, 5000, "50 accepted connections");
    exchange(&a, &b, NULL, NET_ROLE_PEER, 3);
    CHECK(net_endpoint_counters_get(a.ep)->half_open_evicted >= 42);
    node_stop(&a);
    WAIT(live == 0, 5000, "the raw clients to close");
    node_stop(&b);
    loop_finish();
}

typedef struct seams {
    uint64_t when; /* ns since the epoch; never moves */
    uint64_t seed;
} seams;

static uint64_t frozen_clock(void *ctx)
{
    return ((seams *)ctx)->when;
}

static void seeded_random(void *ctx, void *buf, size_t len)
{
    tl_fill_random(buf, len, ++((seams *)ctx)->seed);
}

static void a_stopped_clock_still_gives_newer_timestamps(void)
{
    /* The initiator's clock (a seam) never moves: its handshakes must still carry strictly
     * growing timestamps, or the node would take the second for a replay. */
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    seams sm = {1764064800ull * 1000000000ull, 1};
    make_keys(&b, 7, 2);
    net_endpoint_opts o = {.clock_ns = frozen_clock, .random = seeded_random, .seam_ctx = &sm};
    CHECK_OK(net_endpoint_new(&loop, &b.kp, &b.keys, &o, &b.ep));
    net_endpoint_set_data(b.ep, &b);
    for (int i = 0; i < 3; i++) exchange(&a, &b, NULL, NET_ROLE_PEER, 1);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->established, 3);
    CHECK_EQ(net_endpoint_counters_get(a.ep)->hs.replay_rejected, 0);
    CHECK(sm.seed > 1); /* the ephemeral keys came from the injected source */
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

/* Junk of several kinds: nothing, noise, a huge prefix, an initiation-sized frame of noise. */
static size_t junk_bytes(int i, uint8_t *buf)
{
    switch (i % 5) {
    case 0: return 0;
    case 1: tl_fill_random(buf, 300, (uint64_t)i); return 300;
    case 2: net_frame_put_prefix(buf, 0x7fffffff); return 4;
    case 3:
        net_frame_put_prefix(buf, NET_HS_INIT_BYTES);
        tl_fill_random(buf + 4, NET_HS_INIT_BYTES, (uint64_t)i);
        buf[4] = 1;
        buf[5] = 1;
        buf[6] = buf[7] = 0;
        return 4 + NET_HS_INIT_BYTES;
    default: tl_fill_random(buf, 3, (uint64_t)i); return 3;
    }
}

static void junk_run(net_endpoint_opts o)
{
    loop_start();
    node a = {0}, b = {0}, c = {0};
    node_start(&a, 7, 1, &o);
    client_start(&b, 7, 2, false);
    client_start(&c, 7, 3, false);
    a.echo = true;
    /* Two real peers from their own addresses; 1,000 junk connections from 127.0.0.1, at most
     * 100 at a time, while the peers talk. */
    peer pb, pc;
    peer_connect(&b, &pb, a.port, a.kp.pk, NET_ROLE_PEER, "127.0.0.2");
    peer_connect(&c, &pc, a.port, a.kp.pk, NET_ROLE_PEER, "127.0.0.3");
    static raw xs[1000];
    int live = 0, started = 0;
    uint64_t sent = 0;
    uint8_t buf[512];
    uint64_t end = uv_now(&loop) + 30000;
    uv_ref((uv_handle_t *)&tick);
    while (started < 1000 || live > 0 || pb.msgs < 200 || pc.msgs < 200) {
        if (uv_now(&loop) > end) TL_FAIL("timed out: %d junk started, %d live", started, live);
        while (started < 1000 && live < 100) {
            size_t n = junk_bytes(started, buf);
            raw_start(&xs[started], a.port, buf, n, &live);
            started++;
        }
        if (pb.established && pc.established && sent < 200) {
            CHECK_OK(net_conn_send(pb.c, MSG_TEST, "b", 1));
            CHECK_OK(net_conn_send(pc.c, MSG_TEST, "c", 1));
            sent++;
        }
        CHECK(!pb.closed && !pc.closed);
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_unref((uv_handle_t *)&tick);
    const net_endpoint_counters *k = net_endpoint_counters_get(a.ep);
    printf("junk: accepted %" PRIu64 ", rate-limited %" PRIu64 ", mac1 checked %" PRIu64
           ", DH %" PRIu64 ", established %" PRIu64 "\n",
           k->accepted, k->rate_limited, k->hs.mac1_checked, k->hs.dh, k->established);
    CHECK_EQ(k->established, 2);
    CHECK_EQ(k->hs.dh, 8); /* the two real handshakes, four X25519 each */
    CHECK_EQ(k->hs.replay_inserts, 2);
    net_conn_close(pb.c);
    net_conn_close(pc.c);
    WAIT(pb.closed, 5000, "b's close");
    WAIT(pc.closed, 5000, "c's close");
    CHECK_EQ(pb.status, 0);
    CHECK_EQ(pc.status, 0);
    node_stop(&b);
    node_stop(&c);
    node_stop(&a);
    loop_finish();
}

static void junk_connections_do_not_stop_real_peers(void)
{
    junk_run((net_endpoint_opts){.handshake_timeout_ms = 1000});
}

/* With the rate limit out of the way junk meets the half-open limits (per source and in all)
 * and the handshake's own checks: the real peers still get in, and no junk costs a DH. */
static void junk_past_the_rate_limit_costs_no_dh(void)
{
    junk_run((net_endpoint_opts){.handshake_timeout_ms = 1000,
                                 .max_half_open = 32,
                                 .rate_per_sec = 1000000,
                                 .rate_burst = 1000000});
}

/* The client streams to_send messages as fast as back-pressure lets it. */
static void stream_more(net_conn *conn)
{
    peer *p = net_conn_data(conn);
    while (p->sent < p->to_send) {
        size_t len = payload_of(p->sent, p->big, scratch);
        int rc = net_conn_send(conn, MSG_TEST, scratch, len);
        /* The queue never holds more than its mark plus one message. */
        CHECK(net_conn_queued(conn) <= (8u << 20) + NET_FRAME_PREFIX + NET_FRAME_MAX_BODY);
        if (rc == NET_EAGAIN) { /* on_drain calls again */
            p->eagain++;
            return;
        }
        CHECK_OK(rc);
        p->sent++;
    }
}

static const net_conn_cbs stream_cbs = {stream_more, peer_message, stream_more, peer_close};

static void rekeying_keeps_working_across_many_messages(void)
{
    loop_start();
    node a = {0}, b = {0};
    node_start(&a, 7, 1, NULL);
    client_start(&b, 7, 2, false);
    a.echo = false;
    peer p;
    memset(&p, 0, sizeof p);
    p.to_send = 3 * NET_REKEY_MESSAGES + 100;
    p.big = NET_PAYLOAD_MAX; /* every 100th message is the largest: the byte rule fires too */
    CHECK_OK(net_connect(b.ep, "127.0.0.1", a.port, a.kp.pk, NET_ROLE_PEER, NULL, &stream_cbs, &p,
                         &p.c));
    WAIT(a.msgs >= p.to_send || p.closed, 60000, "every message");
    CHECK(!p.closed);
    CHECK_EQ(a.seq_bad, 0);
    net_conn_stats st;
    net_conn_stats_get(p.c, &st);
    printf("sent %" PRIu64 " messages, %" PRIu64 " bytes, %" PRIu64 " rekeys, %" PRIu64
           " refusals by the send queue\n",
           st.tx_msgs, st.tx_bytes, st.tx_rekeys, p.eagain);
    CHECK(st.tx_rekeys >= 4);
    CHECK_EQ(st.rx_rekeys, 0); /* the node sent nothing but its HELLO */
    CHECK(p.eagain > 0);       /* back-pressure was applied, and on_drain resumed the stream */
    net_conn_close(p.c);
    WAIT(p.closed, 5000, "the close");
    CHECK_EQ(p.status, 0);
    node_stop(&b);
    node_stop(&a);
    loop_finish();
}

TL_MAIN(TL_CASE(peers_exchange_messages_and_close_cleanly),
        TL_CASE(outsider_is_rejected_before_any_dh_or_allocation),
        TL_CASE(flipped_byte_in_any_frame_closes_that_connection),
        TL_CASE(replayed_initiation_is_rejected), TL_CASE(replayed_frame_is_rejected),
        TL_CASE(truncated_stream_is_detected),
        TL_CASE(oversized_length_prefix_is_rejected_without_allocating),
        TL_CASE(client_key_is_accepted_with_the_client_role), TL_CASE(silent_connections_time_out),
        TL_CASE(half_open_connections_make_room_for_newcomers),
        TL_CASE(junk_connections_do_not_stop_real_peers),
        TL_CASE(junk_past_the_rate_limit_costs_no_dh),
        TL_CASE(rekeying_keeps_working_across_many_messages),
        TL_CASE(a_stopped_clock_still_gives_newer_timestamps))
