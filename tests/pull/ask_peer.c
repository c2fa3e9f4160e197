/*
 * ask_peer HOME peer|client PORT NODEKEY ID — connects to the daemon at 127.0.0.1:PORT whose
 * node key is NODEKEY, in the given role, with the keys of node home HOME, and sends one GET for
 * chunk ID. Prints what came back: "chunks N" (and whether they match their ids), "dont_have N",
 * or "closed REASON" when the daemon hung up instead. Exits 0 when anything came back at all.
 */
#include "net.h"
#include "node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int done;
static uint8_t want[NET_ID_BYTES];

static void on_established(net_conn *c)
{
    uint8_t *buf;
    size_t len;
    if (net_msg_encode_ids(NET_MSG_GET, 1, want, 1, &buf, &len) != 0 ||
        net_conn_send(c, NET_MSG_GET, buf, len) != 0) {
        printf("cannot send\n");
        net_conn_abort(c, NET_ECLOSED);
    }
    free(buf);
}

static void on_message(net_conn *c, uint8_t type, const uint8_t *payload, size_t len)
{
    net_msg m;
    if (net_msg_decode(type, payload, len, &m) != 0) {
        printf("malformed answer\n");
    } else if (type == NET_MSG_CHUNKS) {
        uint8_t *data = malloc((size_t)m.n * NET_CHUNK_BYTES);
        uint8_t id[NET_ID_BYTES];
        bool ok = data && net_msg_chunks(&m, data) == 0;
        if (ok) crypto_generichash(id, sizeof id, data, NET_CHUNK_BYTES, NULL, 0);
        printf("chunks %u %s\n", m.n, ok && !memcmp(id, want, sizeof id) ? "verified" : "bad");
        free(data);
    } else if (type == NET_MSG_DONT_HAVE) {
        printf("dont_have %u\n", m.n);
    } else {
        printf("type 0x%02x\n", type);
    }
    done = 1;
    net_conn_close(c);
}

static void on_close(net_conn *c, int status)
{
    (void)c;
    if (!done) printf("closed %s\n", net_strerror(status));
    done = 1;
}

static const net_conn_cbs cbs = {on_established, on_message, NULL, on_close};

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: ask_peer HOME peer|client PORT NODEKEY ID\n");
        return 2;
    }
    char err[NODE_ERRMSG];
    node_keys k;
    uint8_t peer_pk[NET_KEY_BYTES];
    if (node_keys_load(argv[1], &k, err) != 0 || !k.has_fleet ||
        node_key_decode(argv[4], strlen(argv[4]), NODE_KEY_NODE_PUBLIC, peer_pk, err) != 0 ||
        sodium_hex2bin(want, sizeof want, argv[5], strlen(argv[5]), NULL, NULL, NULL) != 0) {
        fprintf(stderr, "ask_peer: bad home, key or id\n");
        return 2;
    }
    bool client = !strcmp(argv[2], "client");
    net_keypair kp;
    net_keys nk;
    if (net_keypair_from_secret(&kp, k.node_sk) != 0) return 1;
    if (client) {
        uint8_t ck[NET_KEY_BYTES];
        node_client_key(k.fleet, ck);
        net_client_keys(&nk, ck);
    } else {
        net_fleet_keys(&nk, k.fleet);
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    net_endpoint *ep;
    net_conn *c;
    if (net_endpoint_new(&loop, &kp, &nk, NULL, &ep) != 0 ||
        net_connect(ep, "127.0.0.1", atoi(argv[3]), peer_pk,
                    client ? NET_ROLE_CLIENT : NET_ROLE_PEER, NULL, &cbs, NULL, &c) != 0)
        return 1;
    while (!done && uv_run(&loop, UV_RUN_ONCE)) {}
    net_endpoint_close(ep, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return done ? 0 : 1;
}
