/* probe_find.c — finds nodes the way an app does, for the namespace tests:
 *   probe_find CLIENT_KEY_FILE HOST PORT WAIT_MS
 * CLIENT_KEY_FILE holds a "cloudlet-client-key:<64 hex digits>" line. Prints one line per node
 * that answered: "cloudlet-node-key:<hex> HOST TCP_PORT CHUNKS MANIFESTS". Exits 0, or 1 with
 * the reason on stderr. */
#include "net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NODES 64

static int read_client_key(const char *path, uint8_t key[NET_KEY_BYTES])
{
    static const char prefix[] = "cloudlet-client-key:";
    char line[256];
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got || strncmp(line, prefix, sizeof prefix - 1) != 0) return -1;
    size_t bin_len;
    if (sodium_hex2bin(key, NET_KEY_BYTES, line + sizeof prefix - 1,
                       strcspn(line + sizeof prefix - 1, "\n"), NULL, &bin_len, NULL) != 0 ||
        bin_len != NET_KEY_BYTES)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: probe_find CLIENT_KEY_FILE HOST PORT WAIT_MS\n");
        return 1;
    }
    uint8_t key[NET_KEY_BYTES];
    if (sodium_init() < 0 || read_client_key(argv[1], key) != 0) {
        fprintf(stderr, "probe_find: %s holds no client key\n", argv[1]);
        return 1;
    }
    static net_found_node found[MAX_NODES];
    int n = net_probe_find(key, argv[2], (uint16_t)atoi(argv[3]), (unsigned)atoi(argv[4]), found,
                           MAX_NODES);
    sodium_memzero(key, sizeof key);
    if (n < 0) {
        fprintf(stderr, "probe_find: %s\n", net_strerror(n));
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char hex[2 * NET_KEY_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, found[i].a.node_pk, NET_KEY_BYTES);
        printf("cloudlet-node-key:%s %s %u %llu %llu\n", hex, found[i].host, found[i].a.tcp_port,
               (unsigned long long)found[i].a.chunks, (unsigned long long)found[i].a.manifests);
    }
    return 0;
}
