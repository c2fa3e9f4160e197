/*
 * node_pull.c — pulling a manifest with every chunk this node lacks (docs/fetch.md): from the
 * peers, and for a launch from the app that asked for it (its origin).
 *
 * Design notes:
 * - A pull connects to every candidate peer, fetches the manifest (and its parents) from the
 *   first that has it, checks each against its id and stores it unpinned, computes the missing
 *   set, asks every source which of it they hold (HAVE batches answered with bitmaps), then
 *   drives the fetch planner (fetch_plan.c) from the loop: GET batches within
 *   max_inflight_per_peer and the token buckets of rate_total and rate_per_peer; arriving batches
 *   are decompressed, verified chunk by chunk and stored with cs_put(expect) on the worker pool,
 *   and only then reported to the planner, so bytes being verified still count as in flight. The
 *   pull holds cs_ingest_begin from start to end, so gc cannot take the unpinned manifest or its
 *   chunks; the manifest is pinned once every chunk is held.
 * - A pull belongs to whoever asked for it (a control client, a peer's PULL_ASK, a launch): when
 *   that one goes away the pull stops (what was stored stays; pulling again fetches only the
 *   rest).
 * - A launch's pull takes the app's own connection as the origin: the last source, asked for
 *   manifests only after every peer, and for chunks only those no peer holds (the planner's
 *   origin queue). Chunks whose parent chunk at the same place is held here are asked of the
 *   origin as deltas against it (GET_DELTA), the rest whole (GET), which the app sends as the
 *   parts of one stream (ZCHUNKS). Once its missing set is known, a pull tells the store that
 *   chunks are on their way (cs_arrivals_begin), so a VM can be written while they arrive.
 * - Lifetimes: a pull outlives its connections and its work on the pool.
 */
#define _GNU_SOURCE
#include "node_internal.h"
#include "node_xchg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GET_BATCH       32   /* chunks per GET: answers of about 128 KiB (docs/protocol.md §8) */
#define SEND_ROOM       (1u << 20) /* GETs are issued only while less than this is queued */
#define REQ_TIMEOUT_MS  15000      /* a chunk asked for and not answered goes back to the pool */
#define TICK_MS         20
#define REPORT_MS       250
#define CONNECT_WAIT_MS 6000
#define HAVE_WAIT_MS    15000
#define MAX_PARENTS     16 /* a manifest's chain of parents fetched at most this deep */
#define URGENT_EARLY    4096 /* urgent ids kept for a fetch not begun yet */

/* ---- pulls: state ---------------------------------------------------------------------------- */

enum { P_CONNECT, P_MANIFEST, P_PLAN, P_HAVE, P_FETCH, P_FINISH, P_DONE };
static const char *phase_name[] = {"connect", "manifest", "plan", "have",
                                   "fetch",   "finish",   "done"};

/* A GET in flight. */
typedef struct xget {
    struct xget *next;
    uint32_t req;
    uint32_t n, left;
    uint32_t idx[GET_BATCH];
    bool answered[GET_BATCH];
    uint64_t sent_ms;
} xget;

struct xsource {
    node__pull *p;
    unsigned idx;
    uint8_t pk[NET_KEY_BYTES];
    char ip[64];
    int port;
    xconn *xc; /* NULL until connected and once gone */
    bool origin; /* the app of a launch: the planner's origin, the last source */
    net_zstream *zdec; /* the origin's ZCHUNKS stream, once it sent one */
    bool up, gone, in_have, in_plan;
    int status; /* why it went away */
    uint8_t *holdings;
    uint32_t have_next, have_left; /* the next id to ask about; HAVE answers outstanding */
    bool have_done;
    xget *gets;
    double tokens;
    uint64_t bytes, chunks, not_held, wire_bytes;
    uint64_t data_bytes; /* of wire_bytes, those of manifests and chunks (not inventories) */
    uint64_t failures;   /* chunks and manifests that did not match their id */
    uint64_t bad_chunks; /* of those, chunks (the planner counts them with the timeouts) */
};

/* A batch of chunks being verified and stored on the worker pool. */
typedef struct vjob {
    uv_work_t work;
    node__pull *p;
    unsigned src;
    uint8_t type; /* CHUNKS or DELTAS as received, or ZCHUNKS decoded already (raw chunks) */
    cs_id bases[GET_BATCH];
    uint32_t n;
    uint32_t idx[GET_BATCH];
    bool ok[GET_BATCH];
    cs_id ids[GET_BATCH];
    uint8_t *payload;
    size_t len;
    int rc;
} vjob;

struct node__pull {
    node__exchange *x;
    node__pull *next;
    cs_id id;
    char peer_filter[300];
    node__pull_report_fn report;
    void *arg;
    int phase;
    bool failed, cancelled, ingest;
    char err[NODE_ERRMSG];
    xsource *src;
    unsigned nsrc;
    unsigned works; /* requests on the worker pool */
    uv_timer_t timer;
    bool timer_open;
    uint64_t started_ms, phase_ms, last_report_ms, last_expire_ms;
    /* the manifest being fetched: its id, bytes, and the chain of children waiting for it */
    cs_id want;
    unsigned msrc; /* the source asked */
    uint8_t *mbuf;
    uint64_t mtotal, mhave;
    uint8_t *chain[MAX_PARENTS + 1];
    size_t chain_len[MAX_PARENTS + 1];
    unsigned nchain;
    bool pinned_before;
    /* the missing set, and for each the parent's chunk at its place when held here (else zero) */
    cs_id *missing;
    cs_id *bases;
    bool arrivals; /* cs_arrivals_begin was called */
    uint32_t n;
    uint64_t unique_chunks, held_before;
    node_plan *plan;
    uint32_t *by_id; /* plan indexes sorted by their chunk's id: for a launch made with the plan,
                      * else at the first urgent ask */
    cs_id *early_urgent; /* urgent ids asked for before the fetch began (at most URGENT_EARLY) */
    size_t nearly_urgent;
    uint32_t next_req;
    unsigned rr; /* the source ties start from */
    unsigned verifying;
    double tokens_total;
    uint64_t last_refill_ms;
    uint64_t bytes_done, chunks_done;
};

static void pull_fail(node__pull *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pull_pump(node__pull *p);
static void pull_maybe_free(node__pull *p);
static void pull_plan(node__pull *p);
static void manifest_check(node__pull *p);

/* The planner's name of a source: its index for a neighbour, NODE_PLAN_ORIGIN for the app. */
static int plan_src(const xsource *s)
{
    return s->origin ? NODE_PLAN_ORIGIN : (int)s->idx;
}

/* Chunks in flight at source s (0 before the fetch). */
static uint64_t src_inflight(node__pull *p, const xsource *s)
{
    if (!p->plan || !s->in_plan) return 0;
    if (!s->origin) return node_plan_peer_inflight(p->plan, s->idx);
    node_plan_stats_t st;
    node_plan_stats(p->plan, &st);
    return st.origin_inflight;
}

/* Timeouts and other failures the planner counted against source s. */
static uint64_t src_plan_failures(node__pull *p, const xsource *s)
{
    if (!p->plan || !s->in_plan || s->origin) return 0;
    return node_plan_peer_failures(p->plan, s->idx) - s->bad_chunks;
}

/* ---- pulls: reports -------------------------------------------------------------------------- */

static void json_sources(FILE *f, node__pull *p)
{
    fputs("\"sources\": [", f);
    for (unsigned i = 0; i < p->nsrc; i++) {
        xsource *s = &p->src[i];
        char key[NODE_KEY_TEXT], addr[100];
        node_key_encode(NODE_KEY_NODE_PUBLIC, s->pk, key);
        snprintf(addr, sizeof addr, "%s:%d", s->ip, s->port);
        uint64_t inflight = src_inflight(p, s), timeouts = src_plan_failures(p, s);
        fprintf(f, "%s{\"key\": \"%s\", \"address\": ", i ? ", " : "", key);
        node__json_str(f, addr);
        fprintf(f,
                ", \"origin\": %s, \"state\": \"%s\", \"chunks\": %llu, \"bytes\": %llu, "
                "\"wire_bytes\": %llu, \"failures\": %llu, \"timeouts\": %llu, "
                "\"not_held\": %llu, \"inflight\": %llu}",
                s->origin ? "true" : "false", s->gone ? "gone"
                : s->up ? "up"
                        : "connecting",
                (unsigned long long)s->chunks, (unsigned long long)s->bytes,
                (unsigned long long)s->wire_bytes, (unsigned long long)s->failures,
                (unsigned long long)timeouts, (unsigned long long)s->not_held,
                (unsigned long long)inflight);
    }
    fputc(']', f);
}

static void report(node__pull *p, bool last)
{
    if (!p->report) return;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return;
    char hex[CS_ID_HEX + 1];
    uint64_t now = uv_now(&p->x->d->loop), ms = now - p->started_ms;
    if (last && p->failed) {
        fputs("{\"error\": ", f);
        node__json_str(f, p->err);
        fprintf(f, ", \"id\": \"%s\", \"ms\": %llu, \"chunks_fetched\": %llu, \"bytes\": %llu, ",
                cs_id_to_hex(&p->id, hex), (unsigned long long)ms,
                (unsigned long long)p->chunks_done, (unsigned long long)p->bytes_done);
    } else {
        fprintf(f, "{\"%s\": \"%s\", \"id\": \"%s\", ", last ? "done" : "phase",
                last ? "pulled" : phase_name[p->phase], cs_id_to_hex(&p->id, hex));
        fprintf(f,
                "\"ms\": %llu, \"unique_chunks\": %llu, \"held_before\": %llu, \"missing\": %u, "
                "\"chunks_fetched\": %llu, \"bytes\": %llu, \"total_bytes\": %llu, ",
                (unsigned long long)ms, (unsigned long long)p->unique_chunks,
                (unsigned long long)p->held_before, p->n, (unsigned long long)p->chunks_done,
                (unsigned long long)p->bytes_done,
                (unsigned long long)((uint64_t)p->n * CS_CHUNK_SIZE));
    }
    uint64_t failures = 0;
    for (unsigned i = 0; i < p->nsrc; i++)
        failures += p->src[i].failures + src_plan_failures(p, &p->src[i]);
    fprintf(f, "\"failures\": %llu, ", (unsigned long long)failures);
    json_sources(f, p);
    fputs("}\n", f);
    if (fclose(f) == 0) p->report(buf, last, p->arg);
    free(buf);
    p->last_report_ms = now;
}

/* ---- pulls: life ----------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h)
{
    node__pull *p = h->data;
    p->timer_open = false;
    pull_maybe_free(p);
}

static void pull_maybe_free(node__pull *p)
{
    if (p->phase != P_DONE || p->works || p->timer_open) return;
    for (unsigned i = 0; i < p->nsrc; i++)
        if (p->src[i].xc) return;
    node__exchange *x = p->x;
    for (node__pull **pp = &x->pulls; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    for (unsigned i = 0; i < p->nsrc; i++) {
        free(p->src[i].holdings);
        net_zstream_free(p->src[i].zdec);
        for (xget *g = p->src[i].gets, *nx; g; g = nx) nx = g->next, free(g);
    }
    for (unsigned i = 0; i < p->nchain; i++) free(p->chain[i]);
    free(p->src);
    free(p->mbuf);
    free(p->missing);
    free(p->bases);
    free(p->by_id);
    free(p->early_urgent);
    node_plan_free(p->plan);
    free(p);
}

/* The end, success or not: close the sources, release the ingest lock (on the pool), report. */
static void end_work(uv_work_t *w)
{
    node__pull *p = w->data;
    cs_ingest_end(p->x->d->st);
}

static void end_done(uv_work_t *w, int status)
{
    node__pull *p = w->data;
    free(w);
    p->works--;
    pull_maybe_free(p);
}

static void release_ingest(node__pull *p)
{
    if (p->ingest) {
        p->ingest = false;
        uv_work_t *w = calloc(1, sizeof *w);
        if (w) w->data = p;
        if (w && uv_queue_work(&p->x->d->loop, w, end_work, end_done) == 0)
            p->works++;
        else {
            free(w);
            cs_ingest_end(p->x->d->st);
        }
    }
}

static void pull_end(node__pull *p)
{
    if (p->phase == P_DONE) return;
    p->phase = P_DONE;
    if (p->arrivals) cs_arrivals_end(p->x->d->st); /* readers waiting for chunks give up */
    p->arrivals = false;
    report(p, true);
    p->report = NULL;
    for (unsigned i = 0; i < p->nsrc; i++) {
        xsource *s = &p->src[i];
        if (s->origin && s->xc) {
            s->xc->src = NULL; /* the app's connection stays with its launch */
            s->xc = NULL;
        } else if (s->xc && s->xc->c) {
            net_conn_close(s->xc->c);
        }
    }
    if (p->timer_open && !uv_is_closing((uv_handle_t *)&p->timer))
        uv_close((uv_handle_t *)&p->timer, timer_closed);
    release_ingest(p);
    pull_maybe_free(p);
}

static void pull_fail(node__pull *p, const char *fmt, ...)
{
    if (p->phase == P_DONE) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->failed = true;
    char hex[CS_ID_HEX + 1];
    node_log(NODE_LOG_WARN, "pull %.12s: %s", cs_id_to_hex(&p->id, hex), p->err);
    pull_end(p);
}

static void pull_stop(node__pull *p, const char *why)
{
    pull_fail(p, "%s", why);
}

void node__pull_detach(node_daemon *d, void *arg)
{
    if (!d->xchg) return;
    node__pull *p = d->xchg->pulls;
    while (p && !(p->arg == arg && p->report)) p = p->next;
    if (!p) return;
    p->report = NULL;
    p->cancelled = true;
    pull_fail(p, "cancelled: the requester went away"); /* may free p */
}

static void set_phase(node__pull *p, int phase)
{
    p->phase = phase;
    p->phase_ms = uv_now(&p->x->d->loop);
    report(p, false);
}

/* ---- pulls: the manifest --------------------------------------------------------------------- */

typedef struct mjob {
    uv_work_t work;
    node__pull *p;
    int rc;
    bool need_parent;
    cs_id parent;
    char why[NODE_ERRMSG];
} mjob;

static void ask_manifest(node__pull *p);

/* Checks the bytes against the id asked for; stores the manifest unless its parent is missing,
 * then the children waiting for it. */
static void manifest_work(uv_work_t *w)
{
    mjob *j = w->data;
    node__pull *p = j->p;
    cs_store *st = p->x->d->st;
    cs_id got;
    cs_manifest_id(p->mbuf, p->mtotal, &got);
    if (!cs_id_equal(&got, &p->want)) {
        j->rc = CS_ECORRUPT;
        return;
    }
    cs_manifest *m = NULL;
    j->rc = cs_manifest_decode(p->mbuf, p->mtotal, &m);
    if (j->rc) return;
    bool has_parent = m->has_parent;
    cs_id parent = m->parent;
    cs_manifest_free(m);
    if (has_parent) {
        uint8_t *pb = NULL;
        size_t pl = 0;
        int rc = cs_manifest_get_raw(st, &parent, &pb, &pl);
        free(pb);
        if (rc == CS_ENOTFOUND) {
            j->need_parent = true;
            j->parent = parent;
            return;
        }
        if (rc) {
            j->rc = rc;
            return;
        }
    }
    if ((j->rc = cs_manifest_put(st, p->mbuf, p->mtotal, false, NULL))) return;
    for (unsigned i = p->nchain; i-- > 0;)
        if ((j->rc = cs_manifest_put(st, p->chain[i], p->chain_len[i], false, NULL))) return;
}

static void manifest_done(uv_work_t *w, int status)
{
    mjob *j = w->data;
    node__pull *p = j->p;
    p->works--;
    int rc = status ? status : j->rc;
    bool need_parent = j->need_parent;
    cs_id parent = j->parent;
    free(j);
    if (p->phase != P_MANIFEST) {
        pull_maybe_free(p);
        return;
    }
    char hex[CS_ID_HEX + 1];
    if (rc == CS_ECORRUPT || rc == CS_EFORMAT || rc == CS_EVERSION) {
        xsource *s = &p->src[p->msrc];
        s->failures++;
        node_log(NODE_LOG_WARN, "manifest %.12s from %s:%d: %s; asking another peer",
                 cs_id_to_hex(&p->want, hex), s->ip, s->port,
                 rc == CS_ECORRUPT ? "its bytes do not match its id" : cs_strerror(rc));
        free(p->mbuf);
        p->mbuf = NULL;
        p->msrc++;
        ask_manifest(p);
        return;
    }
    if (rc) {
        pull_fail(p, "cannot store manifest %s: %s", cs_id_to_hex(&p->want, hex),
                  node_strerror(rc));
        return;
    }
    if (need_parent) {
        if (p->nchain == MAX_PARENTS) {
            pull_fail(p, "manifest %s has more than %d ancestors missing here",
                      cs_id_to_hex(&p->id, hex), MAX_PARENTS);
            return;
        }
        p->chain[p->nchain] = p->mbuf;
        p->chain_len[p->nchain++] = p->mtotal;
        p->mbuf = NULL;
        p->want = parent;
        p->msrc = 0;
        ask_manifest(p);
        return;
    }
    pull_plan(p);
}

static void ask_manifest(node__pull *p)
{
    char hex[CS_ID_HEX + 1];
    for (; p->msrc < p->nsrc; p->msrc++) {
        xsource *s = &p->src[p->msrc];
        if (!s->up || !s->xc || !s->xc->c) continue;
        uint8_t *buf;
        size_t len;
        p->mhave = p->mtotal = 0;
        if (net_msg_encode_manifest_get(p->want.b, 0, &buf, &len) != 0) break;
        int rc = net_conn_send(s->xc->c, NET_MSG_MANIFEST_GET, buf, len);
        free(buf);
        if (rc == 0) return;
    }
    bool app = p->nsrc && p->src[p->nsrc - 1].origin;
    char child[CS_ID_HEX + 1];
    cs_id_to_hex(&p->id, child);
    if (cs_id_equal(&p->want, &p->id))
        pull_fail(p, "unknown manifest %s: no peer %sholds it (%u asked)",
                  cs_id_to_hex(&p->want, hex), app ? "and not the app " : "", p->nsrc);
    else
        pull_fail(p, "no peer %sholds manifest %s, the parent (base VM) of %s",
                  app ? "and not the app " : "", cs_id_to_hex(&p->want, hex), child);
}

static void on_manifest(xsource *s, const net_msg *m)
{
    node__pull *p = s->p;
    if (p->phase != P_MANIFEST || s->idx != p->msrc || memcmp(m->id, p->want.b, CS_ID_BYTES)) {
        if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT);
        return;
    }
    if (!m->found) {
        p->msrc++;
        ask_manifest(p);
        return;
    }
    if (!p->mbuf) {
        if (m->offset != 0 || !(p->mbuf = malloc(m->total))) {
            if (s->xc && s->xc->c) net_conn_abort(s->xc->c, m->offset ? NET_EFORMAT : -ENOMEM);
            return;
        }
        p->mtotal = m->total;
        p->mhave = 0;
    }
    if (m->total != p->mtotal || m->offset != p->mhave) {
        if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT);
        return;
    }
    memcpy(p->mbuf + p->mhave, m->part, m->part_len);
    p->mhave += m->part_len;
    s->wire_bytes += m->part_len;
    s->data_bytes += m->part_len;
    if (p->mhave < p->mtotal) {
        uint8_t *buf;
        size_t len;
        if (net_msg_encode_manifest_get(p->want.b, p->mhave, &buf, &len) == 0) {
            if (net_conn_send(s->xc->c, NET_MSG_MANIFEST_GET, buf, len) != 0 && s->xc->c)
                net_conn_abort(s->xc->c, NET_ECLOSED);
            free(buf);
        }
        return;
    }
    mjob *j = calloc(1, sizeof *j);
    if (!j) {
        pull_fail(p, "out of memory");
        return;
    }
    j->p = p;
    j->work.data = j;
    if (uv_queue_work(&p->x->d->loop, &j->work, manifest_work, manifest_done) != 0) {
        free(j);
        pull_fail(p, "cannot queue work");
        return;
    }
    p->works++;
}

/* ---- pulls: the missing set ------------------------------------------------------------------ */

/* The work's results stay in the job until it is back on the loop, which reads the pull's
 * fields (reports) meanwhile. */
typedef struct pjob {
    uv_work_t work;
    node__pull *p;
    cs_id id;
    int rc;
    bool pinned;
    bool index;        /* a launch's pull: also sort the missing set by id (by_id) */
    cs_id *missing, *bases;
    uint32_t *by_id;
    uint32_t n;
    uint64_t unique, held;
} pjob;

/* Orders positions into the id array arg by id, then by position, so that each id's first
 * position comes first among its equals. */
static int cmp_pos(const void *a, const void *b, void *arg)
{
    const cs_id *ids = arg;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = memcmp(ids[x].b, ids[y].b, CS_ID_BYTES);
    return c ? c : (x > y) - (x < y);
}

/* The positions 0..n-1 of ids sorted by id (cmp_pos), malloc'd; NULL when out of memory. */
static uint32_t *positions_by_id(const cs_id *ids, size_t n)
{
    uint32_t *pos = malloc((n ? n : 1) * sizeof *pos);
    if (!pos) return NULL;
    for (size_t i = 0; i < n; i++) pos[i] = (uint32_t)i;
    qsort_r(pos, n, sizeof *pos, cmp_pos, (void *)ids);
    return pos;
}

/* Keeps the first position of each distinct id of ids[0..n), in their order, and returns how
 * many (or -ENOMEM); also[] (beside ids) is kept the same way. The manifest's order is what the
 * sources stored: neighbouring chunks share a segment there (a GET of them decompresses one
 * segment, not one each) and compress together on the wire. */
static int64_t distinct_in_order(cs_id *ids, cs_id *also, size_t n)
{
    uint32_t *pos = positions_by_id(ids, n);
    uint8_t *keep = calloc(n ? n : 1, 1);
    if (!pos || !keep) {
        free(pos), free(keep);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        if (i == 0 || !cs_id_equal(&ids[pos[i - 1]], &ids[pos[i]])) keep[pos[i]] = 1;
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i]) also[u] = also[i], ids[u++] = ids[i];
    free(pos), free(keep);
    return (int64_t)u;
}

static int find_pins(const cs_manifest_info *info, void *arg)
{
    pjob *j = arg;
    if (cs_id_equal(&info->id, &j->id)) {
        j->pinned = info->pins > 0;
        return 1;
    }
    return 0;
}

uint8_t *node__held_bits(cs_store *st, const cs_id *ids, size_t n, int *rc)
{
    uint8_t *bits = calloc(n / 8 + 1, 1);
    *rc = bits ? 0 : -ENOMEM;
    for (size_t off = 0; bits && off < n; off += 65536) {
        int64_t held = cs_has(st, ids + off, n - off < 65536 ? n - off : 65536, bits + off / 8);
        if (held < 0) {
            free(bits);
            *rc = (int)held;
            return NULL;
        }
    }
    return bits;
}

static bool bit_set(const uint8_t *bits, size_t i)
{
    return bits[i / 8] & (1u << (i % 8));
}

/* Keeps base[i] only where the store holds it (a delta against it can be applied here). */
static int keep_held_bases(cs_store *st, cs_id *base, size_t n)
{
    int rc;
    uint8_t *bits = node__held_bits(st, base, n, &rc);
    for (size_t i = 0; bits && i < n; i++)
        if (!bit_set(bits, i)) base[i] = cs_zero_id;
    free(bits);
    return rc;
}

/* The distinct non-zero chunks of the manifest, memory first, each image in its order, with the parent's chunk at the
 * same place beside each (zero when it has no parent, the parent has no chunk there, or it is
 * not held here). */
static int manifest_chunks(cs_store *st, const cs_id *id, cs_id **ids_out, cs_id **bases_out,
                           size_t *n_out)
{
    cs_manifest *m = NULL, *parent = NULL;
    int rc = cs_manifest_get(st, id, &m);
    if (rc) return rc;
    if (m->has_parent && (rc = cs_manifest_get(st, &m->parent, &parent))) {
        cs_manifest_free(m);
        return rc;
    }
    size_t total = 0;
    for (size_t i = 0; i < m->nimages; i++) total += m->images[i].nchunks;
    cs_id *all = malloc((total ? total : 1) * sizeof *all);
    cs_id *base = calloc(total ? total : 1, sizeof *base);
    size_t k = 0;
    /* The memory's images first, then the rest: a launch resumes the VM once its memory is
     * here, and serves the disk to it as its chunks arrive (docs/launch.md, "Early start"). */
    for (int memory_pass = 1; memory_pass >= 0; memory_pass--)
        for (size_t i = 0; all && base && i < m->nimages; i++) {
            const cs_image *im = &m->images[i];
            if ((im->kind == CS_IMAGE_RAM || im->kind == CS_IMAGE_STATE) != memory_pass) continue;
            const cs_image *pim = parent ? cs_manifest_find_image(parent, im->name) : NULL;
            for (uint64_t c = 0; c < im->nchunks; c++) {
                if (cs_id_is_zero(&im->chunks[c])) continue;
                if (pim && c < pim->nchunks && !cs_id_equal(&pim->chunks[c], &im->chunks[c]))
                    base[k] = pim->chunks[c];
                all[k++] = im->chunks[c];
            }
        }
    bool has_parent = parent != NULL;
    cs_manifest_free(m);
    cs_manifest_free(parent);
    int64_t distinct = all && base ? distinct_in_order(all, base, k) : -ENOMEM;
    if (distinct >= 0 && has_parent) {
        int brc = keep_held_bases(st, base, (size_t)distinct);
        if (brc) distinct = brc;
    }
    if (distinct < 0) {
        free(all), free(base);
        return (int)distinct;
    }
    *ids_out = all, *bases_out = base, *n_out = (size_t)distinct;
    return 0;
}

static void plan_work(uv_work_t *w)
{
    pjob *j = w->data;
    cs_store *st = j->p->x->d->st;
    int lrc = cs_manifest_list(st, find_pins, j);
    if (lrc < 0) {
        j->rc = lrc;
        return;
    }
    cs_id *all = NULL, *base = NULL;
    size_t u = 0;
    if ((j->rc = manifest_chunks(st, &j->id, &all, &base, &u))) return;
    j->unique = u;
    /* What is held already stays; the missing keep the manifest's order. */
    size_t nm = 0;
    uint8_t *bits = node__held_bits(st, all, u, &j->rc);
    if (!bits) {
        free(all), free(base);
        return;
    }
    for (size_t i = 0; i < u; i++)
        if (!bit_set(bits, i)) base[nm] = base[i], all[nm++] = all[i];
    free(bits);
    j->held = u - nm;
    j->missing = all;
    j->bases = base;
    j->n = (uint32_t)nm;
    /* A launch's running VM may ask for chunks by id (node__pull_urgent): the index is sorted
     * here, on the pool, rather than on the loop when the VM has just started. */
    if (j->index && nm) j->by_id = positions_by_id(all, nm);
}

static void start_have(node__pull *p);
static void pull_finish(node__pull *p);

static void plan_done(uv_work_t *w, int status)
{
    pjob *j = w->data;
    node__pull *p = j->p;
    p->works--;
    int rc = status ? status : j->rc;
    if (rc == 0) {
        p->pinned_before = j->pinned;
        p->unique_chunks = j->unique;
        p->held_before = j->held;
        p->missing = j->missing;
        p->bases = j->bases;
        p->by_id = j->by_id;
        p->n = j->n;
    } else {
        free(j->missing);
        free(j->bases);
        free(j->by_id);
    }
    free(j);
    if (p->phase != P_PLAN) {
        pull_maybe_free(p);
        return;
    }
    char hex[CS_ID_HEX + 1];
    if (rc) {
        pull_fail(p, "manifest %s: %s", cs_id_to_hex(&p->id, hex), node_strerror(rc));
        return;
    }
    if (p->n == 0) {
        pull_finish(p);
        return;
    }
    cs_arrivals_begin(p->x->d->st); /* a launch may write the VM while the chunks arrive */
    p->arrivals = true;
    start_have(p);
}

static void pull_plan(node__pull *p)
{
    set_phase(p, P_PLAN);
    pjob *j = calloc(1, sizeof *j);
    if (!j) {
        pull_fail(p, "out of memory");
        return;
    }
    j->p = p;
    j->id = p->id;
    for (unsigned i = 0; i < p->nsrc; i++) j->index = j->index || p->src[i].origin;
    j->work.data = j;
    if (uv_queue_work(&p->x->d->loop, &j->work, plan_work, plan_done) != 0) {
        free(j);
        pull_fail(p, "cannot queue work");
        return;
    }
    p->works++;
}

/* ---- pulls: who holds what ------------------------------------------------------------------- */

/* HAVE batches to one source, as its send queue allows. Request ids of HAVEs are the offsets of
 * their first id. */
static void send_haves(xsource *s)
{
    node__pull *p = s->p;
    while (s->have_next < p->n && s->xc && s->xc->c) {
        uint32_t n = p->n - s->have_next < NET_HAVE_MAX ? p->n - s->have_next : NET_HAVE_MAX;
        uint8_t *buf;
        size_t len;
        if (net_msg_encode_ids(NET_MSG_HAVE, s->have_next, p->missing[s->have_next].b, n, &buf,
                               &len) != 0) {
            pull_fail(p, "out of memory");
            return;
        }
        int rc = net_conn_send(s->xc->c, NET_MSG_HAVE, buf, len);
        free(buf);
        if (rc == NET_EAGAIN) return; /* on_drain sends the rest */
        if (rc) return;               /* closing: on_close follows */
        s->have_next += n;
        s->have_left++;
    }
}

static void start_fetch(node__pull *p);
static int make_urgent(node__pull *p, const cs_id *ids, size_t n);

static void maybe_start_fetch(node__pull *p)
{
    if (p->phase != P_HAVE) return;
    for (unsigned i = 0; i < p->nsrc; i++) {
        xsource *s = &p->src[i];
        if (s->in_have && !s->gone && !s->have_done) return;
    }
    start_fetch(p);
}

static void start_have(node__pull *p)
{
    set_phase(p, P_HAVE);
    for (unsigned i = 0; i < p->nsrc; i++) {
        xsource *s = &p->src[i];
        if (!s->up || s->gone || s->origin) continue; /* one still connecting takes no part */
        s->in_have = true;
        s->holdings = calloc((size_t)p->n / 8 + 1, 1);
        if (!s->holdings) {
            pull_fail(p, "out of memory");
            return;
        }
        send_haves(s);
    }
    maybe_start_fetch(p);
}

static void on_have_bitmap(xsource *s, const net_msg *m)
{
    node__pull *p = s->p;
    if (p->phase != P_HAVE || !s->holdings || m->req >= p->n || m->n > p->n - m->req ||
        m->req % NET_HAVE_MAX || s->have_left == 0) {
        if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT);
        return;
    }
    for (uint32_t i = 0; i < m->n; i++)
        if (m->bitmap[i / 8] & (1u << (i % 8))) {
            uint32_t c = m->req + i;
            s->holdings[c / 8] |= (uint8_t)(1u << (c % 8));
        }
    s->wire_bytes += (m->n + 7) / 8;
    s->have_left--;
    if (s->have_left == 0 && s->have_next == p->n) {
        s->have_done = true;
        maybe_start_fetch(p);
    }
}

/* ---- pulls: fetching ------------------------------------------------------------------------- */

static void start_fetch(node__pull *p)
{
    const uint8_t **h = calloc(p->nsrc ? p->nsrc : 1, sizeof *h);
    if (!h) {
        pull_fail(p, "out of memory");
        return;
    }
    unsigned npeers = 0;
    for (unsigned i = 0; i < p->nsrc; i++) {
        xsource *s = &p->src[i];
        if (s->origin) {
            s->in_plan = s->up && !s->gone; /* the last source: not one of the planner's peers */
            continue;
        }
        npeers++;
        s->in_plan = s->in_have && !s->gone && s->have_done;
        h[i] = s->in_plan ? s->holdings : NULL;
    }
    p->plan = node_plan_new(p->n, npeers, REQ_TIMEOUT_MS);
    int rc = p->plan ? node_plan_start(p->plan, h) : -ENOMEM;
    free(h);
    if (rc) {
        pull_fail(p, "out of memory");
        return;
    }
    if (p->nearly_urgent) { /* a running VM waited for these before the fetch began */
        rc = make_urgent(p, p->early_urgent, p->nearly_urgent);
        free(p->early_urgent), p->early_urgent = NULL, p->nearly_urgent = 0;
        if (rc) {
            pull_fail(p, "out of memory");
            return;
        }
    }
    p->last_refill_ms = p->last_expire_ms = uv_now(&p->x->d->loop);
    const node_config *cfg = &p->x->d->cfg;
    p->tokens_total = cfg->rate_total ? (double)GET_BATCH * CS_CHUNK_SIZE : 0;
    for (unsigned i = 0; i < p->nsrc; i++)
        p->src[i].tokens = cfg->rate_per_peer ? (double)GET_BATCH * CS_CHUNK_SIZE : 0;
    set_phase(p, P_FETCH);
    pull_pump(p);
}

static double bucket_cap(uint64_t rate)
{
    double cap = (double)rate / 5; /* a fifth of a second of burst, at least one batch */
    return cap < (double)GET_BATCH * CS_CHUNK_SIZE ? (double)GET_BATCH * CS_CHUNK_SIZE : cap;
}

static void refill(node__pull *p, uint64_t now)
{
    const node_config *cfg = &p->x->d->cfg;
    double dt = (double)(now - p->last_refill_ms) / 1000.0;
    p->last_refill_ms = now;
    if (cfg->rate_total) {
        p->tokens_total += dt * (double)cfg->rate_total;
        if (p->tokens_total > bucket_cap(cfg->rate_total))
            p->tokens_total = bucket_cap(cfg->rate_total);
    }
    if (cfg->rate_per_peer)
        for (unsigned i = 0; i < p->nsrc; i++) {
            p->src[i].tokens += dt * (double)cfg->rate_per_peer;
            if (p->src[i].tokens > bucket_cap(cfg->rate_per_peer))
                p->src[i].tokens = bucket_cap(cfg->rate_per_peer);
        }
}

/* Whether source i may be sent a GET now: connected, in the plan, tokens in its bucket, room in
 * its send queue and under max_inflight_per_peer. */
static bool can_ask(node__pull *p, unsigned i)
{
    const node_config *cfg = &p->x->d->cfg;
    xsource *s = &p->src[i];
    if (!s->in_plan || s->gone || !s->xc || !s->xc->c) return false;
    if (cfg->rate_per_peer && s->tokens <= 0) return false;
    if (net_conn_queued(s->xc->c) > SEND_ROOM) return false;
    return src_inflight(p, s) < cfg->max_inflight_per_peer;
}

/* Sends one request for chunks idx[0..n) of the missing set to s: GET, or GET_DELTA naming
 * each chunk's base. The chunks stay in flight at s until answered, gone or expired. */
static int send_get(node__pull *p, xsource *s, const uint32_t *idx, uint32_t n, uint8_t type,
                    uint64_t now)
{
    xget *g = calloc(1, sizeof *g);
    if (!g) return -ENOMEM;
    cs_id ids[GET_BATCH], bases[GET_BATCH];
    for (uint32_t k = 0; k < n; k++) {
        g->idx[k] = idx[k];
        ids[k] = p->missing[idx[k]];
        bases[k] = p->bases[idx[k]];
    }
    g->n = g->left = n;
    g->req = ++p->next_req;
    g->sent_ms = now;
    g->next = s->gets;
    s->gets = g;
    uint8_t *buf;
    size_t len;
    int rc = type == NET_MSG_GET_DELTA
                 ? net_msg_encode_get_delta(g->req, (const uint8_t *)ids, (const uint8_t *)bases,
                                            n, &buf, &len)
                 : net_msg_encode_ids(NET_MSG_GET, g->req, (const uint8_t *)ids, n, &buf, &len);
    if (rc == 0) {
        rc = net_conn_send(s->xc->c, type, buf, len);
        free(buf);
    }
    return rc;
}

/* Issues GETs while the total bucket has tokens, each to the source with the fewest chunks in
 * flight among those that may be asked and still have work: striping by bytes in flight, so
 * that under a total cap the sources share it instead of the first taking it all. */
static void issue(node__pull *p)
{
    const node_config *cfg = &p->x->d->cfg;
    uint64_t now = uv_now(&p->x->d->loop);
    refill(p, now);
    bool *dry = calloc(p->nsrc ? p->nsrc : 1, sizeof *dry); /* no work left for it this time */
    if (!dry) return;
    while (!cfg->rate_total || p->tokens_total > 0) {
        unsigned best = p->nsrc;
        uint64_t best_inflight = UINT64_MAX;
        for (unsigned k = 0; k < p->nsrc; k++) {
            unsigned i = (p->rr + k) % p->nsrc; /* ties go round the sources */
            if (dry[i] || !can_ask(p, i)) continue;
            uint64_t inflight = src_inflight(p, &p->src[i]);
            if (inflight < best_inflight) best = i, best_inflight = inflight;
        }
        if (best == p->nsrc) break;
        xsource *s = &p->src[best];
        size_t room = cfg->max_inflight_per_peer - best_inflight;
        uint32_t idx[GET_BATCH];
        uint32_t n = (uint32_t)node_plan_next(p->plan, plan_src(s),
                                              room < GET_BATCH ? room : GET_BATCH, idx, now);
        if (n == 0) {
            dry[best] = true;
            continue;
        }
        p->rr = best + 1;
        /* The origin is the slow link: a chunk whose parent chunk is held here goes as a delta
         * against it. Neighbours send whole chunks (cheaper for both ends on a LAN). */
        uint32_t nd = 0, nw = 0, didx[GET_BATCH], widx[GET_BATCH];
        for (uint32_t k = 0; k < n; k++) {
            if (s->origin && !cs_id_is_zero(&p->bases[idx[k]]))
                didx[nd++] = idx[k];
            else
                widx[nw++] = idx[k];
        }
        int rc = 0;
        if (nd) rc = send_get(p, s, didx, nd, NET_MSG_GET_DELTA, now);
        if (nw && rc == 0) rc = send_get(p, s, widx, nw, NET_MSG_GET, now);
        if (rc) {
            /* The chunks stay in flight at this source until it is gone or they expire. */
            if (s->xc && s->xc->c) net_conn_abort(s->xc->c, rc);
            dry[best] = true;
            continue;
        }
        double bytes = (double)n * CS_CHUNK_SIZE;
        p->tokens_total -= bytes;
        s->tokens -= bytes;
    }
    free(dry);
}

/* Done, or stuck: nothing in flight and every chunk left has no live holder. */
static void check_end(node__pull *p)
{
    if (p->phase != P_FETCH) return;
    if (node_plan_done(p->plan)) {
        pull_finish(p);
        return;
    }
    if (p->verifying) return;
    for (unsigned i = 0; i < p->nsrc; i++) {
        if (src_inflight(p, &p->src[i])) return;
        if (p->src[i].origin && p->src[i].in_plan && !p->src[i].gone) return; /* it has them */
    }
    node_plan_stats_t st;
    node_plan_stats(p->plan, &st);
    if (st.done + st.origin_pending == st.total)
        pull_fail(p, "%llu of %u missing chunks are held by no reachable peer",
                  (unsigned long long)st.origin_pending, p->n);
}

static void pull_pump(node__pull *p)
{
    if (p->phase == P_HAVE) {
        for (unsigned i = 0; i < p->nsrc; i++)
            if (p->src[i].in_have && !p->src[i].gone) send_haves(&p->src[i]);
        return;
    }
    if (p->phase != P_FETCH) return;
    issue(p);
}

static xget *find_get(xsource *s, uint32_t req, xget ***link)
{
    for (xget **pp = &s->gets; *pp; pp = &(*pp)->next)
        if ((*pp)->req == req) {
            *link = pp;
            return *pp;
        }
    return NULL;
}

/* Marks the ids of an answer in their GET; -1 for an id the GET did not ask for (or twice). */
static int match_ids(node__pull *p, xget *g, const net_msg *m, uint32_t *idx)
{
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t k = 0;
        for (; k < g->n; k++)
            if (!g->answered[k] &&
                !memcmp(p->missing[g->idx[k]].b, m->ids + (size_t)i * CS_ID_BYTES, CS_ID_BYTES))
                break;
        if (k == g->n) return -1;
        g->answered[k] = true;
        idx[i] = g->idx[k];
    }
    return 0;
}

/* Rebuilds the batch's chunks into data: a CHUNKS frame inflated, or each delta of a DELTAS
 * applied to its base (read from the store). decoded[i] is false for a chunk that could not be
 * rebuilt (all of them when a CHUNKS frame does not inflate to what it declared). */
static void decode_batch(vjob *j, uint8_t *data, bool *decoded)
{
    net_msg m;
    memset(decoded, 0, j->n * sizeof *decoded);
    if (j->type == NET_MSG_ZCHUNKS) { /* decoded on the loop, in stream order */
        memcpy(data, j->payload, (size_t)j->n * CS_CHUNK_SIZE);
        for (uint32_t i = 0; i < j->n; i++) decoded[i] = true;
        return;
    }
    if (net_msg_decode(j->type, j->payload, j->len, &m) != 0) return;
    if (j->type == NET_MSG_CHUNKS) {
        if (net_msg_chunks(&m, data) == 0)
            for (uint32_t i = 0; i < j->n; i++) decoded[i] = true;
        return;
    }
    for (uint32_t i = 0; i < j->n; i++) {
        uint8_t base[CS_CHUNK_SIZE];
        const uint8_t *frame;
        size_t flen;
        net_msg_delta_frame(&m, i, &frame, &flen);
        decoded[i] = cs_get(j->p->x->d->st, &j->bases[i], 1, base, NULL) == 0 &&
                     net_delta_decode(frame, flen, base, data + (size_t)i * CS_CHUNK_SIZE) == 0;
    }
}

static void verify_work(uv_work_t *w)
{
    vjob *j = w->data;
    uint8_t *data = malloc((size_t)j->n * CS_CHUNK_SIZE);
    if (!data) {
        j->rc = -ENOMEM;
        return;
    }
    bool decoded[GET_BATCH];
    decode_batch(j, data, decoded);
    /* cs_put(expect) checks every chunk against its id and stores none of the batch when one
     * does not match: that one is dropped and the rest tried again, so one bad chunk costs only
     * itself (and the good ones are hashed once more per bad one in their batch). */
    uint32_t ngood = 0;
    uint32_t pos[GET_BATCH];
    cs_id good_ids[GET_BATCH];
    for (uint32_t i = 0; i < j->n; i++) {
        j->ok[i] = decoded[i] && !cs_id_is_zero(&j->ids[i]); /* the zero chunk is never asked */
        if (!j->ok[i]) continue;
        if (ngood != i)
            memmove(data + (size_t)ngood * CS_CHUNK_SIZE, data + (size_t)i * CS_CHUNK_SIZE,
                    CS_CHUNK_SIZE);
        pos[ngood] = i;
        good_ids[ngood++] = j->ids[i];
    }
    while (ngood) {
        size_t bad = 0;
        /* Not flushed per batch: the pull syncs once before it pins the manifest (finish_work). */
        int rc = cs_put_nosync(j->p->x->d->st, data, ngood, good_ids, NULL, &bad, NULL);
        if (rc != CS_ECORRUPT || bad >= ngood) {
            j->rc = rc;
            break;
        }
        j->ok[pos[bad]] = false;
        ngood--;
        memmove(data + bad * CS_CHUNK_SIZE, data + (bad + 1) * CS_CHUNK_SIZE,
                (ngood - bad) * CS_CHUNK_SIZE);
        memmove(good_ids + bad, good_ids + bad + 1, (ngood - bad) * sizeof *good_ids);
        memmove(pos + bad, pos + bad + 1, (ngood - bad) * sizeof *pos);
    }
    free(data);
}

/* Chunks the planner counted as received from s. */
static uint64_t src_received(node__pull *p, const xsource *s)
{
    if (!s->origin) return node_plan_peer_received(p->plan, s->idx);
    node_plan_stats_t st;
    node_plan_stats(p->plan, &st);
    return st.origin_received;
}

static void verify_done(uv_work_t *w, int status)
{
    vjob *j = w->data;
    node__pull *p = j->p;
    p->works--;
    p->verifying--;
    int rc = status ? status : j->rc;
    if (p->phase == P_FETCH) {
        if (rc) {
            pull_fail(p, "cannot store chunks: %s", node_strerror(rc));
        } else {
            xsource *s = &p->src[j->src];
            for (uint32_t i = 0; i < j->n; i++) {
                /* A late answer (the chunk expired and went elsewhere) is stored all the same
                 * but counted only where the planner took it. */
                uint64_t before = src_received(p, s);
                node_plan_received(p->plan, plan_src(s), j->idx[i], j->ok[i]);
                if (j->ok[i]) {
                    if (src_received(p, s) == before) continue;
                    s->chunks++;
                    s->bytes += CS_CHUNK_SIZE;
                    p->chunks_done++;
                    p->bytes_done += CS_CHUNK_SIZE;
                } else {
                    s->failures++;
                    s->bad_chunks++;
                    char hex[CS_ID_HEX + 1];
                    node_log(NODE_LOG_WARN, "chunk %s from %s:%d does not match its id: dropped",
                             cs_id_to_hex(&j->ids[i], hex), s->ip, s->port);
                }
            }
            issue(p);
            check_end(p);
        }
    }
    free(j->payload);
    free(j);
    pull_maybe_free(p);
}

static void on_chunks(xsource *s, const net_msg *m, const uint8_t *payload, size_t len)
{
    node__pull *p = s->p;
    xget **link, *g = find_get(s, m->req, &link);
    vjob *j = calloc(1, sizeof *j);
    if (!g || !j || match_ids(p, g, m, j->idx)) {
        free(j);
        if (s->xc && s->xc->c) net_conn_abort(s->xc->c, g ? -ENOMEM : NET_EFORMAT);
        return;
    }
    s->wire_bytes += len;
    s->data_bytes += len;
    j->p = p;
    j->src = s->idx;
    j->type = m->type;
    j->n = m->n;
    for (uint32_t i = 0; i < m->n; i++) {
        j->ids[i] = p->missing[j->idx[i]];
        j->bases[i] = p->bases[j->idx[i]];
        /* A delta is applied only to the base this node named in its GET_DELTA. */
        if (m->type == NET_MSG_DELTAS && cs_id_is_zero(&j->bases[i])) {
            free(j);
            if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT);
            return;
        }
    }
    g->left -= m->n;
    if (g->left == 0) {
        *link = g->next;
        free(g);
    }
    if (m->type == NET_MSG_ZCHUNKS) {
        /* Parts of one stream: decoded here, in the order they came (a fast decode: the
         * origin's link is the slow one), then verified and stored on the pool. */
        if (!s->zdec) s->zdec = net_zstream_decoder();
        j->len = (size_t)m->n * CS_CHUNK_SIZE;
        j->payload = s->zdec ? malloc(j->len) : NULL;
        if (j->payload && net_msg_zchunks(m, s->zdec, j->payload) != 0) {
            free(j->payload);
            free(j);
            if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT); /* stream broken */
            return;
        }
    } else {
        j->payload = malloc(len);
        if (j->payload) memcpy(j->payload, payload, len);
        j->len = len;
    }
    if (!j->payload) {
        free(j);
        pull_fail(p, "out of memory");
        return;
    }
    j->work.data = j;
    if (uv_queue_work(&p->x->d->loop, &j->work, verify_work, verify_done) != 0) {
        free(j->payload);
        free(j);
        pull_fail(p, "cannot queue work");
        return;
    }
    p->works++;
    p->verifying++;
}

static void on_dont_have(xsource *s, const net_msg *m)
{
    node__pull *p = s->p;
    xget **link, *g = find_get(s, m->req, &link);
    uint32_t idx[NET_GET_MAX];
    if (!g || match_ids(p, g, m, idx)) {
        if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT);
        return;
    }
    if (s->origin) {
        char hex[CS_ID_HEX + 1];
        cs_id c;
        memcpy(c.b, m->ids, CS_ID_BYTES);
        pull_fail(p, "the app does not hold chunk %s (and no peer does): is its VM whole there?",
                  cs_id_to_hex(&c, hex));
        return;
    }
    for (uint32_t i = 0; i < m->n; i++) node_plan_not_held(p->plan, (int)s->idx, idx[i]);
    s->not_held += m->n;
    g->left -= m->n;
    if (g->left == 0) {
        *link = g->next;
        free(g);
    }
    issue(p);
    check_end(p);
}

void node__pull_on_answer(xsource *s, uint8_t type, const uint8_t *payload, size_t len)
{
    net_msg m;
    if (net_msg_decode(type, payload, len, &m) != 0) {
        net_conn_abort(s->xc->c, NET_EFORMAT);
        return;
    }
    node__pull *p = s->p;
    if (p->phase == P_DONE) return;
    switch (type) {
    case NET_MSG_MANIFEST: on_manifest(s, &m); break;
    case NET_MSG_HAVE_BITMAP: on_have_bitmap(s, &m); break;
    case NET_MSG_ZCHUNKS:
        if (!s->origin) { /* only an app's answers come as a stream */
            if (s->xc && s->xc->c) net_conn_abort(s->xc->c, NET_EFORMAT);
            break;
        }
        /* fall through */
    case NET_MSG_CHUNKS:
    case NET_MSG_DELTAS:
        if (p->phase == P_FETCH) on_chunks(s, &m, payload, len);
        break;
    case NET_MSG_DONT_HAVE:
        if (p->phase == P_FETCH) on_dont_have(s, &m);
        break;
    }
}

/* ---- pulls: the end -------------------------------------------------------------------------- */

typedef struct fjob {
    uv_work_t work;
    node__pull *p;
    int rc;
} fjob;

static void finish_work(uv_work_t *w)
{
    fjob *j = w->data;
    node__pull *p = j->p;
    /* Every chunk on disk before the manifest is marked whole (pinned). */
    j->rc = cs_sync(p->x->d->st);
    if (j->rc == 0 && !p->pinned_before) j->rc = cs_manifest_pin(p->x->d->st, &p->id);
}

static void finish_done(uv_work_t *w, int status)
{
    fjob *j = w->data;
    node__pull *p = j->p;
    p->works--;
    int rc = status ? status : j->rc;
    free(j);
    if (p->phase != P_FINISH) {
        pull_maybe_free(p);
        return;
    }
    if (rc) {
        pull_fail(p, "cannot pin the manifest: %s", node_strerror(rc));
        return;
    }
    char hex[CS_ID_HEX + 1];
    node_log(NODE_LOG_INFO, "pulled %s: %llu chunks (%llu bytes) in %llu ms",
             cs_id_to_hex(&p->id, hex), (unsigned long long)p->chunks_done,
             (unsigned long long)p->bytes_done,
             (unsigned long long)(uv_now(&p->x->d->loop) - p->started_ms));
    pull_end(p);
}

static void pull_finish(node__pull *p)
{
    set_phase(p, P_FINISH);
    fjob *j = calloc(1, sizeof *j);
    if (!j) {
        pull_fail(p, "out of memory");
        return;
    }
    j->p = p;
    j->work.data = j;
    if (uv_queue_work(&p->x->d->loop, &j->work, finish_work, finish_done) != 0) {
        free(j);
        pull_fail(p, "cannot queue work");
        return;
    }
    p->works++;
}

/* ---- pulls: sources come and go -------------------------------------------------------------- */

static void after_connect(node__pull *p)
{
    if (p->phase != P_CONNECT) return;
    unsigned up = 0, pending = 0;
    for (unsigned i = 0; i < p->nsrc; i++) {
        if (p->src[i].up && !p->src[i].gone)
            up++;
        else if (!p->src[i].gone)
            pending++;
    }
    uint64_t waited = uv_now(&p->x->d->loop) - p->started_ms;
    if (pending && waited < CONNECT_WAIT_MS) return;
    if (up == 0) {
        pull_fail(p, "no peer could be reached (%u tried)", p->nsrc);
        return;
    }
    /* A manifest held here already (a pull that was interrupted) is not fetched again. */
    set_phase(p, P_MANIFEST);
    p->want = p->id;
    p->msrc = 0;
    manifest_check(p);
}

typedef struct hjob {
    uv_work_t work;
    node__pull *p;
    int rc;
    bool ingest;
} hjob;

/* Takes the ingest lock (it waits for a running gc: never on the loop), then looks for the
 * manifest here. */
static void held_work(uv_work_t *w)
{
    hjob *j = w->data;
    if ((j->rc = cs_ingest_begin(j->p->x->d->st))) return;
    j->ingest = true;
    uint8_t *buf = NULL;
    size_t len = 0;
    j->rc = cs_manifest_get_raw(j->p->x->d->st, &j->p->id, &buf, &len);
    free(buf);
}

static void held_done(uv_work_t *w, int status)
{
    hjob *j = w->data;
    node__pull *p = j->p;
    p->works--;
    int rc = status ? status : j->rc;
    if (j->ingest) p->ingest = true;
    free(j);
    if (p->phase != P_MANIFEST) {
        release_ingest(p); /* the pull ended meanwhile */
        pull_maybe_free(p);
        return;
    }
    if (rc == 0)
        pull_plan(p);
    else if (rc == CS_ENOTFOUND)
        ask_manifest(p);
    else
        pull_fail(p, "store: %s", node_strerror(rc));
}

static void manifest_check(node__pull *p)
{
    hjob *j = calloc(1, sizeof *j);
    if (!j) {
        pull_fail(p, "out of memory");
        return;
    }
    j->p = p;
    j->work.data = j;
    if (uv_queue_work(&p->x->d->loop, &j->work, held_work, held_done) != 0) {
        free(j);
        pull_fail(p, "cannot queue work");
        return;
    }
    p->works++;
}

void node__pull_connected(xsource *s)
{
    s->up = true;
    char k[13];
    node_log(NODE_LOG_DEBUG, "pull: connected to %s at %s:%d", node__short_hex(s->pk, k), s->ip, s->port);
    after_connect(s->p);
}

void node__pull_source_gone(xsource *s, int status)
{
    node__pull *p = s->p;
    s->xc = NULL; /* its connection closed */
    bool was_up = s->up;
    s->gone = true;
    s->status = status;
    for (xget *g = s->gets, *nx; g; g = nx) nx = g->next, free(g);
    s->gets = NULL;
    if (p->phase == P_DONE) {
        pull_maybe_free(p);
        return;
    }
    char k[13];
    if (s->origin) {
        /* The app's chunks can come from nowhere else: what was stored stays for a retry. */
        pull_fail(p, "the app went away before sending what no peer holds (%s)",
                  net_strerror(status));
        return;
    }
    node_log(was_up ? NODE_LOG_WARN : NODE_LOG_INFO, "pull: peer %s at %s:%d %s: %s",
             node__short_hex(s->pk, k), s->ip, s->port, was_up ? "gone" : "not reachable",
             net_strerror(status));
    switch (p->phase) {
    case P_CONNECT: after_connect(p); break;
    case P_MANIFEST:
        if (p->msrc == s->idx && !p->works) {
            free(p->mbuf);
            p->mbuf = NULL;
            p->msrc++;
            ask_manifest(p);
        }
        break;
    case P_HAVE: maybe_start_fetch(p); break;
    case P_FETCH:
        if (s->in_plan) node_plan_peer_gone(p->plan, s->idx);
        issue(p);
        check_end(p);
        break;
    default: break;
    }
}

static void on_tick(uv_timer_t *h)
{
    node__pull *p = h->data;
    uint64_t now = uv_now(&p->x->d->loop);
    if (p->phase == P_CONNECT) after_connect(p);
    if (p->phase == P_HAVE && now - p->phase_ms > HAVE_WAIT_MS) {
        /* Sources that did not answer in time take no part. */
        for (unsigned i = 0; i < p->nsrc; i++)
            if (!p->src[i].have_done && p->src[i].xc && p->src[i].xc->c)
                net_conn_abort(p->src[i].xc->c, NET_ETIMEDOUT);
        if (p->phase == P_HAVE) start_fetch(p);
    }
    if (p->phase == P_FETCH) {
        if (now - p->last_expire_ms >= 1000) {
            p->last_expire_ms = now;
            node_plan_expire(p->plan, now);
        }
        issue(p);
        if (now - p->last_report_ms >= REPORT_MS) check_end(p);
    }
    if (p->phase != P_DONE && now - p->last_report_ms >= REPORT_MS) report(p, false);
}

/* ---- pulls: start ---------------------------------------------------------------------------- */

static bool filter_match(const char *filter, const uint8_t pk[NET_KEY_BYTES], const char *ip,
                         int port)
{
    if (!filter[0]) return true;
    uint8_t key[NODE_KEY_BYTES];
    if (node_key_decode(filter, strlen(filter), NODE_KEY_NODE_PUBLIC, key, NULL) == 0 ||
        (strlen(filter) == 64 &&
         sodium_hex2bin(key, sizeof key, filter, 64, NULL, NULL, NULL) == 0))
        return memcmp(key, pk, NET_KEY_BYTES) == 0;
    char addr[100];
    snprintf(addr, sizeof addr, "%s:%d", ip, port);
    return !strcmp(filter, addr) || !strcmp(filter, ip);
}

static int add_source(node__pull *p, const uint8_t pk[NET_KEY_BYTES], const char *ip, int port)
{
    if (!memcmp(pk, p->x->d->keys.node_pk, NET_KEY_BYTES)) return 0; /* this node */
    for (unsigned i = 0; i < p->nsrc; i++)
        if (!memcmp(p->src[i].pk, pk, NET_KEY_BYTES)) return 0;
    if (!filter_match(p->peer_filter, pk, ip, port)) return 0;
    xsource *ns = realloc(p->src, (p->nsrc + 1) * sizeof *ns);
    if (!ns) return -ENOMEM;
    p->src = ns;
    xsource *s = &p->src[p->nsrc];
    memset(s, 0, sizeof *s);
    s->p = p;
    s->idx = p->nsrc++;
    memcpy(s->pk, pk, NET_KEY_BYTES);
    snprintf(s->ip, sizeof s->ip, "%s", ip);
    s->port = port;
    return 0;
}

static int pull_start(node_daemon *d, const cs_id *id, const char *peer,
                      const net_pull_source *extra, unsigned nextra, xconn *origin,
                      node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG]);

int node__pull_start(node_daemon *d, const cs_id *id, const char *peer, node__pull_report_fn fn,
                     void *arg, char err[NODE_ERRMSG])
{
    return pull_start(d, id, peer, NULL, 0, NULL, fn, arg, err);
}

int node__pull_start_from(node_daemon *d, const cs_id *id, const net_pull_source *src,
                          unsigned n, node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG])
{
    return pull_start(d, id, NULL, src, n, NULL, fn, arg, err);
}

int node__pull_start_origin(node_daemon *d, const cs_id *id, void *origin,
                            node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG])
{
    xconn *xc = origin;
    if (!xc->c) {
        node__errf(err, "the app went away");
        return NET_ECLOSED;
    }
    return pull_start(d, id, NULL, NULL, 0, xc, fn, arg, err);
}

static int pull_start(node_daemon *d, const cs_id *id, const char *peer,
                      const net_pull_source *extra, unsigned nextra, xconn *origin,
                      node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG])
{
    node__exchange *x = d->xchg;
    if (!x || x->stopping) {
        node__errf(err, "this node has no fleet key: it has no peers to pull from (join a fleet "
                        "with `cloudlet init --fleet-key FILE`)");
        return NET_EROLE;
    }
    char hex[CS_ID_HEX + 1];
    for (node__pull *q = x->pulls; q; q = q->next)
        if (cs_id_equal(&q->id, id) && q->phase != P_DONE) {
            node__errf(err, "manifest %s is being pulled already", cs_id_to_hex(id, hex));
            return CS_EBUSY;
        }
    node__pull *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    p->x = x;
    p->id = *id;
    snprintf(p->peer_filter, sizeof p->peer_filter, "%s", peer ? peer : "");
    p->started_ms = uv_now(&d->loop);
    int rc = 0;
    /* Candidates: the peer table (where beacons came from, at the port they carry), then static
     * peers given with their key that were not heard (their host must be a numeric address). */
    const node__peer_table *t = node__discovery_table(d);
    for (unsigned i = 0; t && i < t->n && !rc; i++)
        rc = add_source(p, t->p[i].pk, t->p[i].ip, t->p[i].port);
    for (unsigned i = 0; i < d->cfg.npeers && !rc; i++)
        if (d->cfg.peers[i].has_key)
            rc = add_source(p, d->cfg.peers[i].key, d->cfg.peers[i].host, d->cfg.peers[i].port);
    for (unsigned i = 0; i < nextra && !rc; i++) /* named by a PULL_ASK */
        rc = add_source(p, extra[i].key, extra[i].host, extra[i].port);
    if (!rc && origin) { /* the app, last: asked only for what no peer holds */
        const uint8_t *pk = net_conn_peer_key(origin->c);
        unsigned before = p->nsrc;
        rc = add_source(p, pk, "origin", 0);
        if (!rc && p->nsrc == before) rc = -EINVAL; /* an app with a node's key */
        if (!rc) {
            xsource *s = &p->src[p->nsrc - 1];
            s->origin = true;
            s->up = true;
            s->xc = origin;
            origin->src = s;
        }
    }
    if (rc) {
        if (origin) origin->src = NULL;
        free(p->src);
        free(p);
        return rc;
    }
    if (p->nsrc == 0) {
        if (p->peer_filter[0])
            node__errf(err, "no known peer matches %s (see `cloudlet peers`)", p->peer_filter);
        else
            node__errf(err, "no peers known to pull from (see `cloudlet peers`; a static peer "
                            "needs its node key in cloudlet.conf when beacons cannot reach it)");
        free(p->src);
        free(p);
        return CS_ENOTFOUND;
    }
    p->report = fn;
    p->arg = arg;
    p->next = x->pulls;
    x->pulls = p;
    uv_timer_init(&d->loop, &p->timer);
    p->timer.data = p;
    p->timer_open = true;
    uv_timer_start(&p->timer, on_tick, TICK_MS, TICK_MS);
    p->phase = P_CONNECT;
    for (unsigned i = 0; i < p->nsrc; i++) {
        xsource *s = &p->src[i];
        if (s->origin) continue; /* connected already */
        xconn *xc = node__xconn_new(x);
        net_conn *c = NULL;
        int crc =
            xc ? net_connect(x->ep, s->ip, s->port, s->pk, NET_ROLE_PEER, NULL, &node__xconn_cbs, xc, &c)
               : -ENOMEM;
        if (crc) {
            if (xc) node__xconn_maybe_free(xc);
            s->gone = true;
            s->status = crc;
            continue;
        }
        xc->c = c;
        xc->src = s;
        s->xc = xc;
    }
    node_log(NODE_LOG_INFO, "pull %s from %u peer%s", cs_id_to_hex(id, hex), p->nsrc,
             p->nsrc == 1 ? "" : "s");
    report(p, false);
    after_connect(p);
    return 0;
}

int node__pull_progress(node_daemon *d, const cs_id *id, void *arg, node__pull_progress_t *out)
{
    memset(out, 0, sizeof *out);
    node__pull *p = NULL;
    for (node__pull *q = d->xchg ? d->xchg->pulls : NULL; q && !p; q = q->next)
        if ((!id || cs_id_equal(&q->id, id)) && q->arg == arg) p = q;
    for (node__pull *q = d->xchg ? d->xchg->pulls : NULL; id && q && !p; q = q->next)
        if (cs_id_equal(&q->id, id) && q->phase != P_DONE) p = q;
    if (!p) return CS_ENOTFOUND;
    out->planned = p->phase >= P_HAVE && p->missing; /* P_DONE after a plan too */
    out->done = p->phase == P_DONE;
    out->failed = p->failed;
    out->unique_chunks = p->unique_chunks;
    out->held_before = p->held_before;
    out->missing = p->n;
    out->chunks_done = p->chunks_done;
    out->bytes_done = p->bytes_done;
    for (unsigned i = 0; i < p->nsrc && out->nsrc < NODE__PULL_SOURCES_MAX; i++) {
        const xsource *s = &p->src[i];
        if (!s->up && !s->chunks) continue; /* never reached: nothing to show */
        memcpy(out->src[out->nsrc].pk, s->pk, NET_KEY_BYTES);
        out->src[out->nsrc].origin = s->origin;
        out->src[out->nsrc].bytes = s->bytes;
        out->src[out->nsrc++].data_bytes = s->data_bytes;
    }
    snprintf(out->err, sizeof out->err, "%s", p->err);
    return 0;
}

/* The plan indexes of ids (those the pull fetches) become urgent. */
static int make_urgent(node__pull *p, const cs_id *ids, size_t n)
{
    if (!p->by_id && !(p->by_id = positions_by_id(p->missing, p->n))) return -ENOMEM;
    uint32_t idx[256];
    size_t k = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        size_t lo = 0, hi = p->n; /* the first index whose id is not below ids[i] */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (memcmp(p->missing[p->by_id[mid]].b, ids[i].b, CS_ID_BYTES) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < p->n && cs_id_equal(&p->missing[p->by_id[lo]], &ids[i])) idx[k++] = p->by_id[lo];
        if (k == sizeof idx / sizeof idx[0] || (i + 1 == n && k)) {
            rc = node_plan_urgent(p->plan, idx, k);
            k = 0;
        }
    }
    return rc;
}

int node__pull_urgent(node_daemon *d, const cs_id *id, const cs_id *ids, size_t n)
{
    node__pull *p = NULL;
    for (node__pull *q = d->xchg ? d->xchg->pulls : NULL; q && !p; q = q->next)
        if (cs_id_equal(&q->id, id) && q->phase != P_DONE && !q->failed) p = q;
    if (!p) return CS_ENOTFOUND;
    if (p->phase != P_FETCH || !p->plan) { /* kept for start_fetch */
        if (!p->early_urgent && !(p->early_urgent = malloc(URGENT_EARLY * sizeof *ids)))
            return -ENOMEM;
        for (size_t i = 0; i < n && p->nearly_urgent < URGENT_EARLY; i++)
            p->early_urgent[p->nearly_urgent++] = ids[i];
        return 0;
    }
    int rc = make_urgent(p, ids, n);
    if (rc == 0) pull_pump(p);
    return rc;
}

void node__pull_drained(xsource *s)
{
    pull_pump(s->p);
}

void node__pull_stop_all(node__exchange *x, const char *why)
{
    for (node__pull *p = x->pulls; p; p = p->next) pull_stop(p, why);
}
