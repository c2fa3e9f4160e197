/* cmd_manifest_show.c — `cloudlet manifest show ID`: what a manifest holds. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cloudlet manifest show [--home DIR] [--json] ID|NAME\n\n"
    "Shows a manifest: its parent, its domain XML's size, and per image the kind, length,\n"
    "chunk positions, zero chunks and (for a derived VM) the positions that differ from the\n"
    "parent; and the report of the import that stored it, when there is one.\n\n"
    "  --json       machine-readable output\n"
    "  --home DIR   the node home\n";

static const char *kind_name(uint8_t k)
{
    static const char *names[] = {"file", "disk", "ram", "state"};
    return k <= CS_IMAGE_KIND_MAX ? names[k] : "?";
}

int cmd_manifest_show(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 1, 1, &co)) return CLI_USAGE;
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    cs_id id;
    cs_manifest *m = NULL;
    uint8_t *note = NULL;
    size_t nlen = 0;
    int status = CLI_FAIL;
    if (!cli_resolve_id(argv[0], st, argv[optind], &id)) goto out;
    int rc = cs_manifest_get(st, &id, &m);
    if (rc) {
        cli_error(argv[0], "%s: %s", argv[optind], rc == CS_ENOTFOUND ? "no such manifest" : cs_strerror(rc));
        goto out;
    }
    if (cs_manifest_note_get(st, &id, &note, &nlen) != 0) note = NULL;
    char hex[CS_ID_HEX + 1], phex[CS_ID_HEX + 1];
    cs_id_to_hex(&id, hex);
    if (m->has_parent) cs_id_to_hex(&m->parent, phex);
    if (co.json) printf("{\"id\": \"%s\", \"parent\": %s%s%s, \"xml_bytes\": %zu, \"images\": [", hex,
                        m->has_parent ? "\"" : "", m->has_parent ? phex : "null",
                        m->has_parent ? "\"" : "", strlen(m->xml));
    else printf("manifest %s\nparent   %s\nxml      %zu bytes\n\n%-22s %-6s %12s %10s %10s %10s\n", hex,
                m->has_parent ? phex : "none", strlen(m->xml), "image", "kind", "length", "chunks",
                "zero", "differs");
    for (size_t i = 0; i < m->nimages; i++) {
        const cs_image *im = &m->images[i];
        uint64_t zero = 0, explicit_ = 0;
        for (uint64_t k = 0; k < im->nchunks; k++) {
            zero += cs_id_is_zero(&im->chunks[k]);
            explicit_ += !im->explicit_mask || (im->explicit_mask[k / 8] & (1u << (k % 8)));
        }
        char len[32];
        if (co.json) {
            printf("%s{\"name\": ", i ? ", " : "");
            cli_json_str(stdout, im->name);
            printf(", \"kind\": \"%s\", \"length\": %llu, \"chunks\": %llu, \"zero\": %llu, "
                   "\"differs_from_parent\": %llu}",
                   kind_name(im->kind), (unsigned long long)im->length,
                   (unsigned long long)im->nchunks, (unsigned long long)zero,
                   (unsigned long long)(m->has_parent ? explicit_ : im->nchunks));
        } else {
            char differs[32] = "-";
            if (m->has_parent) snprintf(differs, sizeof differs, "%llu", (unsigned long long)explicit_);
            printf("%-22s %-6s %12s %10llu %10llu %10s\n", im->name, kind_name(im->kind),
                   cli_bytes(im->length, len), (unsigned long long)im->nchunks,
                   (unsigned long long)zero, differs);
        }
    }
    if (co.json) {
        printf("], \"import_report\": %.*s}\n", note ? (int)nlen : 4, note ? (char *)note : "null");
    } else if (note) {
        printf("\nimport report: %.*s\n", (int)nlen, (char *)note);
    }
    status = CLI_OK;
out:
    free(note);
    cs_manifest_free(m);
    cs_close(st);
    return status;
}
