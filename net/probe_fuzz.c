/*
 * Fuzz target: probe and answer datagrams from untrusted bytes (docs/discovery.md, "Apps").
 *
 * Opened under a fixed probe key. The first input byte picks probe or answer (its low bit);
 * the rest is the datagram. What opens must seal back to the same bytes under its own nonce
 * (one encoding per datagram: the probe's padding is checked), and an answer opens only with
 * the token its box carries.
 */
#include "net.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NONCE_AT 5 /* after magic and version */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t client[NET_KEY_BYTES], key[NET_KEY_BYTES];
    for (int i = 0; i < NET_KEY_BYTES; i++) client[i] = (uint8_t)(0x77 + i);
    net_probe_key(client, key);
    const uint8_t *p = data + 1;
    size_t len = size - 1;
    uint8_t token[NET_PROBE_TOKEN_BYTES], out[NET_PROBE_MAX_BYTES];
    size_t olen = 0;
    if (data[0] & 1) {
        /* The token an answer must carry is the fuzzer's: the first 16 bytes after the byte. */
        if (len < NET_PROBE_TOKEN_BYTES) return 0;
        memcpy(token, p, NET_PROBE_TOKEN_BYTES);
        p += NET_PROBE_TOKEN_BYTES;
        len -= NET_PROBE_TOKEN_BYTES;
        net_probe_answer a;
        if (net_probe_answer_open(key, p, len, token, &a) != 0) return 0;
        net_probe_answer_seal(key, token, &a, p + NONCE_AT, out, &olen);
    } else {
        uint64_t t;
        if (net_probe_open(key, p, len, token, &t) != 0) return 0;
        net_probe_seal(key, token, t, p + NONCE_AT, out, &olen);
    }
    if (olen != len || memcmp(out, p, len) != 0) abort();
    return 0;
}
