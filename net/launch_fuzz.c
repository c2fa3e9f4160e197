/*
 * Fuzz target: the launch messages (LAUNCH, LAUNCH_PROGRESS, LAUNCH_DONE) from untrusted bytes.
 *
 * The first input byte picks the message (its value modulo 3), the rest is the payload.
 * Whatever decodes must encode back to the same bytes (one encoding per message; a LAUNCH
 * without its flags byte, an older app's, comes back with flags 0), and a decoded message's
 * strings are NUL-terminated within their fields.
 */
#include "net.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const uint8_t *a, size_t alen, uint8_t *b, size_t blen)
{
    if (alen != blen || memcmp(a, b, alen) != 0) abort();
    free(b);
}

static void terminated(const char *s, size_t size)
{
    if (!memchr(s, 0, size)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t *p = data + 1;
    size_t len = size - 1;
    uint8_t *out = NULL;
    size_t olen = 0;
    switch (data[0] % 3) {
    case 0: {
        net_launch_req q;
        if (net_launch_decode_req(p, len, &q) != 0) return 0;
        terminated(q.name, sizeof q.name);
        if (net_launch_encode_req(&q, &out, &olen) != 0) abort();
        if (olen == len + 1 && out[len] == 0) olen--; /* the older form */
        break;
    }
    case 1: {
        static net_launch_progress q;
        if (net_launch_decode_progress(p, len, &q) != 0) return 0;
        if (q.nsources > NET_LAUNCH_SOURCES_MAX) abort();
        for (uint32_t i = 0; i < q.nsources; i++) terminated(q.src[i].label, sizeof q.src[i].label);
        if (net_launch_encode_progress(&q, &out, &olen) != 0) abort();
        break;
    }
    default: {
        static net_launch_done q;
        if (net_launch_decode_done(p, len, &q) != 0) return 0;
        terminated(q.domain, sizeof q.domain);
        terminated(q.uuid, sizeof q.uuid);
        terminated(q.accel, sizeof q.accel);
        terminated(q.console, sizeof q.console);
        terminated(q.address, sizeof q.address);
        terminated(q.error, sizeof q.error);
        if (net_launch_encode_done(&q, &out, &olen) != 0) abort();
        break;
    }
    }
    same(p, len, out, olen);
    return 0;
}
