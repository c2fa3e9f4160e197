/* cmd_peers.c — `cloudlet peers`: the nodes of the fleet the daemon knows (docs/discovery.md). */
#include "cli.h"
#include "node.h"

#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cloudlet peers [--home DIR] [--json]\n\n"
    "Lists the peers the node's daemon knows: nodes of its fleet heard on the LAN (multicast\n"
    "beacons) and the static peers of its configuration. For each: its node key (short form),\n"
    "address and TCP port, how long ago its last beacon came, what its store holds, and\n"
    "whether it was found on the LAN or is a static peer. Exits 1 when the daemon is not\n"
    "running.\n\n"
    "  --json       the daemon's answer as JSON (full keys, ages in ms, counters)\n"
    "  --home DIR   the node home\n";

static const char *age(const char *ms, char out[32])
{
    if (!ms[0] || !strcmp(ms, "null")) return "never";
    double s = strtod(ms, NULL) / 1000.0;
    if (s < 120)
        snprintf(out, 32, "%.1f s ago", s);
    else if (s < 7200)
        snprintf(out, 32, "%.0f min ago", s / 60);
    else
        snprintf(out, 32, "%.0f h ago", s / 3600);
    return out;
}

int cmd_peers(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 0, 0, &co)) return CLI_USAGE;
    char *reply = cli_control_request(argv[0], &co, "peers", 10000);
    if (!reply) return CLI_FAIL;
    const char *end = reply + strlen(reply);
    char a[256], b[256];
    if (strncmp(reply, "{\"error\"", 8) == 0) {
        cli_error(argv[0], "cloudletd: %s", cli_json_field(reply, end, "error", a, sizeof a));
        free(reply);
        return CLI_FAIL;
    }
    if (co.json) {
        fputs(reply, stdout);
        free(reply);
        return CLI_OK;
    }
    if (strcmp(cli_json_field(reply, end, "fleet", a, sizeof a), "true") != 0)
        printf("this node has no fleet key: it has no peers (join a fleet with "
               "`cloudlet init --fleet-key FILE`)\n");
    else if (strcmp(cli_json_field(reply, end, "discovery", a, sizeof a), "true") != 0)
        printf("discovery is off: static peers only\n");
    else if (strcmp(cli_json_field(reply, end, "joined", a, sizeof a), "true") != 0)
        printf("discovery is on but the node could not join multicast group %s (no route?)\n",
               cli_json_field(reply, end, "multicast", b, sizeof b));

    const char *p = strstr(reply, "\"peers\": [");
    unsigned n = 0;
    if (p) p += strlen("\"peers\": [");
    while (p && *p == '{') {
        const char *oe = strchr(p, '}');
        if (!oe) break;
        if (n++ == 0)
            printf("%-14s %-24s %5s  %-13s %10s %9s  %s\n", "NODE", "ADDRESS", "PORT",
                   "LAST BEACON", "CHUNKS", "MANIFESTS", "SOURCE");
        char key[NODE_KEY_TEXT], shortkey[13], addr[256], port[16], ms[32], when[32], chunks[32], manifests[32], src[16];
        cli_json_field(p, oe, "key", key, sizeof key);
        cli_json_field(p, oe, "address", addr, sizeof addr);
        cli_json_field(p, oe, "port", port, sizeof port);
        cli_json_field(p, oe, "age_ms", ms, sizeof ms);
        cli_json_field(p, oe, "chunks", chunks, sizeof chunks);
        cli_json_field(p, oe, "manifests", manifests, sizeof manifests);
        cli_json_field(p, oe, "source", src, sizeof src);
        if (!strcmp(key, "null"))
            snprintf(shortkey, sizeof shortkey, "?");
        else
            cli_key_short(key, 12, shortkey); /* 48 bits */
        printf("%-14s %-24s %5s  %-13s %10s %9s  %s\n", shortkey, addr, port, age(ms, when),
               chunks[0] ? chunks : "-", manifests[0] ? manifests : "-", src);
        p = oe + 1;
        if (*p == ',') p++;
        if (*p == ' ') p++;
    }
    if (n == 0) printf("no peers\n");
    free(reply);
    return CLI_OK;
}
