/* cmd_fleet_key.c — `cloudlet fleet-key`: print the fleet key (for other nodes) or the client
 * key (for apps). */
#define _GNU_SOURCE
#include "cli.h"
#include "node.h"

#include <stdlib.h>
#include <sys/stat.h>

static const char usage[] =
    "usage: cloudlet fleet-key [--client] [--home DIR] [--json]\n\n"
    "Prints the node's fleet key as one line `cloudlet-fleet-key:<64 hex digits>`, to hand to\n"
    "another node, which joins the fleet with it:\n\n"
    "    cloudlet fleet-key > f     # on a node of the fleet\n"
    "    cloudlet init --fleet-key f && rm f   # on the new node\n\n"
    "Both are secrets: whoever holds the fleet key is a node of the fleet. Move them over a\n"
    "channel you trust.\n\n"
    "  --client     print the client key instead (`cloudlet-client-key:…`), derived from the\n"
    "               fleet key: what apps authenticate with. It lets them fetch the VMs they\n"
    "               name and launch them, not act as a node\n"
    "  --json       {\"fleet_key\": \"…\"} or {\"client_key\": \"…\"}\n"
    "  --home DIR   the node home\n";

int cmd_fleet_key(int argc, char **argv)
{
    enum { OPT_CLIENT = 0x200 };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"client", no_argument, NULL, OPT_CLIENT},
                                         {0}};
    cli_common co = {0};
    bool client = false;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c != OPT_CLIENT) return CLI_USAGE;
        client = true;
    }
    if (optind < argc)
        return cli_usage_error(usage, argv[0], "unexpected argument %s", argv[optind]);

    char *home = cli_home(&co);
    struct stat sb;
    if (stat(home, &sb) != 0) {
        cli_error(argv[0], "no node home at %s (create it with `cloudlet init --home %s`)", home,
                  home);
        free(home);
        return CLI_FAIL;
    }
    uint8_t fleet[NODE_KEY_BYTES], key[NODE_KEY_BYTES];
    char err[NODE_ERRMSG], text[NODE_KEY_TEXT];
    int rc = node_fleet_key_load(home, fleet, err);
    free(home);
    if (rc) {
        cli_error(argv[0], "%s", err);
        return CLI_FAIL;
    }
    if (client) node_client_key(fleet, key);
    node_key_encode(client ? NODE_KEY_CLIENT : NODE_KEY_FLEET, client ? key : fleet, text);
    node_secret_wipe(fleet, sizeof fleet);
    node_secret_wipe(key, sizeof key);
    if (co.json)
        printf("{\"%s\": \"%s\"}\n", client ? "client_key" : "fleet_key", text);
    else
        printf("%s\n", text);
    node_secret_wipe(text, sizeof text);
    return CLI_OK;
}
