/* main.c — the `cloudlet` command: a table of subcommands, one file each (cmd_*.c). */
#include "cli.h"

#include <signal.h>
#include <string.h>

static const struct {
    const char *group, *verb; /* "store", "add"; or "init", NULL */
    cli_cmd_fn fn;
    const char *summary;
} commands[] = {
    {"init", NULL, cmd_init, "create a node home, its store and keys; make or join a fleet"},
    {"fleet-key", NULL, cmd_fleet_key, "print the fleet key for nodes, or the client key for apps"},
    {"status", NULL, cmd_status, "ask the node's daemon how it is"},
    {"peers", NULL, cmd_peers, "list the nodes of the fleet the daemon knows"},
    {"pull", NULL, cmd_pull, "fetch a VM and every chunk this node lacks from its peers"},
    {"replication", NULL, cmd_replication, "show how the fleet's nodes hold each VM's chunks"},
    {"replicate", NULL, cmd_replicate, "have nodes pull a VM until each chunk is on K nodes"},
    {"ls", NULL, cmd_ls, "list the VMs and files in the store"},
    {"vm", "import", cmd_vm_import, "store a VM (disk, domain XML) as a manifest; print its id"},
    {"synth", NULL, cmd_synth, "rebuild a VM's files from the store alone"},
    {"launch", NULL, cmd_launch, "synthesize a VM and resume it here (--local), or on a node of the fleet (--node, --discover)"},
    {"vm", "capture", cmd_vm_capture, "save a running libvirt domain into the store; print its id"},
    {"manifest", "show", cmd_manifest_show, "show what a manifest holds and how it was imported"},
    {"store", "add", cmd_store_add, "chunk files into the store; print their ids"},
    {"store", "cat", cmd_store_cat, "write a stored file back, bit-identical"},
    {"store", "stats", cmd_store_stats, "show what the store holds and what it costs on disk"},
    {"store", "verify", cmd_store_verify, "re-read and re-hash every chunk and manifest"},
    {"store", "gc", cmd_store_gc, "free chunks and manifests that nothing pins"},
    {"store", "rm", cmd_store_rm, "unpin a stored file or VM (space returns at the next gc)"},
    {"overlay", "export", cmd_overlay_export, "write a VM's overlay package (what its parent lacks)"},
    {"overlay", "import", cmd_overlay_import, "check and store a VM from an overlay package"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void help(FILE *f)
{
    fprintf(f, "usage: cloudlet COMMAND [OPTIONS] [ARGS]\n\n"
               "cloudlet keeps VMs as content-addressed 4 KiB chunks and launches them on\n"
               "nearby edge servers. Commands:\n\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s%s%s", commands[i].group, commands[i].verb ? " " : "",
                 commands[i].verb ? commands[i].verb : "");
        fprintf(f, "  %-16s %s\n", name, commands[i].summary);
    }
    fprintf(f, "\nEvery command takes --home DIR and --help. See `cloudlet COMMAND --help`.\n");
}

int main(int argc, char **argv)
{
    /* Under a file size limit (ulimit -f) a write that passes it then fails with EFBIG, which
     * the store reports as "no space left", instead of the signal killing the command. */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        help(stderr);
        return CLI_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        help(stdout);
        return CLI_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("cloudlet %s\n", CLOUDLET_VERSION);
        return CLI_OK;
    }
    bool group_known = false;
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(argv[1], commands[i].group) != 0) continue;
        group_known = true;
        if (!commands[i].verb) {
            argv[1] = (char *)commands[i].group;
            return commands[i].fn(argc - 1, argv + 1);
        }
        if (argc >= 3 && !strcmp(argv[2], commands[i].verb)) {
            char name[32];
            snprintf(name, sizeof name, "%s %s", commands[i].group, commands[i].verb);
            argv[2] = name;
            return commands[i].fn(argc - 2, argv + 2);
        }
    }
    if (group_known && argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
        help(stdout);
        return CLI_OK;
    }
    if (group_known) {
        fprintf(stderr, "cloudlet %s: %s%s\n\n", argv[1], argc >= 3 ? "unknown subcommand " : "missing subcommand",
                argc >= 3 ? argv[2] : "");
    } else {
        fprintf(stderr, "cloudlet: unknown command %s\n\n", argv[1]);
    }
    help(stderr);
    return CLI_USAGE;
}
