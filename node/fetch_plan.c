/*
 * fetch_plan.c — which source each missing chunk comes from (DESIGN.md §5, "Fetch planner").
 *
 * Design notes:
 * - Pure bookkeeping: no sockets, no clock of its own (callers pass `now`), so it is tested on
 *   a virtual clock with a simulated lossy network, and the daemon drives it from its loop.
 * - Each neighbour has a queue of the chunks it holds, rarest first (chunks fewer neighbours
 *   hold come first), so a chunk only one neighbour has is fetched from it early while shared
 *   chunks stay free for whoever has capacity. A neighbour is offered work whenever it has room
 *   in flight, so faster neighbours drain their requests sooner, ask again, and carry more of
 *   the bytes: striping by bytes in flight.
 * - The origin gets exactly the chunks no live neighbour holds, or whose every holder failed
 *   them (gone, timed out, or sent bytes that did not match the id).
 * - Every chunk is in exactly one state: pending, in flight at one source, or done.
 * - Urgent chunks (a running VM reads them: early start) jump every queue: each source is
 *   offered the urgent chunks it can give before its own queue, and a chunk stays urgent until
 *   it is done (an attempt that fails puts it first again). The list is short (what reads wait
 *   for) and scanned whole.
 */
#define _GNU_SOURCE
#include "node_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { ST_PENDING, ST_INFLIGHT, ST_DONE };

struct chunk {
    uint8_t state;
    bool urgent;      /* on the urgent list until done */
    uint16_t holders; /* live neighbours that claim it and have not failed it */
    int32_t source;   /* while in flight: neighbour index, or NODE_PLAN_ORIGIN */
    uint64_t since;
};

struct peer {
    bool live;
    uint32_t *queue; /* chunks it holds, rarest first */
    size_t nq, head;
    uint8_t *has;    /* bitmap: holds and has not failed */
    uint64_t inflight, received, failures;
};

struct node_plan {
    size_t n;
    unsigned npeers;
    struct chunk *c;
    struct peer *p;
    uint32_t *origin_q; /* chunks only the origin can give, in order of need */
    size_t onq, ohead, ocap;
    uint32_t *urgent;   /* pending chunks wanted now, oldest first */
    size_t nurgent, curgent;
    uint64_t origin_inflight, origin_received;
    uint64_t done, timeout;
};

static bool bit(const uint8_t *b, size_t i)
{
    return b[i / 8] & (1u << (i % 8));
}

node_plan *node_plan_new(size_t n, unsigned npeers, uint64_t timeout)
{
    node_plan *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n;
    p->npeers = npeers;
    p->timeout = timeout;
    p->c = calloc(n ? n : 1, sizeof *p->c);
    p->p = calloc(npeers ? npeers : 1, sizeof *p->p);
    if (!p->c || !p->p) {
        node_plan_free(p);
        return NULL;
    }
    for (unsigned i = 0; i < npeers; i++) {
        p->p[i].has = calloc(n / 8 + 1, 1);
        if (!p->p[i].has) {
            node_plan_free(p);
            return NULL;
        }
    }
    return p;
}

void node_plan_free(node_plan *p)
{
    if (!p) return;
    if (p->p)
        for (unsigned i = 0; i < p->npeers; i++) free(p->p[i].queue), free(p->p[i].has);
    free(p->p);
    free(p->c);
    free(p->origin_q);
    free(p->urgent);
    free(p);
}

int node_plan_urgent(node_plan *p, const uint32_t *idx, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t c = idx[i];
        if (c >= p->n || p->c[c].state == ST_DONE || p->c[c].urgent) continue;
        if (p->nurgent == p->curgent) {
            size_t cap = p->curgent ? p->curgent * 2 : 64;
            uint32_t *u = realloc(p->urgent, cap * sizeof *u);
            if (!u) return -ENOMEM;
            p->urgent = u, p->curgent = cap;
        }
        p->urgent[p->nurgent++] = c;
        p->c[c].urgent = true;
    }
    return 0;
}

/* Whether source may give chunk c: a neighbour that holds it, or the origin when no live
 * neighbour does. */
static bool can_give(const node_plan *p, int source, uint32_t c)
{
    if (source == NODE_PLAN_ORIGIN) return p->c[c].holders == 0;
    return p->p[source].live && bit(p->p[source].has, c);
}

/* Chunk c goes in flight at source. */
static void take(node_plan *p, int source, uint32_t c, uint64_t now)
{
    p->c[c].state = ST_INFLIGHT, p->c[c].source = source, p->c[c].since = now;
    if (source == NODE_PLAN_ORIGIN)
        p->origin_inflight++;
    else
        p->p[source].inflight++;
}

/* Moves the pending urgent chunks source can give into out (at most max); the list keeps
 * every urgent chunk not done yet. */
static size_t take_urgent(node_plan *p, int source, size_t max, uint32_t *out, uint64_t now)
{
    size_t k = 0, keep = 0;
    for (size_t i = 0; i < p->nurgent; i++) {
        uint32_t c = p->urgent[i];
        if (p->c[c].state == ST_DONE) {
            p->c[c].urgent = false;
            continue;
        }
        p->urgent[keep++] = c;
        if (p->c[c].state != ST_PENDING || k == max || !can_give(p, source, c)) continue;
        take(p, source, c, now);
        out[k++] = c;
    }
    p->nurgent = keep;
    return k;
}

static int origin_push(node_plan *p, uint32_t idx)
{
    if (p->onq == p->ocap) {
        size_t cap = p->ocap ? p->ocap * 2 : 1024;
        uint32_t *q = realloc(p->origin_q, cap * sizeof *q);
        if (!q) return -ENOMEM;
        p->origin_q = q, p->ocap = cap;
    }
    p->origin_q[p->onq++] = idx;
    return 0;
}

static int by_rarity(const void *a, const void *b, void *arg)
{
    const struct chunk *ch = arg;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int hx = ch[x].holders, hy = ch[y].holders;
    if (hx != hy) return hx < hy ? -1 : 1;
    return (x > y) - (x < y);
}

int node_plan_start(node_plan *p, const uint8_t *const *holdings)
{
    for (unsigned i = 0; i < p->npeers; i++) {
        struct peer *pe = &p->p[i];
        pe->live = holdings[i] != NULL;
        if (!pe->live) continue;
        size_t k = 0;
        for (size_t c = 0; c < p->n; c++)
            if (bit(holdings[i], c)) k++;
        pe->queue = malloc((k ? k : 1) * sizeof *pe->queue);
        if (!pe->queue) return -ENOMEM;
        for (size_t c = 0; c < p->n; c++)
            if (bit(holdings[i], c)) {
                pe->queue[pe->nq++] = (uint32_t)c;
                pe->has[c / 8] |= (uint8_t)(1u << (c % 8));
                if (p->c[c].holders < UINT16_MAX) p->c[c].holders++;
            }
    }
    for (unsigned i = 0; i < p->npeers; i++)
        if (p->p[i].nq) qsort_r(p->p[i].queue, p->p[i].nq, sizeof(uint32_t), by_rarity, p->c);
    for (size_t c = 0; c < p->n; c++)
        if (p->c[c].holders == 0 && origin_push(p, (uint32_t)c)) return -ENOMEM;
    return 0;
}

size_t node_plan_next(node_plan *p, int source, size_t max, uint32_t *out, uint64_t now)
{
    if (source != NODE_PLAN_ORIGIN && !p->p[source].live) return 0;
    size_t k = p->nurgent ? take_urgent(p, source, max, out, now) : 0;
    if (source == NODE_PLAN_ORIGIN) {
        while (k < max && p->ohead < p->onq) {
            uint32_t c = p->origin_q[p->ohead++];
            if (p->c[c].state != ST_PENDING) continue;
            take(p, NODE_PLAN_ORIGIN, c, now);
            out[k++] = c;
        }
        return k;
    }
    struct peer *pe = &p->p[source];
    while (k < max && pe->head < pe->nq) {
        uint32_t c = pe->queue[pe->head++];
        if (p->c[c].state != ST_PENDING || !bit(pe->has, c)) continue;
        take(p, source, c, now);
        out[k++] = c;
    }
    return k;
}

/* A chunk comes back to the pool: offered again to its remaining holders (their queues are
 * rewound to find it), or to the origin when none is left. */
static void requeue(node_plan *p, uint32_t c)
{
    p->c[c].state = ST_PENDING;
    bool any = false;
    for (unsigned i = 0; i < p->npeers; i++) {
        struct peer *pe = &p->p[i];
        if (!pe->live || !bit(pe->has, c)) continue;
        any = true;
        /* Put it back at the head: it is owed, and it was rare enough to be taken early. */
        if (pe->head > 0) pe->queue[--pe->head] = c;
    }
    if (!any) origin_push(p, c);
}

static void drop_holder(node_plan *p, unsigned peer, uint32_t c)
{
    struct peer *pe = &p->p[peer];
    if (!bit(pe->has, c)) return;
    pe->has[c / 8] &= (uint8_t) ~(1u << (c % 8));
    if (p->c[c].holders) p->c[c].holders--;
}

static void settle_inflight(node_plan *p, uint32_t c)
{
    int s = p->c[c].source;
    if (s == NODE_PLAN_ORIGIN) p->origin_inflight--;
    else p->p[s].inflight--;
}

void node_plan_received(node_plan *p, int source, uint32_t c, bool verified)
{
    if (c >= p->n || p->c[c].state != ST_INFLIGHT || p->c[c].source != source) return; /* late */
    settle_inflight(p, c);
    if (verified) {
        p->c[c].state = ST_DONE;
        p->done++;
        if (source == NODE_PLAN_ORIGIN) p->origin_received++;
        else p->p[source].received++;
        return;
    }
    if (source != NODE_PLAN_ORIGIN) {
        p->p[source].failures++;
        drop_holder(p, (unsigned)source, c); /* never ask it for this chunk again */
    }
    requeue(p, c);
}

void node_plan_not_held(node_plan *p, int source, uint32_t c)
{
    if (c >= p->n || source == NODE_PLAN_ORIGIN) return;
    if (p->c[c].state == ST_INFLIGHT && p->c[c].source == source) {
        settle_inflight(p, c);
        drop_holder(p, (unsigned)source, c);
        requeue(p, c);
    } else {
        drop_holder(p, (unsigned)source, c);
    }
}

void node_plan_peer_gone(node_plan *p, unsigned peer)
{
    struct peer *pe = &p->p[peer];
    if (!pe->live) return;
    pe->live = false;
    /* By its bitmap, not its queue: requeue may have written over queue entries. */
    for (size_t c = 0; c < p->n; c++) drop_holder(p, peer, (uint32_t)c);
    for (size_t c = 0; c < p->n; c++) {
        if (p->c[c].state == ST_INFLIGHT && p->c[c].source == (int)peer) {
            settle_inflight(p, (uint32_t)c);
            requeue(p, (uint32_t)c);
        } else if (p->c[c].state == ST_PENDING && p->c[c].holders == 0) {
            /* Its own queue entries are gone with it; chunks nobody else holds go to the
             * origin (a chunk already queued there is skipped when it comes up again). */
            origin_push(p, (uint32_t)c);
        }
    }
}

size_t node_plan_expire(node_plan *p, uint64_t now)
{
    size_t k = 0;
    for (size_t c = 0; c < p->n; c++) {
        struct chunk *ch = &p->c[c];
        if (ch->state != ST_INFLIGHT || now - ch->since < p->timeout) continue;
        int s = ch->source;
        settle_inflight(p, (uint32_t)c);
        if (s != NODE_PLAN_ORIGIN) {
            p->p[s].failures++;
            drop_holder(p, (unsigned)s, (uint32_t)c);
        }
        requeue(p, (uint32_t)c);
        k++;
    }
    return k;
}

void node_plan_stats(const node_plan *p, node_plan_stats_t *s)
{
    memset(s, 0, sizeof *s);
    s->total = p->n;
    s->done = p->done;
    s->origin_received = p->origin_received;
    s->origin_inflight = p->origin_inflight;
    for (size_t c = 0; c < p->n; c++)
        if (p->c[c].state == ST_PENDING && p->c[c].holders == 0) s->origin_pending++;
}

uint64_t node_plan_peer_received(const node_plan *p, unsigned peer)
{
    return p->p[peer].received;
}

uint64_t node_plan_peer_inflight(const node_plan *p, unsigned peer)
{
    return p->p[peer].inflight;
}

uint64_t node_plan_peer_failures(const node_plan *p, unsigned peer)
{
    return p->p[peer].failures;
}

bool node_plan_done(const node_plan *p)
{
    return p->done == p->n;
}
