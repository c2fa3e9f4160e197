/*
 * Fuzz target: chunk exchange messages from untrusted bytes.
 *
 * The first input byte picks the message type (its value modulo the twelve types of the
 * exchange, MANIFEST_GET .. ZCHUNKS), the rest is the payload. Whatever decodes must encode
 * back to the same bytes (one encoding per message), a CHUNKS message either decompresses to
 * exactly what it declared or fails cleanly, each frame of a DELTAS message either rebuilds a
 * chunk against a base or fails cleanly (it may not inflate past 4096 bytes: the decoder
 * checked), and a ZCHUNKS part, to a fresh stream decoder, yields exactly its chunks or fails.
 */
#include "net.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen != blen || memcmp(a, b, alen) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t type = (uint8_t)(NET_MSG_MANIFEST_GET + data[0] % 12);
    const uint8_t *p = data + 1;
    size_t len = size - 1;
    net_msg m;
    if (net_msg_decode(type, p, len, &m) != 0) return 0;
    uint8_t *out = NULL;
    size_t olen = 0;
    int rc = 0;
    switch (type) {
    case NET_MSG_MANIFEST_GET: rc = net_msg_encode_manifest_get(m.id, m.offset, &out, &olen); break;
    case NET_MSG_MANIFEST:
        rc = net_msg_encode_manifest(m.id, m.found, m.total, m.offset, m.part, m.part_len, &out,
                                     &olen);
        break;
    case NET_MSG_HAVE_BITMAP: rc = net_msg_encode_bitmap(m.req, m.n, m.bitmap, &out, &olen); break;
    case NET_MSG_CHUNKS: {
        uint8_t *buf = malloc((size_t)m.n * NET_CHUNK_BYTES);
        if (!buf) abort();
        if (net_msg_chunks(&m, buf) == 0) {
            if (net_msg_encode_chunks(m.req, m.ids, m.n, buf, 1, &out, &olen) != 0) abort();
            net_msg again;
            if (net_msg_decode(type, out, olen, &again) != 0 || again.n != m.n) abort();
            free(out);
            out = NULL;
        }
        free(buf);
        return 0;
    }
    case NET_MSG_PULL_ASK: {
        net_pull_source src[NET_PULL_SOURCES_MAX];
        net_msg_pull_sources(&m, src);
        rc = net_msg_encode_pull_ask(m.req, m.id, src, m.nsources, &out, &olen);
        break;
    }
    case NET_MSG_GET_DELTA:
        rc = net_msg_encode_get_delta(m.req, m.ids, m.bases, m.n, &out, &olen);
        break;
    case NET_MSG_DELTAS: {
        const uint8_t *frames[NET_GET_MAX];
        size_t lens[NET_GET_MAX];
        /* Two bases: zeros, and the first chunk's worth of the payload (a base that shares
         * bytes with the frames, so matches land on something). */
        static uint8_t zeros[NET_CHUNK_BYTES], shared[NET_CHUNK_BYTES], back[NET_CHUNK_BYTES];
        memset(shared, 0, sizeof shared);
        memcpy(shared, p, len < sizeof shared ? len : sizeof shared);
        for (uint32_t i = 0; i < m.n; i++) {
            net_msg_delta_frame(&m, i, &frames[i], &lens[i]);
            if (frames[i] < p || frames[i] + lens[i] > p + len) abort();
            for (int b = 0; b < 2; b++) {
                int d = net_delta_decode(frames[i], lens[i], b ? shared : zeros, back);
                if (d != 0 && d != NET_EFORMAT) abort();
            }
        }
        rc = net_msg_encode_deltas(m.req, m.ids, m.n, frames, lens, &out, &olen);
        break;
    }
    case NET_MSG_ZCHUNKS: {
        /* A part of a stream from a fresh decoder: exactly its chunks, or refused. */
        net_zstream *z = net_zstream_decoder();
        uint8_t *buf = malloc((size_t)m.n * NET_CHUNK_BYTES);
        if (!z || !buf) abort();
        int d = net_msg_zchunks(&m, z, buf);
        if (d != 0 && d != NET_EFORMAT) abort();
        net_zstream_free(z);
        free(buf);
        return 0;
    }
    case NET_MSG_PULL_DONE:
        rc = net_msg_encode_pull_done(m.req, m.ok, m.chunks, (const char *)m.text, m.text_len, &out,
                                      &olen);
        break;
    default: rc = net_msg_encode_ids(type, m.req, m.ids, m.n, &out, &olen); break;
    }
    if (rc != 0) abort();
    same(p, len, out, olen);
    free(out);
    return 0;
}
