/*
 * net_rate.c — the handshake rate limit per source address.
 *
 * Design notes: a token bucket per address, refilled at per_sec tokens per second up to burst.
 * The table is fixed at creation (slots entries, 4-way sets indexed by a keyed SipHash of the
 * address, so a sender cannot aim at one set); an unseen address evicts the least recently
 * seen entry of its set and starts with a full bucket. Costs one SipHash per attempt.
 */
#include "net_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define WAYS  4
#define MILLI 1000u /* tokens are kept in thousandths */

typedef struct rate_slot {
    uint8_t addr[16];
    uint8_t len;
    uint64_t tokens; /* in thousandths of a token */
    uint64_t last_ms;
} rate_slot;

struct net__rate {
    uint64_t per_sec, burst;
    size_t nsets;
    uint8_t key[crypto_shorthash_KEYBYTES];
    rate_slot *slots;
};

int net__rate_new(uint32_t per_sec, uint32_t burst, uint32_t slots, net__rate **out)
{
    net__rate *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    r->per_sec = per_sec;
    r->burst = burst ? burst : 1;
    r->nsets = (slots + WAYS - 1) / WAYS;
    if (!r->nsets) r->nsets = 1;
    r->slots = calloc(r->nsets * WAYS, sizeof *r->slots);
    if (!r->slots) {
        free(r);
        return -ENOMEM;
    }
    randombytes_buf(r->key, sizeof r->key);
    *out = r;
    return 0;
}

void net__rate_free(net__rate *r)
{
    if (!r) return;
    free(r->slots);
    free(r);
}

bool net__rate_take(net__rate *r, const uint8_t *addr, size_t len, uint64_t now_ms)
{
    uint8_t h[crypto_shorthash_BYTES];
    uint64_t v = 0;
    if (len > 16) len = 16;
    crypto_shorthash(h, addr, len, r->key);
    for (int i = 0; i < 8; i++) v = v << 8 | h[i];
    rate_slot *set = r->slots + (v % r->nsets) * WAYS, *s = NULL, *oldest = &set[0];
    for (int i = 0; i < WAYS; i++) {
        if (set[i].len == len && memcmp(set[i].addr, addr, len) == 0) {
            s = &set[i];
            break;
        }
        if (set[i].last_ms < oldest->last_ms || !set[i].len) oldest = &set[i];
    }
    if (!s) {
        s = oldest;
        memset(s, 0, sizeof *s);
        memcpy(s->addr, addr, len);
        s->len = (uint8_t)len;
        s->tokens = r->burst * MILLI;
        s->last_ms = now_ms;
    }
    if (now_ms > s->last_ms) {
        uint64_t add = (now_ms - s->last_ms) * r->per_sec; /* thousandths: ms * tokens/s */
        s->tokens = s->tokens + add > r->burst * MILLI ? r->burst * MILLI : s->tokens + add;
        s->last_ms = now_ms;
    }
    if (s->tokens < MILLI) return false;
    s->tokens -= MILLI;
    return true;
}
