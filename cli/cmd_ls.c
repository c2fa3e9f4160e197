/* cmd_ls.c — `cloudlet ls`: the manifests this node keeps. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cloudlet ls [--home DIR] [--json]\n\n"
    "Lists the manifests (VMs and files) in the store: id, names, pins, parent, size.\n\n"
    "  --json       machine-readable output\n"
    "  --home DIR   the node home\n";

struct ls {
    cs_store *st;
    bool json, first;
    struct named {
        char name[256];
        cs_id id;
    } *names;
    size_t nnames, cap;
};

static int add_name(const char *name, const cs_id *id, void *arg)
{
    struct ls *l = arg;
    if (l->nnames == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        struct named *p = realloc(l->names, l->cap * sizeof *p);
        if (!p) return CS_EFORMAT;
        l->names = p;
    }
    snprintf(l->names[l->nnames].name, sizeof l->names[0].name, "%s", name);
    l->names[l->nnames++].id = *id;
    return 0;
}

static int show(const cs_manifest_info *in, void *arg)
{
    struct ls *l = arg;
    char hex[CS_ID_HEX + 1], phex[CS_ID_HEX + 1];
    cs_id_to_hex(&in->id, hex);
    if (in->has_parent) cs_id_to_hex(&in->parent, phex);
    cs_manifest *m = NULL;
    uint64_t length = 0;
    if (cs_manifest_get(l->st, &in->id, &m) == 0)
        for (size_t i = 0; i < m->nimages; i++) length += m->images[i].length;
    if (l->json) {
        printf("%s\n  {\"id\": \"%s\", \"names\": [", l->first ? "" : ",", hex);
        bool f = true;
        for (size_t i = 0; i < l->nnames; i++)
            if (cs_id_equal(&l->names[i].id, &in->id)) {
                printf("%s", f ? "" : ", ");
                cli_json_str(stdout, l->names[i].name);
                f = false;
            }
        printf("], \"pins\": %llu, \"parent\": ", (unsigned long long)in->pins);
        if (in->has_parent) printf("\"%s\"", phex);
        else printf("null");
        printf(", \"images\": %zu, \"bytes\": %llu, \"manifest_bytes\": %zu}", m ? m->nimages : 0,
               (unsigned long long)length, in->encoded_len);
    } else {
        char b[32], names[512] = "";
        size_t k = 0;
        for (size_t i = 0; i < l->nnames && k < sizeof names - 1; i++)
            if (cs_id_equal(&l->names[i].id, &in->id))
                k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", k ? "," : "", l->names[i].name);
        printf("%.16s  %-16s %4llu  %-16.16s %10s\n", hex, names[0] ? names : "-",
               (unsigned long long)in->pins, in->has_parent ? phex : "-", cli_bytes(length, b));
    }
    l->first = false;
    cs_manifest_free(m);
    return 0;
}

int cmd_ls(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 0, 0, &co)) return CLI_USAGE;
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    struct ls l = {.st = st, .json = co.json, .first = true};
    int rc = cs_name_list(st, add_name, &l);
    if (co.json) printf("[");
    else printf("%-16s  %-16s %4s  %-16s %10s\n", "ID", "NAME", "PINS", "PARENT", "SIZE");
    if (rc == 0) rc = cs_manifest_list(st, show, &l);
    if (co.json) printf("\n]\n");
    free(l.names);
    cs_close(st);
    if (rc) {
        cli_error(argv[0], "%s", cs_strerror(rc));
        return CLI_FAIL;
    }
    return CLI_OK;
}
