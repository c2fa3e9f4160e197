/*
 * net_channel.c — the secure channel after the handshake: one
 * crypto_secretstream_xchacha20poly1305 stream per direction.
 *
 * Design notes: secretstream's own counter makes every frame single-use and ordered, so a
 * replayed, dropped or reordered frame fails to open. Rekeying is explicit and deterministic:
 * each side counts messages and message bytes per direction and calls rekey at the same point
 * after sealing (sender) and after opening (receiver), so both stay in step without any signal
 * on the wire. The FINAL tag marks the only clean end: a stream that stops without it was cut.
 */
#include "net.h"

#include <string.h>

#define TAG_MESSAGE crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
#define TAG_FINAL   crypto_secretstream_xchacha20poly1305_TAG_FINAL

int net_channel_init(net_channel *c, const net_hs_result *keys,
                     uint8_t header[NET_STREAM_HEADER_BYTES])
{
    memset(c, 0, sizeof *c);
    if (crypto_secretstream_xchacha20poly1305_init_push(&c->tx, header, keys->tx) != 0)
        return NET_EFORMAT;
    memcpy(c->rx_key, keys->rx, NET_KEY_BYTES);
    return 0;
}

int net_channel_accept_header(net_channel *c, const uint8_t *body, size_t len)
{
    if (c->rx_ready) return NET_EFORMAT;
    if (len != NET_STREAM_HEADER_BYTES) return NET_EFORMAT;
    if (crypto_secretstream_xchacha20poly1305_init_pull(&c->rx, body, c->rx_key) != 0)
        return NET_EFORMAT;
    sodium_memzero(c->rx_key, sizeof c->rx_key);
    c->rx_ready = true;
    return 0;
}

/* The rekey rule, the same on both ends of one direction. */
static void count(crypto_secretstream_xchacha20poly1305_state *st, uint64_t *msgs, uint64_t *bytes,
                  uint64_t *rekeys, size_t len)
{
    (*msgs)++;
    *bytes += len;
    if (*msgs >= NET_REKEY_MESSAGES || *bytes >= NET_REKEY_BYTES) {
        crypto_secretstream_xchacha20poly1305_rekey(st);
        *msgs = 0;
        *bytes = 0;
        (*rekeys)++;
    }
}

int net_channel_seal(net_channel *c, uint8_t type, const uint8_t *payload, size_t len, uint8_t *out,
                     size_t *out_len)
{
    if (c->tx_final) return NET_ECLOSED;
    if (len > NET_PAYLOAD_MAX) return NET_ETOOBIG;
    unsigned char tag = type == NET_MSG_CLOSE ? TAG_FINAL : TAG_MESSAGE;
    /* The type byte and the payload are sealed as one message. secretstream writes its tag
     * byte at out[0] and the ciphertext at out + 1, and XORs in place when the message sits
     * exactly there, so the plaintext is assembled at out + 1 and sealed in place. */
    uint8_t *m = out + 1;
    if (len) memmove(m + 1, payload, len);
    m[0] = type;
    unsigned long long clen;
    if (crypto_secretstream_xchacha20poly1305_push(&c->tx, out, &clen, m, len + 1, NULL, 0, tag) !=
        0)
        return NET_EFORMAT;
    *out_len = (size_t)clen;
    if (tag == TAG_FINAL)
        c->tx_final = true;
    else
        count(&c->tx, &c->tx_msgs, &c->tx_bytes, &c->tx_rekeys, len + 1);
    return 0;
}

int net_channel_open(net_channel *c, const uint8_t *body, size_t len, uint8_t *type, uint8_t *out,
                     size_t *payload_len)
{
    if (c->rx_final || !c->rx_ready) return NET_ECLOSED;
    if (len < NET_FRAME_OVERHEAD + 1) return NET_EFORMAT;
    if (len > NET_FRAME_MAX_BODY) return NET_ETOOBIG;
    unsigned long long mlen;
    unsigned char tag;
    if (crypto_secretstream_xchacha20poly1305_pull(&c->rx, out, &mlen, &tag, body, len, NULL, 0) !=
        0)
        return NET_EAUTH;
    *type = out[0];
    if ((tag == TAG_FINAL) != (out[0] == NET_MSG_CLOSE) || (tag != TAG_FINAL && tag != TAG_MESSAGE))
        return NET_EFORMAT;
    *payload_len = (size_t)mlen - 1;
    if (tag == TAG_FINAL)
        c->rx_final = true;
    else
        count(&c->rx, &c->rx_msgs, &c->rx_bytes, &c->rx_rekeys, (size_t)mlen);
    return 0;
}

void net_channel_wipe(net_channel *c)
{
    sodium_memzero(c, sizeof *c);
}
