/*
 * client.c — the client library's handle, errors, addresses and node discovery
 * (cloudlet_client.h). The launch itself is in client_launch.c.
 */
#define _GNU_SOURCE
#include "client_internal.h"
#include "node.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define PROBE_WAIT_MS 1500

const char *cl_strerror(int err)
{
    switch (err) {
    case CL_ENOKEY: return "the home has no client key";
    case CL_ENONODE: return "no node answered";
    case CL_EFLEET: return "the node is not of this fleet (the handshake failed)";
    case CL_EGONE: return "the node went away";
    case CL_ELAUNCH: return "the launch failed on the node";
    case CL_EPROTOCOL: return "the node broke the protocol";
    case CL_EADDRESS: return "malformed or unknown node address";
    }
    if (err <= -30000 && err > -31000) return cs_strerror(err);
    return net_strerror(err);
}

/* ---- the home ------------------------------------------------------------------------------ */

static int client_load(cl_client *c, const char *home, char err[CL_ERRMSG])
{
    char nerr[NODE_ERRMSG] = "";
    char *path = node_home_path(home, "store");
    if (!path) return -ENOMEM;
    int rc = cs_open(path, CS_OPEN_READONLY, &c->st);
    free(path);
    if (rc) {
        snprintf(err, CL_ERRMSG, "cannot open the store of %s (made by `cloudlet init`): %s", home,
                 cs_strerror(rc));
        return rc;
    }
    uint8_t sk[NODE_KEY_BYTES];
    if (!(path = node_home_path(home, NODE_KEY_FILE))) return -ENOMEM;
    rc = node_key_read(path, NODE_KEY_NODE_SECRET, true, sk, nerr);
    free(path);
    if (!rc) rc = net_keypair_from_secret(&c->kp, sk);
    node_secret_wipe(sk, sizeof sk);
    if (rc) {
        snprintf(err, CL_ERRMSG, "%s", nerr[0] ? nerr : cl_strerror(rc));
        return rc;
    }
    if (!(path = node_home_path(home, CL_CLIENT_KEY_FILE))) return -ENOMEM;
    rc = node_key_read(path, NODE_KEY_CLIENT, true, c->client_key, nerr);
    free(path);
    if (rc != CS_ENOTFOUND) {
        if (rc) snprintf(err, CL_ERRMSG, "%s", nerr);
        return rc;
    }
    /* A node's own home holds the fleet key, from which the client key derives: the command
     * run on a node launches on another without a client key of its own. */
    uint8_t fleet[NODE_KEY_BYTES];
    rc = node_fleet_key_load(home, fleet, nerr);
    if (!rc) node_client_key(fleet, c->client_key);
    node_secret_wipe(fleet, sizeof fleet);
    if (rc == CS_ENOTFOUND) {
        snprintf(err, CL_ERRMSG,
                 "%s has no client key: ask a node of the fleet for it (`cloudlet fleet-key "
                 "--client`) and store it with `cloudlet init --client-key FILE`",
                 home);
        return CL_ENOKEY;
    }
    if (rc) snprintf(err, CL_ERRMSG, "%s", nerr);
    return rc;
}

int cl_client_open(const char *home, cl_client **out, char err[CL_ERRMSG])
{
    err[0] = '\0';
    if (sodium_init() < 0) return -ENOMEM;
    char *h = node_home(home);
    cl_client *c = calloc(1, sizeof *c);
    if (!h || !c) {
        free(h), free(c);
        return -ENOMEM;
    }
    int rc = client_load(c, h, err);
    free(h);
    if (rc) {
        if (!err[0]) snprintf(err, CL_ERRMSG, "%s", cl_strerror(rc));
        cl_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void cl_client_close(cl_client *c)
{
    if (!c) return;
    cs_close(c->st);
    sodium_memzero(c, sizeof *c);
    free(c);
}

const uint8_t *cl_client_key(const cl_client *c)
{
    return c->kp.pk;
}

/* ---- addresses ----------------------------------------------------------------------------- */

int cl__resolve(const char *host, char out[64])
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (!host[0] || getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) return CL_EADDRESS;
    int rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, out, 64, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(ai);
    return rc ? CL_EADDRESS : 0;
}

int cl_node_parse(const char *hostport, cl_node *out)
{
    memset(out, 0, sizeof *out);
    out->port = CL_PORT;
    const char *host = hostport, *port = NULL;
    size_t hlen;
    if (hostport[0] == '[') {
        const char *end = strchr(hostport, ']');
        if (!end || (end[1] && end[1] != ':')) return CL_EADDRESS;
        host = hostport + 1;
        hlen = (size_t)(end - host);
        if (end[1]) port = end + 2;
    } else {
        const char *colon = strchr(hostport, ':');
        /* More than one colon and no brackets: an IPv6 address without a port. */
        if (colon && !strchr(colon + 1, ':')) port = colon + 1;
        hlen = port ? (size_t)(colon - hostport) : strlen(hostport);
    }
    if (hlen == 0 || hlen >= sizeof out->host) return CL_EADDRESS;
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    if (port) {
        char *e;
        errno = 0;
        unsigned long p = strtoul(port, &e, 10);
        if (!port[0] || *e || errno || p == 0 || p > 65535 || port[0] == '+' || port[0] == '-')
            return CL_EADDRESS;
        out->port = (uint16_t)p;
    }
    return 0;
}

int cl_node_key_parse(const char *text, uint8_t key[CL_KEY_BYTES], char err[CL_ERRMSG])
{
    char nerr[NODE_ERRMSG] = "";
    int rc = node_key_decode(text, strlen(text), NODE_KEY_NODE_PUBLIC, key, nerr);
    if (rc) {
        snprintf(err, CL_ERRMSG, "%s", nerr);
        return CL_EADDRESS;
    }
    return 0;
}

/* ---- discovery ----------------------------------------------------------------------------- */

static void node_from_answer(const net_found_node *f, cl_node *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->host, sizeof out->host, "%s", f->host);
    out->port = f->a.tcp_port;
    out->has_key = true;
    memcpy(out->key, f->a.node_pk, CL_KEY_BYTES);
    out->chunks = f->a.chunks;
    out->manifests = f->a.manifests;
}

int cl_discover(cl_client *c, const char *group, uint16_t port, unsigned wait_ms, cl_node *out,
                size_t max)
{
    if (max == 0) return -EINVAL;
    char ip[64];
    int rc = cl__resolve(group ? group : CL_DISCOVERY_GROUP, ip);
    if (rc) return rc;
    net_found_node *found = calloc(max, sizeof *found);
    if (!found) return -ENOMEM;
    int n = net_probe_find(c->client_key, ip, port ? port : CL_DISCOVERY_PORT,
                           wait_ms ? wait_ms : PROBE_WAIT_MS, found, max);
    for (int i = 0; i < n; i++) node_from_answer(&found[i], &out[i]);
    free(found);
    return n == 0 ? CL_ENONODE : n;
}

int cl_probe(cl_client *c, const char *host, uint16_t port, unsigned wait_ms, cl_node *out)
{
    char ip[64];
    int rc = cl__resolve(host, ip);
    if (rc) return rc;
    net_found_node f;
    int n = net_probe_find(c->client_key, ip, port ? port : CL_DISCOVERY_PORT,
                           wait_ms ? wait_ms : PROBE_WAIT_MS, &f, 1);
    if (n < 0) return n;
    if (n == 0) return CL_ENONODE;
    node_from_answer(&f, out);
    return 0;
}

const char *cl_stage_name(int stage)
{
    return stage > 0 && stage < 256 ? net_launch_stage_name((uint8_t)stage) : "?";
}
