/*
 * The fetch planner on a virtual clock with a simulated network: neighbours of different
 * speeds, lost answers, corrupt chunks, chunks a neighbour claims but lacks, a neighbour that
 * dies, and an origin for what no neighbour holds.
 */
#include "node_internal.h"
#include "testlib.h"

#define MAXP 4
#define NCHUNK 3000
#define CAP 32      /* chunks in flight per source */
#define TIMEOUT 50  /* ticks */

struct source {
    double rate;     /* chunks served per tick */
    double loss;     /* share of answers lost */
    double corrupt;  /* share of chunks that fail verification */
    double lacks;    /* share of claimed chunks it answers "don't have" for */
    long die_at;     /* tick it vanishes, or -1 */
    bool dead;
    double credit;
    uint32_t q[NCHUNK];
    size_t qh, qt;   /* FIFO of requested chunks */
};

struct sim {
    unsigned npeers;
    struct source peer[MAXP], origin;
    uint8_t *hold[MAXP];
    uint64_t received_per_chunk[NCHUNK];
    uint64_t rng;
};

static double rnd(struct sim *s)
{
    s->rng ^= s->rng << 13, s->rng ^= s->rng >> 7, s->rng ^= s->rng << 17;
    return (double)(s->rng >> 11) / (double)(1ull << 53);
}

static void sim_init(struct sim *s, unsigned npeers)
{
    memset(s, 0, sizeof *s);
    s->npeers = npeers;
    s->rng = 88172645463325252ull;
    for (unsigned i = 0; i < npeers; i++) {
        s->peer[i] = (struct source){.rate = 2, .die_at = -1};
        s->hold[i] = calloc(NCHUNK / 8 + 1, 1);
    }
    s->origin = (struct source){.rate = 0.5, .die_at = -1};
}

static void holds(struct sim *s, unsigned peer, size_t from, size_t to)
{
    for (size_t c = from; c < to; c++) s->hold[peer][c / 8] |= (uint8_t)(1u << (c % 8));
}

/* One source's tick: it serves what its rate allows, in request order. */
static void serve(struct sim *s, node_plan *p, struct source *src, int id)
{
    src->credit += src->rate;
    while (src->credit >= 1 && src->qh < src->qt) {
        src->credit -= 1;
        uint32_t c = src->q[src->qh++ % NCHUNK];
        if (rnd(s) < src->loss) continue; /* the answer never arrives */
        if (id != NODE_PLAN_ORIGIN && rnd(s) < src->lacks) {
            node_plan_not_held(p, id, c);
            continue;
        }
        bool ok = rnd(s) >= src->corrupt;
        if (ok) s->received_per_chunk[c]++;
        node_plan_received(p, id, c, ok);
    }
    if (src->qh == src->qt) src->credit = 0;
}

static void request(struct source *src, node_plan *p, int id, uint64_t inflight, uint64_t now)
{
    uint32_t idx[CAP];
    if (inflight >= CAP) return;
    size_t k = node_plan_next(p, id, CAP - inflight, idx, now);
    for (size_t i = 0; i < k; i++) src->q[src->qt++ % NCHUNK] = idx[i];
}

/* Runs until done or a bound; returns the ticks taken. */
static long run(struct sim *s, node_plan *p)
{
    const uint8_t *h[MAXP];
    for (unsigned i = 0; i < s->npeers; i++) h[i] = s->hold[i];
    CHECK_OK(node_plan_start(p, h));
    long t;
    for (t = 0; t < 200000 && !node_plan_done(p); t++) {
        for (unsigned i = 0; i < s->npeers; i++) {
            struct source *src = &s->peer[i];
            if (src->dead) continue;
            if (src->die_at == t) {
                src->dead = true;
                node_plan_peer_gone(p, i);
                continue;
            }
            request(src, p, (int)i, node_plan_peer_inflight(p, i), (uint64_t)t);
            serve(s, p, src, (int)i);
        }
        node_plan_stats_t st;
        node_plan_stats(p, &st);
        request(&s->origin, p, NODE_PLAN_ORIGIN, st.origin_inflight, (uint64_t)t);
        serve(s, p, &s->origin, NODE_PLAN_ORIGIN);
        node_plan_expire(p, (uint64_t)t);
    }
    CHECK(node_plan_done(p));
    for (size_t c = 0; c < NCHUNK; c++) CHECK(s->received_per_chunk[c] >= 1);
    return t;
}

static void sim_free(struct sim *s)
{
    for (unsigned i = 0; i < s->npeers; i++) free(s->hold[i]);
}

static void neighbours_that_hold_everything_leave_nothing_for_the_origin(void)
{
    struct sim s;
    sim_init(&s, 3);
    for (unsigned i = 0; i < 3; i++) holds(&s, i, 0, NCHUNK);
    node_plan *p = node_plan_new(NCHUNK, 3, TIMEOUT);
    run(&s, p);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_received, 0);
    uint64_t sum = 0;
    for (unsigned i = 0; i < 3; i++) sum += node_plan_peer_received(p, i);
    CHECK_EQ(sum, NCHUNK); /* no chunk fetched twice */
    for (size_t c = 0; c < NCHUNK; c++) CHECK_EQ(s.received_per_chunk[c], 1);
    node_plan_free(p);
    sim_free(&s);
}

static void origin_gives_exactly_what_no_neighbour_holds(void)
{
    struct sim s;
    sim_init(&s, 2);
    holds(&s, 0, 0, 1000);
    holds(&s, 1, 500, 2000); /* 2000..2999: nobody */
    node_plan *p = node_plan_new(NCHUNK, 2, TIMEOUT);
    run(&s, p);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_received, 1000);
    CHECK_EQ(node_plan_peer_received(p, 0) + node_plan_peer_received(p, 1), 2000);
    node_plan_free(p);
    sim_free(&s);
}

static void faster_neighbour_carries_more_of_the_bytes(void)
{
    struct sim s;
    sim_init(&s, 2);
    holds(&s, 0, 0, NCHUNK);
    holds(&s, 1, 0, NCHUNK);
    s.peer[0].rate = 3, s.peer[1].rate = 1;
    node_plan *p = node_plan_new(NCHUNK, 2, TIMEOUT);
    run(&s, p);
    uint64_t fast = node_plan_peer_received(p, 0), slow = node_plan_peer_received(p, 1);
    CHECK(fast > 2 * slow); /* 3:1 capacity, striped by what each has in flight */
    CHECK(slow > NCHUNK / 8);
    node_plan_free(p);
    sim_free(&s);
}

static void three_neighbours_beat_one(void)
{
    long ticks[2];
    for (int k = 0; k < 2; k++) {
        struct sim s;
        unsigned n = k == 0 ? 1 : 3;
        sim_init(&s, n);
        for (unsigned i = 0; i < n; i++) holds(&s, i, 0, NCHUNK);
        node_plan *p = node_plan_new(NCHUNK, n, TIMEOUT);
        ticks[k] = run(&s, p);
        node_plan_free(p);
        sim_free(&s);
    }
    CHECK(ticks[0] > 2.5 * (double)ticks[1]);
}

static void lost_answers_are_fetched_again_after_the_timeout(void)
{
    struct sim s;
    sim_init(&s, 2);
    holds(&s, 0, 0, NCHUNK);
    holds(&s, 1, 0, NCHUNK);
    s.peer[0].loss = 0.05;
    node_plan *p = node_plan_new(NCHUNK, 2, TIMEOUT);
    run(&s, p);
    CHECK(node_plan_peer_failures(p, 0) > 0);
    CHECK_EQ(node_plan_peer_failures(p, 1), 0);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_received, 0);
    node_plan_free(p);
    sim_free(&s);
}

static void corrupt_chunks_are_fetched_from_another_holder(void)
{
    struct sim s;
    sim_init(&s, 2);
    holds(&s, 0, 0, NCHUNK);
    holds(&s, 1, 0, NCHUNK);
    s.peer[0].corrupt = 0.1;
    node_plan *p = node_plan_new(NCHUNK, 2, TIMEOUT);
    run(&s, p);
    uint64_t bad = node_plan_peer_failures(p, 0);
    CHECK(bad > 0);
    /* Every chunk arrived verified exactly once, the bad ones from the other neighbour. */
    for (size_t c = 0; c < NCHUNK; c++) CHECK_EQ(s.received_per_chunk[c], 1);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_received, 0);
    node_plan_free(p);
    sim_free(&s);
}

static void chunks_a_neighbour_lacks_after_all_go_elsewhere(void)
{
    struct sim s;
    sim_init(&s, 2);
    holds(&s, 0, 0, NCHUNK);
    holds(&s, 1, 0, 1500);
    s.peer[0].lacks = 0.2; /* claims them all, has 80 % */
    node_plan *p = node_plan_new(NCHUNK, 2, TIMEOUT);
    run(&s, p);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK(st.origin_received > 0); /* of 1500..2999, what peer 0 lacked */
    CHECK(st.origin_received < 600);
    node_plan_free(p);
    sim_free(&s);
}

static void a_neighbour_gone_midway_leaves_its_share_to_the_others(void)
{
    struct sim s;
    sim_init(&s, 3);
    for (unsigned i = 0; i < 3; i++) holds(&s, i, 0, NCHUNK);
    s.peer[1].die_at = 200;
    node_plan *p = node_plan_new(NCHUNK, 3, TIMEOUT);
    run(&s, p);
    CHECK(node_plan_peer_received(p, 1) > 0);
    CHECK_EQ(node_plan_peer_inflight(p, 1), 0);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_received, 0);
    node_plan_free(p);
    sim_free(&s);
}

static void the_only_holder_gone_sends_its_chunks_to_the_origin(void)
{
    struct sim s;
    sim_init(&s, 2);
    holds(&s, 0, 0, 2000);
    holds(&s, 1, 2000, NCHUNK);
    s.peer[1].rate = 0.5;
    s.peer[1].die_at = 100;
    node_plan *p = node_plan_new(NCHUNK, 2, TIMEOUT);
    run(&s, p);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_received + node_plan_peer_received(p, 1), 1000);
    CHECK(st.origin_received > 800);
    node_plan_free(p);
    sim_free(&s);
}

/* Urgent chunks (a running VM reads them) go out before any queue, each to a source that can
 * give it; chunks already asked for, done or out of range are ignored. */
static void urgent_chunks_jump_the_queues(void)
{
    uint8_t *hold[2] = {calloc(13, 1), calloc(13, 1)};
    for (unsigned c = 0; c < 50; c++) hold[0][c / 8] |= (uint8_t)(1u << (c % 8));
    for (unsigned c = 50; c < 90; c++) hold[1][c / 8] |= (uint8_t)(1u << (c % 8));
    node_plan *p = node_plan_new(100, 2, TIMEOUT);
    CHECK(p);
    CHECK_OK(node_plan_start(p, (const uint8_t *const *)hold));
    uint32_t out[8];
    CHECK_EQ(node_plan_next(p, 0, 1, out, 0), 1);
    CHECK_EQ(out[0], 0); /* the queue's head, before anything is urgent */
    const uint32_t want[] = {95, 60, 10, 0, 200, 10};
    CHECK_OK(node_plan_urgent(p, want, sizeof want / sizeof want[0]));
    CHECK_EQ(node_plan_next(p, 0, 3, out, 1), 3);
    CHECK_EQ(out[0], 10); /* the one urgent chunk it holds, then its queue */
    CHECK_EQ(out[1], 1);
    CHECK_EQ(out[2], 2);
    CHECK_EQ(node_plan_next(p, NODE_PLAN_ORIGIN, 2, out, 1), 2);
    CHECK_EQ(out[0], 95); /* nobody else holds it */
    CHECK_EQ(out[1], 90);
    CHECK_EQ(node_plan_next(p, 1, 1, out, 1), 1);
    CHECK_EQ(out[0], 60);
    CHECK_EQ(node_plan_next(p, 1, 1, out, 1), 1);
    CHECK_EQ(out[0], 50); /* the urgent list is spent */
    node_plan_free(p);
    free(hold[0]), free(hold[1]);
}

/* A chunk stays urgent until it is done: an attempt that expires, or a holder that goes, puts it
 * first again, also at the origin when no neighbour is left that holds it. */
static void urgency_lasts_until_the_chunk_is_done(void)
{
    uint8_t *hold[2] = {calloc(2, 1), calloc(2, 1)};
    hold[0][0] = 0x01; /* peer 0 holds chunk 0 */
    hold[1][0] = 0x03; /* peer 1 holds chunks 0 and 1 */
    node_plan *p = node_plan_new(10, 2, TIMEOUT);
    CHECK(p);
    CHECK_OK(node_plan_start(p, (const uint8_t *const *)hold));
    uint32_t out[4];
    const uint32_t want9 = 9;
    CHECK_OK(node_plan_urgent(p, &want9, 1));
    CHECK_EQ(node_plan_next(p, NODE_PLAN_ORIGIN, 1, out, 0), 1);
    CHECK_EQ(out[0], 9);
    CHECK_EQ(node_plan_expire(p, TIMEOUT + 1), 1); /* lost: it comes first again */
    CHECK_EQ(node_plan_next(p, NODE_PLAN_ORIGIN, 1, out, TIMEOUT + 1), 1);
    CHECK_EQ(out[0], 9);
    node_plan_received(p, NODE_PLAN_ORIGIN, 9, true);
    /* Peer 1 takes chunk 1, peer 0 chunk 0 and then says it lacks it (chunk 0 goes back to
     * peer 1, over a queue entry of its), then peer 1 goes: both chunks are the origin's, behind
     * what it had queued (2..8), and the urgent one comes before all. */
    CHECK_EQ(node_plan_next(p, 1, 1, out, TIMEOUT + 2), 1);
    uint32_t first = out[0];
    CHECK_EQ(node_plan_next(p, 0, 1, out, TIMEOUT + 2), 1);
    CHECK_EQ(out[0], 0);
    CHECK_EQ(first, 1);
    node_plan_not_held(p, 0, 0);
    node_plan_peer_gone(p, 1);
    const uint32_t want1 = 1;
    CHECK_OK(node_plan_urgent(p, &want1, 1));
    CHECK_EQ(node_plan_next(p, NODE_PLAN_ORIGIN, 1, out, TIMEOUT + 3), 1);
    CHECK_EQ(out[0], 1);
    CHECK_EQ(node_plan_next(p, NODE_PLAN_ORIGIN, 1, out, TIMEOUT + 3), 1);
    CHECK_EQ(out[0], 2);
    node_plan_stats_t st;
    node_plan_stats(p, &st);
    CHECK_EQ(st.origin_inflight, 2);
    node_plan_free(p);
    free(hold[0]), free(hold[1]);
}

TL_MAIN(TL_CASE(neighbours_that_hold_everything_leave_nothing_for_the_origin),
        TL_CASE(origin_gives_exactly_what_no_neighbour_holds),
        TL_CASE(faster_neighbour_carries_more_of_the_bytes), TL_CASE(three_neighbours_beat_one),
        TL_CASE(lost_answers_are_fetched_again_after_the_timeout),
        TL_CASE(corrupt_chunks_are_fetched_from_another_holder),
        TL_CASE(chunks_a_neighbour_lacks_after_all_go_elsewhere),
        TL_CASE(a_neighbour_gone_midway_leaves_its_share_to_the_others),
        TL_CASE(the_only_holder_gone_sends_its_chunks_to_the_origin),
        TL_CASE(urgent_chunks_jump_the_queues), TL_CASE(urgency_lasts_until_the_chunk_is_done))
