/* cmd_store_gc.c — `cloudlet store gc`: free what nothing pins. */
#include "cli.h"

static const char usage[] =
    "usage: cloudlet store gc [--home DIR] [--json] [--no-wait]\n\n"
    "Removes manifests that are neither pinned nor the parent of a kept manifest, then the\n"
    "chunks no manifest names, then rewrites segments that are mostly free. Waits for\n"
    "running imports to finish first.\n\n"
    "  --no-wait    fail at once instead of waiting when an import is running\n"
    "  --json       machine-readable output\n"
    "  --home DIR   the node home\n";

enum { OPT_NOWAIT = 0x200 };

int cmd_store_gc(int argc, char **argv)
{
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"no-wait", no_argument, NULL, OPT_NOWAIT},
                                         {0}};
    cli_common co = {0};
    bool nowait = false;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_NOWAIT) nowait = true;
    }
    if (optind < argc) return cli_usage_error(usage, argv[0], "unexpected argument %s", argv[optind]);
    cs_store *st = cli_open_store(argv[0], &co, true);
    if (!st) return CLI_FAIL;
    cs_gc_report r;
    int rc = cs_gc(st, nowait, &r);
    cs_close(st);
    if (rc) {
        cli_error(argv[0], "%s", cs_strerror(rc));
        return CLI_FAIL;
    }
    char b[32];
    if (co.json)
        printf("{\"manifests_removed\": %llu, \"chunks_removed\": %llu, \"segments_rewritten\": %llu, "
               "\"segments_removed\": %llu, \"bytes_reclaimed\": %llu}\n",
               (unsigned long long)r.manifests_removed, (unsigned long long)r.chunks_removed,
               (unsigned long long)r.segments_rewritten, (unsigned long long)r.segments_removed,
               (unsigned long long)r.bytes_reclaimed);
    else
        printf("removed %llu manifests and %llu chunks; rewrote %llu segments, removed %llu; "
               "%s reclaimed\n",
               (unsigned long long)r.manifests_removed, (unsigned long long)r.chunks_removed,
               (unsigned long long)r.segments_rewritten, (unsigned long long)r.segments_removed,
               cli_bytes(r.bytes_reclaimed, b));
    return CLI_OK;
}
