/*
 * net_conn.c — listeners and connections over libuv: the handshake, then framed messages on
 * the secure channel.
 *
 * Design notes:
 * - A connection moves through HANDSHAKE (waiting for the initiation or the response), HEADER
 *   (the peer's secretstream header), HELLO (the peer's first sealed message), OPEN and
 *   CLOSING. Until OPEN the frame decoder's bound is the exact size the state expects, and the
 *   socket reads into a small buffer inside the connection, so an unauthenticated peer costs
 *   the node one fixed-size struct and never a large buffer. The 64 KiB read buffer and the
 *   full 1 MiB frame bound arrive with authentication (the peer's HELLO).
 * - Admission, cheapest first: the per-source token bucket at accept (one SipHash), the
 *   half-open limit (the oldest half-open connection gives way to the newcomer), then the
 *   handshake's own checks (mac1 before any X25519). Rejections are silent: the socket closes.
 * - An incoming connection is shown to the application (on_accept) only when established; an
 *   outgoing one from net_connect's return. Every shown connection gets exactly one on_close,
 *   from the close callback of its last libuv handle, after which its memory is released.
 * - A clean close is symmetric: each side seals CLOSE with the FINAL tag, shuts down its write
 *   side once everything is flushed, and the connection ends when it has both flushed its own
 *   FINAL and read the peer's. EOF without the peer's FINAL is NET_ETRUNCATED.
 * - The send queue counts bytes handed to uv_write and not yet completed. Above the high-water
 *   mark net_conn_send refuses (NET_EAGAIN) and on_drain fires when it falls under half.
 */
#include "net_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SMALL_READ 256u
#define BIG_READ   (64u * 1024u)
#define HELLO_MAX  256u /* a HELLO's payload bound (v1 sends none) */

enum state { S_HANDSHAKE, S_HEADER, S_HELLO, S_OPEN, S_CLOSING, S_CLOSED };

struct net_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    net_endpoint *ep;
    net_conn *prev, *next;       /* every connection of the endpoint */
    net_conn *ho_prev, *ho_next; /* incoming connections not yet established, oldest first */
    bool in_half_open;
    uint8_t src[16]; /* the peer's address (incoming) */
    size_t src_len;
    int handles; /* libuv handles still to close */
    enum state state;
    bool incoming, announced, tx_done, rx_final, drain_wanted;
    int status; /* what on_close will be told */
    net_hs_initiator hs;
    net_channel ch;
    uint8_t peer_pk[NET_KEY_BYTES];
    net_role role;
    net_frame_dec dec;
    uint8_t small[SMALL_READ];
    uint8_t *rbuf;
    uint8_t *obuf;
    size_t ocap;
    size_t queued;
    net_conn_stats stats;
    net_conn_cbs cbs;
    void *data;
};

struct net_endpoint {
    uv_loop_t *loop;
    net_keypair self;
    net_keys keys;
    net_endpoint_opts opts;
    net_hs_responder *resp; /* nodes only */
    net__rate *rate;
    uv_tcp_t listener;
    bool listening, closing;
    void (*on_accept)(net_endpoint *ep, net_conn *c);
    void (*on_closed)(net_endpoint *ep);
    net_conn *conns;
    net_conn *ho_head, *ho_tail;
    uint32_t half_open;
    int handles; /* the listener (if any) and every connection not yet freed */
    uint64_t last_ts;
    net_endpoint_counters counters, snapshot;
    void *data;
};

typedef struct wreq {
    uv_write_t req;
    net_conn *c;
    size_t len;
    uint8_t bytes[];
} wreq;

static void conn_teardown(net_conn *c, int status);

/* ---- seams --------------------------------------------------------------------------------- */

static uint64_t ep_clock_ns(net_endpoint *ep)
{
    if (ep->opts.clock_ns) return ep->opts.clock_ns(ep->opts.seam_ctx);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void ep_random(net_endpoint *ep, void *buf, size_t len)
{
    if (ep->opts.random)
        ep->opts.random(ep->opts.seam_ctx, buf, len);
    else
        randombytes_buf(buf, len);
}

/* ---- endpoint ------------------------------------------------------------------------------ */

int net_endpoint_new(uv_loop_t *loop, const net_keypair *self, const net_keys *keys,
                     const net_endpoint_opts *opts, net_endpoint **out)
{
    net_endpoint *ep = calloc(1, sizeof *ep);
    if (!ep) return -ENOMEM;
    ep->loop = loop;
    ep->self = *self;
    ep->keys = *keys;
    if (opts) ep->opts = *opts;
    net_endpoint_opts *o = &ep->opts;
    if (!o->handshake_timeout_ms) o->handshake_timeout_ms = 5000;
    if (!o->close_timeout_ms) o->close_timeout_ms = 2000;
    if (!o->max_half_open) o->max_half_open = 256;
    if (!o->max_half_open_per_source) o->max_half_open_per_source = 16;
    if (!o->rate_per_sec) o->rate_per_sec = 20;
    if (!o->rate_burst) o->rate_burst = 40;
    if (!o->rate_slots) o->rate_slots = 4096;
    if (!o->send_queue_max) o->send_queue_max = 8u << 20;
    int rc = net__rate_new(o->rate_per_sec, o->rate_burst, o->rate_slots, &ep->rate);
    if (!rc && keys->has_fleet) rc = net_hs_responder_new(self, keys, o->replay_slots, &ep->resp);
    if (rc) {
        net__rate_free(ep->rate);
        free(ep);
        return rc;
    }
    *out = ep;
    return 0;
}

static void ep_release(net_endpoint *ep)
{
    if (!ep->closing || ep->handles > 0) return;
    void (*cb)(net_endpoint *) = ep->on_closed;
    if (cb) cb(ep);
    net_hs_responder_free(ep->resp);
    net__rate_free(ep->rate);
    sodium_memzero(ep, sizeof *ep);
    free(ep);
}

static void listener_closed(uv_handle_t *h)
{
    net_endpoint *ep = h->data;
    ep->handles--;
    ep_release(ep);
}

void net_endpoint_close(net_endpoint *ep, void (*on_closed)(net_endpoint *ep))
{
    if (ep->closing) return;
    ep->closing = true;
    ep->on_closed = on_closed;
    /* Handles stay counted until their close callbacks; the guard keeps ep alive meanwhile. */
    ep->handles++;
    if (ep->listening) {
        ep->listening = false;
        uv_close((uv_handle_t *)&ep->listener, listener_closed);
    }
    while (ep->conns) {
        net_conn *c = ep->conns;
        conn_teardown(c, NET_ECLOSED); /* unlinks c from ep->conns */
    }
    ep->handles--;
    ep_release(ep);
}

const net_endpoint_counters *net_endpoint_counters_get(const net_endpoint *ep)
{
    net_endpoint *m = (net_endpoint *)ep;
    /* Initiator-side handshake counts are added as they happen; the responder's are merged
     * into a snapshot here. */
    m->snapshot = m->counters;
    if (ep->resp) {
        const net_hs_counters *r = net_hs_responder_counters(ep->resp);
        m->snapshot.hs.mac1_checked += r->mac1_checked;
        m->snapshot.hs.mac1_rejected += r->mac1_rejected;
        m->snapshot.hs.dh += r->dh;
        m->snapshot.hs.replay_rejected += r->replay_rejected;
        m->snapshot.hs.replay_inserts += r->replay_inserts;
        m->snapshot.hs.accepted += r->accepted;
    }
    return &m->snapshot;
}

void *net_endpoint_data(const net_endpoint *ep)
{
    return ep->data;
}

void net_endpoint_set_data(net_endpoint *ep, void *data)
{
    ep->data = data;
}

int net_endpoint_port(const net_endpoint *ep)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (!ep->listening) return -1;
    if (uv_tcp_getsockname(&ep->listener, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int parse_addr(const char *ip, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0) return 0;
    if (uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss) == 0) return 0;
    return -EINVAL;
}

/* ---- connection plumbing ------------------------------------------------------------------- */

static void half_open_remove(net_conn *c)
{
    net_endpoint *ep = c->ep;
    if (!c->in_half_open) return;
    if (c->ho_prev)
        c->ho_prev->ho_next = c->ho_next;
    else
        ep->ho_head = c->ho_next;
    if (c->ho_next)
        c->ho_next->ho_prev = c->ho_prev;
    else
        ep->ho_tail = c->ho_prev;
    c->ho_prev = c->ho_next = NULL;
    c->in_half_open = false;
    ep->half_open--;
}

static void half_open_add(net_conn *c)
{
    net_endpoint *ep = c->ep;
    c->ho_prev = ep->ho_tail;
    c->ho_next = NULL;
    if (ep->ho_tail)
        ep->ho_tail->ho_next = c;
    else
        ep->ho_head = c;
    ep->ho_tail = c;
    c->in_half_open = true;
    ep->half_open++;
}

static net_conn *conn_new(net_endpoint *ep, bool incoming)
{
    net_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ep = ep;
    c->incoming = incoming;
    c->state = S_HANDSHAKE;
    net_frame_dec_init(&c->dec, incoming ? NET_HS_INIT_BYTES : NET_HS_RESP_BYTES);
    uv_tcp_init(ep->loop, &c->tcp);
    uv_timer_init(ep->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = ep->conns;
    if (ep->conns) ep->conns->prev = c;
    ep->conns = c;
    ep->handles++;
    return c;
}

static void conn_handle_closed(uv_handle_t *h)
{
    net_conn *c = h->data;
    if (--c->handles > 0) return;
    net_endpoint *ep = c->ep;
    if (c->announced && c->cbs.on_close) c->cbs.on_close(c, c->status);
    net_frame_dec_free(&c->dec);
    free(c->rbuf);
    free(c->obuf);
    net_hs_initiator_wipe(&c->hs);
    net_channel_wipe(&c->ch);
    free(c);
    ep->handles--;
    ep_release(ep);
}

static void conn_teardown(net_conn *c, int status)
{
    if (c->state == S_CLOSED) return;
    net_endpoint *ep = c->ep;
    if (c->incoming && !c->announced) ep->counters.handshake_failed++;
    c->state = S_CLOSED;
    c->status = status;
    half_open_remove(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        ep->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    net_conn *c = t->data;
    conn_teardown(c, NET_ETIMEDOUT);
}

static void on_written(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    net_conn *c = w->c;
    c->queued -= w->len;
    free(w);
    if (status < 0) {
        conn_teardown(c, status);
        return;
    }
    if (c->drain_wanted && c->state == S_OPEN && c->queued <= c->ep->opts.send_queue_max / 2) {
        c->drain_wanted = false;
        if (c->cbs.on_drain) c->cbs.on_drain(c);
    }
}

/* Allocates a write request with room for a frame of body_len bytes (prefix included). */
static wreq *wreq_new(net_conn *c, size_t body_len)
{
    wreq *w = malloc(sizeof *w + NET_FRAME_PREFIX + body_len);
    if (!w) return NULL;
    w->c = c;
    w->len = NET_FRAME_PREFIX + body_len;
    net_frame_put_prefix(w->bytes, (uint32_t)body_len);
    return w;
}

static int wreq_send(net_conn *c, wreq *w)
{
    uv_buf_t b = uv_buf_init((char *)w->bytes, (unsigned)w->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc) {
        free(w);
        return rc;
    }
    c->queued += w->len;
    return 0;
}

/* Sends a frame with the given clear body (handshake messages and headers). */
static int send_clear(net_conn *c, const uint8_t *body, size_t len)
{
    wreq *w = wreq_new(c, len);
    if (!w) return -ENOMEM;
    memcpy(w->bytes + NET_FRAME_PREFIX, body, len);
    return wreq_send(c, w);
}

static int send_sealed(net_conn *c, uint8_t type, const void *payload, size_t len)
{
    wreq *w = wreq_new(c, 1 + len + NET_FRAME_OVERHEAD);
    size_t blen;
    if (!w) return -ENOMEM;
    int rc = net_channel_seal(&c->ch, type, payload, len, w->bytes + NET_FRAME_PREFIX, &blen);
    if (rc) {
        free(w);
        return rc;
    }
    return wreq_send(c, w);
}

static void maybe_finish(net_conn *c)
{
    if (c->tx_done && c->rx_final) conn_teardown(c, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    net_conn *c = req->data;
    if (c->state == S_CLOSED) return;
    if (status < 0) {
        conn_teardown(c, status);
        return;
    }
    c->tx_done = true;
    maybe_finish(c);
}

/* Seals our FINAL and half-closes once everything queued is written. */
static void start_close(net_conn *c)
{
    int rc = send_sealed(c, NET_MSG_CLOSE, NULL, 0);
    if (!rc) {
        c->shutdown_req.data = c;
        rc = uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown);
    }
    if (rc) {
        conn_teardown(c, rc);
        return;
    }
    c->state = S_CLOSING;
    uv_timer_start(&c->timer, on_timeout, c->ep->opts.close_timeout_ms, 0);
}

/* ---- receiving ----------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    net_conn *c = h->data;
    if (c->rbuf)
        *buf = uv_buf_init((char *)c->rbuf, BIG_READ);
    else
        *buf = uv_buf_init((char *)c->small, SMALL_READ);
}

static int handshake_frame(net_conn *c, const uint8_t *body, size_t len)
{
    net_endpoint *ep = c->ep;
    net_hs_result res;
    uint8_t e_sk[NET_KEY_BYTES], header[NET_STREAM_HEADER_BYTES];
    int rc;
    if (c->incoming) {
        uint8_t out[NET_HS_RESP_BYTES];
        ep_random(ep, e_sk, sizeof e_sk);
        rc = net_hs_respond(ep->resp, body, len, e_sk, out, &res);
        sodium_memzero(e_sk, sizeof e_sk);
        if (!rc) rc = net_channel_init(&c->ch, &res, header);
        if (!rc) rc = send_clear(c, out, sizeof out);
    } else {
        rc = net_hs_initiator_finish(&c->hs, body, len, &res);
        ep->counters.hs.dh += c->hs.counters.dh;
        c->hs.counters.dh = 0;
        if (!rc) rc = net_channel_init(&c->ch, &res, header);
    }
    if (!rc) rc = send_clear(c, header, sizeof header);
    if (!rc) rc = send_sealed(c, NET_MSG_HELLO, NULL, 0);
    if (!rc) {
        memcpy(c->peer_pk, res.peer_pk, NET_KEY_BYTES);
        c->role = res.role;
        c->state = S_HEADER;
        net_frame_dec_set_max(&c->dec, NET_STREAM_HEADER_BYTES);
    }
    sodium_memzero(&res, sizeof res);
    return rc;
}

static int open_frame(net_conn *c, const uint8_t *body, size_t len, uint8_t *type, size_t *plen)
{
    if (len > c->ocap) {
        size_t cap = len;
        uint8_t *nb = realloc(c->obuf, cap);
        if (!nb) return -ENOMEM;
        c->obuf = nb;
        c->ocap = cap;
    }
    return net_channel_open(&c->ch, body, len, type, c->obuf, plen);
}

static void established(net_conn *c)
{
    net_endpoint *ep = c->ep;
    c->state = S_OPEN;
    half_open_remove(c);
    uv_timer_stop(&c->timer);
    net_frame_dec_set_max(&c->dec, NET_FRAME_MAX_BODY);
    ep->counters.established++;
    if (c->incoming) {
        c->announced = true;
        if (ep->on_accept) ep->on_accept(ep, c);
        if (c->state != S_OPEN) return; /* refused by the application */
    }
    if (c->cbs.on_established) c->cbs.on_established(c);
}

/* Returns 0 to go on reading, else the status to close with. */
static int handle_frame(net_conn *c, const uint8_t *body, size_t len)
{
    uint8_t type;
    size_t plen;
    int rc;
    switch (c->state) {
    case S_HANDSHAKE: return handshake_frame(c, body, len);
    case S_HEADER:
        rc = net_channel_accept_header(&c->ch, body, len);
        if (rc) return rc;
        c->state = S_HELLO;
        net_frame_dec_set_max(&c->dec, NET_FRAME_OVERHEAD + 1 + HELLO_MAX);
        return 0;
    case S_HELLO:
        rc = open_frame(c, body, len, &type, &plen);
        if (rc) return rc;
        if (type != NET_MSG_HELLO) return NET_EFORMAT;
        c->rbuf = malloc(BIG_READ);
        if (!c->rbuf) return -ENOMEM;
        c->ep->counters.rx_buffers++;
        established(c);
        return 0;
    case S_OPEN:
    case S_CLOSING:
        rc = open_frame(c, body, len, &type, &plen);
        if (rc) return rc;
        if (type == NET_MSG_CLOSE) {
            c->rx_final = true;
            if (c->state == S_OPEN) start_close(c);
            if (c->state != S_CLOSED) maybe_finish(c);
            return 0;
        }
        if (type < NET_MSG_APP_MIN) return NET_EFORMAT;
        c->stats.rx_msgs++;
        c->stats.rx_bytes += plen;
        if (c->state == S_OPEN && c->cbs.on_message) c->cbs.on_message(c, type, c->obuf + 1, plen);
        return 0;
    case S_CLOSED: return 0;
    }
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    net_conn *c = s->data;
    if (c->state == S_CLOSED) return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            conn_teardown(c, (int)nread);
        } else if (c->rx_final) {
            uv_read_stop(s); /* the peer's FINAL came first: a clean end */
        } else {
            conn_teardown(c, c->state >= S_OPEN ? NET_ETRUNCATED : NET_ECLOSED);
        }
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t left = (size_t)nread;
    while (left && c->state != S_CLOSED) {
        const uint8_t *body;
        size_t used, blen;
        int rc = net_frame_dec_feed(&c->dec, p, left, &used, &body, &blen);
        p += used;
        left -= used;
        if (rc < 0) {
            conn_teardown(c, rc);
            return;
        }
        if (rc == 1) {
            if (c->rx_final) { /* nothing may follow the FINAL */
                conn_teardown(c, NET_EFORMAT);
                return;
            }
            rc = handle_frame(c, body, blen);
            if (rc) {
                conn_teardown(c, rc);
                return;
            }
        }
    }
}

/* ---- incoming ------------------------------------------------------------------------------ */

static bool peer_addr(uv_tcp_t *t, uint8_t addr[16], size_t *len)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &sl) != 0) return false;
    if (ss.ss_family == AF_INET) {
        memcpy(addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        *len = 4;
    } else {
        memcpy(addr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        *len = 16;
    }
    return true;
}

static void on_connection(uv_stream_t *server, int status)
{
    net_endpoint *ep = server->data;
    if (status < 0 || ep->closing) return;
    net_conn *c = conn_new(ep, true);
    if (!c) return; /* the kernel keeps the connection queued; accept again later */
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_teardown(c, NET_ECLOSED);
        return;
    }
    ep->counters.accepted++;
    uint8_t addr[16];
    size_t alen;
    if (!peer_addr(&c->tcp, addr, &alen) ||
        !net__rate_take(ep->rate, addr, alen, uv_now(ep->loop))) {
        ep->counters.rate_limited++;
        conn_teardown(c, NET_ELIMIT);
        return;
    }
    /* One source may hold only so many half-open slots: past that its own oldest gives way,
     * so a flood from one address cannot push out handshakes from others. */
    memcpy(c->src, addr, alen);
    c->src_len = alen;
    net_conn *own_oldest = NULL;
    uint32_t own = 0;
    for (net_conn *h = ep->ho_head; h; h = h->ho_next) {
        if (h->src_len == alen && memcmp(h->src, addr, alen) == 0) {
            if (!own_oldest) own_oldest = h;
            own++;
        }
    }
    net_conn *victim = NULL;
    if (own >= ep->opts.max_half_open_per_source)
        victim = own_oldest;
    else if (ep->half_open >= ep->opts.max_half_open)
        victim = ep->ho_head;
    if (victim) {
        ep->counters.half_open_evicted++;
        conn_teardown(victim, NET_ELIMIT);
    }
    half_open_add(c);
    uv_tcp_nodelay(&c->tcp, 1);
    uv_timer_start(&c->timer, on_timeout, ep->opts.handshake_timeout_ms, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_teardown(c, NET_ECLOSED);
}

int net_endpoint_listen(net_endpoint *ep, const char *ip, int port,
                        void (*on_accept)(net_endpoint *ep, net_conn *c))
{
    struct sockaddr_storage ss;
    if (!ep->resp) return NET_EROLE; /* only holders of the fleet key answer handshakes */
    if (ep->listening || ep->closing) return -EINVAL;
    int rc = parse_addr(ip, port, &ss);
    if (rc) return rc;
    uv_tcp_init(ep->loop, &ep->listener);
    ep->listener.data = ep;
    ep->listening = true;
    ep->handles++;
    rc = uv_tcp_bind(&ep->listener, (struct sockaddr *)&ss, 0);
    if (!rc) rc = uv_listen((uv_stream_t *)&ep->listener, 511, on_connection);
    if (rc) {
        ep->listening = false;
        uv_close((uv_handle_t *)&ep->listener, listener_closed);
        return rc;
    }
    ep->on_accept = on_accept;
    return 0;
}

/* ---- outgoing ------------------------------------------------------------------------------ */

static void on_connected(uv_connect_t *req, int status)
{
    net_conn *c = req->data;
    net_endpoint *ep = c->ep;
    if (c->state == S_CLOSED) return;
    if (status < 0) {
        conn_teardown(c, status);
        return;
    }
    uint8_t e_sk[NET_KEY_BYTES], ts[NET_HS_TIMESTAMP_BYTES], msg[NET_HS_INIT_BYTES];
    uint64_t now = ep_clock_ns(ep);
    /* Timestamps of one endpoint strictly grow, whatever its clock does. */
    if (now <= ep->last_ts) now = ep->last_ts + 1;
    ep->last_ts = now;
    net_tai64n(now, ts);
    ep_random(ep, e_sk, sizeof e_sk);
    int rc = net_hs_initiate(&c->hs, &ep->self, &ep->keys, c->role, c->peer_pk, e_sk, ts, msg);
    sodium_memzero(e_sk, sizeof e_sk);
    ep->counters.hs.dh += c->hs.counters.dh;
    c->hs.counters.dh = 0;
    uv_tcp_nodelay(&c->tcp, 1);
    if (!rc) rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (!rc) rc = send_clear(c, msg, sizeof msg);
    if (rc) conn_teardown(c, rc);
}

int net_connect(net_endpoint *ep, const char *ip, int port, const uint8_t peer_pk[NET_KEY_BYTES],
                net_role role, const char *bind_ip, const net_conn_cbs *cbs, void *data,
                net_conn **out)
{
    struct sockaddr_storage ss, local;
    if (ep->closing) return NET_ECLOSED;
    if (role != NET_ROLE_PEER && role != NET_ROLE_CLIENT) return NET_EROLE;
    if (role == NET_ROLE_PEER && !ep->keys.has_fleet) return NET_EROLE;
    int rc = parse_addr(ip, port, &ss);
    if (!rc && bind_ip) rc = parse_addr(bind_ip, 0, &local);
    if (rc) return rc;
    net_conn *c = conn_new(ep, false);
    if (!c) return -ENOMEM;
    c->role = role;
    memcpy(c->peer_pk, peer_pk, NET_KEY_BYTES);
    c->connect_req.data = c;
    if (bind_ip) rc = uv_tcp_bind(&c->tcp, (struct sockaddr *)&local, 0);
    if (!rc) rc = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss, on_connected);
    if (rc) {
        conn_teardown(c, rc); /* not announced: no callback runs */
        return rc;
    }
    if (cbs) c->cbs = *cbs;
    c->data = data;
    c->announced = true;
    uv_timer_start(&c->timer, on_timeout, ep->opts.handshake_timeout_ms, 0);
    *out = c;
    return 0;
}

/* ---- the connection's API ------------------------------------------------------------------ */

void net_conn_set_cbs(net_conn *c, const net_conn_cbs *cbs, void *data)
{
    c->cbs = *cbs;
    c->data = data;
}

void *net_conn_data(const net_conn *c)
{
    return c->data;
}

void net_conn_set_data(net_conn *c, void *data)
{
    c->data = data;
}

net_endpoint *net_conn_endpoint(const net_conn *c)
{
    return c->ep;
}

bool net_conn_incoming(const net_conn *c)
{
    return c->incoming;
}

const uint8_t *net_conn_peer_key(const net_conn *c)
{
    return c->peer_pk;
}

net_role net_conn_role(const net_conn *c)
{
    return c->role;
}

size_t net_conn_queued(const net_conn *c)
{
    return c->queued;
}

void net_conn_stats_get(const net_conn *c, net_conn_stats *out)
{
    *out = c->stats;
    out->tx_rekeys = c->ch.tx_rekeys;
    out->rx_rekeys = c->ch.rx_rekeys;
}

int net_conn_send(net_conn *c, uint8_t type, const void *payload, size_t len)
{
    if (c->state != S_OPEN) return NET_ECLOSED;
    if (type < NET_MSG_APP_MIN) return -EINVAL;
    if (len > NET_PAYLOAD_MAX) return NET_ETOOBIG;
    if (c->queued > c->ep->opts.send_queue_max) {
        c->drain_wanted = true;
        return NET_EAGAIN;
    }
    int rc = send_sealed(c, type, payload, len);
    if (rc) {
        conn_teardown(c, rc);
        return rc;
    }
    c->stats.tx_msgs++;
    c->stats.tx_bytes += len;
    return 0;
}

void net_conn_close(net_conn *c)
{
    if (c->state == S_OPEN)
        start_close(c);
    else if (c->state != S_CLOSING)
        conn_teardown(c, NET_ECLOSED);
}

void net_conn_abort(net_conn *c, int status)
{
    conn_teardown(c, status);
}

/* ---- outbox ---------------------------------------------------------------------------------- */

struct net_outmsg {
    net_outmsg *next;
    uint8_t type;
    uint8_t *buf;
    size_t len;
};

int net_outbox_send(net_outbox *o, net_conn *c, uint8_t type, uint8_t *buf, size_t len)
{
    if (!o->head) {
        int rc = net_conn_send(c, type, buf, len);
        if (rc != NET_EAGAIN) {
            free(buf); /* sent, or the connection is closing */
            return rc;
        }
    }
    net_outmsg *m = malloc(sizeof *m);
    if (!m) {
        free(buf);
        return -ENOMEM;
    }
    *m = (net_outmsg){NULL, type, buf, len};
    if (o->tail)
        o->tail->next = m;
    else
        o->head = m;
    o->tail = m;
    return 0;
}

bool net_outbox_flush(net_outbox *o, net_conn *c)
{
    while (o->head) {
        net_outmsg *m = o->head;
        if (net_conn_send(c, m->type, m->buf, m->len) == NET_EAGAIN) return false;
        if (!(o->head = m->next)) o->tail = NULL;
        free(m->buf);
        free(m);
    }
    return true;
}

bool net_outbox_empty(const net_outbox *o)
{
    return o->head == NULL;
}

void net_outbox_clear(net_outbox *o)
{
    for (net_outmsg *m = o->head, *nx; m; m = nx) nx = m->next, free(m->buf), free(m);
    o->head = o->tail = NULL;
}
