/* The handshake, the channel and the frame decoder as pure functions over bytes. */
#include "net.h"
#include "net_internal.h"
#include "testlib.h"

static const uint64_t T0 = 1764064800ull * 1000000000ull; /* a fixed clock, ns since the epoch */

typedef struct side {
    net_keypair kp;
    net_keys keys;
} side;

static void make_node(side *s, uint8_t fleet_seed, uint64_t key_seed)
{
    uint8_t fleet[NET_KEY_BYTES], sk[NET_KEY_BYTES];
    memset(fleet, fleet_seed, sizeof fleet);
    tl_fill_random(sk, sizeof sk, key_seed);
    CHECK_OK(net_keypair_from_secret(&s->kp, sk));
    net_fleet_keys(&s->keys, fleet);
}

static void make_app(side *s, uint8_t fleet_seed, uint64_t key_seed)
{
    side node;
    make_node(&node, fleet_seed, key_seed);
    s->kp = node.kp;
    net_client_keys(&s->keys, node.keys.client);
}

static void eph(uint8_t out[32], uint64_t seed)
{
    tl_fill_random(out, 32, seed);
}

/* Runs initiator -> responder -> initiator; returns the first error or 0. */
static int run(const side *i, const side *r, net_hs_responder *resp, net_role role, uint64_t t,
               net_hs_result *ri, net_hs_result *rr, uint8_t init[NET_HS_INIT_BYTES])
{
    net_hs_initiator st;
    uint8_t e1[32], e2[32], ts[NET_HS_TIMESTAMP_BYTES], resp_msg[NET_HS_RESP_BYTES];
    eph(e1, t ^ 1);
    eph(e2, t ^ 2);
    net_tai64n(t, ts);
    int rc = net_hs_initiate(&st, &i->kp, &i->keys, role, r->kp.pk, e1, ts, init);
    if (rc) return rc;
    rc = net_hs_respond(resp, init, NET_HS_INIT_BYTES, e2, resp_msg, rr);
    if (rc) return rc;
    return net_hs_initiator_finish(&st, resp_msg, sizeof resp_msg, ri);
}

static void both_sides_agree_on_keys(void)
{
    side a, b;
    make_node(&a, 7, 1);
    make_node(&b, 7, 2);
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    net_hs_result ri, rr;
    uint8_t init[NET_HS_INIT_BYTES];
    CHECK_OK(run(&a, &b, resp, NET_ROLE_PEER, T0, &ri, &rr, init));
    CHECK_MEM(ri.tx, rr.rx, 32);
    CHECK_MEM(ri.rx, rr.tx, 32);
    CHECK(memcmp(ri.tx, ri.rx, 32) != 0);
    CHECK_MEM(rr.peer_pk, a.kp.pk, 32);
    CHECK_MEM(ri.peer_pk, b.kp.pk, 32);
    CHECK_EQ(rr.role, NET_ROLE_PEER);
    CHECK_EQ(net_hs_responder_counters(resp)->accepted, 1);
    CHECK_EQ(net_hs_responder_counters(resp)->dh, 4);
    net_hs_responder_free(resp);
}

static void every_tampered_byte_of_the_initiation_fails(void)
{
    side a, b;
    make_node(&a, 7, 1);
    make_node(&b, 7, 2);
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    net_hs_initiator st;
    uint8_t e1[32], e2[32], ts[12], init[NET_HS_INIT_BYTES], out[NET_HS_RESP_BYTES];
    eph(e1, 1);
    eph(e2, 2);
    net_tai64n(T0, ts);
    CHECK_OK(net_hs_initiate(&st, &a.kp, &a.keys, NET_ROLE_PEER, b.kp.pk, e1, ts, init));
    for (size_t i = 0; i < sizeof init; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t bad[NET_HS_INIT_BYTES];
            net_hs_result res;
            memcpy(bad, init, sizeof bad);
            bad[i] ^= (uint8_t)(1u << bit);
            CHECK(net_hs_respond(resp, bad, sizeof bad, e2, out, &res) != 0);
        }
    }
    /* None of them got past mac1 except flips inside mac1 itself, which fail it too. */
    CHECK_EQ(net_hs_responder_counters(resp)->dh, 0);
    CHECK_EQ(net_hs_responder_counters(resp)->replay_inserts, 0);
    net_hs_result res;
    CHECK_OK(net_hs_respond(resp, init, sizeof init, e2, out, &res));
    net_hs_initiator_wipe(&st);
    net_hs_responder_free(resp);
}

static void every_tampered_byte_of_the_response_fails(void)
{
    side a, b;
    make_node(&a, 7, 1);
    make_node(&b, 7, 2);
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    uint8_t e1[32], e2[32], ts[12], init[NET_HS_INIT_BYTES], out[NET_HS_RESP_BYTES];
    eph(e1, 1);
    eph(e2, 2);
    net_hs_result rr;
    for (size_t i = 0; i < sizeof out; i++) {
        net_hs_initiator st;
        net_hs_result ri;
        net_tai64n(T0 + i, ts);
        CHECK_OK(net_hs_initiate(&st, &a.kp, &a.keys, NET_ROLE_PEER, b.kp.pk, e1, ts, init));
        CHECK_OK(net_hs_respond(resp, init, sizeof init, e2, out, &rr));
        out[i] ^= 0x20;
        CHECK(net_hs_initiator_finish(&st, out, sizeof out, &ri) != 0);
    }
    net_hs_responder_free(resp);
}

static void wrong_fleet_is_rejected_by_mac1_before_any_dh(void)
{
    side a, b;
    make_node(&a, 8, 1); /* another fleet */
    make_node(&b, 7, 2);
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    net_hs_result ri, rr;
    uint8_t init[NET_HS_INIT_BYTES];
    CHECK_EQ(run(&a, &b, resp, NET_ROLE_PEER, T0, &ri, &rr, init), NET_EMAC);
    const net_hs_counters *c = net_hs_responder_counters(resp);
    CHECK_EQ(c->mac1_checked, 1);
    CHECK_EQ(c->mac1_rejected, 1);
    CHECK_EQ(c->dh, 0);
    CHECK_EQ(c->replay_inserts, 0);
    net_hs_responder_free(resp);
}

static void wrong_psk_fails_at_the_response(void)
{
    /* Same cookie key (so mac1 passes) but another psk: only the psk step differs. */
    side a, b;
    make_node(&a, 7, 1);
    make_node(&b, 7, 2);
    a.keys.peer_psk[0] ^= 1;
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    net_hs_result ri, rr;
    uint8_t init[NET_HS_INIT_BYTES];
    CHECK_EQ(run(&a, &b, resp, NET_ROLE_PEER, T0, &ri, &rr, init), NET_EAUTH);
    net_hs_responder_free(resp);
}

static void replayed_initiation_is_rejected(void)
{
    side a, b;
    make_node(&a, 7, 1);
    make_node(&b, 7, 2);
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    net_hs_result ri, rr;
    uint8_t init[NET_HS_INIT_BYTES], out[NET_HS_RESP_BYTES], e2[32];
    CHECK_OK(run(&a, &b, resp, NET_ROLE_PEER, T0, &ri, &rr, init));
    eph(e2, 99);
    CHECK_EQ(net_hs_respond(resp, init, sizeof init, e2, out, &rr), NET_EREPLAY);
    /* An older timestamp is refused as well; a newer one is accepted. */
    CHECK_EQ(run(&a, &b, resp, NET_ROLE_PEER, T0 - 1, &ri, &rr, init), NET_EREPLAY);
    CHECK_OK(run(&a, &b, resp, NET_ROLE_PEER, T0 + 1, &ri, &rr, init));
    CHECK_EQ(net_hs_responder_counters(resp)->replay_rejected, 2);
    CHECK_EQ(net_hs_responder_counters(resp)->replay_inserts, 1);
    net_hs_responder_free(resp);
}

static void client_key_gives_the_client_role(void)
{
    side app, b, other;
    make_app(&app, 7, 1);
    make_node(&b, 7, 2);
    make_app(&other, 9, 3); /* the client key of another fleet */
    net_hs_responder *resp;
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    net_hs_result ri, rr;
    uint8_t init[NET_HS_INIT_BYTES];
    CHECK_OK(run(&app, &b, resp, NET_ROLE_CLIENT, T0, &ri, &rr, init));
    CHECK_EQ(rr.role, NET_ROLE_CLIENT);
    CHECK_MEM(ri.tx, rr.rx, 32);
    /* An app cannot claim the peer role: it has no fleet key. */
    CHECK_EQ(run(&app, &b, resp, NET_ROLE_PEER, T0 + 1, &ri, &rr, init), NET_EROLE);
    CHECK_EQ(run(&other, &b, resp, NET_ROLE_CLIENT, T0 + 2, &ri, &rr, init), NET_EMAC);
    net_hs_responder_free(resp);
}

static void keyed(net_hs_result *ri, net_hs_result *rr)
{
    side a, b;
    make_node(&a, 7, 1);
    make_node(&b, 7, 2);
    net_hs_responder *resp;
    uint8_t init[NET_HS_INIT_BYTES];
    CHECK_OK(net_hs_responder_new(&b.kp, &b.keys, 0, &resp));
    CHECK_OK(run(&a, &b, resp, NET_ROLE_PEER, T0, ri, rr, init));
    net_hs_responder_free(resp);
}

static void channel_pair(net_channel *x, net_channel *y)
{
    net_hs_result ri, rr;
    uint8_t hx[NET_STREAM_HEADER_BYTES], hy[NET_STREAM_HEADER_BYTES];
    keyed(&ri, &rr);
    CHECK_OK(net_channel_init(x, &ri, hx));
    CHECK_OK(net_channel_init(y, &rr, hy));
    CHECK_OK(net_channel_accept_header(x, hy, sizeof hy));
    CHECK_OK(net_channel_accept_header(y, hx, sizeof hx));
}

static void channel_carries_messages_across_rekeys(void)
{
    net_channel x, y;
    channel_pair(&x, &y);
    static uint8_t payload[70000], frame[70000 + 32], out[70000 + 32];
    for (uint32_t i = 0; i < 3 * NET_REKEY_MESSAGES + 10; i++) {
        size_t len = (i * 7919u) % 2000u;
        if (i % 500 == 0) len = sizeof payload; /* some large ones, to reach the byte rule */
        tl_fill_random(payload, len, i);
        size_t flen, plen;
        uint8_t type;
        CHECK_OK(net_channel_seal(&x, 0x20, payload, len, frame, &flen));
        CHECK_EQ(flen, len + 1 + NET_FRAME_OVERHEAD);
        CHECK_OK(net_channel_open(&y, frame, flen, &type, out, &plen));
        CHECK_EQ(type, 0x20);
        CHECK_EQ(plen, len);
        CHECK_MEM(out + 1, payload, len);
    }
    CHECK_EQ(x.tx_rekeys, 3);
    CHECK_EQ(y.rx_rekeys, 3);
    net_channel_wipe(&x);
    net_channel_wipe(&y);
}

static void channel_rejects_flipped_replayed_and_reordered_frames(void)
{
    net_channel x, y;
    channel_pair(&x, &y);
    uint8_t f1[64], f2[64], out[64], type;
    size_t l1, l2, plen;
    CHECK_OK(net_channel_seal(&x, 0x20, (const uint8_t *)"one", 3, f1, &l1));
    CHECK_OK(net_channel_seal(&x, 0x20, (const uint8_t *)"two", 3, f2, &l2));
    for (size_t i = 0; i < l1; i++) {
        net_channel copy = y;
        uint8_t bad[64];
        memcpy(bad, f1, l1);
        bad[i] ^= 1;
        CHECK_EQ(net_channel_open(&copy, bad, l1, &type, out, &plen), NET_EAUTH);
    }
    net_channel copy = y;
    CHECK_EQ(net_channel_open(&copy, f2, l2, &type, out, &plen), NET_EAUTH); /* reordered */
    CHECK_OK(net_channel_open(&y, f1, l1, &type, out, &plen));
    copy = y;
    CHECK_EQ(net_channel_open(&copy, f1, l1, &type, out, &plen), NET_EAUTH); /* replayed */
    CHECK_OK(net_channel_open(&y, f2, l2, &type, out, &plen));
    CHECK_MEM(out + 1, "two", 3);
}

static void channel_final_ends_the_stream(void)
{
    net_channel x, y;
    channel_pair(&x, &y);
    uint8_t f[64], out[64], type;
    size_t l, plen;
    CHECK_OK(net_channel_seal(&x, NET_MSG_CLOSE, NULL, 0, f, &l));
    CHECK_EQ(net_channel_seal(&x, 0x20, f, 1, f + 32, &l), NET_ECLOSED);
    CHECK_OK(net_channel_seal(&y, 0x20, (const uint8_t *)"x", 1, f, &l));
    CHECK_OK(net_channel_open(&x, f, l, &type, out, &plen));
    CHECK(!x.rx_final);
    CHECK_OK(net_channel_seal(&y, NET_MSG_CLOSE, NULL, 0, f, &l));
    CHECK_OK(net_channel_open(&x, f, l, &type, out, &plen));
    CHECK_EQ(type, NET_MSG_CLOSE);
    CHECK(x.rx_final);
}

static void frame_decoder_reassembles_split_frames(void)
{
    uint8_t wire[3 * (4 + 300)];
    size_t n = 0;
    for (int k = 0; k < 3; k++) {
        net_frame_put_prefix(wire + n, 300);
        memset(wire + n + 4, 'a' + k, 300);
        n += 304;
    }
    for (size_t step = 1; step <= n; step += 37) {
        net_frame_dec d;
        net_frame_dec_init(&d, 1000);
        int got = 0;
        for (size_t off = 0; off < n;) {
            size_t len = n - off < step ? n - off : step, used;
            const uint8_t *body;
            size_t blen;
            while (len) {
                int rc = net_frame_dec_feed(&d, wire + off, len, &used, &body, &blen);
                CHECK(rc >= 0);
                off += used;
                len -= used;
                if (rc == 1) {
                    CHECK_EQ(blen, 300);
                    CHECK_EQ(body[0], 'a' + got);
                    CHECK_EQ(body[299], 'a' + got);
                    got++;
                }
            }
        }
        CHECK_EQ(got, 3);
        CHECK_OK(net_frame_dec_finish(&d));
        CHECK(d.allocs <= 1);
        net_frame_dec_free(&d);
    }
}

static void oversized_prefix_is_rejected_before_allocating(void)
{
    net_frame_dec d;
    net_frame_dec_init(&d, NET_FRAME_MAX_BODY);
    uint8_t p[4];
    net_frame_put_prefix(p, NET_FRAME_MAX_BODY + 1);
    size_t used, blen;
    const uint8_t *body;
    CHECK_EQ(net_frame_dec_feed(&d, p, 4, &used, &body, &blen), NET_ETOOBIG);
    CHECK_EQ(d.allocs, 0);
    CHECK(d.buf == NULL);
    net_frame_dec_free(&d);
    /* The largest allowed frame, fed in two parts, is allocated exactly once. */
    net_frame_dec_init(&d, NET_FRAME_MAX_BODY);
    net_frame_put_prefix(p, NET_FRAME_MAX_BODY);
    CHECK_EQ(net_frame_dec_feed(&d, p, 4, &used, &body, &blen), 0);
    CHECK_EQ(net_frame_dec_finish(&d), NET_ETRUNCATED);
    uint8_t *big = calloc(1, NET_FRAME_MAX_BODY);
    CHECK_EQ(net_frame_dec_feed(&d, big, 10, &used, &body, &blen), 0);
    CHECK_EQ(net_frame_dec_feed(&d, big, NET_FRAME_MAX_BODY, &used, &body, &blen), 1);
    CHECK_EQ(used, NET_FRAME_MAX_BODY - 10);
    CHECK_EQ(blen, NET_FRAME_MAX_BODY);
    CHECK_EQ(d.allocs, 1);
    CHECK_OK(net_frame_dec_finish(&d));
    free(big);
    net_frame_dec_free(&d);
}

static void fleet_subkeys_are_distinct(void)
{
    uint8_t fleet[32], a[32], b[32];
    memset(fleet, 1, sizeof fleet);
    net_fleet_derive(fleet, NET_SUBKEY_PEER_PSK, a);
    net_fleet_derive(fleet, NET_SUBKEY_CLIENT, b);
    CHECK(memcmp(a, b, 32) != 0);
    uint8_t c[32];
    net_fleet_derive(fleet, NET_SUBKEY_PEER_PSK, c);
    CHECK_MEM(a, c, 32);
}

static void rate_limit_refills_over_time(void)
{
    /* A virtual clock: 2 attempts per second, a burst of 3. */
    net__rate *r;
    CHECK_OK(net__rate_new(2, 3, 64, &r));
    const uint8_t a[4] = {10, 0, 0, 1}, b[4] = {10, 0, 0, 2};
    uint64_t t = 1000;
    for (int i = 0; i < 3; i++) CHECK(net__rate_take(r, a, 4, t));
    CHECK(!net__rate_take(r, a, 4, t));
    CHECK(net__rate_take(r, b, 4, t)); /* another source has its own bucket */
    CHECK(!net__rate_take(r, a, 4, t + 499));
    CHECK(net__rate_take(r, a, 4, t + 500)); /* half a second: one more */
    CHECK(!net__rate_take(r, a, 4, t + 500));
    /* A long silence refills to the burst, not beyond. */
    t += 100000;
    for (int i = 0; i < 3; i++) CHECK(net__rate_take(r, a, 4, t));
    CHECK(!net__rate_take(r, a, 4, t));
    net__rate_free(r);
}

static void rate_limit_table_stays_bounded(void)
{
    /* 4 slots: a fifth source takes the slot of the least recently seen one, whose bucket
     * starts full again when it comes back. */
    net__rate *r;
    CHECK_OK(net__rate_new(1, 1, 4, &r));
    uint8_t addr[16] = {0};
    for (uint8_t i = 0; i < 4; i++) {
        addr[0] = i;
        CHECK(net__rate_take(r, addr, 16, 10 + i));
        CHECK(!net__rate_take(r, addr, 16, 10 + i));
    }
    addr[0] = 4;
    CHECK(net__rate_take(r, addr, 16, 20));
    addr[0] = 0; /* evicted: forgotten */
    CHECK(net__rate_take(r, addr, 16, 21));
    addr[0] = 3; /* still tracked: still empty */
    CHECK(!net__rate_take(r, addr, 16, 22));
    net__rate_free(r);
}

TL_MAIN(TL_CASE(both_sides_agree_on_keys), TL_CASE(every_tampered_byte_of_the_initiation_fails),
        TL_CASE(every_tampered_byte_of_the_response_fails),
        TL_CASE(wrong_fleet_is_rejected_by_mac1_before_any_dh),
        TL_CASE(wrong_psk_fails_at_the_response), TL_CASE(replayed_initiation_is_rejected),
        TL_CASE(client_key_gives_the_client_role), TL_CASE(channel_carries_messages_across_rekeys),
        TL_CASE(channel_rejects_flipped_replayed_and_reordered_frames),
        TL_CASE(channel_final_ends_the_stream), TL_CASE(frame_decoder_reassembles_split_frames),
        TL_CASE(oversized_prefix_is_rejected_before_allocating),
        TL_CASE(fleet_subkeys_are_distinct), TL_CASE(rate_limit_refills_over_time),
        TL_CASE(rate_limit_table_stays_bounded))
