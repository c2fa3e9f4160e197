/*
 * net_frame.c — length-prefixed frames and their incremental decoder.
 *
 * Design notes: the decoder's memory is bounded by the largest max_body ever set on it, and a
 * prefix is compared with the bound before anything is allocated for its body, so an
 * oversized prefix costs nothing but its 4 bytes. A body that arrives whole in one input
 * buffer is returned in place (no copy); only a body split across inputs is gathered into buf.
 */
#include "net.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void net_frame_put_prefix(uint8_t out[NET_FRAME_PREFIX], uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
}

void net_frame_dec_init(net_frame_dec *d, uint32_t max_body)
{
    memset(d, 0, sizeof *d);
    d->max_body = max_body;
}

void net_frame_dec_set_max(net_frame_dec *d, uint32_t max_body)
{
    d->max_body = max_body;
}

void net_frame_dec_free(net_frame_dec *d)
{
    if (!d) return;
    free(d->buf);
    d->buf = NULL;
    d->buf_cap = 0;
}

int net_frame_dec_finish(const net_frame_dec *d)
{
    /* A complete frame (already returned) is a boundary too. */
    if (d->prefix_have == 0) return 0;
    if (d->prefix_have == NET_FRAME_PREFIX && d->body_have == d->body_len) return 0;
    return NET_ETRUNCATED;
}

int net_frame_dec_feed(net_frame_dec *d, const uint8_t *data, size_t len, size_t *used,
                       const uint8_t **body, size_t *body_len)
{
    size_t pos = 0;
    *used = 0;
    /* A frame returned by the previous call is done with now. */
    if (d->prefix_have == NET_FRAME_PREFIX && d->body_have == d->body_len) {
        d->prefix_have = 0;
        d->body_have = 0;
        d->body_len = 0;
    }
    while (d->prefix_have < NET_FRAME_PREFIX) {
        if (pos == len) {
            *used = pos;
            return 0;
        }
        d->prefix[d->prefix_have++] = data[pos++];
        if (d->prefix_have == NET_FRAME_PREFIX) {
            uint32_t n = (uint32_t)d->prefix[0] << 24 | (uint32_t)d->prefix[1] << 16 |
                         (uint32_t)d->prefix[2] << 8 | d->prefix[3];
            if (n > d->max_body) {
                *used = pos;
                return NET_ETOOBIG;
            }
            d->body_len = n;
            d->body_have = 0;
            if (len - pos >= n) { /* whole body in this input: no copy */
                *body = data + pos;
                *body_len = n;
                d->body_have = n;
                *used = pos + n;
                return 1;
            }
        }
    }
    if (d->buf_cap < d->body_len) {
        uint8_t *nb = realloc(d->buf, d->body_len);
        if (!nb) return -ENOMEM;
        d->buf = nb;
        d->buf_cap = d->body_len;
        d->allocs++;
    }
    size_t want = d->body_len - d->body_have;
    size_t take = len - pos < want ? len - pos : want;
    memcpy(d->buf + d->body_have, data + pos, take);
    d->body_have += (uint32_t)take;
    pos += take;
    *used = pos;
    if (d->body_have < d->body_len) return 0;
    *body = d->buf;
    *body_len = d->body_len;
    return 1;
}
