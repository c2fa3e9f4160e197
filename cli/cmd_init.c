/* cmd_init.c — `cloudlet init`: create a node home, its chunk store and its keys; make or join
 * a fleet, or store the fleet's client key in an app's home. */
#define _GNU_SOURCE
#include "cli.h"
#include "cloudlet_client.h"
#include "node.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet init [--home DIR] [--new-fleet | --fleet-key FILE | --client-key FILE]\n\n"
    "Creates a node home (mode 0700) holding the chunk store and the node's key pair\n"
    "(node.key, mode 0600, and node.pub). Running it on a home that already exists changes\n"
    "nothing and succeeds: existing keys are never replaced. The last line of output is the\n"
    "node's public key (also in <home>/node.pub).\n\n"
    "  --new-fleet      make a new fleet: a fresh random fleet key in <home>/fleet.key (0600);\n"
    "                   hand it to other nodes with `cloudlet fleet-key`\n"
    "  --fleet-key FILE join a fleet: copy its fleet key from FILE (`-`: standard input), as\n"
    "                   printed by `cloudlet fleet-key` on one of its nodes\n"
    "  --client-key FILE make an app's home: copy the fleet's client key from FILE (`-`:\n"
    "                   standard input), as printed by `cloudlet fleet-key --client` on a\n"
    "                   node, into <home>/client.key (0600); `cloudlet launch ID --node HOST`\n"
    "                   or `--discover` then launches this home's VMs on the fleet's nodes\n"
    "  --home DIR       the node home (default: $CLOUDLET_HOME, else /var/lib/cloudlet for root,\n"
    "                   else ~/.local/share/cloudlet)\n\n"
    "A home in a fleet stays in it: --new-fleet, or --fleet-key with another fleet's key, is\n"
    "refused when the home has a fleet key (see docs/keys.md to move a node to another fleet).\n";

/* mkdir -p with mode for the last component. */
static int mkdirs(const char *path, mode_t mode)
{
    char *p = strdup(path);
    if (!p) return -ENOMEM;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int err = -errno;
            free(p);
            return err;
        }
        *s = '/';
    }
    int rc = mkdir(p, mode) != 0 && errno != EEXIST ? -errno : 0;
    free(p);
    return rc;
}

/* The fleet key handed over in file (standard input for "-"). A copy of a key on its way
 * between nodes may be readable by others (`cloudlet fleet-key > f` under umask 022): it is
 * read anyway, with a warning to delete it. */
static bool read_fleet_key(const char *cmd, const char *file, uint8_t fleet[NODE_KEY_BYTES])
{
    char err[NODE_ERRMSG];
    bool in = !strcmp(file, "-");
    int rc = node_key_read(in ? "/dev/stdin" : file, NODE_KEY_FLEET, false, fleet, err);
    size_t skip = in && !strncmp(err, "/dev/stdin: ", 12) ? 12 : 0;
    if (rc) cli_error(cmd, "%s%s", in ? "standard input: " : "", err + skip);
    struct stat sb;
    if (rc == 0 && !in && stat(file, &sb) == 0 && (sb.st_mode & 077))
        fprintf(stderr,
                "cloudlet %s: warning: %s can be read by others; delete it once the "
                "nodes have joined\n",
                cmd, file);
    if (rc && strstr(err, "client key"))
        cli_error(cmd, "the client key is for apps; a node joins with the fleet key that "
                       "`cloudlet fleet-key` prints on a node of the fleet");
    return rc == 0;
}

/* The client key handed over in file (standard input for "-"), read whatever its mode like a
 * fleet key on its way. */
static bool read_client_key(const char *cmd, const char *file, uint8_t key[NODE_KEY_BYTES])
{
    char err[NODE_ERRMSG];
    bool in = !strcmp(file, "-");
    int rc = node_key_read(in ? "/dev/stdin" : file, NODE_KEY_CLIENT, false, key, err);
    size_t skip = in && !strncmp(err, "/dev/stdin: ", 12) ? 12 : 0;
    if (rc) cli_error(cmd, "%s%s", in ? "standard input: " : "", err + skip);
    if (rc && strstr(err, "this is a fleet key"))
        cli_error(cmd, "an app holds the client key, which `cloudlet fleet-key --client` prints "
                       "on a node of the fleet; the fleet key stays on the nodes");
    return rc == 0;
}

/* Stores the client key in an app's home: never in a node's home (a node of the fleet derives
 * it from the fleet key), never replacing another client key. */
static int store_client_key(const char *cmd, const char *home, const uint8_t key[NODE_KEY_BYTES])
{
    char err[NODE_ERRMSG];
    uint8_t other[NODE_KEY_BYTES];
    int rc = node_fleet_key_load(home, other, err);
    node_secret_wipe(other, sizeof other);
    if (rc == 0) {
        cli_error(cmd, "%s is a node of a fleet (%s/%s): it derives the client key from the fleet "
                       "key and needs no %s",
                  home, home, NODE_FLEET_FILE, CL_CLIENT_KEY_FILE);
        return -EEXIST;
    }
    char *path = node_home_path(home, CL_CLIENT_KEY_FILE);
    if (!path) abort();
    rc = node_key_write(path, NODE_KEY_CLIENT, key, false, err);
    if (rc == -EEXIST) {
        rc = node_key_read(path, NODE_KEY_CLIENT, true, other, err);
        bool same = rc == 0 && sodium_memcmp(other, key, NODE_KEY_BYTES) == 0;
        node_secret_wipe(other, sizeof other);
        if (same) {
            printf("already holds this client key\n");
        } else if (rc == 0) {
            cli_error(cmd, "%s holds another client key already; remove it by hand to use this "
                           "one (an app is in one fleet)",
                      path);
            rc = -EEXIST;
        } else {
            cli_error(cmd, "%s", err);
        }
    } else if (rc) {
        cli_error(cmd, "%s", err);
    } else {
        printf("stored the fleet's client key (%s): `cloudlet launch ID --node HOST` or "
               "`--discover` launches this home's VMs on the fleet's nodes\n",
               CL_CLIENT_KEY_FILE);
    }
    free(path);
    return rc;
}

int cmd_init(int argc, char **argv)
{
    enum { OPT_NEW_FLEET = 0x200, OPT_FLEET_KEY, OPT_CLIENT_KEY };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"new-fleet", no_argument, NULL, OPT_NEW_FLEET},
                                         {"fleet-key", required_argument, NULL, OPT_FLEET_KEY},
                                         {"client-key", required_argument, NULL, OPT_CLIENT_KEY},
                                         {0}};
    cli_common co = {0};
    bool new_fleet = false;
    const char *fleet_file = NULL, *client_file = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        switch (c) {
        case OPT_NEW_FLEET: new_fleet = true; break;
        case OPT_FLEET_KEY: fleet_file = optarg; break;
        case OPT_CLIENT_KEY: client_file = optarg; break;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc)
        return cli_usage_error(usage, argv[0], "unexpected argument %s", argv[optind]);
    if (new_fleet && fleet_file)
        return cli_usage_error(usage, argv[0],
                               "--new-fleet and --fleet-key exclude each other: a node makes a "
                               "fleet or joins one");
    if (client_file && (new_fleet || fleet_file))
        return cli_usage_error(usage, argv[0],
                               "--client-key makes an app's home, which is in no fleet: it "
                               "excludes --new-fleet and --fleet-key");

    /* The key handed over is checked before anything is created. */
    uint8_t fleet[NODE_KEY_BYTES];
    if (fleet_file && !read_fleet_key(argv[0], fleet_file, fleet)) return CLI_FAIL;
    uint8_t client[NODE_KEY_BYTES];
    if (client_file && !read_client_key(argv[0], client_file, client)) return CLI_FAIL;

    char *home = cli_home(&co), *store = NULL;
    int rc = mkdirs(home, 0700);
    if (rc) {
        cli_error(argv[0], "cannot create %s: %s", home, cs_strerror(rc));
        free(home);
        return CLI_FAIL;
    }
    if (asprintf(&store, "%s/store", home) < 0) abort();
    struct stat sb;
    char *data = NULL;
    if (asprintf(&data, "%s/data.mdb", store) < 0) abort();
    bool existed = stat(data, &sb) == 0;
    free(data);
    cs_store *st = NULL;
    rc = cs_open(store, CS_OPEN_CREATE, &st);
    cs_close(st);
    free(store);
    if (rc) {
        cli_error(argv[0], "cannot create the store at %s/store: %s", home, cs_strerror(rc));
        free(home);
        return CLI_FAIL;
    }
    printf(existed ? "node home %s is already initialised\n" : "initialised node home %s\n", home);

    char err[NODE_ERRMSG];
    uint8_t pk[NODE_KEY_BYTES];
    bool created = false;
    if ((rc = node_keypair_init(home, pk, &created, err))) {
        cli_error(argv[0], "%s", err);
    } else if (created) {
        printf("made the node's key pair (%s, %s)\n", NODE_KEY_FILE, NODE_PUB_FILE);
    }

    if (rc == 0 && new_fleet) {
        rc = node_fleet_key_new(home, err);
        if (rc == -EEXIST)
            cli_error(argv[0],
                      "node home %s is in a fleet already (%s/%s); `cloudlet fleet-key` "
                      "prints its key for other nodes",
                      home, home, NODE_FLEET_FILE);
        else if (rc)
            cli_error(argv[0], "%s", err);
        else
            printf("made a new fleet key (%s): `cloudlet fleet-key` prints it for other nodes, "
                   "`cloudlet fleet-key --client` the key for apps\n",
                   NODE_FLEET_FILE);
    } else if (rc == 0 && fleet_file) {
        bool already = false;
        rc = node_fleet_key_set(home, fleet, &already, err);
        node_secret_wipe(fleet, sizeof fleet);
        if (rc)
            cli_error(argv[0], "%s", err);
        else
            printf(already ? "already in this fleet\n" : "joined the fleet (%s)\n",
                   NODE_FLEET_FILE);
    } else if (rc == 0 && client_file) {
        rc = store_client_key(argv[0], home, client);
        node_secret_wipe(client, sizeof client);
    } else if (rc == 0) {
        uint8_t probe[NODE_KEY_BYTES];
        int frc = node_fleet_key_load(home, probe, err);
        char *cpath = node_home_path(home, CL_CLIENT_KEY_FILE);
        if (!cpath) abort();
        bool app = frc == CS_ENOTFOUND && access(cpath, F_OK) == 0;
        free(cpath);
        if (app)
            printf("an app's home: it holds the fleet's client key (%s)\n", CL_CLIENT_KEY_FILE);
        else if (frc == CS_ENOTFOUND)
            printf("no fleet key: the node runs alone (make a fleet with `cloudlet init "
                   "--new-fleet`, or join one with `cloudlet init --fleet-key FILE`)\n");
        else if (frc)
            fprintf(stderr, "cloudlet %s: warning: %s\n", argv[0], err);
        node_secret_wipe(probe, sizeof probe);
    }
    if (rc == 0) {
        char text[NODE_KEY_TEXT];
        printf("the node's public key (%s/%s):\n%s\n", home, NODE_PUB_FILE,
               node_key_encode(NODE_KEY_NODE_PUBLIC, pk, text));
    }
    free(home);
    return rc ? CLI_FAIL : CLI_OK;
}
