/* cmd_synth.c — `cloudlet synth ID --out DIR`: rebuild a VM's files from the store. */
#include "cli.h"
#include "node.h"

static const char usage[] =
    "usage: cloudlet synth [--home DIR] [--json] ID|NAME --out DIR\n\n"
    "Rebuilds a VM from the store alone into DIR: disk.raw (sparse), memory.save (a libvirt\n"
    "save file, for a VM with a memory snapshot) and domain.xml. Every chunk is checked\n"
    "against its id; files appear only when whole. Prints the time of each stage.\n\n"
    "  --out DIR    where to write (created if missing)\n"
    "  --json       machine-readable report\n"
    "  --home DIR   the node home\n";

int cmd_synth(int argc, char **argv)
{
    enum { OPT_OUT = 0x200 };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"out", required_argument, NULL, OPT_OUT},
                                         {0}};
    cli_common co = {0};
    const char *out = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_OUT) out = optarg;
    }
    if (optind + 1 != argc) return cli_usage_error(usage, argv[0], "expected one ID or NAME");
    if (!out) return cli_usage_error(usage, argv[0], "--out DIR is required");
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    int status = CLI_FAIL;
    cs_id id;
    if (!cli_resolve_id(argv[0], st, argv[optind], &id)) goto done;
    cli_progress pr;
    cli_progress_init(&pr, "disk");
    node_synth_report r;
    char err[NODE_ERRMSG];
    int rc = node_vm_synth(st, &id, out, &r, cli_progress_update, &pr, err);
    cli_progress_end(&pr);
    if (rc) {
        cli_error(argv[0], "%s", err[0] ? err : node_strerror(rc));
        goto done;
    }
    double mbs = r.disk_s > 0 ? (double)r.disk_bytes / r.disk_s / 1e6 : 0;
    double mem_mbs = r.memory_s > 0 ? (double)r.memory_bytes / r.memory_s / 1e6 : 0;
    if (co.json) {
        printf("{\"resolve_s\": %.3f, \"disk_s\": %.3f, \"disk_bytes\": %llu, \"disk_written\": %llu, "
               "\"disk_mb_per_s\": %.1f, \"memory_s\": %.3f, \"memory_bytes\": %llu}\n",
               r.resolve_s, r.disk_s, (unsigned long long)r.disk_bytes,
               (unsigned long long)r.disk_written, mbs, r.memory_s,
               (unsigned long long)r.memory_bytes);
    } else {
        char a[32], b[32];
        printf("resolve  %.3f s\n", r.resolve_s);
        if (r.disk_bytes)
            printf("disk     %.3f s  %s (%s of data, the rest holes), %.0f MB/s\n", r.disk_s,
                   cli_bytes(r.disk_bytes, a), cli_bytes(r.disk_written, b), mbs);
        if (r.memory_bytes)
            printf("memory   %.3f s  %s save file, %.0f MB/s\n", r.memory_s,
                   cli_bytes(r.memory_bytes, a), mem_mbs);
    }
    status = CLI_OK;
done:
    cs_close(st);
    return status;
}
