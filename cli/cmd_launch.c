/* cmd_launch.c — `cloudlet launch`: synthesize a VM and resume it here (--local), or have a node
 * of the fleet launch it, serving the node what it lacks from this home (--node, --discover;
 * the client library, cloudlet_client.h). */
#include "cli.h"
#include "cloudlet_client.h"
#include "node.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet launch ID|NAME --local [--connect URI] [--name NAME] [--dir DIR] [--fifo]\n"
    "                       [--accel kvm|tcg] [--home DIR] [--json]\n"
    "       cloudlet launch ID|NAME (--node HOST[:PORT] [--node-key KEY] | --discover)\n"
    "                       [--wait] [--name NAME] [--home DIR] [--json [--progress-json]]\n\n"
    "With --node or --discover, a node of the fleet launches the VM: it fetches what it lacks\n"
    "from its neighbours and, for what none of them holds, from this home, then resumes the VM\n"
    "through libvirt. Shows the progress (stage, bytes fetched by source, rate, ETA) and at the\n"
    "end the domain, how to reach it, the time of each stage and the bytes from each source;\n"
    "the last line is the domain's name. A node with early start resumes the VM once its\n"
    "memory is there and serves its disk while the rest arrives: the stage is then `running`,\n"
    "the VM answers, and this home still serves until the end. The home needs the fleet's\n"
    "client key (`cloudlet init --client-key FILE`) or its fleet key.\n\n"
    "  --node HOST[:PORT]  the node (default port 7420); without --node-key it is probed at\n"
    "                 the discovery port for its key and port\n"
    "  --node-key KEY the node's key (cloudlet-node-key:..., its node.pub): no probe\n"
    "  --discover     probe the LAN (multicast) and take the first node that answers\n"
    "  --group ADDR   the discovery group (default 239.255.67.76)\n"
    "  --discovery-port PORT  the discovery port (default 7421)\n"
    "  --wait         stay until the node reports the launch done (default: return once the\n"
    "                 node needs nothing more from this home; it continues the launch)\n"
    "  --progress-json  with --json: one progress object per line before the result\n\n"
    "With --local, rebuilds a VM from the store alone and resumes it where it was saved: the\n"
    "disk is written to DIR/disk.raw, the memory snapshot is rebuilt as a libvirt save file and\n"
    "restored as a new transient domain (new name, new UUID, its first disk on disk.raw, its\n"
    "first unix serial console on DIR/console.sock and DIR/console.log). A VM without memory\n"
    "snapshot is booted instead. Prints the time of each stage (resolve, disk, memory,\n"
    "restore) and the domain's name as the last line. On failure nothing is left: no domain,\n"
    "no DIR.\n"
    "`virsh destroy NAME` ends the domain; DIR is then yours to remove.\n\n"
    "  --local        synthesize and resume on this machine\n"
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


/* ---- through a node of the fleet ---------------------------------------------------------- */

typedef struct remote {
    const char *node, *node_key, *group;
    uint16_t disc_port;
    bool discover, wait, progress_json;
} remote;

typedef struct shown {
    bool tty, json, line; /* line: a progress line is on the terminal */
} shown;

static const char *source_kind(int kind)
{
    return kind == CL_SOURCE_LOCAL ? "local" : kind == CL_SOURCE_ORIGIN ? "origin" : "neighbour";
}

static void json_sources(const cl_source *src, unsigned n)
{
    printf("[");
    for (unsigned i = 0; i < n; i++) {
        printf("%s{\"kind\": \"%s\", \"label\": ", i ? ", " : "", source_kind(src[i].kind));
        cli_json_str(stdout, src[i].label);
        printf(", \"bytes\": %llu}", (unsigned long long)src[i].bytes);
    }
    printf("]");
}

static void json_served(const cl_progress *p)
{
    printf("{\"chunks\": %llu, \"deltas\": %llu, \"manifests\": %llu, \"refused\": %llu, "
           "\"bytes\": %llu}",
           (unsigned long long)p->served_chunks, (unsigned long long)p->served_deltas,
           (unsigned long long)p->served_manifests, (unsigned long long)p->refused,
           (unsigned long long)p->sent_bytes);
}

static void on_progress(const cl_progress *p, void *arg)
{
    shown *sh = arg;
    if (sh->json) {
        printf("{\"progress\": {\"stage\": \"%s\", \"elapsed_s\": %.3f, \"fetch_total\": %llu, "
               "\"fetch_done\": %llu, \"vm_total\": %llu, \"vm_done\": %llu, \"sources\": ",
               cl_stage_name(p->stage), p->elapsed_ms / 1e3, (unsigned long long)p->fetch_total,
               (unsigned long long)p->fetch_done, (unsigned long long)p->vm_total,
               (unsigned long long)p->vm_done);
        json_sources(p->src, p->nsources);
        printf(", \"served\": ");
        json_served(p);
        printf("}}\n");
        fflush(stdout);
        return;
    }
    if (!sh->tty) return;
    char a[32], b[32], line[512];
    int n = snprintf(line, sizeof line, "%-8s %s / %s", cl_stage_name(p->stage),
                     cli_bytes(p->fetch_done, a), cli_bytes(p->fetch_total, b));
    for (unsigned i = 0; i < p->nsources && n < (int)sizeof line - 80; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, "%s %s %s", i ? "," : " ", p->src[i].label,
                      cli_bytes(p->src[i].bytes, a));
    double s = p->elapsed_ms / 1e3, rate = s > 0 ? (double)p->fetch_done / s : 0;
    if (rate > 0 && n < (int)sizeof line - 80) {
        n += snprintf(line + n, sizeof line - (size_t)n, "  %s/s", cli_bytes((uint64_t)rate, a));
        if ((p->stage == CL_STAGE_TRANSFER || p->stage == CL_STAGE_RUNNING) &&
            p->fetch_total > p->fetch_done)
            snprintf(line + n, sizeof line - (size_t)n, "  ETA %.0f s",
                     (double)(p->fetch_total - p->fetch_done) / rate);
    }
    /* One row: a line wider than the terminal would wrap, and \r would clear only its last
     * row. */
    int width = cli_term_width() - 1;
    if (width > 0 && width < (int)sizeof line) line[width] = '\0';
    fprintf(stderr, "\r\033[K%s", line);
    sh->line = true;
}

/* The node to launch on, printing why when there is none. nodes/nfound: every node that
 * answered a --discover probe. */
static bool find_node(const char *cmd, cl_client *c, const remote *rm, cl_node *node,
                      cl_node *nodes, int *nfound)
{
    char err[CL_ERRMSG];
    *nfound = 0;
    if (rm->discover) {
        unsigned wait_ms = 1500;
        int n = cl_discover(c, rm->group, rm->disc_port, wait_ms, nodes, 16);
        if (n == CL_ENONODE)
            cli_error(cmd, "no node answered the discovery probe within %.1f s (%s port %u)",
                      wait_ms / 1e3, rm->group ? rm->group : CL_DISCOVERY_GROUP,
                      rm->disc_port ? rm->disc_port : CL_DISCOVERY_PORT);
        else if (n < 0)
            cli_error(cmd, "discovery failed: %s", cl_strerror(n));
        if (n <= 0) return false;
        *nfound = n;
        *node = nodes[0];
        return true;
    }
    if (cl_node_parse(rm->node, node)) {
        cli_error(cmd, "--node %s: expected HOST, HOST:PORT or [IPV6]:PORT", rm->node);
        return false;
    }
    if (rm->node_key) {
        if (cl_node_key_parse(rm->node_key, node->key, err)) {
            cli_error(cmd, "--node-key: %s", err);
            return false;
        }
        node->has_key = true;
        return true;
    }
    int rc = cl_probe(c, node->host, rm->disc_port, 1500, node);
    if (rc == CL_ENONODE)
        cli_error(cmd, "%s did not answer the discovery probe within 1.5 s at port %u (give its "
                       "key with --node-key to connect without a probe)",
                  rm->node, rm->disc_port ? rm->disc_port : CL_DISCOVERY_PORT);
    else if (rc)
        cli_error(cmd, "cannot probe %s: %s", rm->node, cl_strerror(rc));
    return rc == 0;
}

static void node_key_text(const cl_node *n, char out[NODE_KEY_TEXT])
{
    node_key_encode(NODE_KEY_NODE_PUBLIC, n->key, out);
}

static void print_json_result(int rc, const cl_node *node, const cl_node *nodes, int nfound,
                              const cl_result *r)
{
    char key[NODE_KEY_TEXT];
    node_key_text(node, key);
    printf("{\"ok\": %s, \"done\": %s, \"node\": {\"host\": ", rc == 0 ? "true" : "false",
           r->done ? "true" : "false");
    cli_json_str(stdout, node->host);
    printf(", \"port\": %u, \"key\": \"%s\"}", node->port, key);
    if (nfound) {
        printf(", \"nodes\": [");
        for (int i = 0; i < nfound; i++) {
            node_key_text(&nodes[i], key);
            printf("%s{\"host\": ", i ? ", " : "");
            cli_json_str(stdout, nodes[i].host);
            printf(", \"port\": %u, \"key\": \"%s\", \"chunks\": %llu, \"manifests\": %llu}",
                   nodes[i].port, key, (unsigned long long)nodes[i].chunks,
                   (unsigned long long)nodes[i].manifests);
        }
        printf("]");
    }
    if (rc) {
        printf(", \"error\": ");
        cli_json_str(stdout, r->error);
    }
    if (r->done && r->ok) {
        printf(", \"domain\": ");
        cli_json_str(stdout, r->domain);
        printf(", \"uuid\": \"%s\", \"accel\": \"%s\", \"console\": ", r->uuid, r->accel);
        cli_json_str(stdout, r->console);
        printf(", \"address\": ");
        cli_json_str(stdout, r->address);
    }
    if (r->done)
        printf(", \"resolve_s\": %.3f, \"transfer_s\": %.3f, \"apply_s\": %.3f, "
               "\"restore_s\": %.3f, \"total_s\": %.3f",
               r->resolve_ms / 1e3, r->transfer_ms / 1e3, r->apply_ms / 1e3, r->restore_ms / 1e3,
               r->total_ms / 1e3);
    else
        printf(", \"stage\": \"%s\"", cl_stage_name(r->last.stage));
    if (r->running_ms) printf(", \"running_s\": %.3f", r->running_ms / 1e3);
    printf(", \"sources\": ");
    if (r->done)
        json_sources(r->src, r->nsources);
    else
        json_sources(r->last.src, r->last.nsources);
    printf(", \"served\": ");
    json_served(&r->last);
    printf("}\n");
}

static void print_sources(const cl_source *src, unsigned n, const cl_progress *served)
{
    char a[32];
    for (unsigned i = 0; i < n; i++) {
        printf("from %-12s %s", src[i].label, cli_bytes(src[i].bytes, a));
        if (src[i].kind == CL_SOURCE_ORIGIN)
            printf("  (this home sent %llu chunks whole, %llu as deltas, %s in all)",
                   (unsigned long long)served->served_chunks,
                   (unsigned long long)served->served_deltas, cli_bytes(served->sent_bytes, a));
        printf("\n");
    }
}

static int launch_remote(const char *cmd, const cli_common *co, const remote *rm, const char *arg,
                         const char *name)
{
    cs_id id;
    if (cs_id_from_hex(arg, &id) != 0) {
        /* A name can only be this home's. */
        cs_store *st = cli_open_store(cmd, co, false);
        if (!st) return CLI_FAIL;
        bool ok = cli_resolve_id(cmd, st, arg, &id);
        cs_close(st);
        if (!ok) return CLI_FAIL;
    }
    char err[CL_ERRMSG];
    char *home = cli_home(co);
    cl_client *c = NULL;
    int rc = cl_client_open(home, &c, err);
    free(home);
    if (rc) {
        cli_error(cmd, "%s", err);
        return CLI_FAIL;
    }
    cl_node node, nodes[16];
    int nfound = 0;
    if (!find_node(cmd, c, rm, &node, nodes, &nfound)) {
        cl_client_close(c);
        return CLI_FAIL;
    }
    shown sh = {.tty = !co->json && isatty(STDERR_FILENO), .json = co->json && rm->progress_json};
    if (!co->json) {
        char key[NODE_KEY_TEXT], hex[CS_ID_HEX + 1];
        node_key_text(&node, key);
        for (int i = 1; i < nfound; i++) {
            char k2[NODE_KEY_TEXT], s[16];
            node_key_text(&nodes[i], k2);
            printf("also answered: %s port %u (%s)\n", nodes[i].host, nodes[i].port,
                   cli_key_short(k2, 12, s));
        }
        printf("launching %s on %s port %u (%s)\n", cs_id_to_hex(&id, hex), node.host, node.port,
               key);
        fflush(stdout);
    }
    cl_launch_opts o = {.name = name, .wait = rm->wait, .progress = on_progress, .arg = &sh};
    cl_result *r = malloc(sizeof *r);
    if (!r) abort();
    rc = cl_launch(c, &node, id.b, &o, r);
    cl_client_close(c);
    if (sh.line) fprintf(stderr, "\r\033[K");
    if (co->json) print_json_result(rc, &node, nodes, nfound, r);
    if (rc) {
        cli_error(cmd, "%s", r->error[0] ? r->error : cl_strerror(rc));
        free(r);
        return CLI_FAIL;
    }
    if (!co->json && !r->done) {
        printf("the node has every chunk it needs and continues the launch (stage %s); "
               "`--wait` stays until the VM runs\n",
               cl_stage_name(r->last.stage));
        print_sources(r->last.src, r->last.nsources, &r->last);
    } else if (!co->json) {
        printf("domain   %s (uuid %s, %s)\n", r->domain, r->uuid, r->accel);
        if (r->console[0]) printf("console  %s (on the node)\n", r->console);
        if (r->address[0]) printf("address  %s\n", r->address);
        printf("resolve  %.3f s\ntransfer %.3f s\napply    %.3f s\nrestore  %.3f s\n",
               r->resolve_ms / 1e3, r->transfer_ms / 1e3, r->apply_ms / 1e3, r->restore_ms / 1e3);
        if (r->running_ms)
            printf("running  after %.3f s (resumed while its disk still arrived)\n",
                   r->running_ms / 1e3);
        printf("total    %.3f s\n", r->total_ms / 1e3);
        print_sources(r->src, r->nsources, &r->last);
        printf("%s\n", r->domain);
    }
    free(r);
    return CLI_OK;
}

int cmd_launch(int argc, char **argv)
{
    enum {
        OPT_LOCAL = 0x200,
        OPT_CONNECT,
        OPT_NAME,
        OPT_DIR,
        OPT_FIFO,
        OPT_ACCEL,
        OPT_NODE,
        OPT_NODE_KEY,
        OPT_DISCOVER,
        OPT_GROUP,
        OPT_DISC_PORT,
        OPT_WAIT,
        OPT_PROGRESS_JSON,
    };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"local", no_argument, NULL, OPT_LOCAL},
                                         {"connect", required_argument, NULL, OPT_CONNECT},
                                         {"name", required_argument, NULL, OPT_NAME},
                                         {"dir", required_argument, NULL, OPT_DIR},
                                         {"fifo", no_argument, NULL, OPT_FIFO},
                                         {"accel", required_argument, NULL, OPT_ACCEL},
                                         {"node", required_argument, NULL, OPT_NODE},
                                         {"node-key", required_argument, NULL, OPT_NODE_KEY},
                                         {"discover", no_argument, NULL, OPT_DISCOVER},
                                         {"group", required_argument, NULL, OPT_GROUP},
                                         {"discovery-port", required_argument, NULL,
                                          OPT_DISC_PORT},
                                         {"wait", no_argument, NULL, OPT_WAIT},
                                         {"progress-json", no_argument, NULL, OPT_PROGRESS_JSON},
                                         {0}};
    cli_common co = {0};
    node_launch_opts lo = {0};
    bool local = false;
    remote rm = {0};
    const char *name = NULL, *dir = NULL;
    char *end;
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
        case OPT_NODE: rm.node = optarg; break;
        case OPT_NODE_KEY: rm.node_key = optarg; break;
        case OPT_DISCOVER: rm.discover = true; break;
        case OPT_GROUP: rm.group = optarg; break;
        case OPT_DISC_PORT: {
            unsigned long p = strtoul(optarg, &end, 10);
            if (!optarg[0] || *end || p == 0 || p > 65535)
                return cli_usage_error(usage, argv[0], "--discovery-port is 1 to 65535, not %s",
                                       optarg);
            rm.disc_port = (uint16_t)p;
            break;
        }
        case OPT_WAIT: rm.wait = true; break;
        case OPT_PROGRESS_JSON: rm.progress_json = true; break;
        }
    }
    if (optind + 1 != argc) return cli_usage_error(usage, argv[0], "expected one ID or NAME");
    if (local + !!rm.node + rm.discover != 1)
        return cli_usage_error(usage, argv[0],
                               "--local is required to launch here; --node HOST or --discover "
                               "launches on a node of the fleet (one of the three)");
    if (rm.node_key && !rm.node)
        return cli_usage_error(usage, argv[0], "--node-key goes with --node");
    if (rm.group && !rm.discover)
        return cli_usage_error(usage, argv[0], "--group goes with --discover");
    if (rm.progress_json && !co.json)
        return cli_usage_error(usage, argv[0], "--progress-json goes with --json");
    if (name && (!name[0] || strchr(name, '/') || name[0] == '.'))
        return cli_usage_error(usage, argv[0],
                               "a domain name has no '/' and does not start with '.'");
    if (!local) {
        if (name && (strlen(name) > 64 ||
                     strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789._-") != strlen(name)))
            return cli_usage_error(usage, argv[0],
                                   "a domain name on a node is at most 64 of A-Z, a-z, 0-9, '.', "
                                   "'_' and '-'");
        return launch_remote(argv[0], &co, &rm, argv[optind], name);
    }
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    int status = CLI_FAIL;
    char *dname = NULL, *ddir = NULL;
    cs_id id;
    if (!cli_resolve_id(argv[0], st, argv[optind], &id)) goto done;
    if (name) {
        dname = strdup(name);
    } else if ((dname = malloc(strlen(argv[optind]) + 32))) {
        node_domain_name(argv[optind], &id, dname, strlen(argv[optind]) + 32);
    }
    if (!dname) goto done;
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
