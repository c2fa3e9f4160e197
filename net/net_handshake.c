/*
 * net_handshake.c — Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b (WireGuard's pattern) from libsodium
 * primitives, with a MAC pre-check (mac1) and a per-initiator replay table. The byte layout,
 * the KDF chain and the check order are specified in docs/protocol.md.
 *
 * Design notes: the responder spends one keyed BLAKE2b on an initiation before anything else;
 * only an initiation carrying a valid mac1 (which needs the fleet's cookie key, or the client
 * key for the client role) reaches the four X25519 operations, and only one that also passes
 * both AEADs and the replay rule changes the replay table. Functions are pure over buffers:
 * the ephemeral secrets and the timestamp come from the caller. Every intermediate secret
 * (chaining key, AEAD keys, DH outputs) lives on the stack or in the state and is wiped.
 */
#include "net_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HASHLEN  64
#define BLOCKLEN 128
#define AEAD_TAG 16

static const char protocol_name[] = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b";
static const char prologue_label[] = "cloudlet net 1"; /* followed by the role byte */
static const char mac1_label[] = "cloudlet mac1";

enum { MSG_INIT = 1, MSG_RESP = 2 };

/* The symmetric state of Noise (section 5.2): chaining key, handshake hash, cipher key. */
typedef struct sym {
    uint8_t ck[HASHLEN];
    uint8_t h[HASHLEN];
    uint8_t k[32];
    uint64_t n;
} sym;

static void hash2(uint8_t out[HASHLEN], const uint8_t *a, size_t alen, const uint8_t *b,
                  size_t blen)
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, HASHLEN);
    crypto_generichash_update(&st, a, alen);
    crypto_generichash_update(&st, b, blen);
    crypto_generichash_final(&st, out, HASHLEN);
}

/* HMAC (RFC 2104) over BLAKE2b-512 with its 128-byte block, as Noise specifies; key <= 64. */
static void hmac(uint8_t out[HASHLEN], const uint8_t *key, size_t keylen, const uint8_t *d1,
                 size_t l1, const uint8_t *d2, size_t l2)
{
    uint8_t pad[BLOCKLEN], inner[HASHLEN];
    crypto_generichash_state st;
    memset(pad, 0, sizeof pad);
    memcpy(pad, key, keylen);
    for (size_t i = 0; i < BLOCKLEN; i++) pad[i] ^= 0x36;
    crypto_generichash_init(&st, NULL, 0, HASHLEN);
    crypto_generichash_update(&st, pad, BLOCKLEN);
    crypto_generichash_update(&st, d1, l1);
    if (l2) crypto_generichash_update(&st, d2, l2);
    crypto_generichash_final(&st, inner, HASHLEN);
    for (size_t i = 0; i < BLOCKLEN; i++) pad[i] ^= 0x36 ^ 0x5c;
    crypto_generichash_init(&st, NULL, 0, HASHLEN);
    crypto_generichash_update(&st, pad, BLOCKLEN);
    crypto_generichash_update(&st, inner, HASHLEN);
    crypto_generichash_final(&st, out, HASHLEN);
    sodium_memzero(pad, sizeof pad);
    sodium_memzero(inner, sizeof inner);
    sodium_memzero(&st, sizeof st);
}

/* HKDF(ck, ikm) of Noise with 2 or 3 outputs (o3 may be NULL). */
static void hkdf(const uint8_t ck[HASHLEN], const uint8_t *ikm, size_t ikmlen, uint8_t o1[HASHLEN],
                 uint8_t o2[HASHLEN], uint8_t *o3)
{
    uint8_t temp[HASHLEN];
    const uint8_t one = 1, two = 2, three = 3;
    hmac(temp, ck, HASHLEN, ikm, ikmlen, NULL, 0);
    hmac(o1, temp, HASHLEN, &one, 1, NULL, 0);
    hmac(o2, temp, HASHLEN, o1, HASHLEN, &two, 1);
    if (o3) hmac(o3, temp, HASHLEN, o2, HASHLEN, &three, 1);
    sodium_memzero(temp, sizeof temp);
}

static void mix_hash(sym *s, const uint8_t *data, size_t len)
{
    hash2(s->h, s->h, HASHLEN, data, len);
}

static void mix_key(sym *s, const uint8_t *ikm, size_t len)
{
    uint8_t ck[HASHLEN], tk[HASHLEN];
    hkdf(s->ck, ikm, len, ck, tk, NULL);
    memcpy(s->ck, ck, HASHLEN);
    memcpy(s->k, tk, 32); /* HASHLEN 64: the cipher key is the first 32 bytes */
    s->n = 0;
    sodium_memzero(ck, sizeof ck);
    sodium_memzero(tk, sizeof tk);
}

static void mix_key_and_hash(sym *s, const uint8_t *ikm, size_t len)
{
    uint8_t ck[HASHLEN], th[HASHLEN], tk[HASHLEN];
    hkdf(s->ck, ikm, len, ck, th, tk);
    memcpy(s->ck, ck, HASHLEN);
    mix_hash(s, th, HASHLEN);
    memcpy(s->k, tk, 32);
    s->n = 0;
    sodium_memzero(ck, sizeof ck);
    sodium_memzero(th, sizeof th);
    sodium_memzero(tk, sizeof tk);
}

static void nonce_of(uint8_t nonce[12], uint64_t n)
{
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(n >> (8 * i)); /* little-endian */
}

/* EncryptAndHash: out holds len + 16 bytes. */
static void encrypt_and_hash(sym *s, const uint8_t *p, size_t len, uint8_t *out)
{
    uint8_t nonce[12];
    nonce_of(nonce, s->n++);
    crypto_aead_chacha20poly1305_ietf_encrypt(out, NULL, p, len, s->h, HASHLEN, NULL, nonce, s->k);
    mix_hash(s, out, len + AEAD_TAG);
}

static int decrypt_and_hash(sym *s, const uint8_t *c, size_t clen, uint8_t *out)
{
    uint8_t nonce[12];
    nonce_of(nonce, s->n++);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(out, NULL, NULL, c, clen, s->h, HASHLEN, nonce,
                                                  s->k) != 0)
        return NET_EAUTH;
    mix_hash(s, c, clen);
    return 0;
}

/* Split: the initiator-to-responder key and the responder-to-initiator key. */
static void split(const sym *s, uint8_t i2r[32], uint8_t r2i[32])
{
    uint8_t a[HASHLEN], b[HASHLEN];
    hkdf(s->ck, NULL, 0, a, b, NULL);
    memcpy(i2r, a, 32);
    memcpy(r2i, b, 32);
    sodium_memzero(a, sizeof a);
    sodium_memzero(b, sizeof b);
}

static void sym_init(sym *s, net_role role, const uint8_t responder_pk[32])
{
    uint8_t prologue[sizeof prologue_label];
    memset(s, 0, sizeof *s);
    memcpy(s->h, protocol_name, sizeof protocol_name - 1); /* shorter than HASHLEN: padded */
    memcpy(s->ck, s->h, HASHLEN);
    memcpy(prologue, prologue_label, sizeof prologue_label - 1);
    prologue[sizeof prologue_label - 1] = (uint8_t)role;
    mix_hash(s, prologue, sizeof prologue);
    mix_hash(s, responder_pk, 32); /* the pre-message: <- s */
}

/* One X25519; NET_EAUTH for a low-order point (all-zero output). */
static int dh(net_hs_counters *c, uint8_t out[32], const uint8_t sk[32], const uint8_t pk[32])
{
    c->dh++;
    return crypto_scalarmult(out, sk, pk) == 0 ? 0 : NET_EAUTH;
}

static int role_mac_key(const net_keys *keys, net_role role, const uint8_t **key)
{
    if (role == NET_ROLE_PEER) {
        if (!keys->has_fleet) return NET_EROLE;
        *key = keys->cookie;
    } else if (role == NET_ROLE_CLIENT) {
        *key = keys->client;
    } else {
        return NET_EROLE;
    }
    return 0;
}

static const uint8_t *role_psk(const net_keys *keys, net_role role)
{
    return role == NET_ROLE_PEER ? keys->peer_psk : keys->client;
}

/* mac1 key = BLAKE2b-256(key = role key, "cloudlet mac1" || responder public key). */
static void mac1_key(uint8_t out[32], const uint8_t rolekey[32], const uint8_t responder_pk[32])
{
    uint8_t in[sizeof mac1_label - 1 + 32];
    memcpy(in, mac1_label, sizeof mac1_label - 1);
    memcpy(in + sizeof mac1_label - 1, responder_pk, 32);
    crypto_generichash(out, 32, in, sizeof in, rolekey, 32);
}

static void mac1(uint8_t out[NET_HS_MAC_BYTES], const uint8_t key[32], const uint8_t *msg)
{
    crypto_generichash(out, NET_HS_MAC_BYTES, msg, NET_HS_INIT_BYTES - NET_HS_MAC_BYTES, key, 32);
}

int net__hs_mac1(const net_keys *keys, net_role role, const uint8_t responder_pk[NET_KEY_BYTES],
                 const uint8_t *msg, uint8_t out[NET_HS_MAC_BYTES])
{
    const uint8_t *rolekey;
    uint8_t mk[32];
    int rc = role_mac_key(keys, role, &rolekey);
    if (rc) return rc;
    mac1_key(mk, rolekey, responder_pk);
    mac1(out, mk, msg);
    sodium_memzero(mk, sizeof mk);
    return 0;
}

void net_tai64n(uint64_t unix_ns, uint8_t out[NET_HS_TIMESTAMP_BYTES])
{
    uint64_t sec = 0x4000000000000000ull + unix_ns / 1000000000u;
    uint32_t nsec = (uint32_t)(unix_ns % 1000000000u);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(sec >> (56 - 8 * i));
    for (int i = 0; i < 4; i++) out[8 + i] = (uint8_t)(nsec >> (24 - 8 * i));
}

/* ---- initiator ----------------------------------------------------------------------------- */

void net_hs_initiator_wipe(net_hs_initiator *st)
{
    net_hs_counters keep = st->counters;
    sodium_memzero(st, sizeof *st);
    st->counters = keep;
}

int net_hs_initiate(net_hs_initiator *st, const net_keypair *self, const net_keys *keys,
                    net_role role, const uint8_t rs[NET_KEY_BYTES],
                    const uint8_t e_sk[NET_KEY_BYTES],
                    const uint8_t timestamp[NET_HS_TIMESTAMP_BYTES], uint8_t out[NET_HS_INIT_BYTES])
{
    const uint8_t *rolekey;
    int rc = role_mac_key(keys, role, &rolekey);
    if (rc) return rc;
    net_hs_initiator_wipe(st);
    sym s;
    uint8_t shared[32] = {0}, mk[32];
    sym_init(&s, role, rs);
    st->role = role;
    memcpy(st->rs, rs, 32);
    memcpy(st->s_pk, self->pk, 32);
    memcpy(st->s_sk, self->sk, 32);
    memcpy(st->psk, role_psk(keys, role), 32);
    memcpy(st->e_sk, e_sk, 32);
    if (crypto_scalarmult_base(st->e_pk, e_sk) != 0) rc = NET_EFORMAT;

    memset(out, 0, NET_HS_INIT_BYTES);
    out[0] = MSG_INIT;
    out[1] = (uint8_t)role;
    memcpy(out + 4, st->e_pk, 32);
    mix_hash(&s, st->e_pk, 32); /* -> e (and MixKey(e): a psk handshake) */
    mix_key(&s, st->e_pk, 32);
    if (!rc) rc = dh(&st->counters, shared, st->e_sk, rs); /* es */
    mix_key(&s, shared, 32);
    encrypt_and_hash(&s, self->pk, 32, out + 36);          /* s */
    if (!rc) rc = dh(&st->counters, shared, self->sk, rs); /* ss */
    mix_key(&s, shared, 32);
    encrypt_and_hash(&s, timestamp, NET_HS_TIMESTAMP_BYTES, out + 84); /* payload */
    mac1_key(mk, rolekey, rs);
    mac1(out + 112, mk, out);
    memcpy(st->ck, s.ck, HASHLEN);
    memcpy(st->h, s.h, HASHLEN);
    st->sent = true;
    sodium_memzero(&s, sizeof s);
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(mk, sizeof mk);
    if (rc) net_hs_initiator_wipe(st);
    return rc;
}

int net_hs_initiator_finish(net_hs_initiator *st, const uint8_t *msg, size_t len,
                            net_hs_result *res)
{
    int rc = 0;
    sym s;
    uint8_t shared[32], empty[1];
    if (!st->sent) return NET_EFORMAT;
    if (len != NET_HS_RESP_BYTES || msg[0] != MSG_RESP || msg[1] || msg[2] || msg[3]) {
        net_hs_initiator_wipe(st);
        return NET_EFORMAT;
    }
    memset(&s, 0, sizeof s);
    memcpy(s.ck, st->ck, HASHLEN);
    memcpy(s.h, st->h, HASHLEN);
    const uint8_t *re = msg + 4;
    mix_hash(&s, re, 32); /* <- e */
    mix_key(&s, re, 32);
    rc = dh(&st->counters, shared, st->e_sk, re); /* ee */
    mix_key(&s, shared, 32);
    if (!rc) rc = dh(&st->counters, shared, st->s_sk, re); /* se */
    mix_key(&s, shared, 32);
    mix_key_and_hash(&s, st->psk, 32); /* psk */
    if (!rc) rc = decrypt_and_hash(&s, msg + 36, AEAD_TAG, empty);
    if (!rc) {
        split(&s, res->tx, res->rx);
        memcpy(res->peer_pk, st->rs, 32);
        res->role = st->role;
    }
    sodium_memzero(&s, sizeof s);
    sodium_memzero(shared, sizeof shared);
    net_hs_initiator_wipe(st);
    return rc;
}

/* ---- responder ----------------------------------------------------------------------------- */

#define WAYS 4

typedef struct replay_slot {
    uint8_t pk[32];
    uint8_t ts[NET_HS_TIMESTAMP_BYTES];
    bool used;
} replay_slot;

struct net_hs_responder {
    net_keypair self;
    net_keys keys;
    uint8_t mac1_peer[32], mac1_client[32]; /* precomputed per role */
    uint8_t set_key[crypto_shorthash_KEYBYTES];
    size_t nsets;
    replay_slot *slots;
    net_hs_counters counters;
};

int net_hs_responder_new(const net_keypair *self, const net_keys *keys, size_t replay_slots,
                         net_hs_responder **out)
{
    if (!replay_slots) replay_slots = 16384;
    net_hs_responder *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    r->nsets = (replay_slots + WAYS - 1) / WAYS;
    r->slots = calloc(r->nsets * WAYS, sizeof *r->slots);
    if (!r->slots) {
        free(r);
        return -ENOMEM;
    }
    r->self = *self;
    r->keys = *keys;
    if (keys->has_fleet) mac1_key(r->mac1_peer, keys->cookie, self->pk);
    mac1_key(r->mac1_client, keys->client, self->pk);
    randombytes_buf(r->set_key, sizeof r->set_key);
    *out = r;
    return 0;
}

void net_hs_responder_free(net_hs_responder *r)
{
    if (!r) return;
    free(r->slots);
    sodium_memzero(r, sizeof *r);
    free(r);
}

const net_hs_counters *net_hs_responder_counters(const net_hs_responder *r)
{
    return &r->counters;
}

static replay_slot *replay_set(net_hs_responder *r, const uint8_t pk[32])
{
    uint8_t h[crypto_shorthash_BYTES];
    uint64_t v = 0;
    crypto_shorthash(h, pk, 32, r->set_key);
    for (int i = 0; i < 8; i++) v = v << 8 | h[i];
    return r->slots + (v % r->nsets) * WAYS;
}

static replay_slot *replay_find(replay_slot *set, const uint8_t pk[32])
{
    for (int i = 0; i < WAYS; i++)
        if (set[i].used && sodium_memcmp(set[i].pk, pk, 32) == 0) return &set[i];
    return NULL;
}

static void replay_store(net_hs_responder *r, replay_slot *set, const uint8_t pk[32],
                         const uint8_t ts[NET_HS_TIMESTAMP_BYTES])
{
    replay_slot *slot = replay_find(set, pk);
    if (!slot) {
        slot = &set[0];
        for (int i = 0; i < WAYS; i++) {
            if (!set[i].used) {
                slot = &set[i];
                break;
            }
            if (memcmp(set[i].ts, slot->ts, NET_HS_TIMESTAMP_BYTES) < 0) slot = &set[i];
        }
        memcpy(slot->pk, pk, 32);
        slot->used = true;
        r->counters.replay_inserts++;
    }
    memcpy(slot->ts, ts, NET_HS_TIMESTAMP_BYTES);
}

int net_hs_respond(net_hs_responder *r, const uint8_t *msg, size_t len,
                   const uint8_t e_sk[NET_KEY_BYTES], uint8_t out[NET_HS_RESP_BYTES],
                   net_hs_result *res)
{
    /* 1. Size and header: free. */
    if (len != NET_HS_INIT_BYTES || msg[0] != MSG_INIT || msg[2] || msg[3]) return NET_EFORMAT;
    net_role role = (net_role)msg[1];
    const uint8_t *mk;
    if (role == NET_ROLE_PEER && r->keys.has_fleet)
        mk = r->mac1_peer;
    else if (role == NET_ROLE_CLIENT)
        mk = r->mac1_client;
    else
        return role == NET_ROLE_PEER ? NET_EROLE : NET_EFORMAT;

    /* 2. mac1: one keyed BLAKE2b, nothing stored. */
    uint8_t mac[NET_HS_MAC_BYTES];
    r->counters.mac1_checked++;
    mac1(mac, mk, msg);
    if (sodium_memcmp(mac, msg + 112, NET_HS_MAC_BYTES) != 0) {
        r->counters.mac1_rejected++;
        return NET_EMAC;
    }

    /* 3. The Noise message: es, s, ss, timestamp. */
    int rc = 0;
    sym s;
    uint8_t shared[32], is[32], ts[NET_HS_TIMESTAMP_BYTES], e_pk[32], empty[AEAD_TAG];
    const uint8_t *re = msg + 4;
    sym_init(&s, role, r->self.pk);
    mix_hash(&s, re, 32);
    mix_key(&s, re, 32);
    rc = dh(&r->counters, shared, r->self.sk, re); /* es */
    if (!rc) {
        mix_key(&s, shared, 32);
        rc = decrypt_and_hash(&s, msg + 36, 32 + AEAD_TAG, is);
    }
    if (!rc) rc = dh(&r->counters, shared, r->self.sk, is); /* ss */
    if (!rc) {
        mix_key(&s, shared, 32);
        rc = decrypt_and_hash(&s, msg + 84, NET_HS_TIMESTAMP_BYTES + AEAD_TAG, ts);
    }

    /* 4. Replay: strictly newer than the newest timestamp of this initiator. */
    replay_slot *set = NULL;
    if (!rc) {
        set = replay_set(r, is);
        replay_slot *old = replay_find(set, is);
        if (old && memcmp(ts, old->ts, NET_HS_TIMESTAMP_BYTES) <= 0) {
            r->counters.replay_rejected++;
            rc = NET_EREPLAY;
        }
    }

    /* 5. The response: e, ee, se, psk, empty payload; then Split. */
    if (!rc && crypto_scalarmult_base(e_pk, e_sk) != 0) rc = NET_EFORMAT;
    if (!rc) {
        memset(out, 0, NET_HS_RESP_BYTES);
        out[0] = MSG_RESP;
        memcpy(out + 4, e_pk, 32);
        mix_hash(&s, e_pk, 32);
        mix_key(&s, e_pk, 32);
        rc = dh(&r->counters, shared, e_sk, re); /* ee */
    }
    if (!rc) {
        mix_key(&s, shared, 32);
        rc = dh(&r->counters, shared, e_sk, is); /* se */
    }
    if (!rc) {
        mix_key(&s, shared, 32);
        mix_key_and_hash(&s, role_psk(&r->keys, role), 32);
        encrypt_and_hash(&s, empty, 0, out + 36);
        split(&s, res->rx, res->tx);
        memcpy(res->peer_pk, is, 32);
        res->role = role;
        replay_store(r, set, is, ts);
        r->counters.accepted++;
    }
    sodium_memzero(&s, sizeof s);
    sodium_memzero(shared, sizeof shared);
    return rc;
}
