/* Discovery beacons: sealing, opening untrusted bytes, and the replay/staleness filter. */
#include "net.h"
#include "testlib.h"

static const uint64_t NOW = 1764064800000ull; /* a fixed receiver clock, ms since the epoch */

static void beacon_key(uint8_t fleet_seed, uint8_t key[NET_KEY_BYTES])
{
    uint8_t fleet[NET_KEY_BYTES];
    memset(fleet, fleet_seed, sizeof fleet);
    net_fleet_derive(fleet, NET_SUBKEY_BEACON, key);
}

static net_beacon sample(uint8_t who, uint64_t instance, uint64_t seq, uint64_t time_ms)
{
    net_beacon b;
    memset(&b, 0, sizeof b);
    memset(b.node_pk, who, sizeof b.node_pk);
    b.instance = instance;
    b.seq = seq;
    b.time_ms = time_ms;
    b.tcp_port = 7420;
    b.chunks = 123456789;
    b.manifests = 42;
    return b;
}

static void seal(uint8_t fleet_seed, const net_beacon *b, uint8_t out[NET_BEACON_BYTES])
{
    uint8_t key[NET_KEY_BYTES], nonce[NET_BEACON_NONCE_BYTES];
    beacon_key(fleet_seed, key);
    tl_fill_random(nonce, sizeof nonce, b->seq + 1);
    net_beacon_seal(key, b, nonce, out);
}

static void round_trip_keeps_every_field(void)
{
    net_beacon b = sample(7, 0x0102030405060708ull, 99, NOW), got;
    uint8_t wire[NET_BEACON_BYTES], key[NET_KEY_BYTES];
    seal(1, &b, wire);
    beacon_key(1, key);
    CHECK_MEM(wire, "CLBN\x01", 5);
    CHECK_OK(net_beacon_open(key, wire, sizeof wire, &got));
    CHECK_MEM(got.node_pk, b.node_pk, NET_KEY_BYTES);
    CHECK(got.instance == b.instance);
    CHECK_EQ(got.seq, 99);
    CHECK(got.time_ms == NOW);
    CHECK_EQ(got.tcp_port, 7420);
    CHECK_EQ(got.chunks, 123456789);
    CHECK_EQ(got.manifests, 42);
}

static void node_key_is_not_in_the_clear(void)
{
    net_beacon b = sample(0x5a, 1, 1, NOW);
    uint8_t wire[NET_BEACON_BYTES];
    seal(1, &b, wire);
    for (size_t i = 0; i + 8 <= sizeof wire; i++) CHECK(memcmp(wire + i, b.node_pk, 8) != 0);
}

static void another_fleets_key_does_not_open_it(void)
{
    net_beacon b = sample(7, 1, 1, NOW), got;
    uint8_t wire[NET_BEACON_BYTES], other[NET_KEY_BYTES];
    seal(1, &b, wire);
    beacon_key(2, other);
    CHECK_EQ(net_beacon_open(other, wire, sizeof wire, &got), NET_EAUTH);
    CHECK_EQ(got.seq, 0); /* nothing of it is handed out */
}

static void every_flipped_bit_is_refused(void)
{
    net_beacon b = sample(7, 1, 1, NOW), got;
    uint8_t wire[NET_BEACON_BYTES], key[NET_KEY_BYTES];
    seal(1, &b, wire);
    beacon_key(1, key);
    for (size_t i = 0; i < sizeof wire; i++)
        for (int bit = 0; bit < 8; bit++) {
            wire[i] ^= (uint8_t)(1u << bit);
            int rc = net_beacon_open(key, wire, sizeof wire, &got);
            if (rc != NET_EFORMAT && rc != NET_EAUTH) TL_FAIL("byte %zu bit %d: %d", i, bit, rc);
            wire[i] ^= (uint8_t)(1u << bit);
        }
    CHECK_OK(net_beacon_open(key, wire, sizeof wire, &got));
}

static void wrong_sizes_and_versions_are_malformed(void)
{
    net_beacon b = sample(7, 1, 1, NOW), got;
    uint8_t wire[NET_BEACON_BYTES + 1], key[NET_KEY_BYTES];
    seal(1, &b, wire);
    beacon_key(1, key);
    CHECK_EQ(net_beacon_open(key, wire, NET_BEACON_BYTES - 1, &got), NET_EFORMAT);
    CHECK_EQ(net_beacon_open(key, wire, NET_BEACON_BYTES + 1, &got), NET_EFORMAT);
    CHECK_EQ(net_beacon_open(key, wire, 0, &got), NET_EFORMAT);
    wire[4] = 2;
    CHECK_EQ(net_beacon_open(key, wire, NET_BEACON_BYTES, &got), NET_EFORMAT);
}

static net_beacon_filter *filter_for(uint8_t own)
{
    uint8_t pk[NET_KEY_BYTES];
    memset(pk, own, sizeof pk);
    net_beacon_filter *f = net_beacon_filter_new(pk, 8, NET_BEACON_MAX_SKEW_MS);
    CHECK(f);
    return f;
}

static void a_replayed_beacon_is_dropped(void)
{
    net_beacon_filter *f = filter_for(1);
    net_beacon b = sample(2, 10, 5, NOW);
    CHECK_EQ(net_beacon_filter_check(f, &b, NOW), NET_BEACON_NEW);
    CHECK_EQ(net_beacon_filter_check(f, &b, NOW + 100), NET_BEACON_REPLAY);
    net_beacon older = sample(2, 10, 4, NOW + 50);
    CHECK_EQ(net_beacon_filter_check(f, &older, NOW + 100), NET_BEACON_REPLAY);
    net_beacon next = sample(2, 10, 6, NOW + 30000);
    CHECK_EQ(net_beacon_filter_check(f, &next, NOW + 30000), NET_BEACON_NEXT);
    net_beacon_filter_free(f);
}

static void a_stale_beacon_is_dropped(void)
{
    net_beacon_filter *f = filter_for(1);
    net_beacon old = sample(2, 10, 5, NOW - NET_BEACON_MAX_SKEW_MS - 1);
    CHECK_EQ(net_beacon_filter_check(f, &old, NOW), NET_BEACON_STALE);
    net_beacon future = sample(2, 10, 6, NOW + NET_BEACON_MAX_SKEW_MS + 1);
    CHECK_EQ(net_beacon_filter_check(f, &future, NOW), NET_BEACON_STALE);
    net_beacon edge = sample(2, 10, 7, NOW - NET_BEACON_MAX_SKEW_MS);
    CHECK_EQ(net_beacon_filter_check(f, &edge, NOW), NET_BEACON_NEW);
    net_beacon_filter_free(f);
}

static void own_beacons_are_ignored(void)
{
    net_beacon_filter *f = filter_for(9);
    net_beacon b = sample(9, 1, 1, NOW);
    CHECK_EQ(net_beacon_filter_check(f, &b, NOW), NET_BEACON_OWN);
    CHECK_EQ(net_beacon_filter_check(f, &b, NOW), NET_BEACON_OWN);
    net_beacon_filter_free(f);
}

static void a_restarted_node_is_accepted(void)
{
    net_beacon_filter *f = filter_for(1);
    net_beacon before = sample(2, 10, 500, NOW);
    CHECK_EQ(net_beacon_filter_check(f, &before, NOW), NET_BEACON_NEW);
    net_beacon after = sample(2, 11, 0, NOW + 2000); /* new instance, sequence from zero */
    CHECK_EQ(net_beacon_filter_check(f, &after, NOW + 2000), NET_BEACON_RESTART);
    CHECK_EQ(net_beacon_filter_check(f, &after, NOW + 2100), NET_BEACON_REPLAY);
    /* the previous instance's beacon, sent again, does not take the new one's place */
    net_beacon replayed = sample(2, 10, 501, NOW + 1000);
    CHECK_EQ(net_beacon_filter_check(f, &replayed, NOW + 2200), NET_BEACON_REPLAY);
    net_beacon next = sample(2, 11, 1, NOW + 2300);
    CHECK_EQ(net_beacon_filter_check(f, &next, NOW + 2300), NET_BEACON_NEXT);
    net_beacon_filter_free(f);
}

static void a_full_filter_forgets_the_longest_silent(void)
{
    uint8_t own[NET_KEY_BYTES] = {0};
    net_beacon_filter *f = net_beacon_filter_new(own, 2, NET_BEACON_MAX_SKEW_MS);
    net_beacon a = sample(1, 1, 1, NOW), b = sample(2, 1, 1, NOW), c = sample(3, 1, 1, NOW);
    CHECK_EQ(net_beacon_filter_check(f, &a, NOW), NET_BEACON_NEW);
    CHECK_EQ(net_beacon_filter_check(f, &b, NOW + 10), NET_BEACON_NEW);
    CHECK_EQ(net_beacon_filter_check(f, &c, NOW + 20), NET_BEACON_NEW); /* a makes room */
    CHECK_EQ(net_beacon_filter_check(f, &b, NOW + 30), NET_BEACON_REPLAY);
    CHECK_EQ(net_beacon_filter_check(f, &c, NOW + 30), NET_BEACON_REPLAY);
    net_beacon_filter_free(f);
}

TL_MAIN(TL_CASE(round_trip_keeps_every_field), TL_CASE(node_key_is_not_in_the_clear),
        TL_CASE(another_fleets_key_does_not_open_it), TL_CASE(every_flipped_bit_is_refused),
        TL_CASE(wrong_sizes_and_versions_are_malformed), TL_CASE(a_replayed_beacon_is_dropped),
        TL_CASE(a_stale_beacon_is_dropped), TL_CASE(own_beacons_are_ignored),
        TL_CASE(a_restarted_node_is_accepted), TL_CASE(a_full_filter_forgets_the_longest_silent))
