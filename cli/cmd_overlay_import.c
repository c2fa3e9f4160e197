/* cmd_overlay_import.c — `cloudlet overlay import FILE`: store a VM from an overlay package. */
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet overlay import [--home DIR] [--json] FILE\n\n"
    "Checks an overlay package whole — its hash, every chunk against its id, that this\n"
    "store holds the parent VM and that nothing the manifest names is missing — and only\n"
    "then stores its chunks and its manifest (pinned). A bad package stores nothing.\n"
    "Prints the manifest's id as the last line.\n\n"
    "  --json       machine-readable report\n"
    "  --home DIR   the node home\n";

int cmd_overlay_import(int argc, char **argv)
{
    cli_common co = {0};
    if (cli_parse_common(argc, argv, usage, true, 1, 1, &co)) return CLI_USAGE;
    const char *path = argv[optind];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        cli_error(argv[0], "cannot read %s: %s", path, fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0) close(fd);
        return CLI_FAIL;
    }
    size_t len = (size_t)sb.st_size;
    const uint8_t *buf = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (len && buf == MAP_FAILED) {
        cli_error(argv[0], "cannot map %s: %s", path, strerror(errno));
        return CLI_FAIL;
    }
    cs_store *st = cli_open_store(argv[0], &co, true);
    if (!st) {
        if (len) munmap((void *)buf, len);
        return CLI_FAIL;
    }
    cli_progress pr;
    cli_progress_init(&pr, "import");
    node_overlay_report r;
    cs_id id;
    char err[NODE_ERRMSG] = "";
    static const uint8_t empty[1];
    int rc = node_overlay_import(st, len ? buf : empty, len, &id, cli_progress_update, &pr, &r, err);
    cli_progress_end(&pr);
    cs_close(st);
    if (len) munmap((void *)buf, len);
    if (rc) {
        cli_error(argv[0], "%s: %s", path, err[0] ? err : node_strerror(rc));
        return CLI_FAIL;
    }
    char hex[CS_ID_HEX + 1], a[32];
    cs_id_to_hex(&id, hex);
    if (co.json)
        printf("{\"id\": \"%s\", \"chunks\": %llu, \"delta_chunks\": %llu, \"file_bytes\": %llu}\n",
               hex, (unsigned long long)r.chunks, (unsigned long long)r.delta_chunks,
               (unsigned long long)r.file_bytes);
    else
        printf("%s: %llu chunks (%llu from deltas), %s\n%s\n", path, (unsigned long long)r.chunks,
               (unsigned long long)r.delta_chunks, cli_bytes(r.file_bytes, a), hex);
    return CLI_OK;
}
