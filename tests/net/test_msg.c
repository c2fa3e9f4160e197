/* Chunk exchange messages: encoders and the decoder of untrusted payloads (docs/protocol.md). */
#include "net.h"
#include "testlib.h"

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

TL_MAIN(TL_CASE(round_trip_of_every_message_type), TL_CASE(chunks_batch_round_trips_bit_identical),
        TL_CASE(a_full_get_answer_fits_one_message),
        TL_CASE(chunks_declaring_another_size_are_refused_before_decompressing),
        TL_CASE(chunks_without_a_declared_size_are_refused),
        TL_CASE(trailing_bytes_after_the_frame_are_refused),
        TL_CASE(counts_over_the_bounds_are_refused),
        TL_CASE(every_truncation_and_extension_is_malformed),
        TL_CASE(bitmap_bits_past_the_count_must_be_zero),
        TL_CASE(manifest_parts_stay_within_the_total))
