/* gen_corpus.c — writes the seed corpora of net/'s fuzz targets:
 * gen_corpus FRAME_DIR HANDSHAKE_DIR [MSG_DIR LAUNCH_DIR PROBE_DIR]. Valid inputs under the
 * targets' fixed keys, and near-valid ones. */
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

/* msg_fuzz: the first byte picks MANIFEST_GET + byte % 11. */
static void save_msg(const char *dir, const char *name, uint8_t type, uint8_t *buf, size_t len)
{
    save(dir, name, (uint8_t)(type - NET_MSG_MANIFEST_GET), buf, len);
    free(buf);
}

static void messages(const char *dir)
{
    static uint8_t ids[8 * NET_ID_BYTES], chunks[4 * NET_CHUNK_BYTES];
    static uint8_t bases[3][NET_CHUNK_BYTES], changed[3][NET_CHUNK_BYTES];
    uint8_t frames[3][NET_DELTA_MAX], *out;
    const uint8_t *fp[3];
    size_t len, lens[3];
    tl_fill_random(ids, sizeof ids, 1);
    tl_fill_random(chunks, sizeof chunks / 2, 2);
    CHECK_OK(net_msg_encode_manifest_get(ids, 7, &out, &len));
    save_msg(dir, "manifest_get", NET_MSG_MANIFEST_GET, out, len);
    CHECK_OK(net_msg_encode_manifest(ids, true, 100, 40, chunks, 60, &out, &len));
    save_msg(dir, "manifest_part", NET_MSG_MANIFEST, out, len);
    CHECK_OK(net_msg_encode_manifest(ids, false, 0, 0, NULL, 0, &out, &len));
    save_msg(dir, "manifest_not_found", NET_MSG_MANIFEST, out, len);
    CHECK_OK(net_msg_encode_ids(NET_MSG_HAVE, 3, ids, 8, &out, &len));
    save_msg(dir, "have", NET_MSG_HAVE, out, len);
    CHECK_OK(net_msg_encode_bitmap(3, 13, chunks, &out, &len));
    save_msg(dir, "have_bitmap", NET_MSG_HAVE_BITMAP, out, len);
    CHECK_OK(net_msg_encode_ids(NET_MSG_GET, 4, ids, 4, &out, &len));
    save_msg(dir, "get", NET_MSG_GET, out, len);
    CHECK_OK(net_msg_encode_chunks(4, ids, 4, chunks, 1, &out, &len));
    save_msg(dir, "chunks", NET_MSG_CHUNKS, out, len);
    CHECK_OK(net_msg_encode_ids(NET_MSG_DONT_HAVE, 4, ids, 2, &out, &len));
    save_msg(dir, "dont_have", NET_MSG_DONT_HAVE, out, len);
    net_pull_source src[2] = {{.port = 7420}, {.port = 1}};
    memcpy(src[0].key, ids, NET_KEY_BYTES);
    strcpy(src[0].host, "10.0.0.1");
    strcpy(src[1].host, "node-b.lan");
    CHECK_OK(net_msg_encode_pull_ask(5, ids, src, 2, &out, &len));
    save_msg(dir, "pull_ask", NET_MSG_PULL_ASK, out, len);
    CHECK_OK(net_msg_encode_pull_done(5, true, 42, "pulled", 6, &out, &len));
    save_msg(dir, "pull_done", NET_MSG_PULL_DONE, out, len);
    CHECK_OK(net_msg_encode_get_delta(6, ids, ids + 3 * NET_ID_BYTES, 3, &out, &len));
    save_msg(dir, "get_delta", NET_MSG_GET_DELTA, out, len);
    /* DELTAS of 1 % changes: the first against zeros (the fuzz target's zero base rebuilds
     * it), the others against random bases. */
    for (int i = 0; i < 3; i++) {
        if (i == 0)
            memset(bases[i], 0, NET_CHUNK_BYTES);
        else
            tl_fill_random(bases[i], NET_CHUNK_BYTES, 10 + (uint64_t)i);
        memcpy(changed[i], bases[i], NET_CHUNK_BYTES);
        for (size_t k = 0; k < NET_CHUNK_BYTES; k += 100)
            changed[i][k] ^= (uint8_t)(0x11 * (i + 1));
        CHECK_OK(net_delta_encode(changed[i], bases[i], 1, frames[i], NET_DELTA_MAX, &lens[i]));
        fp[i] = frames[i];
    }
    CHECK_OK(net_msg_encode_deltas(6, ids, 3, fp, lens, &out, &len));
    save_msg(dir, "deltas", NET_MSG_DELTAS, out, len);
    CHECK_OK(net_msg_encode_deltas(6, ids, 1, fp, lens, &out, &len));
    save_msg(dir, "deltas_one", NET_MSG_DELTAS, out, len);
    /* The first part of a ZCHUNKS stream (a fresh decoder can read it). */
    net_zstream *z = net_zstream_encoder(3);
    CHECK(z != NULL);
    CHECK_OK(net_msg_encode_zchunks(7, ids, 4, chunks, z, &out, &len));
    save_msg(dir, "zchunks", NET_MSG_ZCHUNKS, out, len);
    net_zstream_free(z);
}

static void launches(const char *dir)
{
    static net_launch_progress p;
    static net_launch_done d;
    net_launch_req q = {.req = 1};
    uint8_t *out;
    size_t len;
    tl_fill_random(q.id, NET_ID_BYTES, 3);
    strcpy(q.name, "web-1.test_A");
    CHECK_OK(net_launch_encode_req(&q, &out, &len));
    save(dir, "launch", 0, out, len);
    free(out);
    q.name[0] = '\0';
    CHECK_OK(net_launch_encode_req(&q, &out, &len));
    save(dir, "launch_no_name", 0, out, len);
    free(out);
    p.req = 1;
    p.stage = NET_LAUNCH_TRANSFER;
    p.elapsed_ms = 1234;
    p.fetch_total = 1 << 20, p.fetch_done = 1 << 19, p.vm_total = 1 << 30, p.vm_done = 1 << 20;
    p.nsources = 3;
    const char *labels[] = {"local", "3f2a9c01be77", "origin"};
    for (uint32_t i = 0; i < 3; i++) {
        p.src[i].kind = (uint8_t)i;
        p.src[i].bytes = 4096u * (i + 1);
        strcpy(p.src[i].label, labels[i]);
    }
    CHECK_OK(net_launch_encode_progress(&p, &out, &len));
    save(dir, "progress", 1, out, len);
    free(out);
    d.req = 1;
    d.ok = true;
    d.resolve_ms = 3, d.transfer_ms = 900, d.apply_ms = 40, d.restore_ms = 700, d.total_ms = 1650;
    d.nsources = 3;
    memcpy(d.src, p.src, sizeof d.src);
    strcpy(d.domain, "web-1");
    strcpy(d.uuid, "6f1c1d7e-8a0b-4c55-9e1f-2b3c4d5e6f70");
    strcpy(d.accel, "kvm");
    strcpy(d.console, "/var/lib/cloudlet/vm/web-1/console.sock");
    strcpy(d.address, "10.0.0.5 (52:54:00:12:34:56)");
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    save(dir, "done_ok", 2, out, len);
    free(out);
    memset(&d, 0, sizeof d);
    d.req = 1;
    strcpy(d.error, "manifest not found on this node or its origin");
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    save(dir, "done_failed", 2, out, len);
    free(out);
}

/* probe_fuzz: byte 0 even = a probe, odd = the token and then an answer; fixed client key. */
static void probes(const char *dir)
{
    uint8_t client[NET_KEY_BYTES], key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES], nonce[24];
    uint8_t buf[NET_PROBE_TOKEN_BYTES + NET_PROBE_MAX_BYTES];
    size_t len;
    for (int i = 0; i < NET_KEY_BYTES; i++) client[i] = (uint8_t)(0x77 + i);
    net_probe_key(client, key);
    tl_fill_random(token, sizeof token, 4);
    tl_fill_random(nonce, sizeof nonce, 5);
    net_probe_seal(key, token, 1764064800000ull, nonce, buf, &len);
    save(dir, "probe", 0, buf, len);
    net_probe_answer a = {.tcp_port = 7420, .chunks = 123456, .manifests = 7};
    fixed(a.node_pk, 0x22);
    memcpy(buf, token, sizeof token);
    net_probe_answer_seal(key, token, &a, nonce, buf + sizeof token, &len);
    save(dir, "answer", 1, buf, sizeof token + len);
    buf[0] ^= 1; /* another token */
    save(dir, "answer_other_token", 1, buf, sizeof token + len);
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 6) {
        fprintf(stderr,
                "usage: gen_corpus FRAME_DIR HANDSHAKE_DIR [MSG_DIR LAUNCH_DIR PROBE_DIR]\n");
        return 2;
    }
    frames(argv[1]);
    handshakes(argv[2]);
    if (argc == 6) {
        messages(argv[3]);
        launches(argv[4]);
        probes(argv[5]);
    }
    return 0;
}
