/* cmd_store_stats.c — `cloudlet store stats`: what the store holds and costs. */
#include "cli.h"

static const char usage[] =
    "usage: cloudlet store stats [--home DIR] [--json]\n\n"
    "Shows the chunks held (distinct, non-zero), their logical size, the compressed bytes\n"
    "stored, the bytes the store's files take on disk, and the manifests kept.\n\n"
    "  --json       machine-readable output\n"
    "  --home DIR   the node home\n";

int cmd_store_stats(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 0, 0, &co)) return CLI_USAGE;
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    cs_stats s;
    int rc = cs_stats_get(st, &s);
    cs_close(st);
    if (rc) {
        cli_error(argv[0], "%s", cs_strerror(rc));
        return CLI_FAIL;
    }
    double ratio = s.stored_bytes ? (double)s.logical_bytes / (double)s.stored_bytes : 0;
    double overhead = s.stored_bytes ? (double)s.disk_bytes / (double)s.stored_bytes : 0;
    if (co.json) {
        printf("{\"chunks\": %llu, \"logical_bytes\": %llu, \"stored_bytes\": %llu, "
               "\"disk_bytes\": %llu, \"compression_ratio\": %.3f, \"disk_per_stored\": %.3f, "
               "\"segments\": %llu, \"manifests\": %llu, \"pinned\": %llu, "
               "\"referenced_missing\": %llu, \"map_bytes\": %llu}\n",
               (unsigned long long)s.chunks, (unsigned long long)s.logical_bytes,
               (unsigned long long)s.stored_bytes, (unsigned long long)s.disk_bytes, ratio,
               overhead, (unsigned long long)s.segments, (unsigned long long)s.manifests,
               (unsigned long long)s.pinned, (unsigned long long)s.referenced_missing,
               (unsigned long long)s.map_bytes);
        return CLI_OK;
    }
    char a[32], b[32], d[32], m[32];
    printf("chunks             %llu (%s logical)\n", (unsigned long long)s.chunks,
           cli_bytes(s.logical_bytes, a));
    printf("stored             %s compressed (%.2fx) in %llu segments\n",
           cli_bytes(s.stored_bytes, b), ratio, (unsigned long long)s.segments);
    printf("on disk            %s (%.3f x stored)\n", cli_bytes(s.disk_bytes, d), overhead);
    printf("manifests          %llu (%llu pinned)\n", (unsigned long long)s.manifests,
           (unsigned long long)s.pinned);
    printf("awaited chunks     %llu (named by a manifest, not held yet)\n",
           (unsigned long long)s.referenced_missing);
    printf("map size           %s\n", cli_bytes(s.map_bytes, m));
    return CLI_OK;
}
