/* cmd_store_rm.c — `cloudlet store rm ID`: unpin. */
#include "cli.h"

static const char usage[] =
    "usage: cloudlet store rm [--home DIR] ID|NAME...\n\n"
    "Unpins each stored file or VM. Its space is freed by the next `cloudlet store gc`,\n"
    "unless another pinned manifest still needs it (as its parent, or for shared chunks).\n\n"
    "  --home DIR   the node home\n";

int cmd_store_rm(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, false, 1, -1, &co)) return CLI_USAGE;
    cs_store *st = cli_open_store(argv[0], &co, true);
    if (!st) return CLI_FAIL;
    int status = CLI_OK;
    for (int i = optind; i < argc; i++) {
        cs_id id;
        if (!cli_resolve_id(argv[0], st, argv[i], &id)) {
            status = CLI_FAIL;
            continue;
        }
        int rc = cs_manifest_unpin(st, &id);
        if (rc) {
            cli_error(argv[0], "%s: %s", argv[i], rc == CS_ENOTFOUND ? "no such manifest" : cs_strerror(rc));
            status = CLI_FAIL;
        } else {
            printf("unpinned %s\n", argv[i]);
        }
    }
    cs_close(st);
    return status;
}
