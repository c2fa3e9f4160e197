/* The daemon's peer table on a virtual clock: what it keeps, for how long, and its bound. */
#include "node_daemon.h"
#include "testlib.h"

static net_beacon beacon(uint8_t who, uint64_t seq, uint16_t port)
{
    net_beacon b;
    memset(&b, 0, sizeof b);
    memset(b.node_pk, who, sizeof b.node_pk);
    b.instance = 77;
    b.seq = seq;
    b.tcp_port = port;
    b.chunks = 1000 + who;
    b.manifests = who;
    return b;
}

static void a_heard_peer_is_kept_with_its_address_port_and_summary(void)
{
    node__peer_table t;
    CHECK_OK(node__peer_table_init(&t, 4));
    net_beacon b = beacon(5, 1, 7420);
    CHECK_EQ(node__peer_heard(&t, &b, "198.18.0.5", -1, 1000), 1);
    b = beacon(5, 2, 7421);
    CHECK_EQ(node__peer_heard(&t, &b, "198.18.0.6", -1, 2000), 0); /* the same node, moved */
    CHECK_EQ(t.n, 1);
    node__peer *p = node__peer_find(&t, b.node_pk);
    CHECK(p);
    CHECK_STR(p->ip, "198.18.0.6");
    CHECK_EQ(p->port, 7421);
    CHECK_EQ(p->seq, 2);
    CHECK_EQ(p->chunks, 1005);
    CHECK_EQ(p->manifests, 5);
    CHECK_EQ(p->first_ms, 1000);
    CHECK_EQ(p->last_ms, 2000);
    CHECK_EQ(p->static_idx, -1);
    node__peer_table_free(&t);
}

static unsigned gone_count;
static void count_gone(const node__peer *p, void *arg)
{
    (void)p, (void)arg;
    gone_count++;
}

static void a_silent_peer_expires_after_the_timeout_and_not_before(void)
{
    node__peer_table t;
    CHECK_OK(node__peer_table_init(&t, 4));
    net_beacon a = beacon(1, 1, 7420), b = beacon(2, 1, 7420);
    node__peer_heard(&t, &a, "198.18.0.1", -1, 0);
    node__peer_heard(&t, &b, "198.18.0.2", -1, 0);
    b.seq = 2;
    node__peer_heard(&t, &b, "198.18.0.2", -1, 30000); /* b keeps beaconing, a falls silent */
    CHECK_EQ(node__peer_expire(&t, 95000, 95000, count_gone, NULL), 0);
    CHECK_EQ(t.n, 2);
    CHECK_EQ(node__peer_expire(&t, 95001, 95000, count_gone, NULL), 1);
    CHECK_EQ(gone_count, 1);
    CHECK(!node__peer_find(&t, a.node_pk));
    CHECK(node__peer_find(&t, b.node_pk));
    CHECK_EQ(node__peer_expire(&t, 125001, 95000, NULL, NULL), 1);
    CHECK_EQ(t.n, 0);
    node__peer_table_free(&t);
}

static void a_full_table_refuses_newcomers_until_a_peer_expires(void)
{
    node__peer_table t;
    CHECK_OK(node__peer_table_init(&t, 2));
    net_beacon a = beacon(1, 1, 1), b = beacon(2, 1, 1), c = beacon(3, 1, 1);
    CHECK_EQ(node__peer_heard(&t, &a, "198.18.0.1", -1, 0), 1);
    CHECK_EQ(node__peer_heard(&t, &b, "198.18.0.2", -1, 10), 1);
    CHECK_EQ(node__peer_heard(&t, &c, "198.18.0.3", -1, 20), -ENOSPC);
    CHECK(!node__peer_find(&t, c.node_pk));
    a.seq = 2;
    CHECK_EQ(node__peer_heard(&t, &a, "198.18.0.1", -1, 30), 0); /* known peers still update */
    CHECK_EQ(node__peer_expire(&t, 100, 80, NULL, NULL), 1);     /* b */
    CHECK_EQ(node__peer_heard(&t, &c, "198.18.0.3", -1, 100), 1);
    node__peer_table_free(&t);
}

static void a_static_peer_stays_static_when_also_heard_on_the_lan(void)
{
    node__peer_table t;
    CHECK_OK(node__peer_table_init(&t, 4));
    net_beacon a = beacon(1, 1, 7420);
    node__peer_heard(&t, &a, "198.18.0.1", 3, 0);
    a.seq = 2;
    node__peer_heard(&t, &a, "198.18.0.1", -1, 10);
    CHECK_EQ(node__peer_find(&t, a.node_pk)->static_idx, 3);
    node__peer_table_free(&t);
}

TL_MAIN(TL_CASE(a_heard_peer_is_kept_with_its_address_port_and_summary),
        TL_CASE(a_silent_peer_expires_after_the_timeout_and_not_before),
        TL_CASE(a_full_table_refuses_newcomers_until_a_peer_expires),
        TL_CASE(a_static_peer_stays_static_when_also_heard_on_the_lan))
