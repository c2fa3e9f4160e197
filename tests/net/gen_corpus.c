/* gen_corpus.c — writes the seed corpora of net/'s fuzz targets:
 * gen_corpus FRAME_DIR HANDSHAKE_DIR. Valid inputs under the targets' fixed keys, and near-valid
 * ones. */
#define _GNU_SOURCE
#include "net.h"
#include "testlib.h"

static void save(const char *dir, const char *name, uint8_t first, const uint8_t *buf, size_t len)
{
    char *path;
    if (asprintf(&path, "%s/%s", dir, name) < 0) abort();
    FILE *f = fopen(path, "wb");
    if (!f || fputc(first, f) == EOF || fwrite(buf, 1, len, f) != len || fclose(f) != 0)
        TL_FAIL("writing %s", path);
    free(path);
}

static void fixed(uint8_t out[32], uint8_t v)
{
    for (int i = 0; i < 32; i++) out[i] = (uint8_t)(v + i);
}

static void handshakes(const char *dir)
{
    uint8_t fleet[32], sk[32], e[32], ts[NET_HS_TIMESTAMP_BYTES];
    uint8_t init[NET_HS_INIT_BYTES], resp[NET_HS_RESP_BYTES], buf[1 + NET_HS_INIT_BYTES];
    net_keypair rk, ik;
    net_keys keys, app;
    net_hs_initiator st;
    net_hs_result res;
    net_hs_responder *r;
    fixed(fleet, 0x11);
    fixed(sk, 0x22);
    CHECK_OK(net_keypair_from_secret(&rk, sk));
    fixed(sk, 0x33);
    CHECK_OK(net_keypair_from_secret(&ik, sk));
    net_fleet_keys(&keys, fleet);
    net_client_keys(&app, keys.client);
    fixed(e, 0x44);
    net_tai64n(1764064800ull * 1000000000ull, ts);
    CHECK_OK(net_hs_initiate(&st, &ik, &keys, NET_ROLE_PEER, rk.pk, e, ts, init));
    CHECK_OK(net_hs_responder_new(&rk, &keys, 8, &r));
    fixed(e, 0x55);
    CHECK_OK(net_hs_respond(r, init, sizeof init, e, resp, &res));
    net_hs_responder_free(r);
    save(dir, "init_peer", 0, init, sizeof init);
    save(dir, "init_peer_remac", 1, init, sizeof init);
    save(dir, "response", 2, resp, sizeof resp);
    save(dir, "response_short", 2, resp, sizeof resp - 1);
    memcpy(buf, init, sizeof init);
    buf[120] ^= 1;
    save(dir, "init_bad_mac", 0, buf, sizeof init);
    buf[120] ^= 1;
    buf[50] ^= 1;
    save(dir, "init_bad_static_remac", 1, buf, sizeof init);
    fixed(e, 0x46);
    CHECK_OK(net_hs_initiate(&st, &ik, &app, NET_ROLE_CLIENT, rk.pk, e, ts, init));
    save(dir, "init_client_remac", 1, init, sizeof init);
    /* Scripts of genuine handshakes: fresh, replayed, older, another initiator, client role. */
    const uint8_t script[] = {0, 10, 0, 0, 10, 0, 0, 9, 1, 1, 5, 1, 0, 11, 0, 1, 5, 0, 2, 1, 1};
    save(dir, "script_replays", 3, script, sizeof script);
    net_hs_initiator_wipe(&st);
}

/* A stream under the frame target's fixed key: header frame, HELLO, messages, CLOSE. */
static size_t stream(uint8_t *out, size_t nmsgs, size_t msglen)
{
    net_hs_result keys;
    net_channel ch;
    uint8_t header[NET_STREAM_HEADER_BYTES];
    memset(&keys, 0, sizeof keys);
    for (int i = 0; i < 32; i++) keys.tx[i] = keys.rx[i] = (uint8_t)(0x66 + i);
    CHECK_OK(net_channel_init(&ch, &keys, header));
    size_t n = 0, blen;
    net_frame_put_prefix(out, sizeof header);
    memcpy(out + 4, header, sizeof header);
    n += 4 + sizeof header;
    CHECK_OK(net_channel_seal(&ch, NET_MSG_HELLO, NULL, 0, out + n + 4, &blen));
    net_frame_put_prefix(out + n, (uint32_t)blen);
    n += 4 + blen;
    uint8_t payload[4096];
    for (size_t i = 0; i < nmsgs; i++) {
        tl_fill_random(payload, msglen, i);
        CHECK_OK(net_channel_seal(&ch, 0x20, payload, msglen, out + n + 4, &blen));
        net_frame_put_prefix(out + n, (uint32_t)blen);
        n += 4 + blen;
    }
    CHECK_OK(net_channel_seal(&ch, NET_MSG_CLOSE, NULL, 0, out + n + 4, &blen));
    net_frame_put_prefix(out + n, (uint32_t)blen);
    n += 4 + blen;
    net_channel_wipe(&ch);
    return n;
}

static void frames(const char *dir)
{
    static uint8_t buf[64 * 1024];
    uint8_t bound_and_stream[sizeof buf + 1];
    size_t n = stream(buf, 3, 40);
    bound_and_stream[0] = 0xff;
    memcpy(bound_and_stream + 1, buf, n);
    save(dir, "stream_whole", 255, bound_and_stream, n + 1);
    save(dir, "stream_bytewise", 0, bound_and_stream, n + 1);
    save(dir, "stream_step7", 6, bound_and_stream, n + 1);
    n = stream(buf, 2, 3000);
    memcpy(bound_and_stream + 1, buf, n);
    save(dir, "stream_large", 100, bound_and_stream, n + 1);
    bound_and_stream[0] = 2; /* a 128-byte bound: the large frames are refused */
    save(dir, "stream_over_bound", 100, bound_and_stream, n + 1);
    n = stream(buf, 2, 10);
    buf[n - 5] ^= 1; /* a flipped byte in the CLOSE frame */
    bound_and_stream[0] = 0xff;
    memcpy(bound_and_stream + 1, buf, n);
    save(dir, "stream_flipped", 255, bound_and_stream, n + 1);
    uint8_t huge[5] = {0xff, 0xff, 0xff, 0xff, 0xff};
    save(dir, "huge_prefix", 255, huge, sizeof huge);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: gen_corpus FRAME_DIR HANDSHAKE_DIR\n");
        return 2;
    }
    frames(argv[1]);
    handshakes(argv[2]);
    return 0;
}
