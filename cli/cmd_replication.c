/* cmd_replication.c — `cloudlet replication`: which share of each manifest's chunks every node
 * of the fleet holds, through the daemon (docs/replication.md, docs/control.md). */
#define _GNU_SOURCE
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet replication [ID|NAME] [--k K] [--json] [--watch [SECONDS]] [--home DIR]\n\n"
    "Asks the node's daemon how the fleet holds each manifest of its store (or the one named):\n"
    "every known peer is asked which of the manifests' chunks it holds, in batches. For each\n"
    "manifest: the share of its chunks each node holds and the bytes it still misses, how\n"
    "many chunks are held by 0, 1, 2, ... nodes, how many are on fewer than K nodes, and\n"
    "whether the LAN alone can synthesize it (every chunk on at least one node). Peers that\n"
    "do not answer are listed as unreachable.\n\n"
    "  --k K              the replication threshold (default 2)\n"
    "  --json             the daemon's answer as one JSON object\n"
    "  --watch [SECONDS]  redraw every SECONDS (default 2) until interrupted\n"
    "  --home DIR         the node home\n";

/* ---- one answer ------------------------------------------------------------------------------ */

typedef struct answer {
    const char *cmd;
    char **lines; /* the per-manifest lines */
    size_t n;
    char *last;
    bool failed;
} answer;

static void answer_free(answer *a)
{
    for (size_t i = 0; i < a->n; i++) free(a->lines[i]);
    free(a->lines);
    free(a->last);
    memset(a, 0, sizeof *a);
}

static int on_line(const char *line, void *arg)
{
    answer *a = arg;
    if (!strncmp(line, "{\"manifest\"", 11)) {
        char **p = realloc(a->lines, (a->n + 1) * sizeof *p);
        if (!p || !(p[a->n] = strdup(line))) return 1;
        a->lines = p;
        a->n++;
        return -1;
    }
    if (!strncmp(line, "{\"done\"", 7) || !strncmp(line, "{\"error\"", 8)) {
        a->last = strdup(line);
        a->failed = line[2] == 'e';
        return a->failed ? 1 : 0;
    }
    return -1; /* progress */
}

static uint64_t num(const char *o, const char *e, const char *key)
{
    char v[32];
    return strtoull(cli_json_field(o, e, key, v, sizeof v), NULL, 10);
}

static void print_json(const answer *a)
{
    /* The last line's members, with the manifests' lines as an array. */
    size_t l = strlen(a->last);
    while (l && a->last[l - 1] != '}') l--;
    printf("%.*s, \"manifests\": [", (int)(l ? l - 1 : 0), a->last);
    for (size_t i = 0; i < a->n; i++) printf("%s%s", i ? ", " : "", a->lines[i]);
    printf("]}\n");
}

static void bar(double share, char out[23])
{
    int w = (int)(share * 20 + 0.5);
    out[0] = '[';
    for (int i = 0; i < 20; i++) out[1 + i] = i < w ? '#' : '.';
    out[21] = ']';
    out[22] = '\0';
}

static void print_manifest(const char *line)
{
    const char *end = line + strlen(line);
    char id[80], name[300], b[32], k[16];
    cli_json_field(line, end, "manifest", id, sizeof id);
    cli_json_field(line, end, "name", name, sizeof name);
    cli_json_field(line, end, "k", k, sizeof k);
    uint64_t n = num(line, end, "unique_chunks");
    if (strcmp(name, "null") && name[0])
        printf("%s (%.16s)", name, id);
    else
        printf("%.16s", id);
    printf(": %llu chunks, %s\n", (unsigned long long)n, cli_bytes(n * 4096, b));
    const char *p = strstr(line, "\"nodes\": [");
    if (p) p += strlen("\"nodes\": [");
    printf("  %-14s %-22s %10s %7s  %-22s %10s\n", "NODE", "ADDRESS", "CHUNKS", "SHARE", "",
           "MISSING");
    while (p && *p == '{') {
        const char *oe = strchr(p, '}');
        if (!oe) break;
        char key[NODE_KEY_TEXT], sk[13], addr[120], self[8], reach[8], share[32], err[200];
        cli_json_field(p, oe, "key", key, sizeof key);
        cli_key_short(key, 12, sk);
        cli_json_field(p, oe, "address", addr, sizeof addr);
        cli_json_field(p, oe, "self", self, sizeof self);
        cli_json_field(p, oe, "reachable", reach, sizeof reach);
        char label[140];
        /* This node listening on every address: "this node" says more than 0.0.0.0. */
        bool me = !strcmp(self, "true");
        bool any = !strncmp(addr, "0.0.0.0:", 8) || !strncmp(addr, "[::]:", 5);
        snprintf(label, sizeof label, "%s%s", me && any ? "this node" : addr,
                 me && !any ? " (this)" : "");
        if (strcmp(reach, "true")) {
            printf("  %-14s %-22s unreachable (%s)\n", sk, label,
                   cli_json_field(p, oe, "error", err, sizeof err));
        } else {
            double s = strtod(cli_json_field(p, oe, "share", share, sizeof share), NULL);
            char br[23];
            bar(s, br);
            printf("  %-14s %-22s %10llu %6.1f%%  %s %10s\n", sk, label,
                   (unsigned long long)num(p, oe, "chunks"), s * 100, br,
                   cli_bytes(num(p, oe, "missing_bytes"), b));
        }
        p = oe + 1;
        while (*p == ',' || *p == ' ') p++;
    }
    printf("  held by:");
    const char *h = strstr(line, "\"histogram\": [");
    if (h) {
        h += strlen("\"histogram\": [");
        for (unsigned i = 0; *h && *h != ']'; i++) {
            char *e;
            unsigned long long v = strtoull(h, &e, 10);
            if (e == h) break;
            printf(" %u node%s: %llu%s", i, i == 1 ? "" : "s", v, "");
            h = e;
            while (*h == ',' || *h == ' ') h++;
            if (*h != ']') putchar(',');
        }
    }
    printf("\n  under-replicated (on fewer than %s nodes): %llu chunks\n", k,
           (unsigned long long)num(line, end, "under_k"));
    char lan[8];
    cli_json_field(line, end, "lan_complete", lan, sizeof lan);
    printf("  LAN can synthesize: %s\n", strcmp(lan, "true") ? "no" : "yes");
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

int cmd_replication(int argc, char **argv)
{
    enum { OPT_K = 0x200, OPT_WATCH };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"k", required_argument, NULL, OPT_K},
                                         {"watch", optional_argument, NULL, OPT_WATCH},
                                         {0}};
    cli_common co = {0};
    unsigned long k = 2;
    bool watch = false;
    double every = 2;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_K) {
            char *e;
            k = strtoul(optarg, &e, 10);
            if (*e || e == optarg || k < 1 || k > 64)
                return cli_usage_error(usage, argv[0], "--k takes a number from 1 to 64");
        }
        if (c == OPT_WATCH) {
            watch = true;
            if (optarg && (every = strtod(optarg, NULL)) <= 0)
                return cli_usage_error(usage, argv[0], "bad --watch interval '%s'", optarg);
        }
    }
    const char *target = NULL;
    for (int i = optind; i < argc; i++) {
        /* `--watch 5`: a short number after the options is the interval. */
        if (watch && strlen(argv[i]) < 8 && strspn(argv[i], "0123456789.") == strlen(argv[i])) {
            if ((every = strtod(argv[i], NULL)) <= 0)
                return cli_usage_error(usage, argv[0], "bad --watch interval '%s'", argv[i]);
            continue;
        }
        if (target) return cli_usage_error(usage, argv[0], "one manifest at a time");
        target = argv[i];
    }
    char req[128] = "replication";
    if (target) {
        cs_id id;
        if (cs_id_from_hex(target, &id) != 0) {
            cs_store *st = cli_open_store(argv[0], &co, false);
            if (!st) return CLI_FAIL;
            bool ok = cli_resolve_id(argv[0], st, target, &id);
            cs_close(st);
            if (!ok) return CLI_FAIL;
        }
        char hex[CS_ID_HEX + 1];
        snprintf(req, sizeof req, "replication %s %lu", cs_id_to_hex(&id, hex), k);
    } else {
        snprintf(req, sizeof req, "replication %lu", k);
    }
    if (watch) {
        struct sigaction sa = {.sa_handler = on_sigint};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    }
    bool tty = isatty(STDOUT_FILENO);
    int status = CLI_OK;
    do {
        answer a = {.cmd = argv[0]};
        int rc = cli_stream_request(argv[0], &co, req, on_line, &a);
        if (interrupted) {
            answer_free(&a);
            break;
        }
        if (rc < 0 || !a.last) {
            answer_free(&a);
            status = CLI_FAIL;
            if (!watch) break;
        } else if (a.failed) {
            char msg[512];
            if (co.json) printf("%s\n", a.last);
            cli_error(argv[0], "%s", cli_json_field(a.last, NULL, "error", msg, sizeof msg));
            status = CLI_FAIL;
            answer_free(&a);
            if (!watch) break;
        } else {
            if (watch && tty) fputs("\033[H\033[2J", stdout);
            if (co.json) {
                print_json(&a);
            } else {
                if (watch) {
                    time_t t = time(NULL);
                    char when[32];
                    strftime(when, sizeof when, "%H:%M:%S", localtime(&t));
                    printf("replication at %s (every %g s; Ctrl-C ends)\n\n", when, every);
                }
                for (size_t i = 0; i < a.n; i++) {
                    print_manifest(a.lines[i]);
                    if (i + 1 < a.n) putchar('\n');
                }
                if (a.n == 0) printf("no manifests\n");
            }
            fflush(stdout);
            status = CLI_OK;
            answer_free(&a);
        }
        if (!watch) break;
        struct timespec ts = {(time_t)every, (long)((every - (double)(time_t)every) * 1e9)};
        while (!interrupted && nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    } while (!interrupted);
    return watch && interrupted ? CLI_OK : status;
}
