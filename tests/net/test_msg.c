/* Chunk exchange messages: encoders and the decoder of untrusted payloads (docs/protocol.md). */
#include "net.h"
#include "testlib.h"

#include <pthread.h>
#include <zstd.h>

static void ids_fill(uint8_t *ids, uint32_t n, uint64_t seed)
{
    tl_fill_random(ids, (size_t)n * NET_ID_BYTES, seed);
}

static void round_trip_of_every_message_type(void)
{
    uint8_t id[NET_ID_BYTES], ids[5 * NET_ID_BYTES], *out;
    size_t len;
    net_msg m;
    ids_fill(id, 1, 1);
    ids_fill(ids, 5, 2);

    CHECK_OK(net_msg_encode_manifest_get(id, 12345, &out, &len));
    CHECK_OK(net_msg_decode(NET_MSG_MANIFEST_GET, out, len, &m));
    CHECK_MEM(m.id, id, NET_ID_BYTES);
    CHECK_EQ(m.offset, 12345);
    free(out);

    const uint8_t part[] = "manifest bytes";
    CHECK_OK(net_msg_encode_manifest(id, true, 100, 50, part, sizeof part, &out, &len));
    CHECK_OK(net_msg_decode(NET_MSG_MANIFEST, out, len, &m));
    CHECK(m.found);
    CHECK_EQ(m.total, 100);
    CHECK_EQ(m.offset, 50);
    CHECK_EQ(m.part_len, sizeof part);
    CHECK_MEM(m.part, part, sizeof part);
    free(out);

    CHECK_OK(net_msg_encode_manifest(id, false, 0, 0, NULL, 0, &out, &len));
    CHECK_OK(net_msg_decode(NET_MSG_MANIFEST, out, len, &m));
    CHECK(!m.found);
    CHECK_MEM(m.id, id, NET_ID_BYTES);
    free(out);

    const uint8_t types[] = {NET_MSG_HAVE, NET_MSG_GET, NET_MSG_DONT_HAVE};
    for (size_t t = 0; t < sizeof types; t++) {
        CHECK_OK(net_msg_encode_ids(types[t], 0xdeadbeef, ids, 5, &out, &len));
        CHECK_EQ(len, 8 + 5 * NET_ID_BYTES);
        CHECK_OK(net_msg_decode(types[t], out, len, &m));
        CHECK_EQ(m.req, 0xdeadbeef);
        CHECK_EQ(m.n, 5);
        CHECK_MEM(m.ids, ids, 5 * NET_ID_BYTES);
        free(out);
    }

    uint8_t bits[2] = {0x5a, 0x03};
    CHECK_OK(net_msg_encode_bitmap(7, 10, bits, &out, &len));
    CHECK_OK(net_msg_decode(NET_MSG_HAVE_BITMAP, out, len, &m));
    CHECK_EQ(m.req, 7);
    CHECK_EQ(m.n, 10);
    CHECK_MEM(m.bitmap, bits, 2);
    free(out);
}

static void chunks_batch_round_trips_bit_identical(void)
{
    enum { N = 32 };
    uint8_t ids[N * NET_ID_BYTES], *out;
    static uint8_t chunks[N * NET_CHUNK_BYTES], back[N * NET_CHUNK_BYTES];
    ids_fill(ids, N, 3);
    tl_fill_random(chunks, sizeof chunks / 2, 4); /* half random, half zeros */
    size_t len;
    CHECK_OK(net_msg_encode_chunks(9, ids, N, chunks, 1, &out, &len));
    CHECK(len < 8 + N * NET_ID_BYTES + sizeof chunks); /* the zero half compressed away */
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_CHUNKS, out, len, &m));
    CHECK_EQ(m.req, 9);
    CHECK_EQ(m.n, N);
    CHECK_MEM(m.ids, ids, sizeof ids);
    CHECK_OK(net_msg_chunks(&m, back));
    CHECK_MEM(back, chunks, sizeof chunks);
    free(out);
}

static void a_full_get_answer_fits_one_message(void)
{
    static uint8_t ids[NET_GET_MAX * NET_ID_BYTES], chunks[NET_GET_MAX * NET_CHUNK_BYTES];
    ids_fill(ids, NET_GET_MAX, 5);
    tl_fill_random(chunks, sizeof chunks, 6); /* incompressible: the worst case */
    uint8_t *out;
    size_t len;
    CHECK_OK(net_msg_encode_chunks(1, ids, NET_GET_MAX, chunks, 3, &out, &len));
    CHECK(len <= NET_PAYLOAD_MAX);
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_CHUNKS, out, len, &m));
    free(out);
}

/* A frame holding more bytes than n chunks, labelled as n: refused by its declared size. */
static void chunks_declaring_another_size_are_refused_before_decompressing(void)
{
    static uint8_t big[3 * NET_CHUNK_BYTES];
    uint8_t ids[2 * NET_ID_BYTES] = {0}, payload[8 + 2 * NET_ID_BYTES + 1024];
    memset(payload, 0, 8);
    payload[7] = 2; /* n = 2 */
    memcpy(payload + 8, ids, sizeof ids);
    size_t z = ZSTD_compress(payload + 8 + sizeof ids, 1024, big, sizeof big, 1);
    CHECK(!ZSTD_isError(z));
    net_msg m;
    CHECK_EQ(net_msg_decode(NET_MSG_CHUNKS, payload, 8 + sizeof ids + z, &m), NET_EFORMAT);
    /* The same bytes as three chunks are fine. */
    uint8_t ids3[3 * NET_ID_BYTES] = {0}, p3[8 + 3 * NET_ID_BYTES + 1024];
    memset(p3, 0, 8);
    p3[7] = 3;
    memcpy(p3 + 8, ids3, sizeof ids3);
    memcpy(p3 + 8 + sizeof ids3, payload + 8 + sizeof ids, z);
    CHECK_OK(net_msg_decode(NET_MSG_CHUNKS, p3, 8 + sizeof ids3 + z, &m));
}

static void chunks_without_a_declared_size_are_refused(void)
{
    static uint8_t data[NET_CHUNK_BYTES];
    uint8_t payload[8 + NET_ID_BYTES + 512] = {0};
    payload[7] = 1;
    ZSTD_CCtx *c = ZSTD_createCCtx();
    CHECK(c);
    CHECK(!ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)));
    size_t z = ZSTD_compress2(c, payload + 8 + NET_ID_BYTES, 512, data, sizeof data);
    ZSTD_freeCCtx(c);
    CHECK(!ZSTD_isError(z));
    net_msg m;
    CHECK_EQ(net_msg_decode(NET_MSG_CHUNKS, payload, 8 + NET_ID_BYTES + z, &m), NET_EFORMAT);
}

static void trailing_bytes_after_the_frame_are_refused(void)
{
    uint8_t id[NET_ID_BYTES] = {1}, *out;
    static uint8_t chunk[NET_CHUNK_BYTES];
    size_t len;
    CHECK_OK(net_msg_encode_chunks(1, id, 1, chunk, 1, &out, &len));
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, out, len);
    longer[len] = 0;
    net_msg m;
    CHECK_EQ(net_msg_decode(NET_MSG_CHUNKS, longer, len + 1, &m), NET_EFORMAT);
    free(longer);
    free(out);
}

static void counts_over_the_bounds_are_refused(void)
{
    static uint8_t ids[(NET_HAVE_MAX + 1) * NET_ID_BYTES];
    uint8_t *out;
    size_t len;
    CHECK_EQ(net_msg_encode_ids(NET_MSG_HAVE, 1, ids, NET_HAVE_MAX + 1, &out, &len), -EINVAL);
    CHECK_EQ(net_msg_encode_ids(NET_MSG_GET, 1, ids, NET_GET_MAX + 1, &out, &len), -EINVAL);
    CHECK_EQ(net_msg_encode_ids(NET_MSG_GET, 1, ids, 0, &out, &len), -EINVAL);
    CHECK_EQ(net_msg_encode_ids(NET_MSG_CHUNKS, 1, ids, 1, &out, &len), -EINVAL);
    /* A GET carrying HAVE's count: well formed as a HAVE, refused as a GET. */
    CHECK_OK(net_msg_encode_ids(NET_MSG_HAVE, 1, ids, NET_GET_MAX + 1, &out, &len));
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_HAVE, out, len, &m));
    CHECK_EQ(net_msg_decode(NET_MSG_GET, out, len, &m), NET_EFORMAT);
    free(out);
    CHECK_EQ(net_msg_decode(0x30, ids, 8, &m), -EINVAL);
}

static void every_truncation_and_extension_is_malformed(void)
{
    uint8_t ids[3 * NET_ID_BYTES], *out;
    size_t len;
    ids_fill(ids, 3, 7);
    CHECK_OK(net_msg_encode_ids(NET_MSG_GET, 1, ids, 3, &out, &len));
    uint8_t *buf = malloc(len + 1);
    memcpy(buf, out, len);
    buf[len] = 0;
    net_msg m;
    for (size_t l = 0; l < len; l++) CHECK_EQ(net_msg_decode(NET_MSG_GET, buf, l, &m), NET_EFORMAT);
    CHECK_EQ(net_msg_decode(NET_MSG_GET, buf, len + 1, &m), NET_EFORMAT);
    free(buf);
    free(out);
    CHECK_OK(net_msg_encode_manifest_get(ids, 0, &out, &len));
    for (size_t l = 0; l < len; l++)
        CHECK_EQ(net_msg_decode(NET_MSG_MANIFEST_GET, out, l, &m), NET_EFORMAT);
    free(out);
}

static void bitmap_bits_past_the_count_must_be_zero(void)
{
    uint8_t payload[8 + 2] = {0, 0, 0, 1, 0, 0, 0, 10, 0xff, 0x03};
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_HAVE_BITMAP, payload, sizeof payload, &m));
    payload[9] = 0x07; /* bit 10 */
    CHECK_EQ(net_msg_decode(NET_MSG_HAVE_BITMAP, payload, sizeof payload, &m), NET_EFORMAT);
    /* The encoder clears them. */
    uint8_t *out;
    size_t len;
    CHECK_OK(net_msg_encode_bitmap(1, 10, payload + 8, &out, &len));
    CHECK_EQ(out[9], 0x03);
    free(out);
}

static void manifest_parts_stay_within_the_total(void)
{
    uint8_t id[NET_ID_BYTES] = {2}, part[10] = {0}, *out;
    size_t len;
    CHECK_EQ(net_msg_encode_manifest(id, true, 15, 10, part, 10, &out, &len), -EINVAL);
    CHECK_EQ(net_msg_encode_manifest(id, true, 0, 0, part, 10, &out, &len), -EINVAL);
    CHECK_EQ(
        net_msg_encode_manifest(id, true, NET_MANIFEST_TOTAL_MAX + 1ull, 0, part, 10, &out, &len),
        -EINVAL);
    CHECK_OK(net_msg_encode_manifest(id, true, 20, 10, part, 10, &out, &len));
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_MANIFEST, out, len, &m));
    out[NET_ID_BYTES + 1 + 7] = 19; /* total 19: the part would reach past it */
    CHECK_EQ(net_msg_decode(NET_MSG_MANIFEST, out, len, &m), NET_EFORMAT);
    out[NET_ID_BYTES] = 2; /* neither found nor not found */
    CHECK_EQ(net_msg_decode(NET_MSG_MANIFEST, out, len, &m), NET_EFORMAT);
    free(out);
}

/* ---- deltas --------------------------------------------------------------------------------- */

/* A chunk and a copy with every hundredth byte changed (1 %). */
static void base_and_changed(uint8_t base[NET_CHUNK_BYTES], uint8_t chunk[NET_CHUNK_BYTES],
                             uint64_t seed)
{
    tl_fill_random(base, NET_CHUNK_BYTES, seed);
    memcpy(chunk, base, NET_CHUNK_BYTES);
    for (size_t i = 0; i < NET_CHUNK_BYTES; i += 100) chunk[i] ^= 0x5a;
}

static void get_delta_round_trips_at_its_bounds(void)
{
    static uint8_t ids[NET_GET_MAX * NET_ID_BYTES], bases[NET_GET_MAX * NET_ID_BYTES];
    ids_fill(ids, NET_GET_MAX, 20);
    ids_fill(bases, NET_GET_MAX, 21);
    const uint32_t counts[] = {1, NET_GET_MAX};
    for (size_t c = 0; c < 2; c++) {
        uint8_t *out;
        size_t len;
        CHECK_OK(net_msg_encode_get_delta(0xffffffffu, ids, bases, counts[c], &out, &len));
        CHECK_EQ(len, 8 + 2 * counts[c] * NET_ID_BYTES);
        net_msg m;
        CHECK_OK(net_msg_decode(NET_MSG_GET_DELTA, out, len, &m));
        CHECK_EQ(m.req, 0xffffffffu);
        CHECK_EQ(m.n, counts[c]);
        CHECK_MEM(m.ids, ids, counts[c] * NET_ID_BYTES);
        CHECK_MEM(m.bases, bases, counts[c] * NET_ID_BYTES);
        free(out);
    }
    uint8_t *out;
    size_t len;
    CHECK_EQ(net_msg_encode_get_delta(1, ids, bases, 0, &out, &len), -EINVAL);
    CHECK_EQ(net_msg_encode_get_delta(1, ids, bases, NET_GET_MAX + 1, &out, &len), -EINVAL);
    /* A count over the bound is malformed even when the bytes are there. */
    static uint8_t big[8 + 2 * (NET_GET_MAX + 1) * NET_ID_BYTES];
    big[7] = NET_GET_MAX + 1;
    net_msg m;
    CHECK_EQ(net_msg_decode(NET_MSG_GET_DELTA, big, sizeof big, &m), NET_EFORMAT);
    big[7] = 0;
    CHECK_EQ(net_msg_decode(NET_MSG_GET_DELTA, big, 8, &m), NET_EFORMAT);
}

static void a_delta_of_a_one_percent_change_is_small_and_rebuilds_bit_identical(void)
{
    uint8_t base[NET_CHUNK_BYTES], chunk[NET_CHUNK_BYTES], back[NET_CHUNK_BYTES];
    uint8_t frame[NET_DELTA_MAX];
    base_and_changed(base, chunk, 30);
    size_t len;
    CHECK_OK(net_delta_encode(chunk, base, 3, frame, sizeof frame, &len));
    CHECK(len < 300);
    CHECK(ZSTD_getFrameContentSize(frame, len) == NET_CHUNK_BYTES);
    CHECK_OK(net_delta_decode(frame, len, base, back));
    CHECK_MEM(back, chunk, NET_CHUNK_BYTES);
}

/* Against another base of the same size the frame is still valid zstd: its matches point into
 * the base's 4096 bytes, whatever they hold. So it decodes (0) to a chunk that is not the one
 * sent, and the receiver's id check is what refuses it. (zstd refuses a frame, NET_EFORMAT, only
 * when a match reaches before the prefix, which no frame coded against 4096 bytes does.) */
static void a_delta_against_the_wrong_base_gives_another_chunk(void)
{
    uint8_t base[NET_CHUNK_BYTES], chunk[NET_CHUNK_BYTES], other[NET_CHUNK_BYTES];
    uint8_t back[NET_CHUNK_BYTES], frame[NET_DELTA_MAX];
    static const uint8_t zeros[NET_CHUNK_BYTES];
    base_and_changed(base, chunk, 31);
    tl_fill_random(other, sizeof other, 32);
    size_t len;
    CHECK_OK(net_delta_encode(chunk, base, 3, frame, sizeof frame, &len));
    CHECK_OK(net_delta_decode(frame, len, other, back));
    CHECK(memcmp(back, chunk, NET_CHUNK_BYTES) != 0);
    CHECK_OK(net_delta_decode(frame, len, zeros, back));
    CHECK(memcmp(back, chunk, NET_CHUNK_BYTES) != 0);
}

static void an_incompressible_delta_fits_the_bound_or_says_too_big(void)
{
    uint8_t base[NET_CHUNK_BYTES], chunk[NET_CHUNK_BYTES], back[NET_CHUNK_BYTES];
    uint8_t frame[NET_DELTA_MAX];
    tl_fill_random(base, sizeof base, 33);
    tl_fill_random(chunk, sizeof chunk, 34); /* nothing in common */
    size_t len;
    CHECK_OK(net_delta_encode(chunk, base, 3, frame, sizeof frame, &len));
    CHECK(len <= NET_DELTA_MAX);
    CHECK_OK(net_delta_decode(frame, len, base, back));
    CHECK_MEM(back, chunk, NET_CHUNK_BYTES);
    /* Room for less than the frame: NET_ETOOBIG, and the chunk goes whole. */
    CHECK_EQ(net_delta_encode(chunk, base, 3, frame, 100, &len), NET_ETOOBIG);
}

/* frames[i] = the delta of chunk i against base i; returns the encoded DELTAS payload. */
static uint8_t *deltas_of(uint32_t n, uint8_t *ids, size_t *len, uint8_t (*bases)[NET_CHUNK_BYTES],
                          uint8_t (*chunks)[NET_CHUNK_BYTES])
{
    static uint8_t frames[NET_GET_MAX][NET_DELTA_MAX];
    const uint8_t *fp[NET_GET_MAX];
    size_t lens[NET_GET_MAX];
    for (uint32_t i = 0; i < n; i++) {
        base_and_changed(bases[i], chunks[i], 40 + i);
        CHECK_OK(net_delta_encode(chunks[i], bases[i], 1, frames[i], NET_DELTA_MAX, &lens[i]));
        fp[i] = frames[i];
    }
    ids_fill(ids, n, 41);
    uint8_t *out;
    CHECK_OK(net_msg_encode_deltas(0x01020304, ids, n, fp, lens, &out, len));
    return out;
}

static void deltas_round_trip_and_rebuild_every_chunk(void)
{
    static uint8_t bases[5][NET_CHUNK_BYTES], chunks[5][NET_CHUNK_BYTES];
    uint8_t ids[5 * NET_ID_BYTES], back[NET_CHUNK_BYTES];
    size_t len;
    uint8_t *out = deltas_of(5, ids, &len, bases, chunks);
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_DELTAS, out, len, &m));
    CHECK_EQ(m.req, 0x01020304);
    CHECK_EQ(m.n, 5);
    CHECK_MEM(m.ids, ids, sizeof ids);
    for (uint32_t i = 0; i < 5; i++) {
        const uint8_t *f;
        size_t flen;
        net_msg_delta_frame(&m, i, &f, &flen);
        CHECK(f >= out && f + flen <= out + len);
        CHECK_OK(net_delta_decode(f, flen, bases[i], back));
        CHECK_MEM(back, chunks[i], NET_CHUNK_BYTES);
    }
    free(out);
}

/* The largest DELTAS fits one message: NET_GET_MAX frames of NET_DELTA_MAX bytes each by the
 * bound, and NET_GET_MAX of the largest frames the encoder makes (an incompressible chunk). */
static void a_full_deltas_answer_fits_one_message(void)
{
    static uint8_t ids[NET_GET_MAX * NET_ID_BYTES], frames[NET_GET_MAX][NET_DELTA_MAX];
    const uint8_t *fp[NET_GET_MAX];
    size_t lens[NET_GET_MAX];
    uint8_t base[NET_CHUNK_BYTES], chunk[NET_CHUNK_BYTES];
    tl_fill_random(base, sizeof base, 50);
    tl_fill_random(chunk, sizeof chunk, 51);
    size_t flen;
    CHECK_OK(net_delta_encode(chunk, base, 1, frames[0], NET_DELTA_MAX, &flen));
    for (uint32_t i = 0; i < NET_GET_MAX; i++) {
        memcpy(frames[i], frames[0], flen);
        fp[i] = frames[i];
        lens[i] = flen;
    }
    ids_fill(ids, NET_GET_MAX, 52);
    uint8_t *out;
    size_t len;
    CHECK_OK(net_msg_encode_deltas(1, ids, NET_GET_MAX, fp, lens, &out, &len));
    CHECK(len <= NET_PAYLOAD_MAX);
    CHECK(8 + NET_GET_MAX * (NET_ID_BYTES + 4 + (size_t)NET_DELTA_MAX) <= NET_PAYLOAD_MAX);
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_DELTAS, out, len, &m));
    CHECK_EQ(m.n, NET_GET_MAX);
    free(out);
}

/* DELTAS header for one frame of flen bytes. */
static size_t one_delta(uint8_t *payload, const uint8_t *frame, size_t flen)
{
    memset(payload, 0, 8 + NET_ID_BYTES + 4);
    payload[7] = 1;
    payload[8 + NET_ID_BYTES] = (uint8_t)(flen >> 24);
    payload[8 + NET_ID_BYTES + 1] = (uint8_t)(flen >> 16);
    payload[8 + NET_ID_BYTES + 2] = (uint8_t)(flen >> 8);
    payload[8 + NET_ID_BYTES + 3] = (uint8_t)flen;
    memcpy(payload + 8 + NET_ID_BYTES + 4, frame, flen);
    return 8 + NET_ID_BYTES + 4 + flen;
}

static void deltas_declaring_another_size_are_refused_before_decompressing(void)
{
    static uint8_t two[2 * NET_CHUNK_BYTES], payload[8 + NET_ID_BYTES + 4 + 2 * NET_DELTA_MAX];
    uint8_t frame[NET_DELTA_MAX], base[NET_CHUNK_BYTES] = {0}, back[NET_CHUNK_BYTES];
    net_msg m;
    /* Two chunks of zeros in one frame: tiny, but it declares 8192 bytes. */
    size_t z = ZSTD_compress(frame, sizeof frame, two, sizeof two, 1);
    CHECK(!ZSTD_isError(z));
    CHECK(z < 100);
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, payload, one_delta(payload, frame, z), &m),
             NET_EFORMAT);
    CHECK_EQ(net_delta_decode(frame, z, base, back), NET_EFORMAT);
    /* One that declares fewer bytes than a chunk. */
    z = ZSTD_compress(frame, sizeof frame, two, 100, 1);
    CHECK(!ZSTD_isError(z));
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, payload, one_delta(payload, frame, z), &m),
             NET_EFORMAT);
    CHECK_EQ(net_delta_decode(frame, z, base, back), NET_EFORMAT);
    /* One that does not declare its size at all. */
    ZSTD_CCtx *c = ZSTD_createCCtx();
    CHECK(c);
    CHECK(!ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)));
    z = ZSTD_compress2(c, frame, sizeof frame, two, NET_CHUNK_BYTES);
    ZSTD_freeCCtx(c);
    CHECK(!ZSTD_isError(z));
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, payload, one_delta(payload, frame, z), &m),
             NET_EFORMAT);
    CHECK_EQ(net_delta_decode(frame, z, base, back), NET_EFORMAT);
    /* The same bytes declaring exactly one chunk are fine. */
    z = ZSTD_compress(frame, sizeof frame, two, NET_CHUNK_BYTES, 1);
    CHECK_OK(net_msg_decode(NET_MSG_DELTAS, payload, one_delta(payload, frame, z), &m));
    CHECK_OK(net_delta_decode(frame, z, base, back));
    CHECK_MEM(back, two, NET_CHUNK_BYTES);
    /* The encoder refuses what the decoder would. */
    const uint8_t *fp = frame;
    size_t flen = 0;
    uint8_t id[NET_ID_BYTES] = {0}, *out;
    size_t len;
    CHECK_EQ(net_msg_encode_deltas(1, id, 1, &fp, &flen, &out, &len), -EINVAL);
    flen = NET_DELTA_MAX + 1;
    CHECK_EQ(net_msg_encode_deltas(1, id, 1, &fp, &flen, &out, &len), -EINVAL);
    flen = z - 1;
    CHECK_EQ(net_msg_encode_deltas(1, id, 1, &fp, &flen, &out, &len), -EINVAL);
}

static void deltas_lengths_must_fill_the_payload_exactly(void)
{
    static uint8_t bases[3][NET_CHUNK_BYTES], chunks[3][NET_CHUNK_BYTES];
    uint8_t ids[3 * NET_ID_BYTES];
    size_t len;
    uint8_t *out = deltas_of(3, ids, &len, bases, chunks);
    uint8_t *lens = out + 8 + 3 * NET_ID_BYTES;
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_DELTAS, out, len, &m));
    /* Moving one byte from frame 0's length to frame 1's keeps the sum, breaks both frames. */
    lens[3]--;
    lens[7]++;
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, out, len, &m), NET_EFORMAT);
    lens[3]++;
    lens[7]--;
    /* A zero length, and a length over the bound. */
    uint8_t saved[4];
    memcpy(saved, lens, 4);
    memset(lens, 0, 4);
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, out, len, &m), NET_EFORMAT);
    lens[2] = (NET_DELTA_MAX + 1) >> 8;
    lens[3] = (NET_DELTA_MAX + 1) & 0xff;
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, out, len, &m), NET_EFORMAT);
    memcpy(lens, saved, 4);
    lens[0] = 0xff; /* a length far past the payload */
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, out, len, &m), NET_EFORMAT);
    memcpy(lens, saved, 4);
    CHECK_OK(net_msg_decode(NET_MSG_DELTAS, out, len, &m));
    /* The count over its bound. */
    out[7] = 0;
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, out, len, &m), NET_EFORMAT);
    out[7] = NET_GET_MAX + 1;
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, out, len, &m), NET_EFORMAT);
    free(out);
}

static void every_truncation_and_extension_of_the_delta_messages_is_malformed(void)
{
    static uint8_t bases[2][NET_CHUNK_BYTES], chunks[2][NET_CHUNK_BYTES];
    uint8_t ids[2 * NET_ID_BYTES];
    size_t len;
    uint8_t *out = deltas_of(2, ids, &len, bases, chunks);
    uint8_t *buf = malloc(len + 1);
    memcpy(buf, out, len);
    buf[len] = 0;
    net_msg m;
    for (size_t l = 0; l < len; l++)
        CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, buf, l, &m), NET_EFORMAT);
    CHECK_EQ(net_msg_decode(NET_MSG_DELTAS, buf, len + 1, &m), NET_EFORMAT);
    free(buf);
    free(out);
    CHECK_OK(net_msg_encode_get_delta(9, ids, ids, 2, &out, &len));
    buf = malloc(len + 1);
    memcpy(buf, out, len);
    buf[len] = 0;
    for (size_t l = 0; l < len; l++)
        CHECK_EQ(net_msg_decode(NET_MSG_GET_DELTA, buf, l, &m), NET_EFORMAT);
    CHECK_EQ(net_msg_decode(NET_MSG_GET_DELTA, buf, len + 1, &m), NET_EFORMAT);
    free(buf);
    free(out);
}

/* Each thread codes with contexts of its own: deltas coded on several threads at once all
 * rebuild their chunks. */
static void *code_deltas(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg;
    uint8_t base[NET_CHUNK_BYTES], chunk[NET_CHUNK_BYTES], back[NET_CHUNK_BYTES];
    uint8_t frame[NET_DELTA_MAX];
    for (int i = 0; i < 200; i++) {
        base_and_changed(base, chunk, seed * 1000 + (uint64_t)i);
        size_t len;
        CHECK_OK(net_delta_encode(chunk, base, 1 + i % 5, frame, sizeof frame, &len));
        CHECK_OK(net_delta_decode(frame, len, base, back));
        CHECK_MEM(back, chunk, NET_CHUNK_BYTES);
    }
    return NULL;
}

static void deltas_code_on_several_threads_at_once(void)
{
    pthread_t th[4];
    for (uintptr_t i = 0; i < 4; i++)
        CHECK_OK(pthread_create(&th[i], NULL, code_deltas, (void *)(i + 1)));
    code_deltas((void *)(uintptr_t)9);
    for (int i = 0; i < 4; i++) CHECK_OK(pthread_join(th[i], NULL));
}

/* Three parts of one stream: the third repeats the first's random bytes, which the long window
 * finds, so it costs next to nothing; each decodes, in order, to exactly its chunks. */
static void zchunks_parts_decode_in_order_and_match_across_messages(void)
{
    enum { N = 32 };
    uint8_t ids[N * NET_ID_BYTES], *out[3];
    size_t len[3];
    uint8_t *data = malloc(3 * (size_t)N * NET_CHUNK_BYTES);
    tl_fill_random(data, 2 * (size_t)N * NET_CHUNK_BYTES, 5); /* two random batches */
    memcpy(data + 2 * (size_t)N * NET_CHUNK_BYTES, data, (size_t)N * NET_CHUNK_BYTES);
    ids_fill(ids, N, 6);
    net_zstream *enc = net_zstream_encoder(3), *dec = net_zstream_decoder();
    CHECK(enc && dec);
    for (int k = 0; k < 3; k++)
        CHECK_OK(net_msg_encode_zchunks((uint32_t)k, ids, N, data + (size_t)k * N * NET_CHUNK_BYTES,
                                        enc, &out[k], &len[k]));
    CHECK(len[2] < len[0] / 20); /* the repeat is a reference, not the bytes again */
    uint8_t *back = malloc((size_t)N * NET_CHUNK_BYTES);
    for (int k = 0; k < 3; k++) {
        net_msg m;
        CHECK_OK(net_msg_decode(NET_MSG_ZCHUNKS, out[k], len[k], &m));
        CHECK_EQ(m.req, (uint32_t)k);
        CHECK_EQ(m.n, N);
        CHECK_OK(net_msg_zchunks(&m, dec, back));
        CHECK_MEM(back, data + (size_t)k * N * NET_CHUNK_BYTES, (size_t)N * NET_CHUNK_BYTES);
    }
    /* Out of order, the third part means nothing to a fresh decoder. */
    net_zstream *fresh = net_zstream_decoder();
    net_msg m;
    CHECK_OK(net_msg_decode(NET_MSG_ZCHUNKS, out[2], len[2], &m));
    CHECK_EQ(net_msg_zchunks(&m, fresh, back), NET_EFORMAT);
    net_zstream_free(fresh);
    for (int k = 0; k < 3; k++) free(out[k]);
    free(back), free(data);
    net_zstream_free(enc), net_zstream_free(dec);
}

/* A part that claims more or fewer chunks than it holds, or carries bytes past its end, breaks
 * the stream and is refused; so are a part with no bytes and counts over the bound. */
static void zchunks_parts_must_hold_exactly_their_chunks(void)
{
    uint8_t ids[3 * NET_ID_BYTES], *out;
    size_t len;
    uint8_t data[2 * NET_CHUNK_BYTES];
    tl_fill_random(data, sizeof data, 7);
    ids_fill(ids, 3, 8);
    for (int variant = 0; variant < 3; variant++) {
        net_zstream *enc = net_zstream_encoder(3), *dec = net_zstream_decoder();
        CHECK_OK(net_msg_encode_zchunks(1, ids, 2, data, enc, &out, &len));
        uint8_t *msg = malloc(len + 4 + NET_ID_BYTES);
        net_msg m;
        uint8_t back[3 * NET_CHUNK_BYTES];
        if (variant == 0) { /* says 1 chunk: one id fewer, the same part */
            msg[0] = 0, msg[1] = 0, msg[2] = 0, msg[3] = 1, msg[4] = 0, msg[5] = 0, msg[6] = 0,
            msg[7] = 1;
            memcpy(msg + 8, out + 8, NET_ID_BYTES);
            memcpy(msg + 8 + NET_ID_BYTES, out + 8 + 2 * NET_ID_BYTES, len - 8 - 2 * NET_ID_BYTES);
            CHECK_OK(net_msg_decode(NET_MSG_ZCHUNKS, msg, len - NET_ID_BYTES, &m));
        } else if (variant == 1) { /* says 3 chunks: one id more */
            memcpy(msg, out, 8 + 2 * NET_ID_BYTES);
            msg[7] = 3;
            memcpy(msg + 8 + 2 * NET_ID_BYTES, ids + 2 * NET_ID_BYTES, NET_ID_BYTES);
            memcpy(msg + 8 + 3 * NET_ID_BYTES, out + 8 + 2 * NET_ID_BYTES, len - 8 - 2 * NET_ID_BYTES);
            CHECK_OK(net_msg_decode(NET_MSG_ZCHUNKS, msg, len + NET_ID_BYTES, &m));
        } else { /* the start of another frame after the part */
            memcpy(msg, out, len);
            static const uint8_t magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
            memcpy(msg + len, magic, 4);
            CHECK_OK(net_msg_decode(NET_MSG_ZCHUNKS, msg, len + 4, &m));
        }
        CHECK_EQ(net_msg_zchunks(&m, dec, back), NET_EFORMAT);
        free(msg), free(out);
        net_zstream_free(enc), net_zstream_free(dec);
    }
    net_msg m;
    uint8_t hdr[8 + NET_ID_BYTES] = {0, 0, 0, 1, 0, 0, 0, 1};
    CHECK_EQ(net_msg_decode(NET_MSG_ZCHUNKS, hdr, sizeof hdr, &m), NET_EFORMAT); /* no part */
    net_zstream *enc = net_zstream_encoder(3);
    CHECK_EQ(net_msg_encode_zchunks(1, ids, NET_GET_MAX + 1, data, enc, &out, &len), -EINVAL);
    net_zstream_free(enc);
}

TL_MAIN(TL_CASE(round_trip_of_every_message_type), TL_CASE(chunks_batch_round_trips_bit_identical),
        TL_CASE(a_full_get_answer_fits_one_message),
        TL_CASE(chunks_declaring_another_size_are_refused_before_decompressing),
        TL_CASE(chunks_without_a_declared_size_are_refused),
        TL_CASE(trailing_bytes_after_the_frame_are_refused),
        TL_CASE(counts_over_the_bounds_are_refused),
        TL_CASE(every_truncation_and_extension_is_malformed),
        TL_CASE(bitmap_bits_past_the_count_must_be_zero),
        TL_CASE(manifest_parts_stay_within_the_total), TL_CASE(get_delta_round_trips_at_its_bounds),
        TL_CASE(a_delta_of_a_one_percent_change_is_small_and_rebuilds_bit_identical),
        TL_CASE(a_delta_against_the_wrong_base_gives_another_chunk),
        TL_CASE(an_incompressible_delta_fits_the_bound_or_says_too_big),
        TL_CASE(deltas_round_trip_and_rebuild_every_chunk),
        TL_CASE(a_full_deltas_answer_fits_one_message),
        TL_CASE(deltas_declaring_another_size_are_refused_before_decompressing),
        TL_CASE(deltas_lengths_must_fill_the_payload_exactly),
        TL_CASE(every_truncation_and_extension_of_the_delta_messages_is_malformed),
        TL_CASE(deltas_code_on_several_threads_at_once),
        TL_CASE(zchunks_parts_decode_in_order_and_match_across_messages),
        TL_CASE(zchunks_parts_must_hold_exactly_their_chunks))
