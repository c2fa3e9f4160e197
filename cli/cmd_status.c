/* cmd_status.c — `cloudlet status`: is the daemon up, and what does it hold. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cloudlet status [--home DIR] [--json]\n\n"
    "Asks the node's daemon (cloudletd) how it is: version, pid, uptime, where it listens,\n"
    "and what its store holds. Exits 1 when the daemon is not running.\n\n"
    "  --json       the daemon's answer as JSON\n"
    "  --home DIR   the node home\n";

int cmd_status(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 0, 0, &co)) return CLI_USAGE;
    char *reply = cli_control_request(argv[0], &co, "status", 10000);
    if (!reply) return CLI_FAIL;
    char a[128], b[128], d[128];
    if (strstr(reply, "\"error\"")) {
        cli_error(argv[0], "cloudletd: %s", cli_json_field(reply, NULL, "error", a, sizeof a));
        free(reply);
        return CLI_FAIL;
    }
    if (co.json) {
        fputs(reply, stdout);
    } else {
        char s1[32], s2[32];
        printf("cloudletd %s running as pid %s for %s s\n",
               cli_json_field(reply, NULL, "version", a, sizeof a),
               cli_json_field(reply, NULL, "pid", b, sizeof b),
               cli_json_field(reply, NULL, "uptime_s", d, sizeof d));
        printf("home               %s\n", cli_json_field(reply, NULL, "home", a, sizeof a));
        printf("node key           %s\n", cli_json_field(reply, NULL, "node_key", a, sizeof a));
        if (!strcmp(cli_json_field(reply, NULL, "fleet", a, sizeof a), "true"))
            printf("fleet              yes: peers on %s (discovery %s)\n",
                   cli_json_field(reply, NULL, "listen", a, sizeof a),
                   !strcmp(cli_json_field(reply, NULL, "discovery", b, sizeof b), "true") ? "on"
                                                                                          : "off");
        else
            printf("fleet              none: this node runs alone (join one with `cloudlet init "
                   "--fleet-key FILE`)\n");
        printf(
            "store              %s chunks, %s logical, %s stored\n",
            cli_json_field(reply, NULL, "chunks", a, sizeof a),
            cli_bytes(strtoull(cli_json_field(reply, NULL, "logical_bytes", b, sizeof b), NULL, 10),
                      s1),
            cli_bytes(strtoull(cli_json_field(reply, NULL, "stored_bytes", d, sizeof d), NULL, 10),
                      s2));
        printf("manifests          %s (%s pinned)\n",
               cli_json_field(reply, NULL, "manifests", a, sizeof a),
               cli_json_field(reply, NULL, "pinned", b, sizeof b));
    }
    free(reply);
    return CLI_OK;
}
