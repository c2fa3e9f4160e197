/*
 * node_replication.c — the fleet's replication view and pre-warming (docs/replication.md).
 *
 * Design notes:
 * - A view: the manifests of this store (or one), each resolved on the worker pool to its
 *   distinct non-zero chunks. The union of those chunks (a chunk shared by several manifests is
 *   asked about once) goes to every known peer in HAVE batches of up to NET_HAVE_MAX ids, over a
 *   connection of the view's own that the peer's exchange answers with bitmaps, and is checked
 *   against this store with cs_has. The counting (shares, histogram, chunks under k) runs on the
 *   pool as well; the loop only moves messages.
 * - A peer that does not answer every batch within VIEW_WAIT_MS, or whose connection fails, is
 *   unreachable: it is listed as such and takes no part in the counts.
 * - replicate: a view of one manifest; a deterministic choice of nodes that then pull it whole
 *   (this node with node__pull_start, a peer asked with PULL_ASK, which names the nodes to pull
 *   from); then a second view, which must show every chunk on k nodes.
 * - Lifetimes: a view outlives its connections, its timer and its work on the pool (it is freed
 *   when its owner released it and none of those is left); a request outlives its views, its
 *   asks and its own pull the same way.
 */
#define _GNU_SOURCE
#include "node_daemon.h"
#include "node_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VIEW_WAIT_MS 8000 /* a peer that has not answered every HAVE by then is unreachable */
#define TICK_MS      100
#define REPORT_MS    1000
#define IDS_SHOWN    8 /* under-replicated chunk ids named per manifest */
#define MAX_PARENTS  16 /* a manifest fetched from a peer: its missing ancestors, at most */

/* ---- the view -------------------------------------------------------------------------------- */

typedef struct rview rview;

typedef struct rnode {
    rview *v;
    unsigned idx;
    uint8_t pk[NET_KEY_BYTES];
    char ip[64];
    int port;
    bool self, up, done, gone;
    int status;          /* why it is unreachable */
    net_conn *c;         /* NULL once closed */
    uint8_t *bits;       /* over the view's chunks: bit c set = chunk c held */
    uint32_t next, left; /* the next chunk to ask about; HAVE answers outstanding */
} rnode;

typedef struct rman {
    cs_id id;
    char name[256];
    uint32_t *idx; /* its distinct non-zero chunks, as indexes into the view's chunks */
    uint32_t n;
} rman;

typedef void (*rview_done_fn)(rview *v, void *arg);

struct rview {
    node_daemon *d;
    bool have_id;
    cs_id id;
    unsigned k;
    rview_done_fn done; /* called once, when every node answered or timed out, or on failure */
    void *arg;
    bool listed, ended, released, failed;
    char err[NODE_ERRMSG];
    rnode *nodes; /* [0] is this node */
    unsigned nn;
    cs_id *u; /* the distinct chunks of every manifest of the view, sorted */
    uint32_t nu;
    rman *m;
    size_t nm;
    uv_timer_t timer;
    bool timer_open;
    unsigned works, conns;
    uint64_t started_ms;
    char *lines; /* computed at the end: one JSON line per manifest */
    /* The manifest named, when this store lacks it: fetched from a peer (not stored). */
    cs_manifest *fetched; /* resolved, for list_manifests */
    bool fetching, masked;
    cs_id want;    /* the manifest being fetched: the one named, or a missing ancestor */
    unsigned msrc; /* the node asked */
    uint8_t *mbuf;
    uint64_t mtotal, mhave;
    cs_manifest *chain[MAX_PARENTS + 1]; /* decoded, not yet resolved: the named one first */
    unsigned nchain;
    /* replicate (plan true): worked out with the counts, for the first manifest */
    bool plan;
    bool *chosen;           /* the nodes to pull it (docs/replication.md, the rule) */
    uint64_t under, nobody; /* chunks on fewer than k reachable nodes; on none */
};

static void view_maybe_free(rview *v)
{
    if (!v->released || v->works || v->conns || v->timer_open) return;
    for (unsigned i = 0; i < v->nn; i++) free(v->nodes[i].bits);
    for (size_t i = 0; i < v->nm; i++) free(v->m[i].idx);
    free(v->nodes);
    free(v->u);
    free(v->m);
    free(v->lines);
    free(v->mbuf);
    cs_manifest_free(v->fetched);
    for (unsigned i = 0; i < v->nchain; i++) cs_manifest_free(v->chain[i]);
    free(v->chosen);
    free(v);
}

static void view_timer_closed(uv_handle_t *h)
{
    rview *v = h->data;
    v->timer_open = false;
    view_maybe_free(v);
}

/* Ends the view: closes what is open; the owner's callback runs once (not after release). */
static void view_end(rview *v)
{
    if (v->ended) return;
    v->ended = true;
    for (unsigned i = 0; i < v->nn; i++)
        if (v->nodes[i].c) net_conn_close(v->nodes[i].c);
    if (v->timer_open && !uv_is_closing((uv_handle_t *)&v->timer))
        uv_close((uv_handle_t *)&v->timer, view_timer_closed);
    if (!v->released && v->done) v->done(v, v->arg);
}

static void view_fail(rview *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void view_fail(rview *v, const char *fmt, ...)
{
    if (v->ended) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->err, sizeof v->err, fmt, ap);
    va_end(ap);
    v->failed = true;
    view_end(v);
}

/* The owner lets go: no callback after this; freed once nothing refers to it. */
static void view_release(rview *v)
{
    if (!v) return;
    v->released = true;
    view_end(v);
    view_maybe_free(v);
}

/* ---- the view: this store's manifests and chunks (on the pool) --------------------------------
 */

typedef struct lctx {
    cs_id *ids;
    size_t n, cap;
} lctx;

static int list_one(const cs_manifest_info *info, void *arg)
{
    lctx *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        cs_id *p = realloc(l->ids, cap * sizeof *p);
        if (!p) return -ENOMEM;
        l->ids = p, l->cap = cap;
    }
    l->ids[l->n++] = info->id;
    return 0;
}

typedef struct nctx {
    rview *v;
} nctx;

static int name_one(const char *name, const cs_id *id, void *arg)
{
    rview *v = ((nctx *)arg)->v;
    for (size_t i = 0; i < v->nm; i++)
        if (cs_id_equal(&v->m[i].id, id) && !v->m[i].name[0])
            snprintf(v->m[i].name, sizeof v->m[i].name, "%s", name);
    return 0;
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, CS_ID_BYTES);
}

/* Sorted distinct ids, in place; returns how many. */
static size_t uniq(cs_id *ids, size_t n)
{
    if (n == 0) return 0;
    qsort(ids, n, sizeof *ids, cmp_id);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || !cs_id_equal(&ids[u - 1], &ids[i])) ids[u++] = ids[i];
    return u;
}

typedef struct vjob {
    uv_work_t work;
    rview *v;
    int rc;
    char why[NODE_ERRMSG];
} vjob;

#define NEED_FETCH 1 /* list_manifests: the manifest named is not here; ask the peers */

static int list_manifests(rview *v, cs_store *st, char why[NODE_ERRMSG])
{
    lctx l = {0};
    int rc = 0;
    if (v->have_id && !v->fetched) {
        cs_manifest *m = NULL;
        rc = cs_manifest_get(st, &v->id, &m);
        cs_manifest_free(m);
        if (rc == CS_ENOTFOUND) return NEED_FETCH;
        rc = 0;
    }
    if (v->have_id) {
        l.ids = malloc(sizeof *l.ids);
        if (!l.ids) return -ENOMEM;
        l.ids[0] = v->id;
        l.n = 1;
    } else if ((rc = cs_manifest_list(st, list_one, &l)) < 0) {
        free(l.ids);
        return rc;
    }
    v->m = calloc(l.n ? l.n : 1, sizeof *v->m);
    if (!v->m) {
        free(l.ids);
        return -ENOMEM;
    }
    v->nm = l.n;
    /* Every manifest's distinct chunks, then their union. */
    cs_id *all = NULL;
    size_t nall = 0;
    for (size_t i = 0; i < l.n && !rc; i++) {
        rman *rm = &v->m[i];
        rm->id = l.ids[i];
        cs_manifest *m = NULL;
        if (v->fetched && i == 0) {
            m = v->fetched; /* from a peer, resolved */
            v->fetched = NULL;
        } else if ((rc = cs_manifest_get(st, &rm->id, &m))) {
            char hex[CS_ID_HEX + 1];
            node__errf(why, "manifest %s: %s", cs_id_to_hex(&rm->id, hex),
                       rc == CS_ENOTFOUND ? "not in this store" : node_strerror(rc));
            break;
        }
        size_t total = 0;
        for (size_t im = 0; im < m->nimages; im++) total += m->images[im].nchunks;
        cs_id *ids = malloc((total ? total : 1) * sizeof *ids);
        cs_id *grown = ids ? realloc(all, (nall + total + 1) * sizeof *all) : NULL;
        if (!grown) {
            free(ids);
            cs_manifest_free(m);
            rc = -ENOMEM;
            break;
        }
        all = grown;
        size_t k = 0;
        for (size_t im = 0; im < m->nimages; im++)
            for (uint64_t c = 0; c < m->images[im].nchunks; c++)
                if (!cs_id_is_zero(&m->images[im].chunks[c])) ids[k++] = m->images[im].chunks[c];
        cs_manifest_free(m);
        k = uniq(ids, k);
        if (k) memcpy(all + nall, ids, k * sizeof *ids);
        nall += k;
        /* Kept as ids until the union is known, then turned into indexes. */
        rm->idx = (uint32_t *)ids;
        rm->n = (uint32_t)k;
    }
    free(l.ids);
    if (!rc) {
        nall = uniq(all, nall);
        if (nall > UINT32_MAX) rc = -E2BIG;
    }
    if (rc) {
        free(all);
        return rc;
    }
    v->u = all;
    v->nu = (uint32_t)nall;
    for (size_t i = 0; i < v->nm; i++) {
        rman *rm = &v->m[i];
        cs_id *ids = (cs_id *)rm->idx;
        uint32_t *idx = malloc((rm->n ? rm->n : 1) * sizeof *idx);
        if (!idx) return -ENOMEM;
        for (uint32_t c = 0; c < rm->n; c++) {
            cs_id *at = bsearch(&ids[c], v->u, v->nu, sizeof *v->u, cmp_id);
            idx[c] = (uint32_t)(at - v->u);
        }
        free(ids);
        rm->idx = idx;
    }
    nctx nc = {v};
    if ((rc = cs_name_list(st, name_one, &nc)) < 0) return rc;
    /* This node's own holdings. */
    rnode *self = &v->nodes[0];
    self->bits = node__held_bits(st, v->u, v->nu, &rc);
    return rc;
}

static void list_work(uv_work_t *w)
{
    vjob *j = w->data;
    j->rc = list_manifests(j->v, j->v->d->st, j->why);
}

static void send_haves(rnode *n);
static void view_check(rview *v);
static void ask_manifest(rview *v);

static void list_done(uv_work_t *w, int status)
{
    vjob *j = w->data;
    rview *v = j->v;
    v->works--;
    int rc = status ? status : j->rc;
    char why[NODE_ERRMSG];
    memcpy(why, j->why, sizeof why);
    free(j);
    if (v->ended) {
        view_maybe_free(v);
        return;
    }
    if (rc == NEED_FETCH) {
        v->fetching = true;
        v->want = v->id;
        v->msrc = 1;
        ask_manifest(v);
        return;
    }
    if (rc) {
        if (why[0])
            view_fail(v, "%s", why);
        else
            view_fail(v, "store: %s", node_strerror(rc));
        return;
    }
    v->listed = true;
    v->nodes[0].done = true;
    for (unsigned i = 1; i < v->nn; i++)
        if (v->nodes[i].up && !v->nodes[i].gone) send_haves(&v->nodes[i]);
    view_check(v);
}

/* ---- the view: a manifest this store lacks, from a peer ------------------------------------ */

typedef struct mjob {
    uv_work_t work;
    rview *v;
    int rc;
    bool need_parent;
    cs_id parent;
} mjob;

/* Checks the bytes against the id asked for and decodes them; when the manifest's parent is
 * neither here nor fetched yet, asks for it; else resolves the chain from the oldest down. */
static void mfetch_work(uv_work_t *w)
{
    mjob *j = w->data;
    rview *v = j->v;
    cs_id got;
    cs_manifest_id(v->mbuf, v->mtotal, &got);
    if (!cs_id_equal(&got, &v->want)) {
        j->rc = CS_ECORRUPT;
        return;
    }
    cs_manifest *m = NULL;
    if ((j->rc = cs_manifest_decode(v->mbuf, v->mtotal, &m))) return;
    v->chain[v->nchain++] = m;
    cs_manifest *base = NULL;
    if (m->has_parent) {
        int rc = cs_manifest_get(v->d->st, &m->parent, &base);
        if (rc == CS_ENOTFOUND) {
            if (v->nchain > MAX_PARENTS) {
                j->rc = CS_ENOTFOUND;
                return;
            }
            j->need_parent = true;
            j->parent = m->parent;
            return;
        }
        if (rc) {
            j->rc = rc;
            return;
        }
    }
    for (unsigned i = v->nchain; i-- > 0;) {
        cs_manifest *parent = i + 1 < v->nchain ? v->chain[i + 1] : base;
        if (v->chain[i]->has_parent && (j->rc = cs_manifest_resolve(v->chain[i], parent))) break;
    }
    cs_manifest_free(base);
    if (j->rc) return;
    v->fetched = v->chain[0];
    for (unsigned i = 1; i < v->nchain; i++) cs_manifest_free(v->chain[i]);
    v->nchain = 0;
}

static void list_work(uv_work_t *w);
static void list_done(uv_work_t *w, int status);
static int queue(rview *v, uv_work_cb work, uv_after_work_cb after);

static void mfetch_done(uv_work_t *w, int status)
{
    mjob *j = w->data;
    rview *v = j->v;
    v->works--;
    int rc = status ? status : j->rc;
    bool need_parent = j->need_parent;
    cs_id parent = j->parent;
    free(j);
    free(v->mbuf);
    v->mbuf = NULL;
    v->masked = false; /* the answer is checked: another request may go out */
    if (v->ended) {
        view_maybe_free(v);
        return;
    }
    if (rc == CS_ECORRUPT || rc == CS_EFORMAT || rc == CS_EVERSION) {
        char hex[CS_ID_HEX + 1];
        node_log(NODE_LOG_WARN, "replication: manifest %.12s from %s:%d: %s; asking another peer",
                 cs_id_to_hex(&v->want, hex), v->nodes[v->msrc].ip, v->nodes[v->msrc].port,
                 rc == CS_ECORRUPT ? "its bytes do not match its id" : cs_strerror(rc));
        v->msrc++;
        ask_manifest(v);
        return;
    }
    if (rc) {
        view_fail(v, "manifest from a peer: %s", node_strerror(rc));
        return;
    }
    if (need_parent) {
        v->want = parent;
        v->msrc = 1;
        ask_manifest(v);
        return;
    }
    v->fetching = false;
    if (queue(v, list_work, list_done)) view_fail(v, "cannot queue work");
}

/* Asks the next node that may hold the manifest wanted; waits for one still connecting. */
static void ask_manifest(rview *v)
{
    if (!v->fetching || v->masked || v->ended) return;
    for (; v->msrc < v->nn; v->msrc++) {
        rnode *n = &v->nodes[v->msrc];
        if (n->gone || (!n->c && n->up)) continue;
        if (!n->up) return; /* on_established or on_close asks again */
        uint8_t *buf;
        size_t len;
        if (net_msg_encode_manifest_get(v->want.b, 0, &buf, &len) != 0) break;
        int rc = net_conn_send(n->c, NET_MSG_MANIFEST_GET, buf, len);
        free(buf);
        if (rc == 0) {
            v->masked = true;
            v->mhave = v->mtotal = 0;
            return;
        }
    }
    char hex[CS_ID_HEX + 1], hex2[CS_ID_HEX + 1];
    if (cs_id_equal(&v->want, &v->id))
        view_fail(v, "manifest %s is neither in this store nor held by a reachable peer",
                  cs_id_to_hex(&v->id, hex));
    else
        view_fail(v, "no reachable peer holds manifest %s, an ancestor of %s",
                  cs_id_to_hex(&v->want, hex), cs_id_to_hex(&v->id, hex2));
}

static void on_manifest(rnode *n, const net_msg *m)
{
    rview *v = n->v;
    if (!v->fetching || !v->masked || n->idx != v->msrc || memcmp(m->id, v->want.b, CS_ID_BYTES)) {
        net_conn_abort(n->c, NET_EFORMAT);
        return;
    }
    if (!m->found) {
        v->masked = false;
        v->msrc++;
        ask_manifest(v);
        return;
    }
    if (!v->mbuf) {
        if (m->offset != 0 || !(v->mbuf = malloc(m->total))) {
            net_conn_abort(n->c, m->offset ? NET_EFORMAT : -ENOMEM);
            return;
        }
        v->mtotal = m->total;
    }
    if (m->total != v->mtotal || m->offset != v->mhave) {
        net_conn_abort(n->c, NET_EFORMAT);
        return;
    }
    memcpy(v->mbuf + v->mhave, m->part, m->part_len);
    v->mhave += m->part_len;
    if (v->mhave < v->mtotal) {
        uint8_t *buf;
        size_t len;
        if (net_msg_encode_manifest_get(v->want.b, v->mhave, &buf, &len) == 0) {
            if (net_conn_send(n->c, NET_MSG_MANIFEST_GET, buf, len) != 0 && n->c)
                net_conn_abort(n->c, NET_ECLOSED);
            free(buf);
        }
        return;
    }
    /* masked stays set until mfetch_done: the worker reads mbuf and mtotal, so no other
     * request may be sent (ask_manifest resets them) while it checks. */
    mjob *j = calloc(1, sizeof *j);
    if (!j) {
        v->masked = false;
        view_fail(v, "out of memory");
        return;
    }
    j->v = v;
    j->work.data = j;
    if (uv_queue_work(&v->d->loop, &j->work, mfetch_work, mfetch_done) != 0) {
        free(j);
        v->masked = false;
        view_fail(v, "cannot queue work");
        return;
    }
    v->works++;
}

/* ---- the view: asking the peers -------------------------------------------------------------- */

static void send_haves(rnode *n)
{
    rview *v = n->v;
    if (!n->bits && !(n->bits = calloc((size_t)v->nu / 8 + 1, 1))) {
        net_conn_abort(n->c, -ENOMEM);
        return;
    }
    while (n->next < v->nu && n->c) {
        uint32_t k = v->nu - n->next < NET_HAVE_MAX ? v->nu - n->next : NET_HAVE_MAX;
        uint8_t *buf;
        size_t len;
        if (net_msg_encode_ids(NET_MSG_HAVE, n->next, v->u[n->next].b, k, &buf, &len) != 0) {
            net_conn_abort(n->c, -ENOMEM);
            return;
        }
        int rc = net_conn_send(n->c, NET_MSG_HAVE, buf, len);
        free(buf);
        if (rc) return; /* NET_EAGAIN: on_drain sends the rest; else on_close follows */
        n->next += k;
        n->left++;
    }
    if (n->next == v->nu && n->left == 0 && !n->done) {
        n->done = true; /* nothing to ask */
        view_check(v);
    }
}

static void on_established(net_conn *c)
{
    rnode *n = net_conn_data(c);
    n->up = true;
    if (n->v->listed && !n->v->ended) send_haves(n);
    ask_manifest(n->v);
}

static void on_message(net_conn *c, uint8_t type, const uint8_t *payload, size_t len)
{
    rnode *n = net_conn_data(c);
    rview *v = n->v;
    if (type == NET_MSG_MANIFEST) {
        net_msg mm;
        if (net_msg_decode(type, payload, len, &mm) != 0)
            net_conn_abort(c, NET_EFORMAT);
        else
            on_manifest(n, &mm);
        return;
    }
    if (type != NET_MSG_HAVE_BITMAP) {
        /* This connection asks, it does not serve: a peer's request here is answered by
         * nothing; later versions' messages are ignored. */
        if (type >= NET_MSG_MANIFEST_GET && type <= NET_MSG_DONT_HAVE)
            net_conn_abort(c, NET_EFORMAT);
        return;
    }
    net_msg m;
    if (net_msg_decode(type, payload, len, &m) != 0 || !n->bits || m.req >= v->nu ||
        m.n > v->nu - m.req || m.req % NET_HAVE_MAX || n->left == 0 ||
        (m.n != NET_HAVE_MAX && m.req + m.n != v->nu)) {
        net_conn_abort(c, NET_EFORMAT);
        return;
    }
    for (uint32_t i = 0; i < m.n; i++)
        if (m.bitmap[i / 8] & (1u << (i % 8))) {
            uint32_t k = m.req + i;
            n->bits[k / 8] |= (uint8_t)(1u << (k % 8));
        }
    n->left--;
    if (n->left == 0 && n->next == v->nu && !n->done) {
        n->done = true;
        view_check(v);
    }
}

static void on_drain(net_conn *c)
{
    rnode *n = net_conn_data(c);
    if (n->v->listed && !n->v->ended && !n->done) send_haves(n);
}

static void on_close(net_conn *c, int status)
{
    rnode *n = net_conn_data(c);
    rview *v = n->v;
    n->c = NULL;
    v->conns--;
    if (!n->done && !n->gone) { /* (a node timed out keeps that reason) */
        n->gone = true;
        n->status = status ? status : NET_ECLOSED;
        char k[NODE_KEY_TEXT];
        if (!v->ended)
            node_log(NODE_LOG_INFO, "replication: peer %.30s at %s:%d unreachable: %s",
                     node_key_encode(NODE_KEY_NODE_PUBLIC, n->pk, k), n->ip, n->port,
                     net_strerror(n->status));
    }
    if (v->fetching && v->masked && n->idx == v->msrc && !v->works) {
        free(v->mbuf); /* the node asked went away mid-answer */
        v->mbuf = NULL;
        v->masked = false;
        v->msrc++;
    }
    if (!v->ended) {
        ask_manifest(v);
        view_check(v);
    }
    view_maybe_free(v);
}

static const net_conn_cbs view_cbs = {on_established, on_message, on_drain, on_close};

/* ---- the view: counting (on the pool) ---------------------------------------------------------
 */

static bool held(const rnode *n, uint32_t c)
{
    return n->bits && (n->bits[c / 8] & (1u << (c % 8)));
}

static bool counted(const rnode *n)
{
    return n->done && !n->gone;
}

static void node_json(FILE *f, const rview *v, const rnode *n)
{
    char key[NODE_KEY_TEXT], addr[100];
    node_key_encode(NODE_KEY_NODE_PUBLIC, n->pk, key);
    snprintf(addr, sizeof addr, "%s:%d", n->ip, n->port);
    fprintf(f, "{\"key\": \"%s\", \"address\": ", key);
    node__json_str(f, addr);
    fprintf(f, ", \"self\": %s, \"reachable\": %s", n->self ? "true" : "false",
            counted(n) ? "true" : "false");
    if (!counted(n)) {
        fputs(", \"error\": ", f);
        node__json_str(f, n->gone ? net_strerror(n->status) : "no answer in time");
    }
    (void)v;
}

/* One JSON line per manifest of the view (docs/control.md, `replication`). */
static int view_lines(rview *v)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return -ENOMEM;
    uint64_t *hist = calloc(v->nn + 1, sizeof *hist);
    if (!hist) {
        fclose(f);
        free(buf);
        return -ENOMEM;
    }
    for (size_t i = 0; i < v->nm; i++) {
        rman *rm = &v->m[i];
        char hex[CS_ID_HEX + 1];
        fprintf(f, "{\"manifest\": \"%s\", \"name\": ", cs_id_to_hex(&rm->id, hex));
        if (rm->name[0])
            node__json_str(f, rm->name);
        else
            fputs("null", f);
        fprintf(f, ", \"unique_chunks\": %u, \"bytes\": %llu, \"k\": %u, \"nodes\": [", rm->n,
                (unsigned long long)rm->n * CS_CHUNK_SIZE, v->k);
        for (unsigned j = 0; j < v->nn; j++) {
            rnode *n = &v->nodes[j];
            fputs(j ? ", " : "", f);
            node_json(f, v, n);
            if (counted(n)) {
                uint64_t h = 0;
                for (uint32_t c = 0; c < rm->n; c++) h += held(n, rm->idx[c]);
                fprintf(f, ", \"chunks\": %llu, \"share\": %.4f, \"missing_bytes\": %llu",
                        (unsigned long long)h, rm->n ? (double)h / rm->n : 1.0,
                        (unsigned long long)(rm->n - h) * CS_CHUNK_SIZE);
            } else {
                fputs(", \"chunks\": null, \"share\": null, \"missing_bytes\": null", f);
            }
            fputc('}', f);
        }
        memset(hist, 0, (v->nn + 1) * sizeof *hist);
        uint64_t under = 0;
        unsigned shown = 0, reach = 0;
        for (unsigned j = 0; j < v->nn; j++) reach += counted(&v->nodes[j]);
        fputs("], \"under_k_ids\": [", f);
        for (uint32_t c = 0; c < rm->n; c++) {
            unsigned holders = 0;
            for (unsigned j = 0; j < v->nn; j++)
                holders += counted(&v->nodes[j]) && held(&v->nodes[j], rm->idx[c]);
            hist[holders]++;
            if (holders < v->k) {
                under++;
                if (shown < IDS_SHOWN)
                    fprintf(f, "%s\"%s\"", shown++ ? ", " : "",
                            cs_id_to_hex(&v->u[rm->idx[c]], hex));
            }
        }
        fputs("], \"histogram\": [", f);
        for (unsigned h = 0; h <= reach; h++)
            fprintf(f, "%s%llu", h ? ", " : "", (unsigned long long)hist[h]);
        fprintf(f, "], \"under_k\": %llu, \"reachable_nodes\": %u, \"lan_complete\": %s}\n",
                (unsigned long long)under, reach, hist[0] == 0 ? "true" : "false");
    }
    free(hist);
    if (fclose(f) != 0) {
        free(buf);
        return -ENOMEM;
    }
    v->lines = buf;
    return 0;
}

static unsigned choose_pullers(rview *v, unsigned k, bool *chosen);
static uint64_t view_under(rview *v, unsigned k, uint64_t *nobody);

static void count_work(uv_work_t *w)
{
    vjob *j = w->data;
    rview *v = j->v;
    if ((j->rc = view_lines(v)) || !v->plan || v->nm == 0) return;
    v->under = view_under(v, v->k, &v->nobody);
    if (!(v->chosen = calloc(v->nn, sizeof *v->chosen))) {
        j->rc = -ENOMEM;
        return;
    }
    if (v->under && !v->nobody) choose_pullers(v, v->k, v->chosen);
}

static void count_done(uv_work_t *w, int status)
{
    vjob *j = w->data;
    rview *v = j->v;
    v->works--;
    int rc = status ? status : j->rc;
    free(j);
    if (v->ended) {
        view_maybe_free(v);
        return;
    }
    if (rc)
        view_fail(v, "cannot count: %s", node_strerror(rc));
    else
        view_end(v);
}

static int queue(rview *v, uv_work_cb work, uv_after_work_cb after)
{
    vjob *j = calloc(1, sizeof *j);
    if (!j) return -ENOMEM;
    j->v = v;
    j->work.data = j;
    if (uv_queue_work(&v->d->loop, &j->work, work, after) != 0) {
        free(j);
        return -EAGAIN;
    }
    v->works++;
    return 0;
}

/* Every node answered (or is unreachable): count. */
static void view_check(rview *v)
{
    if (v->ended || !v->listed || v->works) return;
    for (unsigned i = 0; i < v->nn; i++)
        if (!v->nodes[i].done && !v->nodes[i].gone) return;
    if (queue(v, count_work, count_done)) view_fail(v, "cannot queue work");
}

static void view_tick(uv_timer_t *h)
{
    rview *v = h->data;
    if (v->ended || uv_now(&v->d->loop) - v->started_ms < VIEW_WAIT_MS) return;
    for (unsigned i = 0; i < v->nn; i++) {
        rnode *n = &v->nodes[i];
        if (n->done || n->gone) continue;
        n->gone = true;
        n->status = NET_ETIMEDOUT;
        if (n->c) net_conn_abort(n->c, NET_ETIMEDOUT);
    }
    view_check(v);
}

static int add_node(rview *v, const uint8_t pk[NET_KEY_BYTES], const char *ip, int port)
{
    for (unsigned i = 0; i < v->nn; i++)
        if (!memcmp(v->nodes[i].pk, pk, NET_KEY_BYTES)) return 0;
    rnode *p = realloc(v->nodes, (v->nn + 1) * sizeof *p);
    if (!p) return -ENOMEM;
    v->nodes = p;
    rnode *n = &v->nodes[v->nn];
    memset(n, 0, sizeof *n);
    n->idx = v->nn++;
    memcpy(n->pk, pk, NET_KEY_BYTES);
    snprintf(n->ip, sizeof n->ip, "%s", ip);
    n->port = port;
    return 0;
}

/* Starts a view of manifest id (NULL: every manifest of the store) among this node and its
 * known peers. done runs once, later, unless the view is released first. */
static int view_start(node_daemon *d, const cs_id *id, unsigned k, rview_done_fn done, void *arg,
                      rview **out, char err[NODE_ERRMSG])
{
    net_endpoint *ep = node__exchange_endpoint(d);
    rview *v = calloc(1, sizeof *v);
    if (!v) return -ENOMEM;
    v->d = d;
    v->k = k;
    v->done = done;
    v->arg = arg;
    if (id) v->have_id = true, v->id = *id;
    v->started_ms = uv_now(&d->loop);
    int rc = add_node(v, d->keys.node_pk, d->cfg.listen.host, d->cfg.listen.port);
    const node__peer_table *t = node__discovery_table(d);
    for (unsigned i = 0; t && i < t->n && !rc; i++)
        rc = add_node(v, t->p[i].pk, t->p[i].ip, t->p[i].port);
    for (unsigned i = 0; i < d->cfg.npeers && !rc; i++)
        if (d->cfg.peers[i].has_key)
            rc = add_node(v, d->cfg.peers[i].key, d->cfg.peers[i].host, d->cfg.peers[i].port);
    if (rc) {
        free(v->nodes);
        free(v);
        return rc;
    }
    v->nodes[0].self = true;
    for (unsigned i = 0; i < v->nn; i++) v->nodes[i].v = v;
    if ((rc = queue(v, list_work, list_done))) {
        node__errf(err, "cannot queue work");
        free(v->nodes);
        free(v);
        return rc;
    }
    uv_timer_init(&d->loop, &v->timer);
    v->timer.data = v;
    v->timer_open = true;
    uv_timer_start(&v->timer, view_tick, TICK_MS, TICK_MS);
    for (unsigned i = 1; i < v->nn; i++) {
        rnode *n = &v->nodes[i];
        int crc =
            ep ? net_connect(ep, n->ip, n->port, n->pk, NET_ROLE_PEER, NULL, &view_cbs, n, &n->c)
               : NET_EROLE;
        if (crc) {
            n->gone = true;
            n->status = crc;
            n->c = NULL;
            continue;
        }
        v->conns++;
    }
    *out = v;
    return 0;
}

/* ---- requests: `replication` and `replicate` ------------------------------------------------- */

struct node__repl {
    node_daemon *d;
    node__repl *next;
    node__pull_report_fn report;
    void *arg;
    bool replicate, ended, have_id;
    cs_id id;
    unsigned k;
    rview *view;
    unsigned round;
    uint64_t started_ms;
    /* replicate: the nodes chosen to pull, and how their pulls went */
    unsigned asked, answered, failed_pulls;
    bool self_pull, placing;
    struct rask *asks;
    uv_timer_t timer; /* progress while the pulls run, so the requester hears from us */
    bool timer_open;
};

static void repl_emit(node__repl *r, const char *line, bool last)
{
    if (r->report) r->report(line, last, r->arg);
}

static void repl_emitf(node__repl *r, bool last, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void repl_emitf(node__repl *r, bool last, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    if (s) repl_emit(r, s, last);
    free(s);
}

static void repl_maybe_free(node__repl *r);
static void repl_fail(node__repl *r, const char *why);

/* The nodes of the view, as the last line lists them. */
static void nodes_json(FILE *f, rview *v)
{
    fputs("\"nodes\": [", f);
    for (unsigned i = 0; i < v->nn; i++) {
        fputs(i ? ", " : "", f);
        node_json(f, v, &v->nodes[i]);
        fputc('}', f);
    }
    fputc(']', f);
}

static void repl_end_view(node__repl *r, rview *v)
{
    /* The per-manifest lines, then the last one. */
    for (char *p = v->lines, *nl; p && *p; p = nl + 1) {
        nl = strchr(p, '\n');
        if (!nl) break;
        char save = nl[1];
        nl[1] = '\0';
        repl_emit(r, p, false);
        nl[1] = save;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        repl_fail(r, "out of memory");
        return;
    }
    fprintf(f, "{\"done\": \"replication\", \"ms\": %llu, \"k\": %u, \"manifest_count\": %zu, ",
            (unsigned long long)(uv_now(&r->d->loop) - r->started_ms), r->k, v->nm);
    nodes_json(f, v);
    fputs("}\n", f);
    if (fclose(f) == 0) {
        r->ended = true;
        repl_emit(r, buf, true);
        r->report = NULL;
    }
    free(buf);
}

static void repl_fail(node__repl *r, const char *why)
{
    if (r->ended) return;
    r->ended = true;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f) {
        fputs("{\"error\": ", f);
        node__json_str(f, why);
        fprintf(f, ", \"ms\": %llu", (unsigned long long)(uv_now(&r->d->loop) - r->started_ms));
        if (r->view && r->view->listed) {
            fputs(", ", f);
            nodes_json(f, r->view);
        }
        fputs("}\n", f);
    }
    if (f && fclose(f) == 0) repl_emit(r, buf, true);
    free(buf);
    r->report = NULL;
    view_release(r->view);
    r->view = NULL;
    repl_maybe_free(r);
}

static void replicate_view_done(node__repl *r, rview *v);

static void view_done(rview *v, void *arg)
{
    node__repl *r = arg;
    if (v->failed) {
        repl_fail(r, v->err);
        return;
    }
    if (r->replicate) {
        replicate_view_done(r, v);
        return;
    }
    repl_end_view(r, v);
    view_release(v);
    r->view = NULL;
    repl_maybe_free(r);
}

/* ---- replicate ------------------------------------------------------------------------------- */

/* A peer asked to pull the manifest (PULL_ASK) over a connection of its own. */
typedef struct rask {
    struct rask *next;
    node__repl *r;
    uint8_t pk[NET_KEY_BYTES];
    char ip[64];
    int port;
    net_conn *c;
    bool answered, ok;
    uint64_t chunks;
    char msg[256];
    uint8_t *payload;
    size_t len;
} rask;

static void replicate_check(node__repl *r);

static void ask_established(net_conn *c)
{
    rask *a = net_conn_data(c);
    int rc = net_conn_send(c, NET_MSG_PULL_ASK, a->payload, a->len);
    if (rc && rc != NET_ECLOSED) net_conn_abort(c, rc);
}

static void ask_message(net_conn *c, uint8_t type, const uint8_t *payload, size_t len)
{
    rask *a = net_conn_data(c);
    if (type != NET_MSG_PULL_DONE) return;
    net_msg m;
    if (a->answered || net_msg_decode(type, payload, len, &m) != 0 || m.req != 1) {
        net_conn_abort(c, NET_EFORMAT);
        return;
    }
    a->answered = true;
    a->ok = m.ok;
    a->chunks = m.chunks;
    snprintf(a->msg, sizeof a->msg, "%.*s", (int)m.text_len, (const char *)m.text);
    net_conn_close(c);
}

static void ask_drain(net_conn *c)
{
    (void)c;
}

static void ask_close(net_conn *c, int status)
{
    rask *a = net_conn_data(c);
    a->c = NULL;
    node__repl *r = a->r;
    if (!a->answered)
        snprintf(a->msg, sizeof a->msg, "%s", net_strerror(status ? status : NET_ECLOSED));
    r->answered++;
    char key[NODE_KEY_TEXT], addr[100];
    node_key_encode(NODE_KEY_NODE_PUBLIC, a->pk, key);
    snprintf(addr, sizeof addr, "%s:%d", a->ip, a->port);
    if (!a->ok) r->failed_pulls++;
    if (!r->ended && r->report) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (f) {
            fprintf(f, "{\"phase\": \"pulled\", \"key\": \"%s\", \"address\": ", key);
            node__json_str(f, addr);
            fprintf(f, ", \"ok\": %s, \"chunks_fetched\": %llu, \"message\": ",
                    a->ok ? "true" : "false", (unsigned long long)a->chunks);
            node__json_str(f, a->msg);
            fputs("}\n", f);
            if (fclose(f) == 0) repl_emit(r, buf, false);
        }
        free(buf);
    }
    replicate_check(r);
    repl_maybe_free(r);
}

static const net_conn_cbs ask_cbs = {ask_established, ask_message, ask_drain, ask_close};

static void self_pull_report(const char *line, bool last, void *arg)
{
    node__repl *r = arg;
    if (!last) return;
    bool ok = !strncmp(line, "{\"done\"", 7);
    if (!ok) r->failed_pulls++;
    r->self_pull = false;
    r->answered++;
    if (!r->ended && r->report) {
        char *s = NULL;
        /* The pull's own last line, marked as this node's pull. */
        if (asprintf(&s, "{\"phase\": \"pulled\", \"self\": true, \"ok\": %s, \"pull\": %.*s}\n",
                     ok ? "true" : "false", (int)strcspn(line, "\n"), line) >= 0)
            repl_emit(r, s, false);
        free(s);
    }
    replicate_check(r);
    repl_maybe_free(r);
}

/* Chooses who pulls (docs/replication.md): while a chunk is on fewer than k reachable nodes,
 * the reachable node that lacks it and lacks the fewest chunks of the manifest (ties: this node,
 * then the order of the view) pulls the whole manifest, which adds it as a holder of every chunk
 * it lacked. Returns how many were chosen (their flags in chosen). */
static unsigned choose_pullers(rview *v, unsigned k, bool *chosen)
{
    rman *rm = &v->m[0];
    uint32_t *count = calloc(rm->n ? rm->n : 1, sizeof *count);
    uint64_t *missing = calloc(v->nn, sizeof *missing);
    unsigned nchosen = 0;
    if (!count || !missing) goto out;
    for (uint32_t c = 0; c < rm->n; c++)
        for (unsigned j = 0; j < v->nn; j++) {
            if (!counted(&v->nodes[j])) continue;
            if (held(&v->nodes[j], rm->idx[c]))
                count[c]++;
            else
                missing[j]++;
        }
    for (uint32_t c = 0; c < rm->n; c++) {
        while (count[c] < k) {
            unsigned best = v->nn;
            for (unsigned j = 0; j < v->nn; j++) {
                rnode *n = &v->nodes[j];
                if (!counted(n) || chosen[j] || held(n, rm->idx[c])) continue;
                if (best == v->nn || missing[j] < missing[best]) best = j;
            }
            if (best == v->nn) goto out; /* fewer than k nodes: checked before */
            chosen[best] = true;
            nchosen++;
            for (uint32_t e = 0; e < rm->n; e++)
                if (!held(&v->nodes[best], rm->idx[e])) count[e]++;
        }
    }
out:
    free(count);
    free(missing);
    return nchosen;
}

static uint64_t view_under(rview *v, unsigned k, uint64_t *nobody)
{
    rman *rm = &v->m[0];
    uint64_t under = 0;
    *nobody = 0;
    for (uint32_t c = 0; c < rm->n; c++) {
        unsigned h = 0;
        for (unsigned j = 0; j < v->nn; j++)
            h += counted(&v->nodes[j]) && held(&v->nodes[j], rm->idx[c]);
        under += h < k;
        *nobody += h == 0;
    }
    return under;
}

static int ask_peer(node__repl *r, rview *v, unsigned who)
{
    rnode *n = &v->nodes[who];
    net_pull_source src[NET_PULL_SOURCES_MAX];
    unsigned ns = 0;
    for (unsigned j = 0; j < v->nn && ns < NET_PULL_SOURCES_MAX; j++) {
        rnode *s = &v->nodes[j];
        if (j == who || !counted(s)) continue;
        const char *ip = s->ip;
        /* A node listening on every address cannot name one: the asked peer finds it among
         * its own known peers, if at all. */
        if (s->self && (!strcmp(ip, "0.0.0.0") || !strcmp(ip, "::") || !ip[0])) continue;
        memcpy(src[ns].key, s->pk, NET_KEY_BYTES);
        snprintf(src[ns].host, sizeof src[ns].host, "%s", ip);
        src[ns].port = (uint16_t)s->port;
        ns++;
    }
    rask *a = calloc(1, sizeof *a);
    if (!a) return -ENOMEM;
    a->r = r;
    memcpy(a->pk, n->pk, NET_KEY_BYTES);
    snprintf(a->ip, sizeof a->ip, "%s", n->ip);
    a->port = n->port;
    net_endpoint *ep = node__exchange_endpoint(r->d);
    int rc = ep ? net_msg_encode_pull_ask(1, r->id.b, src, ns, &a->payload, &a->len) : NET_ECLOSED;
    if (rc == 0)
        rc = net_connect(ep, n->ip, n->port, n->pk, NET_ROLE_PEER, NULL, &ask_cbs, a, &a->c);
    if (rc) {
        free(a->payload);
        free(a);
        return rc;
    }
    a->next = r->asks;
    r->asks = a;
    return 0;
}

static void replicate_view_done(node__repl *r, rview *v)
{
    char hex[CS_ID_HEX + 1], msg[NODE_ERRMSG];
    cs_id_to_hex(&r->id, hex);
    unsigned reach = 0;
    for (unsigned j = 0; j < v->nn; j++) reach += counted(&v->nodes[j]);
    /* The view as a progress line. */
    if (v->lines) {
        repl_emitf(r, false, "{\"phase\": \"%s\", \"view\": %.*s}\n", r->round ? "check" : "view",
                   (int)strcspn(v->lines, "\n"), v->lines);
    }
    uint64_t nobody = v->nobody, under = v->under;
    if (under == 0) {
        repl_emitf(r, true,
                   "{\"done\": \"replicated\", \"manifest\": \"%s\", \"copies\": %u, "
                   "\"nodes\": %u, \"pulls\": %u, \"unique_chunks\": %u, \"ms\": %llu}\n",
                   hex, r->k, reach, r->asked, v->m[0].n,
                   (unsigned long long)(uv_now(&r->d->loop) - r->started_ms));
        r->ended = true;
        r->report = NULL;
        view_release(v);
        r->view = NULL;
        repl_maybe_free(r);
        return;
    }
    if (r->round > 0) {
        snprintf(msg, sizeof msg,
                 "%llu chunks are still on fewer than %u nodes after %u pull%s (%u failed)",
                 (unsigned long long)under, r->k, r->asked, r->asked == 1 ? "" : "s",
                 r->failed_pulls);
        repl_fail(r, msg);
        return;
    }
    if (reach < r->k) {
        snprintf(msg, sizeof msg,
                 "cannot place %u copies: only %u node%s of the fleet %s reachable (%u known); "
                 "%llu chunks are on fewer than %u nodes",
                 r->k, reach, reach == 1 ? "" : "s", reach == 1 ? "is" : "are", v->nn,
                 (unsigned long long)under, r->k);
        repl_fail(r, msg);
        return;
    }
    if (nobody) {
        snprintf(msg, sizeof msg,
                 "%llu chunks are held by no reachable node: the LAN cannot synthesize %s "
                 "(bring them from the origin first)",
                 (unsigned long long)nobody, hex);
        repl_fail(r, msg);
        return;
    }
    bool *chosen = v->chosen;
    r->round = 1;
    r->placing = true; /* pulls that end at once wait for the others to be started */
    for (unsigned j = 0; j < v->nn; j++) {
        if (!chosen[j]) continue;
        char key[NODE_KEY_TEXT];
        node_key_encode(NODE_KEY_NODE_PUBLIC, v->nodes[j].pk, key);
        repl_emitf(r, false,
                   "{\"phase\": \"pull\", \"key\": \"%s\", \"address\": \"%s:%d\", \"self\": %s}\n",
                   key, v->nodes[j].ip, v->nodes[j].port, v->nodes[j].self ? "true" : "false");
        int rc;
        r->asked++;
        if (v->nodes[j].self) {
            char err[NODE_ERRMSG] = "";
            r->self_pull = true; /* its report may come before the start returns */
            rc = node__pull_start(r->d, &r->id, NULL, self_pull_report, r, err);
            if (rc) r->self_pull = false;
        } else {
            rc = ask_peer(r, v, j);
        }
        if (rc) {
            r->asked--;
            r->failed_pulls++;
        }
    }
    r->placing = false;
    view_release(v);
    r->view = NULL;
    replicate_check(r);
}

static void repl_view_again(node__repl *r)
{
    char err[NODE_ERRMSG] = "";
    int rc = view_start(r->d, &r->id, r->k, view_done, r, &r->view, err);
    if (rc)
        repl_fail(r, err[0] ? err : node_strerror(rc));
    else
        r->view->plan = true;
}

/* Every pull came back: look again. */
static void replicate_check(node__repl *r)
{
    if (r->ended || r->view || r->placing || r->answered < r->asked || r->self_pull) return;
    repl_view_again(r);
}

static void repl_timer_closed(uv_handle_t *h)
{
    node__repl *r = h->data;
    r->timer_open = false;
    repl_maybe_free(r);
}

static void repl_tick(uv_timer_t *h)
{
    node__repl *r = h->data;
    if (r->ended || !r->report || r->round == 0 || r->view) return;
    repl_emitf(r, false, "{\"phase\": \"pulling\", \"pulls\": %u, \"ended\": %u, \"ms\": %llu}\n",
               r->asked, r->answered, (unsigned long long)(uv_now(&r->d->loop) - r->started_ms));
}

static void repl_maybe_free(node__repl *r)
{
    if (!r->ended) return;
    if (r->timer_open && !uv_is_closing((uv_handle_t *)&r->timer))
        uv_close((uv_handle_t *)&r->timer, repl_timer_closed);
    if (r->view || r->self_pull || r->timer_open) return;
    for (rask *a = r->asks; a; a = a->next)
        if (a->c) return;
    node__repl **pp = &r->d->repls;
    while (*pp && *pp != r) pp = &(*pp)->next;
    if (*pp) *pp = r->next;
    for (rask *a = r->asks, *nx; a; a = nx) nx = a->next, free(a->payload), free(a);
    free(r);
}

int node__replication_start(node_daemon *d, const cs_id *id, unsigned k, bool replicate,
                            node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG])
{
    if (replicate && !id) {
        node__errf(err, "replicate needs a manifest id");
        return -EINVAL;
    }
    if (replicate && !d->xchg) {
        node__errf(err, "this node has no fleet key: it has no peers to replicate to (join a "
                        "fleet with `cloudlet init --fleet-key FILE`)");
        return NET_EROLE;
    }
    node__repl *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    r->d = d;
    r->report = fn;
    r->arg = arg;
    r->replicate = replicate;
    r->k = k;
    if (id) r->have_id = true, r->id = *id;
    r->started_ms = uv_now(&d->loop);
    int rc = view_start(d, id, k, view_done, r, &r->view, err);
    if (rc) {
        if (!err[0]) node__errf(err, "%s", node_strerror(rc));
        free(r);
        return rc;
    }
    r->view->plan = replicate; /* read by the pool only once the peers have answered */
    r->next = d->repls;
    d->repls = r;
    uv_timer_init(&d->loop, &r->timer);
    r->timer.data = r;
    r->timer_open = true;
    uv_timer_start(&r->timer, repl_tick, REPORT_MS, REPORT_MS);
    return 0;
}

void node__replication_detach(node_daemon *d, void *arg)
{
    for (node__repl *r = d->repls; r; r = r->next) {
        if (r->arg != arg || !r->report) continue;
        r->report = NULL;
        if (r->self_pull) {
            r->self_pull = false;
            node__pull_detach(d, r); /* its report does not come any more */
        }
        for (rask *a = r->asks; a; a = a->next)
            if (a->c) net_conn_abort(a->c, NET_ECLOSED); /* the peer stops its pull */
        r->ended = true;
        view_release(r->view);
        r->view = NULL;
        repl_maybe_free(r);
        return;
    }
}

void node__replication_stop(node_daemon *d)
{
    for (node__repl *r = d->repls, *nx; r; r = nx) {
        nx = r->next;
        if (!r->ended) repl_fail(r, "the daemon is shutting down");
    }
}
