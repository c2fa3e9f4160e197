/* cmd_store_cat.c — `cloudlet store cat ID`: write a stored file back. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudlet store cat [--home DIR] [-o FILE] [--image NAME] ID|NAME\n\n"
    "Writes a stored file (or one image of a stored VM) back, bit-identical, to standard\n"
    "output or to FILE (written sparse: zero chunks stay holes). Every chunk is checked\n"
    "against its id on the way; a damaged or missing chunk stops it with an error.\n\n"
    "  -o, --output FILE   write to FILE instead of standard output\n"
    "  --image NAME        which image of a manifest that has several (e.g. disk)\n"
    "  --home DIR          the node home\n";

enum { OPT_IMAGE = 0x200 };

int cmd_store_cat(int argc, char **argv)
{
    static const struct option opts[] = {CLI_COMMON_OPTIONS,
                                         {"output", required_argument, NULL, 'o'},
                                         {"image", required_argument, NULL, OPT_IMAGE},
                                         {0}};
    cli_common co = {0};
    const char *out = NULL, *image = NULL;
    int c;
    while ((c = cli_getopt(argc, argv, "ho:", opts, usage, &co)) != -1) {
        if (c == '?') return CLI_USAGE;
        if (c == 'o') out = optarg;
        if (c == OPT_IMAGE) image = optarg;
    }
    if (optind + 1 != argc) return cli_usage_error(usage, argv[0], "expected one ID or NAME");
    if (!out && isatty(STDOUT_FILENO))
        return cli_usage_error(usage, argv[0], "refusing to write binary data to a terminal; use -o FILE");
    cs_store *st = cli_open_store(argv[0], &co, false);
    if (!st) return CLI_FAIL;
    int status = CLI_FAIL;
    cs_id id;
    cs_manifest *m = NULL;
    if (!cli_resolve_id(argv[0], st, argv[optind], &id)) goto out;
    int rc = cs_manifest_get(st, &id, &m);
    if (rc) {
        cli_error(argv[0], "%s: %s", argv[optind], rc == CS_ENOTFOUND ? "no such manifest" : cs_strerror(rc));
        goto out;
    }
    const cs_image *im = NULL;
    if (image) {
        im = cs_manifest_find_image(m, image);
        if (!im) {
            cli_error(argv[0], "%s has no image named %s", argv[optind], image);
            goto out;
        }
    } else if (m->nimages == 1) {
        im = &m->images[0];
    } else {
        cli_error(argv[0], "%s has %zu images; choose one with --image NAME:", argv[optind], m->nimages);
        for (size_t i = 0; i < m->nimages; i++) fprintf(stderr, "  %s\n", m->images[i].name);
        goto out;
    }
    int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : STDOUT_FILENO;
    if (fd < 0) {
        cli_error(argv[0], "cannot create %s: %s", out, strerror(errno));
        goto out;
    }
    cli_progress pr;
    cli_progress_init(&pr, out ? out : "stdout");
    uint64_t bad = 0;
    rc = cs_image_export_fd(st, im, fd, cli_progress_update, &pr, &bad);
    cli_progress_end(&pr);
    if (rc == CS_ECORRUPT || rc == CS_ENOTFOUND) {
        char hex[CS_ID_HEX + 1];
        cli_error(argv[0], "chunk %s at offset %llu: %s", cs_id_to_hex(&im->chunks[bad], hex),
                  (unsigned long long)bad * CS_CHUNK_SIZE, cs_strerror(rc));
    } else if (rc) {
        cli_error(argv[0], "writing %s: %s", out ? out : "standard output", cs_strerror(rc));
    }
    if (out && close(fd) != 0 && rc == 0) {
        rc = -errno;
        cli_error(argv[0], "closing %s: %s", out, cs_strerror(rc));
    }
    if (rc && out) unlink(out); /* never leave a file that looks whole but is not */
    status = rc ? CLI_FAIL : CLI_OK;
out:
    cs_manifest_free(m);
    cs_close(st);
    return status;
}
