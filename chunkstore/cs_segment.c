/*
 * cs_segment.c — the byte format of a segment: up to CS__SEG_SLOTS chunks compressed together.
 *
 * Design notes: grouping chunks lifts zstd's ratio and keeps every LMDB value large, where the
 * overflow-page slack is a small share (see docs/store.md). Segments that do not shrink by at
 * least 3 % are kept raw so random data costs nothing to read. The payload length in the header
 * must equal the value's length, and a zstd frame must carry its content size and checksum and
 * decompress to exactly slots * 4 KiB, so a damaged segment is rejected as a whole before any
 * chunk of it is served; the caller re-hashes every chunk as well.
 */
#include "cs_internal.h"

#include <string.h>
#include <zstd_errors.h>

enum { SEG_VERSION = 1, CODEC_RAW = 0, CODEC_ZSTD = 1 };

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int cs__seg_encode(ZSTD_CCtx *cctx, const uint8_t *chunks, unsigned nslots, uint8_t *out,
                   size_t *len)
{
    if (nslots == 0 || nslots > CS__SEG_SLOTS) return CS_EFORMAT;
    size_t raw = (size_t)nslots * CS_CHUNK_SIZE;
    uint8_t codec = CODEC_ZSTD;
    size_t plen = ZSTD_compress2(cctx, out + CS__SEG_HDR, CS__SEG_MAX - CS__SEG_HDR, chunks, raw);
    if (ZSTD_isError(plen) || plen > raw - raw / 32) {
        /* dstSize_tooSmall is the expected failure for incompressible data. */
        if (ZSTD_isError(plen) && ZSTD_getErrorCode(plen) != ZSTD_error_dstSize_tooSmall)
            return CS_EZSTD;
        codec = CODEC_RAW;
        memcpy(out + CS__SEG_HDR, chunks, raw);
        plen = raw;
    }
    out[0] = SEG_VERSION;
    out[1] = codec;
    put_le16(out + 2, (uint16_t)nslots);
    put_le32(out + 4, (uint32_t)plen);
    *len = CS__SEG_HDR + plen;
    return 0;
}

int cs__seg_peek(const uint8_t *seg, size_t len, unsigned *nslots)
{
    if (len < CS__SEG_HDR || seg[0] != SEG_VERSION || seg[1] > CODEC_ZSTD) return CS_ECORRUPT;
    unsigned n = (unsigned)seg[2] | (unsigned)seg[3] << 8;
    if (n == 0 || n > CS__SEG_SLOTS || get_le32(seg + 4) != len - CS__SEG_HDR) return CS_ECORRUPT;
    if (seg[1] == CODEC_RAW && len - CS__SEG_HDR != (size_t)n * CS_CHUNK_SIZE) return CS_ECORRUPT;
    *nslots = n;
    return 0;
}

int cs__seg_decode(ZSTD_DCtx *dctx, const uint8_t *seg, size_t len, uint8_t *out,
                   unsigned *nslots)
{
    unsigned n;
    int rc = cs__seg_peek(seg, len, &n);
    if (rc) return rc;
    size_t raw = (size_t)n * CS_CHUNK_SIZE;
    const uint8_t *payload = seg + CS__SEG_HDR;
    size_t plen = len - CS__SEG_HDR;
    if (seg[1] == CODEC_RAW) {
        memcpy(out, payload, raw);
    } else {
        unsigned long long csize = ZSTD_getFrameContentSize(payload, plen);
        if (csize != raw || ZSTD_findFrameCompressedSize(payload, plen) != plen)
            return CS_ECORRUPT;
        size_t got = ZSTD_decompressDCtx(dctx, out, raw, payload, plen);
        if (ZSTD_isError(got) || got != raw) return CS_ECORRUPT;
    }
    *nslots = n;
    return 0;
}
