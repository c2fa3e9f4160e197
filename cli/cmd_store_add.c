/* cmd_store_add.c — `cloudlet store add FILE...`: chunk files into the store. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet store add [--home DIR] [--json] [--parent ID|NAME] FILE...\n\n"
    "Splits each file into 4 KiB chunks, stores the chunks it does not hold yet (compressed,\n"
    "deduplicated; holes and zero blocks cost nothing), and records the file as a pinned\n"
    "manifest. For each file it prints a report line and then the file's id on a line of its\n"
    "own, so the last line of output is the last file's id (`tail -1`).\n\n"
    "  --parent ID  record each file as derived from a stored file: its manifest names only\n"
    "               the chunks that differ from the parent's (what an overlay carries)\n"
    "  --json       print a JSON array of {file, id, ...} instead\n"
    "  --home DIR   the node home\n";

static int add_one(const char *cmd, cs_store *st, const char *path, const cs_manifest *parent,
                   const cs_id *parent_id, cs_id *id, cs_put_stats *ps)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cli_error(cmd, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        cli_error(cmd, "%s is not a regular file", path);
        close(fd);
        return -1;
    }
    cs_manifest *m = cs_manifest_new();
    cs_image *im = m ? cs_manifest_add_image(m, CS_IMAGE_FILE, "file", (uint64_t)sb.st_size) : NULL;
    if (m && parent) m->has_parent = true, m->parent = *parent_id;
    if (!im) {
        cli_error(cmd, "%s: out of memory", path);
        cs_manifest_free(m);
        close(fd);
        return -1;
    }
    cli_progress pr;
    cli_progress_init(&pr, path);
    int rc = cs_ingest_begin(st);
    if (rc == 0) {
        rc = cs_image_import_fd(st, fd, im, 0, cli_progress_update, &pr, ps, NULL);
        uint8_t *buf = NULL;
        size_t len = 0;
        if (rc == 0) rc = cs_manifest_encode(m, parent, &buf, &len, NULL);
        if (rc == 0) rc = cs_manifest_put(st, buf, len, true, id);
        free(buf);
        cs_ingest_end(st);
    }
    cli_progress_end(&pr);
    if (rc) cli_error(cmd, "%s: %s", path, cs_strerror(rc));
    cs_manifest_free(m);
    close(fd);
    return rc ? -1 : 0;
}

int cmd_store_add(int argc, char **argv)
{
    enum { OPT_PARENT = 0x200 };
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"json", no_argument, NULL, CLI_OPT_JSON},
                                         {"parent", required_argument, NULL, OPT_PARENT},
                                         {0}};
    cli_common co = {0};
    const char *parent_arg = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "h", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == OPT_PARENT) parent_arg = optarg;
    }
    if (optind >= argc) return cli_usage_error(usage, argv[0], "no FILE given");
    cs_store *st = cli_open_store(argv[0], &co, true);
    if (!st) return CLI_FAIL;
    cs_id parent_id;
    cs_manifest *parent = NULL;
    if (parent_arg) {
        if (!cli_resolve_id(argv[0], st, parent_arg, &parent_id)) {
            cs_close(st);
            return CLI_FAIL;
        }
        int rc = cs_manifest_get(st, &parent_id, &parent);
        if (rc) {
            cli_error(argv[0], "parent %s: %s", parent_arg,
                      rc == CS_ENOTFOUND ? "no such manifest" : cs_strerror(rc));
            cs_close(st);
            return CLI_FAIL;
        }
    }
    int status = CLI_OK;
    if (co.json) printf("[");
    bool first = true;
    for (int i = optind; i < argc; i++) {
        cs_id id;
        cs_put_stats ps = {0};
        if (add_one(argv[0], st, argv[i], parent, &parent_id, &id, &ps) != 0) {
            status = CLI_FAIL;
            continue;
        }
        char hex[CS_ID_HEX + 1], sb[32];
        cs_id_to_hex(&id, hex);
        if (co.json) {
            printf("%s\n  {\"file\": ", first ? "" : ",");
            cli_json_str(stdout, argv[i]);
            printf(", \"id\": \"%s\", \"chunks\": %llu, \"zero\": %llu, \"duplicate\": %llu, "
                   "\"new\": %llu, \"stored_bytes\": %llu}",
                   hex, (unsigned long long)ps.chunks, (unsigned long long)ps.zero,
                   (unsigned long long)ps.dup, (unsigned long long)ps.added,
                   (unsigned long long)ps.stored_bytes);
        } else {
            printf("%s: %llu chunks (%llu zero, %llu already stored, %llu new), %s stored\n%s\n",
                   argv[i], (unsigned long long)ps.chunks, (unsigned long long)ps.zero,
                   (unsigned long long)ps.dup, (unsigned long long)ps.added,
                   cli_bytes(ps.stored_bytes, sb), hex);
        }
        first = false;
        fflush(stdout);
    }
    if (co.json) printf("\n]\n");
    cs_manifest_free(parent);
    cs_close(st);
    return status;
}
