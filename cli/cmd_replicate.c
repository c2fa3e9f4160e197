/* cmd_replicate.c — `cloudlet replicate`: nodes of the fleet pull a manifest until every chunk of
 * it is on K nodes, through the daemon (docs/replication.md). */
#define _GNU_SOURCE
#include "cli.h"
#include "node.h"

#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cloudlet replicate ID|NAME --copies K [--json] [--home DIR]\n\n"
    "Pre-warms the fleet: the node's daemon looks at which nodes hold which chunks of the\n"
    "manifest (as `cloudlet replication` shows), then, while a chunk is on fewer than K nodes,\n"
    "has the node that lacks it and lacks the fewest chunks of the manifest pull the whole\n"
    "manifest (this node pulls itself; a peer is asked to). When the pulls are done it looks\n"
    "again: exit status 0 when every chunk is on at least K nodes, 1 (and why) when not, or\n"
    "when the fleet has fewer than K reachable nodes.\n\n"
    "  --copies K   how many nodes must hold every chunk (1..64)\n"
    "  --json       the daemon's lines as they come, as JSON\n"
    "  --home DIR   the node home\n";

typedef struct state {
    const char *cmd;
    bool json;
} state;

static uint64_t num(const char *o, const char *e, const char *key)
{
    char v[32];
    return strtoull(cli_json_field(o, e, key, v, sizeof v), NULL, 10);
}

static int on_line(const char *line, void *arg)
{
    state *s = arg;
    const char *end = line + strlen(line);
    char a[512], b[160], key[NODE_KEY_TEXT], sk[13];
    if (s->json) printf("%s\n", line);
    if (!strncmp(line, "{\"error\"", 8)) {
        fflush(stdout);
        cli_error(s->cmd, "%s", cli_json_field(line, end, "error", a, sizeof a));
        return CLI_FAIL;
    }
    if (!strncmp(line, "{\"done\"", 7)) {
        if (!s->json)
            printf(
                "replicated %s: every chunk (%llu) is on at least %llu of %llu nodes, after %llu "
                "pull%s\n",
                cli_json_field(line, end, "manifest", a, sizeof a),
                (unsigned long long)num(line, end, "unique_chunks"),
                (unsigned long long)num(line, end, "copies"),
                (unsigned long long)num(line, end, "nodes"),
                (unsigned long long)num(line, end, "pulls"),
                num(line, end, "pulls") == 1 ? "" : "s");
        return CLI_OK;
    }
    if (s->json) return -1;
    cli_json_field(line, end, "phase", a, sizeof a);
    if (!strcmp(a, "view") || !strcmp(a, "check")) {
        printf("%s: %llu chunks, %llu on fewer than %llu nodes, %llu nodes reachable\n",
               !strcmp(a, "view") ? "view" : "after the pulls",
               (unsigned long long)num(line, end, "unique_chunks"),
               (unsigned long long)num(line, end, "under_k"),
               (unsigned long long)num(line, end, "k"),
               (unsigned long long)num(line, end, "reachable_nodes"));
    } else if (!strcmp(a, "pull")) {
        cli_json_field(line, end, "key", key, sizeof key);
        cli_key_short(key, 12, sk);
        cli_json_field(line, end, "self", b, sizeof b);
        if (!strcmp(b, "true"))
            printf("this node (%s) pulls\n", sk);
        else
            printf("asking %s at %s to pull\n", sk,
                   cli_json_field(line, end, "address", b, sizeof b));
    } else if (!strcmp(a, "pulled")) {
        char ok[8];
        cli_json_field(line, end, "ok", ok, sizeof ok);
        cli_json_field(line, end, "self", b, sizeof b);
        if (!strcmp(b, "true")) {
            snprintf(sk, sizeof sk, "this node");
        } else {
            cli_json_field(line, end, "key", key, sizeof key);
            cli_key_short(key, 12, sk);
        }
        if (!strcmp(ok, "true"))
            printf("%s pulled %llu chunks\n", sk,
                   (unsigned long long)num(line, end, "chunks_fetched"));
        else
            printf(
                "%s could not pull: %s\n", sk,
                cli_json_field(line, end, !strcmp(b, "true") ? "error" : "message", a, sizeof a));
    }
    fflush(stdout);
    return -1;
}

int cmd_replicate(int argc, char **argv)
{
    enum { OPT_COPIES = 0x200 };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"copies", required_argument, NULL, OPT_COPIES},
                                         {0}};
    cli_common co = {0};
    unsigned long k = 0;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_COPIES) {
            char *e;
            k = strtoul(optarg, &e, 10);
            if (*e || e == optarg || k < 1 || k > 64)
                return cli_usage_error(usage, argv[0], "--copies takes a number from 1 to 64");
        }
    }
    if (optind >= argc) return cli_usage_error(usage, argv[0], "no manifest given");
    if (optind + 1 < argc) return cli_usage_error(usage, argv[0], "one manifest at a time");
    if (!k) return cli_usage_error(usage, argv[0], "--copies K is needed");
    cs_id id;
    if (cs_id_from_hex(argv[optind], &id) != 0) {
        cs_store *st = cli_open_store(argv[0], &co, false);
        if (!st) return CLI_FAIL;
        bool ok = cli_resolve_id(argv[0], st, argv[optind], &id);
        cs_close(st);
        if (!ok) return CLI_FAIL;
    }
    char hex[CS_ID_HEX + 1], req[128];
    snprintf(req, sizeof req, "replicate %s %lu", cs_id_to_hex(&id, hex), k);
    state s = {argv[0], co.json};
    int rc = cli_stream_request(argv[0], &co, req, on_line, &s);
    return rc == CLI_OK ? CLI_OK : CLI_FAIL;
}
