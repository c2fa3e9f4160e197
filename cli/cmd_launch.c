/* cmd_launch.c — `cloudlet launch ID|NAME --local`: synthesize a VM and resume it here. */
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char usage[] =
    "usage: cloudlet launch ID|NAME --local [--connect URI] [--name NAME] [--dir DIR] [--fifo]\n"
    "                       [--accel kvm|tcg] [--home DIR] [--json]\n\n"
    "Rebuilds a VM from the store alone and resumes it where it was saved: the disk is written\n"
    "to DIR/disk.raw, the memory snapshot is rebuilt as a libvirt save file and restored as a\n"
    "new transient domain (new name, new UUID, its first disk on disk.raw, its first unix\n"
    "serial console on DIR/console.sock and DIR/console.log). A VM without memory snapshot\n"
    "is booted instead. Prints the time of each stage (resolve, disk, memory, restore) and the\n"
    "domain's name as the last line. On failure nothing is left: no domain, no DIR.\n"
    "`virsh destroy NAME` ends the domain; DIR is then yours to remove.\n\n"
    "  --local        synthesize and resume on this machine (required: launching through a\n"
    "                 remote node comes later)\n"
    "  --connect URI  libvirt to use (default qemu:///system)\n"
    "  --name NAME    the domain's name (default: the VM's name or id, and a random suffix)\n"
    "  --dir DIR      the launch directory, which must not exist (default\n"
    "                 $CLOUDLET_LAUNCH_DIR/NAME, or /var/tmp/cloudlet-launch/NAME); QEMU must\n"
    "                 be able to traverse its parents\n"
    "  --fifo         stream the save file through a FIFO into the restore (no file of the\n"
    "                 memory's size is written)\n"
    "  --accel A      kvm or tcg (default: kvm when it really runs guests here, else tcg;\n"
    "                 also $CLOUDLET_ACCEL)\n"
    "  --json         the report as JSON\n"
    "  --home DIR     the node home\n";

/* A default domain name: the argument when it names the VM, else the id's first 12 digits,
 * and 6 random hex digits so that launches of one VM do not collide. */
static char *default_name(const char *arg, const cs_id *id)
{
    char hex[CS_ID_HEX + 1];
    cs_id_to_hex(id, hex);
    bool is_id = strlen(arg) == CS_ID_HEX && strspn(arg, "0123456789abcdefABCDEF") == CS_ID_HEX;
    unsigned char rnd[3] = {0};
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(rnd, 1, sizeof rnd, f) != sizeof rnd) memset(rnd, 0, sizeof rnd);
        fclose(f);
    }
    char *name = malloc(strlen(arg) + 32);
    if (name)
        sprintf(name, "%s%.*s-%02x%02x%02x", is_id ? "vm-" : arg, is_id ? 12 : 0, hex, rnd[0],
                rnd[1], rnd[2]);
    return name;
}

int cmd_launch(int argc, char **argv)
{
    enum { OPT_LOCAL = 0x200, OPT_CONNECT, OPT_NAME, OPT_DIR, OPT_FIFO, OPT_ACCEL };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"local", no_argument, NULL, OPT_LOCAL},
                                         {"connect", required_argument, NULL, OPT_CONNECT},
                                         {"name", required_argument, NULL, OPT_NAME},
                                         {"dir", required_argument, NULL, OPT_DIR},
                                         {"fifo", no_argument, NULL, OPT_FIFO},
                                         {"accel", required_argument, NULL, OPT_ACCEL},
                                         {0}};
    cli_common co = {0};
    node_launch_opts lo = {0};
    bool local = false;
    const char *name = NULL, *dir = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        switch (c) {
        case '?': return CLI_USAGE;
        case OPT_LOCAL: local = true; break;
        case OPT_CONNECT: lo.uri = optarg; break;
        case OPT_NAME: name = optarg; break;
        case OPT_DIR: dir = optarg; break;
        case OPT_FIFO: lo.fifo = true; break;
        case OPT_ACCEL:
            if (!strcmp(optarg, "kvm"))
                lo.accel = NODE_ACCEL_KVM;
            else if (!strcmp(optarg, "tcg"))
                lo.accel = NODE_ACCEL_TCG;
            else
                return cli_usage_error(usage, argv[0], "--accel is kvm or tcg, not %s", optarg);
            break;
        }
    }
    if (optind + 1 != argc) return cli_usage_error(usage, argv[0], "expected one ID or NAME");
    if (!local)
        return cli_usage_error(usage, argv[0],
                               "--local is required (launching through a remote node comes later)");
    if (name && (!name[0] || strchr(name, '/') || name[0] == '.'))
        return cli_usage_error(usage, argv[0],
                               "a domain name has no '/' and does not start with '.'");
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    int status = CLI_FAIL;
    char *dname = NULL, *ddir = NULL;
    cs_id id;
    if (!cli_resolve_id(argv[0], st, argv[optind], &id)) goto done;
    if (!(dname = name ? strdup(name) : default_name(argv[optind], &id))) goto done;
    if (dir) {
        ddir = strdup(dir);
    } else {
        const char *parent = getenv("CLOUDLET_LAUNCH_DIR");
        if (!parent || !parent[0]) parent = "/var/tmp/cloudlet-launch";
        /* QEMU (another user) must traverse it; the per-launch directory is 0711 too. */
        if (mkdir(parent, 0711) != 0 && errno != EEXIST) {
            cli_error(argv[0], "cannot create %s: %s", parent, strerror(errno));
            goto done;
        }
        if ((ddir = malloc(strlen(parent) + strlen(dname) + 2)))
            sprintf(ddir, "%s/%s", parent, dname);
    }
    if (!ddir) goto done;
    lo.name = dname, lo.dir = ddir;
    cli_progress pr;
    cli_progress_init(&pr, "launch");
    node_launch_report r;
    char err[NODE_ERRMSG] = "";
    int rc = node_vm_launch_local(st, &id, &lo, &r, cli_progress_update, &pr, err);
    cli_progress_end(&pr);
    if (rc) {
        cli_error(argv[0], "%s", err[0] ? err : node_strerror(rc));
        goto done;
    }
    if (co.json) {
        printf("{\"domain\": ");
        cli_json_str(stdout, dname);
        printf(", \"uuid\": \"%s\", \"dir\": ", r.uuid);
        cli_json_str(stdout, ddir);
        printf(", \"accel\": \"%s\", \"resumed\": %s, \"fifo\": %s, \"resolve_s\": %.3f, "
               "\"disk_s\": %.3f, \"memory_s\": %.3f, \"restore_s\": %.3f, \"total_s\": %.3f, "
               "\"disk_bytes\": %llu, \"memory_bytes\": %llu, \"save_bytes\": %llu}\n",
               node_accel_name(r.accel), r.booted ? "false" : "true", lo.fifo ? "true" : "false",
               r.resolve_s, r.disk_s, r.memory_s, r.restore_s, r.total_s,
               (unsigned long long)r.disk_bytes, (unsigned long long)r.memory_bytes,
               (unsigned long long)r.save_bytes);
    } else {
        char a[32];
        printf("accel    %s\n", node_accel_name(r.accel));
        printf("resolve  %.3f s\n", r.resolve_s);
        printf("disk     %.3f s  %s\n", r.disk_s, cli_bytes(r.disk_bytes, a));
        if (r.booted) {
            printf("boot     %.3f s  (no memory snapshot: booted, not resumed)\n", r.restore_s);
        } else {
            char b[32];
            if (lo.fifo)
                printf("memory   %.3f s  %s through a FIFO, while restore read it\n", r.memory_s,
                       cli_bytes(r.memory_bytes, a));
            else
                printf("memory   %.3f s  %s as a %s save file\n", r.memory_s,
                       cli_bytes(r.memory_bytes, a), cli_bytes(r.save_bytes, b));
            printf("restore  %.3f s\n", r.restore_s);
        }
        printf("total    %.3f s\n", r.total_s);
        printf("dir      %s (disk.raw, domain.xml, console.sock, console.log)\n", ddir);
        printf("%s\n", dname);
    }
    status = CLI_OK;
done:
    free(dname), free(ddir);
    cs_close(st);
    return status;
}
