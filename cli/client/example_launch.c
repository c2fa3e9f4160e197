/*
 * example_launch.c — a complete app using the client library (docs/client.md): it finds a node
 * of the fleet, has it launch the VM whose manifest id is given, serves the node what it asks
 * from the app's home, prints progress as it comes and the result at the end.
 *
 *   client_example [--home DIR] [--node HOST[:PORT] --node-key KEY] MANIFEST-ID
 *
 * Without --node, the node is found by the discovery probe on the LAN.
 */
#include "cloudlet_client.h"

#include <stdio.h>
#include <string.h>

static void on_progress(const cl_progress *p, void *arg)
{
    (void)arg;
    printf("%-8s %llu / %llu bytes fetched", cl_stage_name(p->stage),
           (unsigned long long)p->fetch_done, (unsigned long long)p->fetch_total);
    for (unsigned i = 0; i < p->nsources; i++)
        printf(", %s %llu", p->src[i].label, (unsigned long long)p->src[i].bytes);
    printf("; this app sent %llu chunks, %llu deltas\n", (unsigned long long)p->served_chunks,
           (unsigned long long)p->served_deltas);
}

static int parse_id(const char *hex, uint8_t id[CL_ID_BYTES])
{
    if (strlen(hex) != 2 * CL_ID_BYTES) return -1;
    for (unsigned i = 0; i < CL_ID_BYTES; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        id[i] = (uint8_t)v;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *home = NULL, *addr = NULL, *key = NULL, *hex = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--home") && i + 1 < argc)
            home = argv[++i];
        else if (!strcmp(argv[i], "--node") && i + 1 < argc)
            addr = argv[++i];
        else if (!strcmp(argv[i], "--node-key") && i + 1 < argc)
            key = argv[++i];
        else
            hex = argv[i];
    }
    uint8_t id[CL_ID_BYTES];
    if (!hex || parse_id(hex, id) || (addr && !key)) {
        fprintf(stderr, "usage: %s [--home DIR] [--node HOST[:PORT] --node-key KEY] ID\n", argv[0]);
        return 2;
    }

    char err[CL_ERRMSG];
    cl_client *c;
    int rc = cl_client_open(home, &c, err);
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    cl_node node;
    if (addr) {
        if (cl_node_parse(addr, &node) || cl_node_key_parse(key, node.key, err)) {
            fprintf(stderr, "bad node address or key %s\n", err);
            cl_client_close(c);
            return 1;
        }
        node.has_key = true;
    } else if ((rc = cl_discover(c, NULL, 0, 0, &node, 1)) < 0) {
        fprintf(stderr, "discovery: %s\n", cl_strerror(rc));
        cl_client_close(c);
        return 1;
    }
    printf("launching on %s port %u\n", node.host, node.port);

    cl_launch_opts o = {.wait = true, .progress = on_progress};
    cl_result r;
    rc = cl_launch(c, &node, id, &o, &r);
    cl_client_close(c);
    if (rc) {
        fprintf(stderr, "launch failed: %s\n", r.error);
        return 1;
    }
    printf("domain %s (uuid %s, %s)\n", r.domain, r.uuid, r.accel);
    if (r.console[0]) printf("console %s on the node\n", r.console);
    if (r.address[0]) printf("address %s\n", r.address);
    printf("resolve %u ms, transfer %u ms, apply %u ms, restore %u ms, total %u ms\n", r.resolve_ms,
           r.transfer_ms, r.apply_ms, r.restore_ms, r.total_ms);
    for (unsigned i = 0; i < r.nsources; i++)
        printf("from %s: %llu bytes\n", r.src[i].label, (unsigned long long)r.src[i].bytes);
    return 0;
}
