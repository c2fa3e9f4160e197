/* cmd_store_verify.c — `cloudlet store verify`: re-hash everything. */
#include "cli.h"

static const char usage[] =
    "usage: cloudlet store verify [--home DIR] [--json]\n\n"
    "Re-reads and re-hashes every stored chunk and manifest. Prints each bad id (a damaged\n"
    "chunk, a damaged manifest, or an index entry pointing at missing data) and exits with\n"
    "status 1 when anything is bad, 0 when all is well.\n\n"
    "  --json       machine-readable output\n"
    "  --home DIR   the node home\n";

struct ctx {
    bool json, first;
    cli_progress pr;
};

static void on_bad(const cs_id *id, const char *what, void *arg)
{
    struct ctx *c = arg;
    char hex[CS_ID_HEX + 1];
    cs_id_to_hex(id, hex);
    cli_progress_end(&c->pr); /* a bad id gets a line of its own */
    if (c->json) {
        printf("%s{\"kind\": \"%s\", \"id\": \"%s\"}", c->first ? "" : ", ", what ? what : "chunk", hex);
        c->first = false;
    } else {
        printf("bad %s %s\n", what ? what : "chunk", hex);
    }
}

static void progress(uint64_t done, uint64_t total, void *arg)
{
    struct ctx *c = arg;
    cli_progress_update(done * CS_CHUNK_SIZE, total * CS_CHUNK_SIZE, &c->pr);
}

int cmd_store_verify(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 0, 0, &co)) return CLI_USAGE;
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    struct ctx cx = {co.json, true, {0}};
    cli_progress_init(&cx.pr, "verify");
    if (co.json) printf("{\"bad\": [");
    cs_verify_report r;
    int rc = cs_verify(st, on_bad, progress, &cx, &r);
    cli_progress_end(&cx.pr);
    cs_close(st);
    if (rc) {
        if (co.json) printf("]}\n");
        cli_error(argv[0], "%s", cs_strerror(rc));
        return CLI_FAIL;
    }
    uint64_t bad = r.bad_chunks + r.bad_manifests + r.bad_index;
    if (co.json) {
        printf("], \"chunks_checked\": %llu, \"bad_chunks\": %llu, \"bad_manifests\": %llu, "
               "\"bad_index\": %llu, \"ok\": %s}\n",
               (unsigned long long)r.chunks_checked, (unsigned long long)r.bad_chunks,
               (unsigned long long)r.bad_manifests, (unsigned long long)r.bad_index,
               bad ? "false" : "true");
    } else {
        printf("%llu chunks checked: %llu bad chunks, %llu bad manifests, %llu bad index entries\n",
               (unsigned long long)r.chunks_checked, (unsigned long long)r.bad_chunks,
               (unsigned long long)r.bad_manifests, (unsigned long long)r.bad_index);
        printf(bad ? "store is DAMAGED\n" : "store is intact\n");
    }
    return bad ? CLI_FAIL : CLI_OK;
}
