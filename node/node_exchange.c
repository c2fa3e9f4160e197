/*
 * node_exchange.c — the chunk exchange between nodes (docs/protocol.md §9): the daemon's
 * endpoint and connections, serving manifests and chunks to peers, apps' connections (their
 * launches, node_launch.c) and pulls asked for by a peer. The pulls themselves are node_pull.c.
 *
 * Design notes:
 * - One endpoint per daemon, listening on the configuration's listen address. Any established
 *   connection may carry requests both ways, but only the peer role may ask for manifests or
 *   chunks: a client asking is cut off (NET_EROLE).
 * - Serving: a request is decoded on the loop (a pure, bounded check), then answered on the
 *   worker pool (cs_has, cs_get, cs_manifest_get_raw, zstd), at most SERVE_WORKERS at a time per
 *   connection, with at most SERVE_QUEUE_MAX waiting; a peer that queues more is cut off. While
 *   answers wait for the send queue to drain, no new work starts for that connection: a slow
 *   peer holds memory bounded by the send queue plus SERVE_WORKERS answers, and no read
 *   transaction waits on it.
 * - An app (the client role) may only ask for a launch (node_launch.c), on its own connection,
 *   which the launch's pull then uses as its origin; answers on a connection go to the pull
 *   source it serves.
 * - Lifetimes: a connection's state (xconn) outlives its net_conn until its work on the pool
 *   has come back.
 */
#define _GNU_SOURCE
#include "node_internal.h"
#include "node_xchg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SERVE_WORKERS   4    /* requests of one connection on the worker pool at once */
#define SERVE_QUEUE_MAX 1024 /* requests waiting per connection; past it the peer is cut off */
#define ANSWER_LEVEL    1    /* zstd level of CHUNKS answers: fast, LAN speeds */

/* A request being served, or waiting to be. */
struct sreq {
    struct sreq *next;
    xconn *xc;
    uv_work_t work;
    uint8_t type;
    uint8_t *in;
    size_t in_len;
    uint8_t *out[3]; /* up to three answers (DELTAS, CHUNKS and DONT_HAVE) */
    size_t out_len[3];
    uint8_t out_type[3];
};

const char *node__short_hex(const uint8_t *k, char out[13])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 6; i++) out[2 * i] = hex[k[i] >> 4], out[2 * i + 1] = hex[k[i] & 15];
    out[12] = '\0';
    return out;
}

/* ---- connections ----------------------------------------------------------------------------- */

void node__xconn_maybe_free(xconn *xc)
{
    if (xc->c || xc->working) return;
    node__exchange *x = xc->x;
    for (xconn **pp = &x->conns; *pp; pp = &(*pp)->next)
        if (*pp == xc) {
            *pp = xc->next;
            break;
        }
    for (sreq *r = xc->q_head, *nx; r; r = nx) nx = r->next, free(r->in), free(r);
    net_outbox_clear(&xc->out);
    free(xc);
}

static void serve_pump(xconn *xc);

/* Sends or, when the send queue is full, keeps the answer until on_drain. Takes buf. */
static void xconn_send(xconn *xc, uint8_t type, uint8_t *buf, size_t len)
{
    if (!xc->c) {
        free(buf);
        return;
    }
    if (net_outbox_send(&xc->out, xc->c, type, buf, len) == -ENOMEM)
        net_conn_abort(xc->c, -ENOMEM);
}

static void on_drain(net_conn *c)
{
    xconn *xc = net_conn_data(c);
    if (!net_outbox_flush(&xc->out, c)) return;
    serve_pump(xc);
    if (xc->src) node__pull_drained(xc->src);
}

/* ---- serving --------------------------------------------------------------------------------- */

static void answer_manifest(node__exchange *x, sreq *r, const net_msg *m)
{
    cs_id id;
    memcpy(id.b, m->id, CS_ID_BYTES);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = cs_manifest_get_raw(x->d->st, &id, &buf, &len);
    bool found = rc == 0 && len > 0 && len <= NET_MANIFEST_TOTAL_MAX && m->offset < len;
    size_t part = 0;
    if (found) {
        part = len - m->offset;
        if (part > NET_MANIFEST_PART_MAX) part = NET_MANIFEST_PART_MAX;
    }
    if (net_msg_encode_manifest(m->id, found, len, m->offset, found ? buf + m->offset : NULL, part,
                                &r->out[0], &r->out_len[0]) == 0)
        r->out_type[0] = NET_MSG_MANIFEST;
    free(buf);
}

static void answer_have(node__exchange *x, sreq *r, const net_msg *m)
{
    uint8_t *bits = calloc(((size_t)m->n + 7) / 8, 1);
    cs_id *ids = malloc((size_t)m->n * sizeof *ids);
    if (bits && ids) {
        memcpy(ids, m->ids, (size_t)m->n * CS_ID_BYTES);
        if (cs_has(x->d->st, ids, m->n, bits) < 0) memset(bits, 0, ((size_t)m->n + 7) / 8);
        if (net_msg_encode_bitmap(m->req, m->n, bits, &r->out[0], &r->out_len[0]) == 0)
            r->out_type[0] = NET_MSG_HAVE_BITMAP;
    }
    free(bits);
    free(ids);
}

/* Reads the chunks of ids[0..n) this store holds into data (in the order of good) and names
 * the rest (absent, or damaged here) in lack; pos[k] is good[k]'s index in ids. */
static void read_held(node__exchange *x, const uint8_t *ids_in, uint32_t n, uint8_t *data,
                      cs_id *good, uint32_t *pos, uint32_t *ngood, cs_id *lack, uint32_t *nlack)
{
    cs_id ids[NET_GET_MAX];
    uint8_t bits[NET_GET_MAX / 8] = {0};
    memcpy(ids, ids_in, (size_t)n * CS_ID_BYTES);
    if (cs_has(x->d->st, ids, n, bits) < 0) memset(bits, 0, sizeof bits);
    *ngood = *nlack = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (bits[i / 8] & (1u << (i % 8)))
            pos[*ngood] = i, good[(*ngood)++] = ids[i];
        else
            lack[(*nlack)++] = ids[i];
    }
    while (*ngood > 0) {
        size_t bad = 0;
        int rc = cs_get(x->d->st, good, *ngood, data, &bad);
        if (rc == 0) break;
        if ((rc != CS_ECORRUPT && rc != CS_ENOTFOUND) || bad >= *ngood) {
            for (uint32_t i = 0; i < *ngood; i++) lack[(*nlack)++] = good[i];
            *ngood = 0;
            break;
        }
        if (rc == CS_ECORRUPT) {
            char hex[CS_ID_HEX + 1];
            node_log(NODE_LOG_WARN,
                     "chunk %s is damaged in this store: not sent (run `cloudlet "
                     "store verify`)",
                     cs_id_to_hex(&good[bad], hex));
        }
        lack[(*nlack)++] = good[bad];
        (*ngood)--;
        good[bad] = good[*ngood];
        pos[bad] = pos[*ngood];
    }
}

/* Held chunks go in CHUNKS, the rest in DONT_HAVE. */
static void answer_get(node__exchange *x, sreq *r, const net_msg *m)
{
    cs_id good[NET_GET_MAX], lack[NET_GET_MAX];
    uint32_t pos[NET_GET_MAX], ngood, nlack;
    uint8_t *data = malloc((size_t)NET_GET_MAX * CS_CHUNK_SIZE);
    if (!data) return;
    read_held(x, m->ids, m->n, data, good, pos, &ngood, lack, &nlack);
    int k = 0;
    if (ngood && net_msg_encode_chunks(m->req, (const uint8_t *)good, ngood, data, ANSWER_LEVEL,
                                       &r->out[k], &r->out_len[k]) == 0)
        r->out_type[k++] = NET_MSG_CHUNKS;
    if (nlack && net_msg_encode_ids(NET_MSG_DONT_HAVE, m->req, (const uint8_t *)lack, nlack,
                                    &r->out[k], &r->out_len[k]) == 0)
        r->out_type[k++] = NET_MSG_DONT_HAVE;
    free(data);
}

/* Held chunks whose base is held too go as deltas against it (DELTAS), the other held ones whole
 * (CHUNKS), the rest in DONT_HAVE. */
static void answer_get_delta(node__exchange *x, sreq *r, const net_msg *m)
{
    cs_id good[NET_GET_MAX], lack[NET_GET_MAX], dids[NET_GET_MAX], whole_ids[NET_GET_MAX];
    uint32_t pos[NET_GET_MAX], ngood, nlack, nd = 0, nw = 0;
    uint8_t *data = malloc((size_t)NET_GET_MAX * CS_CHUNK_SIZE);
    uint8_t *whole = malloc((size_t)NET_GET_MAX * CS_CHUNK_SIZE);
    uint8_t *frames = malloc((size_t)NET_GET_MAX * NET_DELTA_MAX);
    const uint8_t *fp[NET_GET_MAX];
    size_t fl[NET_GET_MAX];
    if (!data || !whole || !frames) goto out;
    read_held(x, m->ids, m->n, data, good, pos, &ngood, lack, &nlack);
    for (uint32_t k = 0; k < ngood; k++) {
        const uint8_t *chunk = data + (size_t)k * CS_CHUNK_SIZE;
        uint8_t base[CS_CHUNK_SIZE];
        cs_id bid;
        memcpy(bid.b, m->bases + (size_t)pos[k] * CS_ID_BYTES, CS_ID_BYTES);
        uint8_t *f = frames + (size_t)nd * NET_DELTA_MAX;
        if (!cs_id_is_zero(&bid) && cs_get(x->d->st, &bid, 1, base, NULL) == 0 &&
            net_delta_encode(chunk, base, ANSWER_LEVEL, f, NET_DELTA_MAX, &fl[nd]) == 0) {
            fp[nd] = f;
            dids[nd++] = good[k];
        } else {
            memcpy(whole + (size_t)nw * CS_CHUNK_SIZE, chunk, CS_CHUNK_SIZE);
            whole_ids[nw++] = good[k];
        }
    }
    int k = 0;
    if (nd && net_msg_encode_deltas(m->req, (const uint8_t *)dids, nd, fp, fl, &r->out[k],
                                    &r->out_len[k]) == 0)
        r->out_type[k++] = NET_MSG_DELTAS;
    if (nw && net_msg_encode_chunks(m->req, (const uint8_t *)whole_ids, nw, whole, ANSWER_LEVEL,
                                    &r->out[k], &r->out_len[k]) == 0)
        r->out_type[k++] = NET_MSG_CHUNKS;
    if (nlack && net_msg_encode_ids(NET_MSG_DONT_HAVE, m->req, (const uint8_t *)lack, nlack,
                                    &r->out[k], &r->out_len[k]) == 0)
        r->out_type[k++] = NET_MSG_DONT_HAVE;
out:
    free(data), free(whole), free(frames);
}

static void serve_work(uv_work_t *w)
{
    sreq *r = w->data;
    net_msg m;
    if (net_msg_decode(r->type, r->in, r->in_len, &m) != 0) return; /* checked on arrival */
    if (r->type == NET_MSG_MANIFEST_GET)
        answer_manifest(r->xc->x, r, &m);
    else if (r->type == NET_MSG_HAVE)
        answer_have(r->xc->x, r, &m);
    else if (r->type == NET_MSG_GET_DELTA)
        answer_get_delta(r->xc->x, r, &m);
    else
        answer_get(r->xc->x, r, &m);
}

static void serve_done(uv_work_t *w, int status)
{
    sreq *r = w->data;
    xconn *xc = r->xc;
    xc->working--;
    for (int i = 0; i < 3; i++)
        if (r->out[i]) xconn_send(xc, r->out_type[i], r->out[i], r->out_len[i]);
    free(r->in);
    free(r);
    (void)status;
    if (!xc->c) {
        node__xconn_maybe_free(xc);
        return;
    }
    serve_pump(xc);
}

static void serve_pump(xconn *xc)
{
    while (xc->c && net_outbox_empty(&xc->out) && xc->working < SERVE_WORKERS && xc->q_head) {
        sreq *r = xc->q_head;
        xc->q_head = r->next;
        if (!xc->q_head) xc->q_tail = NULL;
        xc->queued--;
        r->next = NULL;
        r->work.data = r;
        if (uv_queue_work(&xc->x->d->loop, &r->work, serve_work, serve_done) != 0) {
            free(r->in);
            free(r);
            continue;
        }
        xc->working++;
    }
}

static void serve_request(xconn *xc, uint8_t type, const uint8_t *payload, size_t len)
{
    if (net_conn_role(xc->c) != NET_ROLE_PEER) {
        char k[13];
        node_log(NODE_LOG_INFO, "an app (%s) asked for chunks or manifests: cut off",
                 node__short_hex(net_conn_peer_key(xc->c), k));
        net_conn_abort(xc->c, NET_EROLE); /* apps may not pull chunks (DESIGN.md §5) */
        return;
    }
    net_msg m;
    if (net_msg_decode(type, payload, len, &m) != 0) {
        net_conn_abort(xc->c, NET_EFORMAT);
        return;
    }
    if (xc->queued >= SERVE_QUEUE_MAX) {
        net_conn_abort(xc->c, NET_ELIMIT);
        return;
    }
    sreq *r = calloc(1, sizeof *r);
    uint8_t *in = malloc(len ? len : 1);
    if (!r || !in) {
        free(r);
        free(in);
        net_conn_abort(xc->c, -ENOMEM);
        return;
    }
    memcpy(in, payload, len);
    r->xc = xc, r->type = type, r->in = in, r->in_len = len;
    if (xc->q_tail)
        xc->q_tail->next = r;
    else
        xc->q_head = r;
    xc->q_tail = r;
    xc->queued++;
    serve_pump(xc);
}

static void serve_pull_ask(xconn *xc, const uint8_t *payload, size_t len);

static void on_message(net_conn *c, uint8_t type, const uint8_t *payload, size_t len)
{
    xconn *xc = net_conn_data(c);
    switch (type) {
    case NET_MSG_PULL_ASK: serve_pull_ask(xc, payload, len); break;
    case NET_MSG_LAUNCH:
        if (net_conn_role(c) != NET_ROLE_CLIENT || xc->launch) {
            net_conn_abort(c, NET_EROLE); /* one launch per connection, from an app */
            break;
        }
        xc->launch = true;
        node__launch_asked(xc->x->d, xc, payload, len);
        break;
    case NET_MSG_MANIFEST_GET:
    case NET_MSG_HAVE:
    case NET_MSG_GET:
    case NET_MSG_GET_DELTA: serve_request(xc, type, payload, len); break;
    case NET_MSG_MANIFEST:
    case NET_MSG_HAVE_BITMAP:
    case NET_MSG_CHUNKS:
    case NET_MSG_DELTAS:
    case NET_MSG_ZCHUNKS:
    case NET_MSG_DONT_HAVE:
        if (xc->src)
            node__pull_on_answer(xc->src, type, payload, len);
        else
            net_conn_abort(c, NET_EFORMAT); /* an answer to nothing this node asked */
        break;
    default: break; /* later versions may add messages */
    }
}

static void on_established(net_conn *c)
{
    xconn *xc = net_conn_data(c);
    if (xc->src) node__pull_connected(xc->src);
}

static void on_close(net_conn *c, int status)
{
    xconn *xc = net_conn_data(c);
    xc->c = NULL;
    if (xc->asked) {
        xc->asked = false;
        node__pull_detach(xc->x->d, xc); /* the asker went away: its pull stops */
    }
    if (xc->launch) {
        xc->launch = false;
        node__launch_conn_gone(xc->x->d, xc);
    }
    xsource *s = xc->src;
    if (s) {
        xc->src = NULL;
        node__pull_source_gone(s, status);
    }
    node__xconn_maybe_free(xc);
}

const net_conn_cbs node__xconn_cbs = {on_established, on_message, on_drain, on_close};

xconn *node__xconn_new(node__exchange *x)
{
    xconn *xc = calloc(1, sizeof *xc);
    if (!xc) return NULL;
    xc->x = x;
    xc->next = x->conns;
    x->conns = xc;
    return xc;
}

static void on_accept(net_endpoint *ep, net_conn *c)
{
    node__exchange *x = net_endpoint_data(ep);
    xconn *xc = x->stopping ? NULL : node__xconn_new(x);
    if (!xc) {
        net_conn_abort(c, NET_EREJECTED);
        return;
    }
    xc->c = c;
    net_conn_set_cbs(c, &node__xconn_cbs, xc);
}

/* ---- the daemon's side ----------------------------------------------------------------------- */

int node__exchange_start(node_daemon *d, char err[NODE_ERRMSG])
{
    if (!d->keys.has_fleet) return 0; /* alone: no peers to serve or pull from */
    node__exchange *x = calloc(1, sizeof *x);
    if (!x) return -ENOMEM;
    d->xchg = x;
    x->d = d;
    int rc = net_keypair_from_secret(&x->kp, d->keys.node_sk);
    if (rc) {
        node__errf(err, "the node key cannot be used: %s", net_strerror(rc));
        return rc;
    }
    net_fleet_keys(&x->keys, d->keys.fleet);
    if ((rc = net_endpoint_new(&d->loop, &x->kp, &x->keys, NULL, &x->ep))) {
        node__errf(err, "peer endpoint: %s", net_strerror(rc));
        return rc;
    }
    net_endpoint_set_data(x->ep, x);
    rc = net_endpoint_listen(x->ep, d->cfg.listen.host, d->cfg.listen.port, on_accept);
    if (rc) {
        /* A node of a fleet that cannot be reached is not what its operator configured: say
         * so at start rather than run on, unreachable. */
        node__errf(err, "cannot listen for peers on %s:%u: %s (is another cloudletd using that "
                        "port? `listen` in cloudlet.conf sets it)",
                   d->cfg.listen.host, d->cfg.listen.port, net_strerror(rc));
        return rc;
    }
    d->cfg.listen.port = (uint16_t)net_endpoint_port(x->ep); /* port 0: the one bound */
    node_log(NODE_LOG_INFO, "serving chunks to peers on %s:%u", d->cfg.listen.host,
             d->cfg.listen.port);
    return 0;
}

void node__exchange_stop(node_daemon *d)
{
    node__exchange *x = d->xchg;
    if (!x || x->stopping) return;
    x->stopping = true;
    node__pull_stop_all(x, "the daemon is shutting down");
    if (x->ep) net_endpoint_close(x->ep, NULL);
    x->ep = NULL;
}

void node__exchange_free(node_daemon *d)
{
    node__exchange *x = d->xchg;
    if (!x) return;
    /* The loop has ended: every connection closed and every work came back. */
    while (x->conns) {
        xconn *xc = x->conns;
        xc->c = NULL;
        xc->working = 0;
        node__xconn_maybe_free(xc);
    }
    net_keys_wipe(&x->keys);
    sodium_memzero(&x->kp, sizeof x->kp);
    free(x);
    d->xchg = NULL;
}


/* ---- connections of apps (node_launch.c) ----------------------------------------------------- */

void node__conn_send(void *conn, uint8_t type, uint8_t *buf, size_t len)
{
    xconn_send(conn, type, buf, len);
}

void node__conn_end(void *conn)
{
    xconn *xc = conn;
    xc->launch = false;
    if (xc->c) net_conn_close(xc->c);
}

/* ---- pulls asked for by a peer (PULL_ASK, docs/replication.md) ------------------------------- */

net_endpoint *node__exchange_endpoint(node_daemon *d)
{
    return d->xchg && !d->xchg->stopping ? d->xchg->ep : NULL;
}

static void send_pull_done(xconn *xc, bool ok, uint64_t chunks, const char *text)
{
    uint8_t *buf;
    size_t len, tl = strlen(text) < NET_PULL_TEXT_MAX ? strlen(text) : NET_PULL_TEXT_MAX;
    if (xc->c && net_msg_encode_pull_done(1, ok, chunks, text, tl, &buf, &len) == 0)
        xconn_send(xc, NET_MSG_PULL_DONE, buf, len);
}

/* The last report of a pull a peer asked for: its outcome goes back as PULL_DONE. */
static void asked_pull_report(const char *line, bool last, void *arg)
{
    xconn *xc = arg;
    if (!last) return;
    xc->asked = false;
    node__pull_progress_t pp;
    bool ok = node__pull_progress(xc->x->d, NULL, xc, &pp) == 0 && !pp.failed;
    send_pull_done(xc, ok, pp.chunks_done, ok ? "pulled" : pp.err[0] ? pp.err : "the pull failed");
}

static void serve_pull_ask(xconn *xc, const uint8_t *payload, size_t len)
{
    if (net_conn_role(xc->c) != NET_ROLE_PEER) {
        net_conn_abort(xc->c, NET_EROLE); /* only nodes of the fleet may ask */
        return;
    }
    net_msg m;
    if (net_msg_decode(NET_MSG_PULL_ASK, payload, len, &m) != 0 || m.req != 1 || xc->ask_seen) {
        net_conn_abort(xc->c, NET_EFORMAT); /* one ask per connection */
        return;
    }
    xc->ask_seen = true;
    net_pull_source src[NET_PULL_SOURCES_MAX];
    net_msg_pull_sources(&m, src);
    cs_id id;
    memcpy(id.b, m.id, CS_ID_BYTES);
    char err[NODE_ERRMSG] = "", hex[CS_ID_HEX + 1], k[13];
    node_log(NODE_LOG_INFO, "peer %s asks this node to pull %s",
             node__short_hex(net_conn_peer_key(xc->c), k), cs_id_to_hex(&id, hex));
    xc->asked = true;
    int rc = node__pull_start_from(xc->x->d, &id, src, m.nsources, asked_pull_report, xc, err);
    if (rc) {
        xc->asked = false;
        send_pull_done(xc, false, 0, err[0] ? err : node_strerror(rc));
    }
}
