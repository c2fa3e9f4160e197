/* node_home.c — where a node keeps its store, keys and configuration. */
#define _GNU_SOURCE
#include "node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *node_home(const char *explicit_home)
{
    const char *env = getenv("CLOUDLET_HOME");
    char *home = NULL;
    if (explicit_home && *explicit_home) return strdup(explicit_home);
    if (env && *env) return strdup(env);
    if (geteuid() == 0) return strdup("/var/lib/cloudlet");
    const char *xdg = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    int r = xdg && *xdg ? asprintf(&home, "%s/cloudlet", xdg)
                        : asprintf(&home, "%s/.local/share/cloudlet", h && *h ? h : ".");
    return r < 0 ? NULL : home;
}

char *node_home_path(const char *home, const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s", home, name) < 0 ? NULL : p;
}
