/*
 * client_launch.c — cl_launch: ask a node to launch a manifest and serve its requests from the
 * app's store (docs/client.md, docs/protocol.md "Launching a VM for an app").
 *
 * Design notes:
 * - What may leave the app is fixed before the connection opens: the launched manifest and its
 *   chain of parents as the store holds them (their encoded bytes, kept in memory), and the set
 *   of chunk ids those manifests name once resolved. A MANIFEST_GET for anything else is
 *   answered "not found", and a chunk outside the set is answered DONT_HAVE whether the store
 *   holds it or not: the node cannot use the app to read the rest of its store.
 * - The loop runs in the caller's thread. A request is decoded on the loop (a pure, bounded
 *   check); GET and GET_DELTA are answered on libuv's worker pool (cs_has, cs_get, zstd), at
 *   most SERVE_WORKERS at a time, with at most SERVE_QUEUE_MAX waiting (a node that queues more
 *   is cut off). While answers wait for the send queue to drain (NET_EAGAIN), no new work
 *   starts: memory stays bounded by the send queue plus SERVE_WORKERS answers.
 * - The end: LAUNCH_DONE, or without wait a LAUNCH_PROGRESS at stage apply or restore, decides
 *   the result; the connection is then closed cleanly once the work in flight has come back
 *   and every answer is handed to the channel. A close before that is an error whose sentence
 *   depends on whether the handshake had finished.
 * - Lifetimes: everything lives in one struct launch that cl_launch allocates and frees; its
 *   loop runs until no handle and no work request is left, so nothing outlives it.
 * - A node that says nothing for silence_ms (its progress reports come several times a second)
 *   is taken as gone, so an app never waits forever on a stuck node.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SERVE_WORKERS   2      /* requests on the worker pool at once */
#define SERVE_QUEUE_MAX 1024   /* requests waiting; past it the node is cut off */
#define MAX_CHAIN       16     /* manifests of a chain served at most (as a node fetches them) */
#define CHUNK_LEVEL     9      /* zstd level of the stream of whole chunks: the app's link is
                                  the slow one, and the loop compresses about 50 MB/s at it */
#define DELTA_LEVEL     6      /* measured: 29 us a delta, against 632 us at level 19 for
                                  7 % fewer delta bytes: the app must keep its link busy */
#define SILENCE_MS      120000 /* default: a node silent this long is taken as gone */
/* A delta is sent only when clearly smaller than the chunk, which would itself be compressed
 * in its CHUNKS batch otherwise. */
#define DELTA_USEFUL (NET_CHUNK_BYTES * 7 / 8)

/* ---- what may be served -------------------------------------------------------------------- */

/* An open-addressing set of chunk ids, at most half full. Ids are BLAKE2b outputs, so their
 * first bytes are uniform; the zero id marks an empty slot (the zero chunk is never sent). */
typedef struct idset {
    cs_id *slot;
    size_t mask, n;
} idset;

static size_t idset_home(size_t mask, const uint8_t *id)
{
    uint64_t h;
    memcpy(&h, id, sizeof h);
    return (size_t)h & mask;
}

static void idset_put(cs_id *slot, size_t mask, const cs_id *id)
{
    size_t i = idset_home(mask, id->b);
    while (!cs_id_is_zero(&slot[i])) i = (i + 1) & mask;
    slot[i] = *id;
}

static bool idset_has(const idset *s, const uint8_t *id)
{
    if (!s->slot) return false;
    size_t i = idset_home(s->mask, id);
    while (!cs_id_is_zero(&s->slot[i])) {
        if (!memcmp(s->slot[i].b, id, CS_ID_BYTES)) return true;
        i = (i + 1) & s->mask;
    }
    return false;
}

static int idset_add(idset *s, const cs_id *id)
{
    if (idset_has(s, id->b)) return 0;
    if (!s->slot || (s->n + 1) * 2 > s->mask + 1) {
        size_t cap = s->slot ? (s->mask + 1) * 2 : 1024;
        cs_id *slot = calloc(cap, sizeof *slot);
        if (!slot) return -ENOMEM;
        for (size_t i = 0; s->slot && i <= s->mask; i++)
            if (!cs_id_is_zero(&s->slot[i])) idset_put(slot, cap - 1, &s->slot[i]);
        free(s->slot);
        s->slot = slot;
        s->mask = cap - 1;
    }
    idset_put(s->slot, s->mask, id);
    s->n++;
    return 0;
}

/* The launched manifest and its parents as the store holds them. */
typedef struct chain {
    size_t n;
    cs_id id[MAX_CHAIN];
    uint8_t *raw[MAX_CHAIN];
    size_t len[MAX_CHAIN];
    idset chunks;
} chain;

static void chain_free(chain *ch)
{
    for (size_t i = 0; i < ch->n; i++) free(ch->raw[i]);
    free(ch->chunks.slot);
}

/* Loads the chain of id from st; a manifest the store lacks ends it (an empty chain when the
 * store lacks id itself: the node may hold it). */
static int chain_load(cs_store *st, const cs_id *id, chain *ch)
{
    cs_id cur = *id;
    for (;;) {
        if (ch->n == MAX_CHAIN) break;
        uint8_t *buf;
        size_t len;
        int rc = cs_manifest_get_raw(st, &cur, &buf, &len);
        if (rc == CS_ENOTFOUND) break;
        if (rc) return rc;
        cs_manifest *m = NULL;
        if ((rc = cs_manifest_decode(buf, len, &m))) {
            free(buf);
            return rc;
        }
        ch->id[ch->n] = cur;
        ch->raw[ch->n] = buf;
        ch->len[ch->n++] = len;
        bool more = m->has_parent;
        if (more) cur = m->parent;
        cs_manifest_free(m);
        if (!more) break;
    }
    /* The chunk ids each manifest of the chain names, resolved: the launched VM's, and the
     * parents' (which a node lacking the base VM fetches too). One resolved manifest at a
     * time: the set, 64 bytes per distinct chunk at most, is what stays. */
    for (size_t i = 0; i < ch->n; i++) {
        cs_manifest *m = NULL;
        int rc = cs_manifest_get(st, &ch->id[i], &m);
        for (size_t k = 0; !rc && k < m->nimages; k++) {
            const cs_image *im = &m->images[k];
            for (uint64_t j = 0; !rc && j < im->nchunks; j++)
                if (!cs_id_is_zero(&im->chunks[j])) rc = idset_add(&ch->chunks, &im->chunks[j]);
        }
        cs_manifest_free(m);
        if (rc) return rc;
    }
    return 0;
}

/* ---- the launch's state -------------------------------------------------------------------- */

typedef struct launch launch;

/* A GET or GET_DELTA being answered, or waiting to be. */
typedef struct job {
    struct job *next;
    launch *l;
    uv_work_t work;
    uint32_t req, n;
    uint8_t *ids, *bases; /* n ids each (bases: GET_DELTA only) */
    int err;
    uint8_t *out[2]; /* DELTAS, DONT_HAVE: each may be absent */
    size_t out_len[2];
    uint8_t *whole_ids, *whole; /* chunks sent whole: compressed on the loop, in send order */
    uint32_t nwhole;
    uint64_t deltas, refused;
} job;

static const uint8_t job_out_type[2] = {NET_MSG_DELTAS, NET_MSG_DONT_HAVE};

struct launch {
    cl_client *cl;
    const cl_launch_opts *o;
    cl_result *r;
    const cl_node *node;
    char ip[64];
    uint8_t id[NET_ID_BYTES];
    chain ch;
    uv_loop_t loop;
    net_endpoint *ep;
    net_conn *c;        /* NULL once closed */
    uv_timer_t silence; /* reset by every message from the node */
    uint64_t silence_ms;
    bool established;
    bool ended;   /* the result is decided (done, handed off, or an error) */
    bool closing; /* net_conn_close was called */
    int err;      /* the first error; 0 when the launch ended well */
    job *wait_head, *wait_tail;
    size_t nwait;
    unsigned working;
    net_outbox out; /* answers waiting for the send queue */
    net_zstream *zenc; /* the stream whole chunks are compressed into (ZCHUNKS) */
    cl_progress prog;
};

static void fail(launch *l, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Decides the result as an error (the first one counts) and cuts the connection. */
static void fail(launch *l, int err, const char *fmt, ...)
{
    if (!l->ended) {
        l->ended = true;
        l->err = err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->r->error, sizeof l->r->error, fmt, ap);
        va_end(ap);
    }
    if (l->c) net_conn_abort(l->c, NET_ECLOSED);
}

static void job_free(job *j)
{
    free(j->ids), free(j->bases), free(j->whole_ids), free(j->whole);
    for (int i = 0; i < 2; i++) free(j->out[i]);
    free(j);
}

static void maybe_close(launch *l)
{
    if (l->ended && !l->closing && l->c && !l->working && !l->wait_head &&
        net_outbox_empty(&l->out)) {
        l->closing = true;
        net_conn_close(l->c);
    }
}

/* Sends, or keeps the message until on_drain when the send queue is full. Takes buf. */
static void send_msg(launch *l, uint8_t type, uint8_t *buf, size_t len)
{
    if (!l->c) {
        free(buf);
        return;
    }
    int rc = net_outbox_send(&l->out, l->c, type, buf, len);
    if (rc == 0) l->prog.sent_bytes += len;
    if (rc == -ENOMEM) fail(l, -ENOMEM, "out of memory");
}

/* ---- answering GET and GET_DELTA (worker pool) ----------------------------------------------- */

/* Reads ids[i] for every i with want[i] into data (4096 bytes each, at position i); a chunk
 * that cannot be read (damaged, or gone since) clears want[i]. */
static int read_chunks(cs_store *st, const uint8_t *ids, uint32_t n, bool *want, uint8_t *data)
{
    cs_id *w = malloc((n ? n : 1) * sizeof *w);
    uint8_t *buf = malloc((size_t)(n ? n : 1) * NET_CHUNK_BYTES);
    if (!w || !buf) {
        free(w), free(buf);
        return -ENOMEM;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        if (want[i]) memcpy(w[k++].b, ids + (size_t)i * NET_ID_BYTES, NET_ID_BYTES);
    int rc = k ? cs_get(st, w, k, buf, NULL) : 0;
    uint32_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!want[i]) continue;
        uint8_t *dst = data + (size_t)i * NET_CHUNK_BYTES;
        if (rc == 0)
            memcpy(dst, buf + (size_t)at * NET_CHUNK_BYTES, NET_CHUNK_BYTES);
        else if (cs_get(st, &w[at], 1, dst, NULL) != 0) /* one by one, to skip only the bad */
            want[i] = false;
        at++;
    }
    free(w), free(buf);
    return 0;
}

static void serve_work(uv_work_t *w)
{
    job *j = w->data;
    launch *l = j->l;
    cs_store *st = l->cl->st;
    uint32_t n = j->n;
    bool *give = calloc(n, sizeof *give), *base_ok = calloc(n, sizeof *base_ok);
    uint8_t *held = calloc((n + 7) / 8, 1), *bheld = calloc((n + 7) / 8, 1);
    uint8_t *data = malloc((size_t)n * NET_CHUNK_BYTES);
    uint8_t *base = j->bases ? malloc((size_t)n * NET_CHUNK_BYTES) : NULL;
    uint8_t *dbuf = j->bases ? malloc((size_t)n * NET_DELTA_MAX) : NULL;
    const uint8_t **frames = calloc(n, sizeof *frames);
    size_t *flens = calloc(n, sizeof *flens);
    uint8_t *ids_d = malloc((size_t)n * NET_ID_BYTES), *ids_w = malloc((size_t)n * NET_ID_BYTES);
    uint8_t *ids_x = malloc((size_t)n * NET_ID_BYTES);
    uint8_t *whole = malloc((size_t)n * NET_CHUNK_BYTES);
    int rc = -ENOMEM;
    if (!give || !base_ok || !held || !bheld || !data || (j->bases && (!base || !dbuf)) ||
        !frames || !flens || !ids_d || !ids_w || !ids_x || !whole)
        goto out;
    int64_t h = cs_has(st, (const cs_id *)j->ids, n, held);
    if (h < 0) {
        rc = (int)h;
        goto out;
    }
    for (uint32_t i = 0; i < n; i++)
        give[i] = (held[i / 8] >> (i % 8) & 1) &&
                  idset_has(&l->ch.chunks, j->ids + (size_t)i * NET_ID_BYTES);
    if ((rc = read_chunks(st, j->ids, n, give, data))) goto out;
    if (j->bases) {
        /* The base must be of the chain too (the parent's chunk at the same place is): a
         * delta's size tells how alike two chunks are, which would leak something of chunks
         * outside the chain. */
        if ((h = cs_has(st, (const cs_id *)j->bases, n, bheld)) < 0) {
            rc = (int)h;
            goto out;
        }
        for (uint32_t i = 0; i < n; i++)
            base_ok[i] = give[i] && (bheld[i / 8] >> (i % 8) & 1) &&
                         idset_has(&l->ch.chunks, j->bases + (size_t)i * NET_ID_BYTES);
        if ((rc = read_chunks(st, j->bases, n, base_ok, base))) goto out;
    }
    uint32_t nd = 0, nw = 0, nx = 0;
    size_t dat = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *id = j->ids + (size_t)i * NET_ID_BYTES;
        const uint8_t *chunk = data + (size_t)i * NET_CHUNK_BYTES;
        if (!give[i]) {
            memcpy(ids_x + (size_t)nx++ * NET_ID_BYTES, id, NET_ID_BYTES);
            continue;
        }
        size_t dlen = 0;
        if (base_ok[i] &&
            net_delta_encode(chunk, base + (size_t)i * NET_CHUNK_BYTES, DELTA_LEVEL, dbuf + dat,
                             NET_DELTA_MAX, &dlen) == 0 &&
            dlen < DELTA_USEFUL) {
            memcpy(ids_d + (size_t)nd * NET_ID_BYTES, id, NET_ID_BYTES);
            frames[nd] = dbuf + dat;
            flens[nd++] = dlen;
            dat += dlen;
            continue;
        }
        memcpy(ids_w + (size_t)nw * NET_ID_BYTES, id, NET_ID_BYTES);
        memcpy(whole + (size_t)nw++ * NET_CHUNK_BYTES, chunk, NET_CHUNK_BYTES);
    }
    rc = 0;
    if (nd)
        rc = net_msg_encode_deltas(j->req, ids_d, nd, frames, flens, &j->out[0], &j->out_len[0]);
    if (!rc && nx)
        rc = net_msg_encode_ids(NET_MSG_DONT_HAVE, j->req, ids_x, nx, &j->out[1], &j->out_len[1]);
    if (!rc && nw) { /* handed to serve_done, which compresses them into the stream */
        j->whole_ids = ids_w, j->whole = whole, ids_w = NULL, whole = NULL;
        j->nwhole = nw;
    }
    j->deltas = nd, j->refused = nx;
out:
    j->err = rc;
    free(give), free(base_ok), free(held), free(bheld), free(data), free(base), free(dbuf);
    free(frames), free(flens), free(ids_d), free(ids_w), free(ids_x), free(whole);
}

static void pump(launch *l);

static void serve_done(uv_work_t *w, int status)
{
    job *j = w->data;
    launch *l = j->l;
    l->working--;
    if (status == 0 && j->err == 0 && l->c) {
        /* Whole chunks go as the next part of this connection's stream: compressed here, in
         * the order the parts are sent, so the node decodes them in the order it gets them. */
        uint8_t *z = NULL;
        size_t zlen = 0;
        int zrc = 0;
        if (j->nwhole && (zrc = net_msg_encode_zchunks(j->req, j->whole_ids, j->nwhole, j->whole,
                                                       l->zenc, &z, &zlen))) {
            fail(l, zrc, "cannot compress chunks: %s", cl_strerror(zrc));
            job_free(j);
            maybe_close(l);
            return;
        }
        if (z) send_msg(l, NET_MSG_ZCHUNKS, z, zlen);
        for (int i = 0; i < 2; i++)
            if (j->out[i]) {
                send_msg(l, job_out_type[i], j->out[i], j->out_len[i]);
                j->out[i] = NULL;
            }
        l->prog.served_chunks += j->nwhole;
        l->prog.served_deltas += j->deltas;
        l->prog.refused += j->refused;
    } else if (l->c) {
        int err = status ? status : j->err;
        fail(l, err, "cannot answer the node from the store: %s", cl_strerror(err));
    }
    job_free(j);
    pump(l);
    maybe_close(l);
}

/* Starts waiting requests while there is room on the pool and in the send queue. */
static void pump(launch *l)
{
    while (l->c && l->wait_head && l->working < SERVE_WORKERS && net_outbox_empty(&l->out)) {
        job *j = l->wait_head;
        if (!(l->wait_head = j->next)) l->wait_tail = NULL;
        l->nwait--;
        j->work.data = j;
        if (uv_queue_work(&l->loop, &j->work, serve_work, serve_done) != 0) {
            job_free(j);
            fail(l, -ENOMEM, "cannot start work on the worker pool");
            return;
        }
        l->working++;
    }
}

/* ---- messages from the node ---------------------------------------------------------------- */

static void on_manifest_get(launch *l, const net_msg *m)
{
    const uint8_t *part = NULL;
    size_t part_len = 0, total = 0;
    for (size_t i = 0; i < l->ch.n; i++)
        if (!memcmp(l->ch.id[i].b, m->id, NET_ID_BYTES) && m->offset < l->ch.len[i]) {
            total = l->ch.len[i];
            part = l->ch.raw[i] + m->offset;
            part_len = total - m->offset;
            if (part_len > NET_MANIFEST_PART_MAX) part_len = NET_MANIFEST_PART_MAX;
        }
    uint8_t *buf;
    size_t len;
    int rc = net_msg_encode_manifest(m->id, part != NULL, total, part ? m->offset : 0, part,
                                     part_len, &buf, &len);
    if (rc) {
        fail(l, rc, "cannot encode a manifest: %s", cl_strerror(rc));
        return;
    }
    if (part) l->prog.served_manifests++;
    send_msg(l, NET_MSG_MANIFEST, buf, len);
}

static void on_get(launch *l, const net_msg *m, uint8_t type)
{
    if (l->nwait >= SERVE_QUEUE_MAX) {
        fail(l, CL_EPROTOCOL, "the node queued more than %u requests", SERVE_QUEUE_MAX);
        return;
    }
    job *j = calloc(1, sizeof *j);
    size_t sz = (size_t)m->n * NET_ID_BYTES;
    if (j) j->ids = malloc(sz);
    if (j && type == NET_MSG_GET_DELTA) j->bases = malloc(sz);
    if (!j || !j->ids || (type == NET_MSG_GET_DELTA && !j->bases)) {
        if (j) job_free(j);
        fail(l, -ENOMEM, "out of memory");
        return;
    }
    j->l = l, j->req = m->req, j->n = m->n;
    memcpy(j->ids, m->ids, sz);
    if (j->bases) memcpy(j->bases, m->bases, sz);
    if (l->wait_tail)
        l->wait_tail->next = j;
    else
        l->wait_head = j;
    l->wait_tail = j;
    l->nwait++;
    pump(l);
}

static void copy_sources(cl_source *dst, unsigned *n, const net_launch_source *src, uint32_t k)
{
    *n = k;
    for (uint32_t i = 0; i < k; i++) {
        dst[i].kind = src[i].kind;
        dst[i].bytes = src[i].bytes;
        snprintf(dst[i].label, sizeof dst[i].label, "%s", src[i].label);
    }
}

static void on_progress(launch *l, const uint8_t *p, size_t len)
{
    net_launch_progress np;
    if (net_launch_decode_progress(p, len, &np) || np.req != 1) {
        fail(l, CL_EPROTOCOL, "the node sent a malformed LAUNCH_PROGRESS");
        return;
    }
    cl_progress *g = &l->prog;
    g->stage = np.stage;
    g->elapsed_ms = np.elapsed_ms;
    g->fetch_total = np.fetch_total, g->fetch_done = np.fetch_done;
    g->vm_total = np.vm_total, g->vm_done = np.vm_done;
    copy_sources(g->src, &g->nsources, np.src, np.nsources);
    if (l->o->progress) l->o->progress(g, l->o->arg);
    if (np.stage == NET_LAUNCH_RUNNING && !l->r->running_ms)
        l->r->running_ms = np.elapsed_ms ? np.elapsed_ms : 1;
    if (!l->o->wait && (np.stage == NET_LAUNCH_APPLY || np.stage == NET_LAUNCH_RESTORE)) {
        /* Every chunk is on the node: it needs nothing more from the app. */
        l->ended = true;
        maybe_close(l);
    }
}

static void on_done(launch *l, const uint8_t *p, size_t len)
{
    net_launch_done d;
    if (net_launch_decode_done(p, len, &d) || d.req != 1) {
        fail(l, CL_EPROTOCOL, "the node sent a malformed LAUNCH_DONE");
        return;
    }
    cl_result *r = l->r;
    r->done = true;
    r->ok = d.ok;
    snprintf(r->domain, sizeof r->domain, "%s", d.domain);
    snprintf(r->uuid, sizeof r->uuid, "%s", d.uuid);
    snprintf(r->accel, sizeof r->accel, "%s", d.accel);
    snprintf(r->console, sizeof r->console, "%s", d.console);
    snprintf(r->address, sizeof r->address, "%s", d.address);
    r->resolve_ms = d.resolve_ms, r->transfer_ms = d.transfer_ms, r->apply_ms = d.apply_ms;
    r->restore_ms = d.restore_ms, r->total_ms = d.total_ms;
    copy_sources(r->src, &r->nsources, d.src, d.nsources);
    l->ended = true;
    if (!d.ok) {
        l->err = CL_ELAUNCH;
        snprintf(r->error, sizeof r->error, "%s", d.error[0] ? d.error : "the launch failed");
    }
    maybe_close(l);
}

static void on_silence(uv_timer_t *t)
{
    launch *l = t->data;
    if (l->c && !l->ended)
        fail(l, CL_EGONE, "the node went away: it said nothing for %g s",
             (double)l->silence_ms / 1e3);
}

static void on_message(net_conn *c, uint8_t type, const uint8_t *p, size_t len)
{
    launch *l = net_conn_data(c);
    if (l->ended) return; /* the result is decided; the connection is closing */
    uv_timer_again(&l->silence);
    net_msg m;
    switch (type) {
    case NET_MSG_MANIFEST_GET:
    case NET_MSG_GET:
    case NET_MSG_GET_DELTA:
        if (net_msg_decode(type, p, len, &m)) {
            fail(l, CL_EPROTOCOL, "the node sent a malformed request (type 0x%02x)", type);
            return;
        }
        if (type == NET_MSG_MANIFEST_GET)
            on_manifest_get(l, &m);
        else
            on_get(l, &m, type);
        return;
    case NET_MSG_LAUNCH_PROGRESS: on_progress(l, p, len); return;
    case NET_MSG_LAUNCH_DONE: on_done(l, p, len); return;
    default: return; /* types of later versions are ignored */
    }
}

static void on_established(net_conn *c)
{
    launch *l = net_conn_data(c);
    l->established = true;
    net_launch_req q = {.req = 1, .flags = NET_LAUNCH_F_RUNNING};
    memcpy(q.id, l->id, NET_ID_BYTES);
    if (l->o->name) snprintf(q.name, sizeof q.name, "%s", l->o->name);
    uint8_t *buf;
    size_t len;
    int rc = net_launch_encode_req(&q, &buf, &len);
    if (rc) {
        fail(l, rc, "cannot encode the launch request: %s", cl_strerror(rc));
        return;
    }
    rc = net_conn_send(c, NET_MSG_LAUNCH, buf, len);
    free(buf);
    if (rc) fail(l, rc, "cannot send the launch request: %s", cl_strerror(rc));
}

static void on_drain(net_conn *c)
{
    launch *l = net_conn_data(c);
    if (!net_outbox_flush(&l->out, c)) return; /* the next on_drain sends the rest */
    pump(l);
    maybe_close(l);
}

static void on_close(net_conn *c, int status)
{
    launch *l = net_conn_data(c);
    l->c = NULL;
    if (!l->ended) {
        char hex[2 * NET_KEY_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, l->node->key, NET_KEY_BYTES);
        if (l->established)
            fail(l, CL_EGONE, "the node went away before the launch ended (%s)",
                 cl_strerror(status));
        else if (status == NET_ETIMEDOUT)
            fail(l, NET_ETIMEDOUT, "the node at %s port %u did not answer the handshake in time",
                 l->ip, l->node->port);
        else if (status > -4096 && status < 0 && status != UV_ECONNRESET && status != UV_EPIPE &&
                 status != UV_EOF)
            fail(l, status, "cannot connect to %s port %u: %s", l->ip, l->node->port,
                 cl_strerror(status));
        else
            fail(l, CL_EFLEET,
                 "the node is not of this fleet (the handshake failed): %s port %u refused the "
                 "client key, or its node key is not cloudlet-node-key:%s",
                 l->ip, l->node->port, hex);
    }
    net_outbox_clear(&l->out);
    while (l->wait_head) {
        job *j = l->wait_head;
        l->wait_head = j->next;
        job_free(j);
    }
    l->wait_tail = NULL;
    l->nwait = 0;
    net_endpoint_close(l->ep, NULL);
    l->ep = NULL;
    uv_close((uv_handle_t *)&l->silence, NULL);
}

static const net_conn_cbs conn_cbs = {on_established, on_message, on_drain, on_close};

/* ---- cl_launch ----------------------------------------------------------------------------- */

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= NET_LAUNCH_NAME_MAX &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

int cl_launch(cl_client *c, const cl_node *node, const uint8_t id[CL_ID_BYTES],
              const cl_launch_opts *opts, cl_result *r)
{
    static const cl_launch_opts defaults = {0};
    memset(r, 0, sizeof *r);
    if (!opts) opts = &defaults;
    if (!node->has_key) {
        snprintf(r->error, sizeof r->error, "the node's key is not known (probe it first)");
        return -EINVAL;
    }
    if (opts->name && !name_ok(opts->name)) {
        snprintf(r->error, sizeof r->error,
                 "a domain name is 1 to %u of A-Z, a-z, 0-9, '.', '_' and '-'",
                 NET_LAUNCH_NAME_MAX);
        return -EINVAL;
    }
    launch *l = calloc(1, sizeof *l);
    if (!l) return -ENOMEM;
    l->cl = c, l->o = opts, l->r = r, l->node = node;
    memcpy(l->id, id, NET_ID_BYTES);
    int rc = cl__resolve(node->host, l->ip);
    if (rc) {
        snprintf(r->error, sizeof r->error, "cannot resolve %s", node->host);
        free(l);
        return rc;
    }
    cs_id mid;
    memcpy(mid.b, id, CS_ID_BYTES);
    if ((rc = chain_load(c->st, &mid, &l->ch))) {
        snprintf(r->error, sizeof r->error, "cannot read the manifest's chain from the store: %s",
                 cl_strerror(rc));
        chain_free(&l->ch);
        free(l);
        return rc;
    }
    net_keys keys;
    net_client_keys(&keys, c->client_key);
    if (!(l->zenc = net_zstream_encoder(CHUNK_LEVEL)) || (rc = uv_loop_init(&l->loop))) {
        net_keys_wipe(&keys);
        net_zstream_free(l->zenc);
        chain_free(&l->ch);
        free(l);
        return rc ? rc : -ENOMEM;
    }
    rc = net_endpoint_new(&l->loop, &c->kp, &keys, NULL, &l->ep);
    net_keys_wipe(&keys);
    if (!rc) {
        rc = net_connect(l->ep, l->ip, node->port, node->key, NET_ROLE_CLIENT, NULL, &conn_cbs, l,
                         &l->c);
        if (!rc) {
            /* The handshake has its own deadline; from the LAUNCH on, the node's progress
             * reports keep this one from firing. */
            l->silence_ms = opts->silence_ms ? opts->silence_ms : SILENCE_MS;
            uv_timer_init(&l->loop, &l->silence);
            l->silence.data = l;
            uv_timer_start(&l->silence, on_silence, l->silence_ms, l->silence_ms);
        } else {
            net_endpoint_close(l->ep, NULL);
            snprintf(r->error, sizeof r->error, "cannot connect to %s port %u: %s", l->ip,
                     node->port, cl_strerror(rc));
        }
    } else {
        snprintf(r->error, sizeof r->error, "%s", cl_strerror(rc));
    }
    if (!rc) {
        uv_run(&l->loop, UV_RUN_DEFAULT);
        rc = l->err;
    }
    /* Every handle and work request has ended: the loop ran until nothing was left. */
    while (uv_run(&l->loop, UV_RUN_DEFAULT)) {}
    if (uv_loop_close(&l->loop) != 0 && !rc) rc = -EBUSY;
    r->last = l->prog;
    net_zstream_free(l->zenc);
    chain_free(&l->ch);
    free(l);
    return rc;
}
