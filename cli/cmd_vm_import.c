/* cmd_vm_import.c — `cloudlet vm import`: store a VM as a manifest. */
#include "cli.h"
#include "node.h"

#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cloudlet vm import [--disk FILE] [--memory FILE.save] [--name NAME] [--xml DOMAIN.xml]\n"
    "                          [--parent ID|NAME] [--home DIR] [--json]\n\n"
    "Stores a VM — its raw disk image, its memory snapshot and its libvirt domain XML — as a\n"
    "pinned manifest and prints its id as the last line. The disk is read sparse-aware: holes\n"
    "(blocks the guest discarded with TRIM on a disk with discard='unmap') and zero blocks cost\n"
    "nothing. A qcow2 disk is refused with the `qemu-img convert` command that makes it raw.\n\n"
    "The memory snapshot is an uncompressed libvirt save file (`virsh save`): each guest RAM\n"
    "block becomes a RAM image (zero pages cost nothing) and the rest (libvirt header, domain\n"
    "XML, device state) the image \"state\". Without --xml, the domain XML is the save file's.\n"
    "A damaged or truncated save file is refused with the byte offset where it goes wrong, and\n"
    "nothing is stored.\n\n"
    "With --parent (the base VM), the manifest records only the chunks that differ from the\n"
    "parent, and the report says for each image how many chunks are zero (of those, zeroed:\n"
    "data in the parent, freed since by TRIM or init_on_free), the same as the\n"
    "parent's at the same place, already held elsewhere (base disk, base memory, itself),\n"
    "delta-encodable against the parent's chunk at the same place, or new; and the overlay\n"
    "bytes: what a node that holds the parent would need.\n\n"
    "  --disk FILE      the raw disk image\n"
    "  --memory FILE    the libvirt save file (memory snapshot)\n"
    "  --name NAME      a name for the VM in this store\n"
    "  --xml FILE       the libvirt domain XML\n"
    "  --parent ID      the base VM (a manifest id or name)\n"
    "  --json           the report as JSON\n"
    "  --home DIR       the node home\n";

static void print_report(const node_import_report *r)
{
    printf("%-22s %10s %10s %10s %10s %10s %10s %10s %10s\n", "image", "length", "chunks", "zero",
           "zeroed", "as-parent", "dedup", "delta", "new");
    for (size_t i = 0; i < r->nimages; i++) {
        const node_image_report *x = &r->images[i];
        char len[32];
        printf("%-22s %10s %10llu %10llu %10llu %10llu %10llu %10llu %10llu\n", x->name,
               cli_bytes(x->length, len), (unsigned long long)x->chunks,
               (unsigned long long)x->zero, (unsigned long long)x->zeroed,
               (unsigned long long)x->same_as_parent,
               (unsigned long long)x->dedup, (unsigned long long)x->delta,
               (unsigned long long)x->fresh);
    }
    char a[32], b[32];
    if (r->overlay_bytes)
        printf("overlay %s (what a node holding the parent needs); %s added to this store\n",
               cli_bytes(r->overlay_bytes, a), cli_bytes(r->stored_bytes, b));
    else
        printf("no parent: a node needs the whole VM; %s added to this store\n",
               cli_bytes(r->stored_bytes, b));
}

void cli_print_import(const cli_common *co, const node_import_report *r, const cs_id *id,
                      const char *name)
{
    if (co->json) {
        char *json = node_import_report_json(r, id, name);
        printf("%s\n", json ? json : "{}");
        free(json);
        return;
    }
    char hex[CS_ID_HEX + 1];
    print_report(r);
    printf("%s\n", cs_id_to_hex(id, hex));
}

int cmd_vm_import(int argc, char **argv)
{
    enum { OPT_DISK = 0x200, OPT_NAME, OPT_XML, OPT_PARENT, OPT_MEMORY };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"disk", required_argument, NULL, OPT_DISK},
                                         {"name", required_argument, NULL, OPT_NAME},
                                         {"xml", required_argument, NULL, OPT_XML},
                                         {"parent", required_argument, NULL, OPT_PARENT},
                                         {"memory", required_argument, NULL, OPT_MEMORY},
                                         {0}};
    cli_common co = {0};
    node_vm_import_opts o = {0};
    const char *parent = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        switch (c) {
        case '?': return CLI_USAGE;
        case OPT_DISK: o.disk = optarg; break;
        case OPT_NAME: o.name = optarg; break;
        case OPT_XML: o.xml_file = optarg; break;
        case OPT_PARENT: parent = optarg; break;
        case OPT_MEMORY: o.memory = optarg; break;
        }
    }
    if (optind < argc) return cli_usage_error(usage, argv[0], "unexpected argument %s", argv[optind]);
    if (!o.disk && !o.memory)
        return cli_usage_error(usage, argv[0], "--disk FILE or --memory FILE is required");
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
    int rc = node_vm_import(st, &o, &id, &r, cli_progress_update, &pr, err);
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
