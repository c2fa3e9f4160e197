/* cmd_overlay_export.c — `cloudlet overlay export ID FILE`: a self-contained overlay package. */
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet overlay export [--home DIR] [--level N] [--json] ID|NAME FILE\n\n"
    "Writes an overlay package: the manifest plus every chunk its parent VM does not hold,\n"
    "changed chunks as zstd deltas against the parent's chunk at the same place where that\n"
    "is smaller, the rest in one long-window stream. `cloudlet overlay import` on a node\n"
    "that holds the parent restores the VM from it. FILE - writes to standard output.\n\n"
    "  --level N    zstd level, 1..22 (default 22, the smallest; 19 takes about two thirds\n"
    "               of the time for a package about 2 % larger)\n"
    "  --json       machine-readable report\n"
    "  --home DIR   the node home\n";

enum { OPT_LEVEL = 0x200 };

int cmd_overlay_export(int argc, char **argv)
{
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"level", required_argument, NULL, OPT_LEVEL},
                                         {0}};
    cli_common co = {0};
    int level = NODE_OVERLAY_LEVEL, c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_LEVEL) {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 22)
                return cli_usage_error(usage, argv[0], "--level takes 1..22, not %s", optarg);
            level = (int)v;
        }
    }
    if (optind + 2 != argc) return cli_usage_error(usage, argv[0], "expected ID and FILE");
    const char *out = argv[optind + 1];
    bool to_stdout = !strcmp(out, "-");
    if (to_stdout && isatty(STDOUT_FILENO))
        return cli_usage_error(usage, argv[0], "refusing to write a package to a terminal");
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    int status = CLI_FAIL;
    cs_id id;
    if (!cli_resolve_id(argv[0], st, argv[optind], &id)) goto out;
    int fd = to_stdout ? STDOUT_FILENO : open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        cli_error(argv[0], "cannot create %s: %s", out, strerror(errno));
        goto out;
    }
    cli_progress pr;
    cli_progress_init(&pr, "export");
    node_overlay_report r;
    char err[NODE_ERRMSG] = "";
    int rc = node_overlay_export(st, &id, fd, level, cli_progress_update, &pr, &r, err);
    cli_progress_end(&pr);
    if (!to_stdout && close(fd) != 0 && rc == 0) {
        rc = -errno;
        snprintf(err, sizeof err, "closing %s: %s", out, strerror(errno));
    }
    if (rc) {
        cli_error(argv[0], "%s", err[0] ? err : node_strerror(rc));
        if (!to_stdout) unlink(out);
        goto out;
    }
    FILE *rf = to_stdout ? stderr : stdout;
    char a[32], b[32], f[32];
    if (co.json)
        fprintf(rf, "{\"chunks\": %llu, \"delta_chunks\": %llu, \"delta_bytes\": %llu, "
                    "\"block_bytes\": %llu, \"file_bytes\": %llu}\n",
                (unsigned long long)r.chunks, (unsigned long long)r.delta_chunks,
                (unsigned long long)r.delta_bytes, (unsigned long long)r.block_bytes,
                (unsigned long long)r.file_bytes);
    else
        fprintf(rf, "%llu chunks: %llu as deltas (%s), the rest in the stream (%s); package %s\n",
                (unsigned long long)r.chunks, (unsigned long long)r.delta_chunks,
                cli_bytes(r.delta_bytes, a), cli_bytes(r.block_bytes, b), cli_bytes(r.file_bytes, f));
    status = CLI_OK;
out:
    cs_close(st);
    return status;
}
