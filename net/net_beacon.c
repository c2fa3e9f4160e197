/*
 * net_beacon.c — discovery beacons: seal, open, and the replay/staleness filter
 * (docs/discovery.md).
 *
 * Design notes:
 * - A beacon is one fixed-size UDP datagram: a clear header (magic, version, a random 24-byte
 *   nonce) and an XChaCha20-Poly1305 box over the body, keyed by the fleet's beacon key, with the
 *   header as associated data. Opening it is the only check of who sent it: a datagram that does
 *   not authenticate is dropped before any of its bytes are believed, so outsiders cost one AEAD
 *   verification of 92 bytes and nothing else.
 * - Authentication does not stop a fleet member's old beacon from being sent again by anyone.
 *   The filter does: per node key it keeps the newest (instance, sequence, time) accepted, and
 *   drops a beacon unless it is newer. Within an instance, sequences only grow. A new instance (a
 *   restarted daemon) is accepted only with a newer time than the last beacon accepted from that
 *   key, so a replayed beacon of the previous instance cannot take the place of the new one. Any
 *   beacon whose time is further than max_skew from the receiver's clock is stale; that bounds
 *   how long a recorded beacon stays replayable once the filter has forgotten its key.
 * - The filter's table is bounded: when full, the entry heard from least recently makes room.
 *   Time is the caller's (the clock is injected), so tests and fuzzing are deterministic.
 */
#include "net.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define HEADER_BYTES (4 + 1 + NET_BEACON_NONCE_BYTES) /* magic, version, nonce */
#define BODY_BYTES   76

static const uint8_t magic[4] = {'C', 'L', 'B', 'N'};

_Static_assert(HEADER_BYTES + BODY_BYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES ==
                   NET_BEACON_BYTES,
               "NET_BEACON_BYTES matches the layout in docs/discovery.md");
_Static_assert(NET_BEACON_NONCE_BYTES == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
               "XChaCha20 nonce");

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

void net_beacon_seal(const uint8_t key[NET_KEY_BYTES], const net_beacon *b,
                     const uint8_t nonce[NET_BEACON_NONCE_BYTES], uint8_t out[NET_BEACON_BYTES])
{
    uint8_t body[BODY_BYTES];
    memcpy(body, b->node_pk, NET_KEY_BYTES);
    put64(body + 32, b->instance);
    put64(body + 40, b->seq);
    put64(body + 48, b->time_ms);
    body[56] = (uint8_t)b->tcp_port;
    body[57] = (uint8_t)(b->tcp_port >> 8);
    body[58] = body[59] = 0; /* flags: none defined in version 1 */
    put64(body + 60, b->chunks);
    put64(body + 68, b->manifests);

    memcpy(out, magic, 4);
    out[4] = NET_BEACON_VERSION;
    memcpy(out + 5, nonce, NET_BEACON_NONCE_BYTES);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + HEADER_BYTES, NULL, body, sizeof body, out,
                                               HEADER_BYTES, NULL, nonce, key);
    sodium_memzero(body, sizeof body);
}

int net_beacon_open(const uint8_t key[NET_KEY_BYTES], const uint8_t *buf, size_t len,
                    net_beacon *out)
{
    memset(out, 0, sizeof *out);
    if (len != NET_BEACON_BYTES || memcmp(buf, magic, 4) != 0 || buf[4] != NET_BEACON_VERSION)
        return NET_EFORMAT;
    uint8_t body[BODY_BYTES];
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(body, NULL, NULL, buf + HEADER_BYTES,
                                                   len - HEADER_BYTES, buf, HEADER_BYTES, buf + 5,
                                                   key) != 0)
        return NET_EAUTH;
    memcpy(out->node_pk, body, NET_KEY_BYTES);
    out->instance = get64(body + 32);
    out->seq = get64(body + 40);
    out->time_ms = get64(body + 48);
    out->tcp_port = (uint16_t)(body[56] | body[57] << 8);
    out->chunks = get64(body + 60);
    out->manifests = get64(body + 68);
    sodium_memzero(body, sizeof body);
    return 0;
}

/* ---- the replay/staleness filter ------------------------------------------------------------ */

typedef struct entry {
    uint8_t pk[NET_KEY_BYTES];
    uint64_t instance, seq, time_ms;
    uint64_t heard_ms; /* receiver's clock at the last accepted beacon */
} entry;

struct net_beacon_filter {
    uint8_t own[NET_KEY_BYTES];
    uint64_t max_skew_ms;
    size_t n, cap;
    entry e[];
};

net_beacon_filter *net_beacon_filter_new(const uint8_t own_pk[NET_KEY_BYTES], size_t capacity,
                                         uint64_t max_skew_ms)
{
    if (capacity == 0) capacity = 1;
    net_beacon_filter *f = calloc(1, sizeof *f + capacity * sizeof(entry));
    if (!f) return NULL;
    memcpy(f->own, own_pk, NET_KEY_BYTES);
    f->cap = capacity;
    f->max_skew_ms = max_skew_ms;
    return f;
}

void net_beacon_filter_free(net_beacon_filter *f)
{
    free(f);
}

net_beacon_verdict net_beacon_filter_check(net_beacon_filter *f, const net_beacon *b,
                                           uint64_t now_ms)
{
    if (sodium_memcmp(b->node_pk, f->own, NET_KEY_BYTES) == 0) return NET_BEACON_OWN;
    uint64_t skew = b->time_ms > now_ms ? b->time_ms - now_ms : now_ms - b->time_ms;
    if (skew > f->max_skew_ms) return NET_BEACON_STALE;

    entry *e = NULL;
    for (size_t i = 0; i < f->n && !e; i++)
        if (memcmp(f->e[i].pk, b->node_pk, NET_KEY_BYTES) == 0) e = &f->e[i];
    net_beacon_verdict v;
    if (!e) {
        v = NET_BEACON_NEW;
        if (f->n < f->cap) {
            e = &f->e[f->n++];
        } else {
            e = &f->e[0];
            for (size_t i = 1; i < f->n; i++)
                if (f->e[i].heard_ms < e->heard_ms) e = &f->e[i];
        }
        memcpy(e->pk, b->node_pk, NET_KEY_BYTES);
    } else if (b->instance == e->instance) {
        if (b->seq <= e->seq) return NET_BEACON_REPLAY;
        v = NET_BEACON_NEXT;
    } else {
        if (b->time_ms <= e->time_ms) return NET_BEACON_REPLAY;
        v = NET_BEACON_RESTART;
    }
    e->instance = b->instance;
    e->seq = b->seq;
    e->time_ms = b->time_ms;
    e->heard_ms = now_ms;
    return v;
}

const char *net_beacon_verdict_name(net_beacon_verdict v)
{
    switch (v) {
    case NET_BEACON_NEW: return "new";
    case NET_BEACON_NEXT: return "next";
    case NET_BEACON_RESTART: return "restart";
    case NET_BEACON_OWN: return "own";
    case NET_BEACON_REPLAY: return "replay";
    case NET_BEACON_STALE: return "stale";
    }
    return "?";
}
