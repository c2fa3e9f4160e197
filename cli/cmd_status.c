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

/* The value after "key": in a flat JSON object, copied into out (numbers and strings). */
static const char *field(const char *json, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    out[0] = '\0';
    if (!p) return out;
    p += strlen(pat);
    if (*p == '"') p++;
    size_t k = 0;
    while (*p && *p != '"' && *p != ',' && *p != '}' && k + 1 < cap) out[k++] = *p++;
    out[k] = '\0';
    return out;
}

int cmd_status(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 0, 0, &co)) return CLI_USAGE;
    char *reply = cli_control_request(argv[0], &co, "status", 10000);
    if (!reply) return CLI_FAIL;
    char a[128], b[128], d[128];
    if (strstr(reply, "\"error\"")) {
        cli_error(argv[0], "cloudletd: %s", field(reply, "error", a, sizeof a));
        free(reply);
        return CLI_FAIL;
    }
    if (co.json) {
        fputs(reply, stdout);
    } else {
        char s1[32], s2[32];
        printf("cloudletd %s running as pid %s for %s s\n", field(reply, "version", a, sizeof a),
               field(reply, "pid", b, sizeof b), field(reply, "uptime_s", d, sizeof d));
        printf("home               %s\n", field(reply, "home", a, sizeof a));
        printf("listen             %s (discovery %s)\n", field(reply, "listen", a, sizeof a),
               !strcmp(field(reply, "discovery", b, sizeof b), "true") ? "on" : "off");
        printf("store              %s chunks, %s logical, %s stored\n",
               field(reply, "chunks", a, sizeof a),
               cli_bytes(strtoull(field(reply, "logical_bytes", b, sizeof b), NULL, 10), s1),
               cli_bytes(strtoull(field(reply, "stored_bytes", d, sizeof d), NULL, 10), s2));
        printf("manifests          %s (%s pinned)\n", field(reply, "manifests", a, sizeof a),
               field(reply, "pinned", b, sizeof b));
    }
    free(reply);
    return CLI_OK;
}
