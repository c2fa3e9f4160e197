/*
 * Fuzz target: the handshake's two parsers of untrusted bytes.
 *
 * The first input byte picks the side: 0 — a responder processes the rest as an initiation;
 * 1 — the same, with mac1 recomputed by the harness, so mutations reach the X25519, AEAD and
 * replay steps behind the pre-check; 2 — an initiator (fixed keys, ephemeral and timestamp)
 * processes the rest as the response; 3 — the rest is a script of genuine handshakes (3 bytes
 * each: which of four initiators, a timestamp, the role) checked against the replay rule: an
 * initiation is accepted exactly when its timestamp is newer than the newest accepted from
 * that initiator, and then both sides hold the same keys. Every key is fixed (seeds in
 * tests/corpus/handshake_fuzz were made with them by tests/net/gen_corpus). An accepted
 * initiation must be refused when heard again.
 */
#include "net_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fixed(uint8_t out[32], uint8_t v)
{
    for (int i = 0; i < 32; i++) out[i] = (uint8_t)(v + i);
}

static void script(const net_keypair *rk, const net_keys *keys, const uint8_t *data, size_t size)
{
    net_hs_responder *r;
    if (net_hs_responder_new(rk, keys, 64, &r) != 0) return;
    uint64_t newest[4] = {0, 0, 0, 0};
    for (int n = 0; size >= 3 && n < 12; data += 3, size -= 3, n++) {
        uint8_t sk[32], e[32], ts[NET_HS_TIMESTAMP_BYTES], init[NET_HS_INIT_BYTES];
        uint8_t resp[NET_HS_RESP_BYTES];
        net_keypair ik;
        net_hs_initiator st;
        net_hs_result ri, rr;
        int who = data[0] % 4;
        uint64_t t = 1000000000ull + data[1];
        net_role role = data[2] & 1 ? NET_ROLE_CLIENT : NET_ROLE_PEER;
        fixed(sk, (uint8_t)(0x80 + who));
        if (net_keypair_from_secret(&ik, sk) != 0) abort();
        fixed(e, (uint8_t)(n + data[2]));
        net_tai64n(t, ts);
        if (net_hs_initiate(&st, &ik, keys, role, rk->pk, e, ts, init) != 0) abort();
        fixed(e, (uint8_t)(0x55 + n));
        int rc = net_hs_respond(r, init, sizeof init, e, resp, &rr);
        if ((rc == 0) != (t > newest[who])) abort();
        if (rc == 0) {
            newest[who] = t;
            if (net_hs_initiator_finish(&st, resp, sizeof resp, &ri) != 0) abort();
            if (memcmp(ri.tx, rr.rx, 32) != 0 || memcmp(ri.rx, rr.tx, 32) != 0) abort();
            if (rr.role != role || memcmp(rr.peer_pk, ik.pk, 32) != 0) abort();
        } else {
            if (rc != NET_EREPLAY) abort();
            net_hs_initiator_wipe(&st);
        }
    }
    net_hs_responder_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t fleet[32], sk[32], e[32], ts[NET_HS_TIMESTAMP_BYTES];
    net_keypair rk, ik;
    net_keys keys;
    fixed(fleet, 0x11);
    fixed(sk, 0x22);
    if (net_keypair_from_secret(&rk, sk) != 0) abort();
    fixed(sk, 0x33);
    if (net_keypair_from_secret(&ik, sk) != 0) abort();
    net_fleet_keys(&keys, fleet);
    int mode = data[0] % 4;
    data++;
    size--;
    if (mode == 3) {
        script(&rk, &keys, data, size);
    } else if (mode == 0 || mode == 1) {
        net_hs_responder *r;
        if (net_hs_responder_new(&rk, &keys, 8, &r) != 0) return 0;
        uint8_t *msg = malloc(size ? size : 1);
        if (!msg) abort();
        memcpy(msg, data, size);
        if (mode == 1 && size == NET_HS_INIT_BYTES && data[1] >= 1 && data[1] <= 2)
            (void)net__hs_mac1(&keys, (net_role)data[1], rk.pk, msg, msg + 112);
        uint8_t out[NET_HS_RESP_BYTES];
        net_hs_result res;
        fixed(e, 0x55);
        int rc = net_hs_respond(r, msg, size, e, out, &res);
        if (rc == 0) {
            if (res.role != NET_ROLE_PEER && res.role != NET_ROLE_CLIENT) abort();
            if (net_hs_respond(r, msg, size, e, out, &res) != NET_EREPLAY) abort();
        } else if (net_hs_responder_counters(r)->replay_inserts != 0) {
            abort(); /* a refused initiation must leave no per-initiator state */
        }
        free(msg);
        net_hs_responder_free(r);
    } else {
        net_hs_initiator st;
        uint8_t init[NET_HS_INIT_BYTES];
        net_hs_result res;
        fixed(e, 0x44);
        net_tai64n(1764064800ull * 1000000000ull, ts);
        if (net_hs_initiate(&st, &ik, &keys, NET_ROLE_PEER, rk.pk, e, ts, init) != 0) abort();
        uint8_t *msg = malloc(size ? size : 1);
        if (!msg) abort();
        memcpy(msg, data, size);
        int rc = net_hs_initiator_finish(&st, msg, size, &res);
        if (rc == 0 && memcmp(res.peer_pk, rk.pk, 32) != 0) abort();
        free(msg);
    }
    net_keys_wipe(&keys);
    return 0;
}
