/* cmd_vm_capture.c — `cloudlet vm capture DOMAIN`: save a running domain into the store. */
#include "cli.h"
#include "node.h"

#include <stdlib.h>

static const char usage[] =
    "usage: cloudlet vm capture DOMAIN [--name NAME] [--parent ID|NAME] [--connect URI]\n"
    "                           [--tmpdir DIR] [--home DIR] [--json]\n\n"
    "Saves running libvirt domain DOMAIN (a name or UUID) with virDomainSave and stores it as a\n"
    "VM: its memory snapshot, its first disk (which must be a raw file) and its domain XML.\n"
    "The domain STOPS: it is saved, not copied while it runs (`cloudlet launch` resumes it).\n"
    "Prints the import report (see `cloudlet vm import --help`) and the id as the last line.\n\n"
    "  --name NAME      a name for the VM in this store\n"
    "  --parent ID      the base VM (a manifest id or name): only what differs is recorded\n"
    "  --connect URI    libvirt to use (default qemu:///system)\n"
    "  --tmpdir DIR     where the save file is written for the while of the import (default\n"
    "                   /var/tmp; it takes about the size of the guest's used RAM)\n"
    "  --json           the report as JSON\n"
    "  --home DIR       the node home\n";

/* In cmd_vm_import.c: the per-image table and the overlay line. */

int cmd_vm_capture(int argc, char **argv)
{
    enum { OPT_NAME = 0x200, OPT_PARENT, OPT_CONNECT, OPT_TMPDIR };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"name", required_argument, NULL, OPT_NAME},
                                         {"parent", required_argument, NULL, OPT_PARENT},
                                         {"connect", required_argument, NULL, OPT_CONNECT},
                                         {"tmpdir", required_argument, NULL, OPT_TMPDIR},
                                         {0}};
    cli_common co = {0};
    node_vm_import_opts o = {0};
    const char *parent = NULL, *uri = NULL, *tmpdir = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        switch (c) {
        case '?': return CLI_USAGE;
        case OPT_NAME: o.name = optarg; break;
        case OPT_PARENT: parent = optarg; break;
        case OPT_CONNECT: uri = optarg; break;
        case OPT_TMPDIR: tmpdir = optarg; break;
        }
    }
    if (optind + 1 != argc) return cli_usage_error(usage, argv[0], "expected one DOMAIN");
    cs_store *st = cli_open_store(argv[0], &co, true);
    if (!st) return CLI_FAIL;
    cs_id pid, id;
    int status = CLI_FAIL;
    if (parent) {
        if (!cli_resolve_id(argv[0], st, parent, &pid)) goto out;
        o.parent = &pid;
    }
    cli_progress pr;
    cli_progress_init(&pr, "import");
    node_import_report r;
    char err[NODE_ERRMSG] = "";
    int rc =
        node_vm_capture(st, uri, argv[optind], tmpdir, &o, &id, &r, cli_progress_update, &pr, err);
    cli_progress_end(&pr);
    if (rc) {
        cli_error(argv[0], "%s", err[0] ? err : node_strerror(rc));
        goto out;
    }
    cli_print_import(&co, &r, &id, o.name);
    node_import_report_free(&r);
    status = CLI_OK;
out:
    cs_close(st);
    return status;
}
