/* cmd_pull.c — `cloudlet pull`: fetch a manifest and every chunk this node lacks from its peers,
 * through the daemon (docs/control.md, the streaming form; docs/fetch.md). */
#define _GNU_SOURCE
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet pull ID [--peer NODE] [--home DIR] [--json]\n\n"
    "Has the node's daemon fetch manifest ID and every chunk it names that the store lacks\n"
    "from the fleet's peers: every peer is asked which chunks it holds, the chunks are\n"
    "striped across the holders, each is verified against its id, and a peer that fails or\n"
    "goes away leaves its share to the others. Interrupted, it keeps what it stored: pulling\n"
    "again fetches only the rest. On a terminal it shows progress (bytes by source, rate,\n"
    "ETA); at the end a report by source, and the manifest id as the last line.\n\n"
    "  --peer NODE  pull only from this peer: its node key, or host:port, or host\n"
    "  --json       the daemon's final report as JSON\n"
    "  --home DIR   the node home\n";

static uint64_t num(const char *obj, const char *end, const char *key)
{
    char v[32];
    return strtoull(cli_json_field(obj, end, key, v, sizeof v), NULL, 10);
}

/* Calls fn for each object of the "sources" array of line. */
static void each_source(const char *line, void (*fn)(const char *o, const char *e, void *arg),
                        void *arg)
{
    const char *p = strstr(line, "\"sources\": [");
    if (!p) return;
    p += strlen("\"sources\": [");
    while ((p = strchr(p, '{')) != NULL) {
        const char *e = strchr(p, '}');
        if (!e) return;
        fn(p, e, arg);
        p = e + 1;
    }
}

/* ---- progress and the report ------------------------------------------------------------------
 */

typedef struct view {
    cli_progress prog;
    char line[512];
    size_t len;
} view;

static void source_progress(const char *o, const char *e, void *arg)
{
    view *v = arg;
    char key[NODE_KEY_TEXT], shortkey[9], b[32];
    cli_json_field(o, e, "key", key, sizeof key);
    cli_key_short(key, 8, shortkey);
    if (v->len + 64 < sizeof v->line)
        v->len += (size_t)snprintf(v->line + v->len, sizeof v->line - v->len, "  %s %s", shortkey,
                                   cli_bytes(num(o, e, "bytes"), b));
}

static void show_progress(view *v, const char *line, const char *end)
{
    if (!v->prog.enabled) return;
    char phase[32];
    cli_json_field(line, end, "phase", phase, sizeof phase);
    if (strcmp(phase, "fetch") != 0) {
        fprintf(stderr, "\r\033[Kpull: %s", phase);
        v->prog.shown = true;
        return;
    }
    uint64_t done = num(line, end, "bytes"), total = num(line, end, "total_bytes");
    double s = (double)num(line, end, "ms") / 1000.0;
    double rate = s > 0 ? (double)done / s : 0;
    char d[32], t[32], r[32], eta[32] = "--:--";
    if (rate > 0 && total >= done) {
        unsigned long left = (unsigned long)((double)(total - done) / rate);
        snprintf(eta, sizeof eta, "%lu:%02lu", left / 60, left % 60);
    }
    v->len = 0;
    v->line[0] = '\0';
    each_source(line, source_progress, v);
    fprintf(stderr, "\r\033[Kpull %s / %s  %s/s  ETA %s %s", cli_bytes(done, d),
            cli_bytes(total, t), cli_bytes((uint64_t)rate, r), eta, v->line);
    v->prog.shown = true;
}

static void source_report(const char *o, const char *e, void *arg)
{
    (void)arg;
    char key[NODE_KEY_TEXT], shortkey[17], addr[80], state[16], b[32];
    cli_json_field(o, e, "key", key, sizeof key);
    cli_key_short(key, 16, shortkey);
    cli_json_field(o, e, "address", addr, sizeof addr);
    cli_json_field(o, e, "state", state, sizeof state);
    printf("  from %s %-21s %8llu chunks %10s  %llu failed, %llu not held%s\n", shortkey, addr,
           (unsigned long long)num(o, e, "chunks"), cli_bytes(num(o, e, "bytes"), b),
           (unsigned long long)num(o, e, "failures"), (unsigned long long)num(o, e, "not_held"),
           !strcmp(state, "gone") ? " (gone)" : "");
}

static void final_report(const char *line, const char *end)
{
    char id[80], b[32];
    cli_json_field(line, end, "id", id, sizeof id);
    uint64_t ms = num(line, end, "ms");
    printf("pulled %.16s in %.1f s: %llu chunks (%s) fetched, %llu of %llu held already, "
           "%llu failed\n",
           id, (double)ms / 1000.0, (unsigned long long)num(line, end, "chunks_fetched"),
           cli_bytes(num(line, end, "bytes"), b), (unsigned long long)num(line, end, "held_before"),
           (unsigned long long)num(line, end, "unique_chunks"),
           (unsigned long long)num(line, end, "failures"));
    each_source(line, source_report, NULL);
    printf("%s\n", id);
}

/* One run of the command: the progress view and how the end is shown. */
struct pull_run {
    view v;
    const char *cmd;
    bool json;
};

/* A line of the daemon's streaming answer (docs/control.md): progress until a final `done` or
 * `error` line, whose exit status it returns. */
static int on_line(const char *line, void *arg)
{
    struct pull_run *run = arg;
    const char *end = line + strlen(line);
    if (!strncmp(line, "{\"error\"", 8)) {
        char msg[512];
        cli_progress_end(&run->v.prog);
        if (run->json) printf("%s\n", line);
        cli_error(run->cmd, "%s", cli_json_field(line, end, "error", msg, sizeof msg));
        return CLI_FAIL;
    }
    if (!strncmp(line, "{\"done\"", 7)) {
        cli_progress_end(&run->v.prog);
        if (run->json)
            printf("%s\n", line);
        else
            final_report(line, end);
        return CLI_OK;
    }
    show_progress(&run->v, line, end);
    return -1;
}

int cmd_pull(int argc, char **argv)
{
    enum { OPT_PEER = 0x200 };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"peer", required_argument, NULL, OPT_PEER},
                                         {0}};
    cli_common co = {0};
    const char *peer = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_PEER) peer = optarg;
    }
    if (optind >= argc) return cli_usage_error(usage, argv[0], "no manifest ID given");
    if (optind + 1 < argc) return cli_usage_error(usage, argv[0], "one manifest ID at a time");
    cs_id id;
    if (cs_id_from_hex(argv[optind], &id) != 0)
        return cli_usage_error(usage, argv[0], "%s is not a manifest id (64 hex digits)",
                               argv[optind]);
    if (peer && (!peer[0] || strpbrk(peer, " \t\r\n")))
        return cli_usage_error(usage, argv[0], "bad --peer '%s'", peer);
    char hex[CS_ID_HEX + 1], req[512];
    snprintf(req, sizeof req, "pull %s%s%s", cs_id_to_hex(&id, hex), peer ? " " : "",
             peer ? peer : "");

    struct pull_run run = {.cmd = argv[0], .json = co.json};
    cli_progress_init(&run.v.prog, "pull");
    int status = cli_stream_request(argv[0], &co, req, on_line, &run);
    cli_progress_end(&run.v.prog);
    return status < 0 ? CLI_FAIL : status;
}
