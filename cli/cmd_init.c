/* cmd_init.c — `cloudlet init`: create a node home and its chunk store. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char usage[] =
    "usage: cloudlet init [--home DIR]\n\n"
    "Creates a node home (mode 0700) holding the chunk store. Running it on a home that\n"
    "already exists changes nothing and succeeds.\n\n"
    "  --home DIR   the node home (default: $CLOUDLET_HOME, else /var/lib/cloudlet for root,\n"
    "               else ~/.local/share/cloudlet)\n";

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

int cmd_init(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, false, 0, 0, &co)) return CLI_USAGE;

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
    if (rc) {
        cli_error(argv[0], "cannot create the store at %s: %s", store, cs_strerror(rc));
    } else if (existed) {
        printf("node home %s is already initialised\n", home);
    } else {
        printf("initialised node home %s\n", home);
    }
    free(store);
    free(home);
    return rc ? CLI_FAIL : CLI_OK;
}
