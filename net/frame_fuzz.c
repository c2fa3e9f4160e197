/*
 * Fuzz target: the frame decoder and the channel's opening of frames from untrusted bytes.
 *
 * Input: one byte giving the feed step (1..256 bytes per feed, so every split of the stream is
 * tried), one byte giving the decoder's bound (a multiple of 64 bytes, or the full bound), then
 * the stream. The first frame is taken as the peer's secretstream header and the rest are
 * opened with a fixed key (the seeds in tests/corpus/frame_fuzz, made by tests/net/gen_corpus,
 * are valid streams under it). Checks: no frame is ever returned over the bound, the decoder
 * never holds more than the bound, and every byte is consumed or refused.
 */
#include "net.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t step = (size_t)data[0] + 1;
    uint32_t bound = data[1] == 0xff ? NET_FRAME_MAX_BODY : (uint32_t)data[1] * 64u;
    data += 2;
    size -= 2;

    net_hs_result keys;
    memset(&keys, 0, sizeof keys);
    for (int i = 0; i < 32; i++) keys.tx[i] = keys.rx[i] = (uint8_t)(0x66 + i);
    net_channel ch;
    uint8_t header[NET_STREAM_HEADER_BYTES];
    if (net_channel_init(&ch, &keys, header) != 0) abort();

    net_frame_dec d;
    net_frame_dec_init(&d, bound);
    bool have_header = false, dead = false;
    size_t off = 0;
    uint8_t *out = NULL;
    while (off < size && !dead) {
        size_t len = size - off < step ? size - off : step;
        while (len && !dead) {
            const uint8_t *body;
            size_t used, blen;
            int rc = net_frame_dec_feed(&d, data + off, len, &used, &body, &blen);
            if (used > len) abort();
            off += used;
            len -= used;
            if (rc < 0) {
                dead = true;
                break;
            }
            if (d.buf_cap > bound) abort();
            if (rc == 0) {
                if (len) abort(); /* "not complete" means everything was consumed */
                break;
            }
            if (blen > bound) abort();
            if (!have_header) {
                have_header = true;
                if (net_channel_accept_header(&ch, body, blen) != 0) dead = true;
                continue;
            }
            uint8_t type;
            size_t plen;
            out = realloc(out, blen ? blen : 1);
            if (!out) abort();
            rc = net_channel_open(&ch, body, blen, &type, out, &plen);
            if (rc == 0 && plen + 1 + NET_FRAME_OVERHEAD != blen) abort();
            if (rc != 0 && rc != NET_ECLOSED) dead = true;
        }
    }
    int fin = net_frame_dec_finish(&d); /* either answer is fine; it must not crash */
    (void)fin;
    free(out);
    net_frame_dec_free(&d);
    net_channel_wipe(&ch);
    return 0;
}
