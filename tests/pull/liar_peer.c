/*
 * liar_peer HOME — a fleet member that lies: it claims every chunk it is asked about and answers
 * every GET with bytes that do not match the ids. Tests point a puller at it to see that such
 * chunks are dropped, counted against it, and fetched from another peer.
 *
 * It takes its keys from node home HOME, listens on 127.0.0.1 (any port), prints the port on
 * standard output, and runs until SIGTERM.
 */
#include "net.h"
#include "node.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t loop;
static net_endpoint *ep;
static uv_signal_t sig;

static void answer(net_conn *c, uint8_t type, const uint8_t *payload, size_t len)
{
    net_msg m;
    if (net_msg_decode(type, payload, len, &m) != 0) return;
    uint8_t *out = NULL;
    size_t olen = 0;
    int rc = -1;
    if (type == NET_MSG_MANIFEST_GET) {
        rc = net_msg_encode_manifest(m.id, false, 0, 0, NULL, 0, &out, &olen);
        type = NET_MSG_MANIFEST;
    } else if (type == NET_MSG_HAVE) {
        uint8_t *bits = malloc((m.n + 7) / 8);
        memset(bits, 0xff, (m.n + 7) / 8);
        rc = net_msg_encode_bitmap(m.req, m.n, bits, &out, &olen);
        free(bits);
        type = NET_MSG_HAVE_BITMAP;
    } else if (type == NET_MSG_GET) {
        uint8_t *junk = malloc((size_t)m.n * NET_CHUNK_BYTES);
        for (size_t i = 0; i < (size_t)m.n * NET_CHUNK_BYTES; i++) junk[i] = (uint8_t)(i * 13 + 7);
        rc = net_msg_encode_chunks(m.req, m.ids, m.n, junk, 1, &out, &olen);
        free(junk);
        type = NET_MSG_CHUNKS;
    }
    if (rc == 0 && net_conn_send(c, type, out, olen) != 0) net_conn_abort(c, NET_ECLOSED);
    free(out);
}

static void on_close(net_conn *c, int status)
{
    (void)c, (void)status;
}

static const net_conn_cbs cbs = {NULL, answer, NULL, on_close};

static void on_accept(net_endpoint *e, net_conn *c)
{
    (void)e;
    net_conn_set_cbs(c, &cbs, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    uv_close((uv_handle_t *)h, NULL);
    net_endpoint_close(ep, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: liar_peer HOME\n");
        return 2;
    }
    char err[NODE_ERRMSG];
    node_keys k;
    if (node_keys_load(argv[1], &k, err) != 0 || !k.has_fleet) {
        fprintf(stderr, "liar_peer: %s\n", k.has_fleet ? err : "no fleet key");
        return 1;
    }
    net_keypair kp;
    net_keys nk;
    if (net_keypair_from_secret(&kp, k.node_sk) != 0) return 1;
    net_fleet_keys(&nk, k.fleet);
    uv_loop_init(&loop);
    if (net_endpoint_new(&loop, &kp, &nk, NULL, &ep) != 0 ||
        net_endpoint_listen(ep, "127.0.0.1", 0, on_accept) != 0)
        return 1;
    printf("%d\n", net_endpoint_port(ep));
    fflush(stdout);
    uv_signal_init(&loop, &sig);
    uv_signal_start(&sig, on_signal, SIGTERM);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 0;
}
