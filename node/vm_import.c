/*
 * vm_import.c — storing a VM (its disk, its memory snapshot and its domain XML) as a manifest,
 * and the report of how its chunks relate to its parent and to what the store already held.
 *
 * Design notes: every image is chunked into the store first (cs_image_import_fd, which also
 * says for each chunk whether it was zero, already held, or new), then classified position by
 * position against the parent's image of the same name. Only the new chunks whose parent has a
 * non-zero chunk at the same place are read back, to see whether a zstd delta pays; that is the
 * same test the overlay export applies, so the report's "delta" count is what travels as
 * deltas. The overlay size is that of the real package, computed by writing it to nowhere.
 *
 * A memory snapshot (a libvirt save file, vm_savefile.c) adds one RAM image per guest RAM
 * block and a state image, classified the same way. The manifest is stored only when every
 * image is; chunks stored before a failure stay unreferenced until the next gc.
 */
#define _GNU_SOURCE
#include "node.h"
#include "node_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void node_import_report_free(node_import_report *r)
{
    if (!r) return;
    free(r->images);
    r->images = NULL;
    r->nimages = 0;
}

/* ---- classification -------------------------------------------------------------------------- */

#define BATCH 256u

static int count_deltas(cs_store *st, const cs_id *ids, const cs_id *bases, size_t n, uint64_t *delta)
{
    uint8_t *a = malloc((size_t)n * CS_CHUNK_SIZE), *b = malloc((size_t)n * CS_CHUNK_SIZE);
    ZSTD_CCtx *dc = node__delta_cctx(19), *est = ZSTD_createCCtx();
    int rc = a && b && dc && est ? 0 : -ENOMEM;
    if (rc == 0) rc = cs_get(st, ids, n, a, NULL);
    if (rc == 0) rc = cs_get(st, bases, n, b, NULL);
    uint8_t out[NODE__DELTA_MAX];
    for (size_t i = 0; i < n && rc == 0; i++)
        if (node__delta_if_smaller(dc, est, b + i * CS_CHUNK_SIZE, a + i * CS_CHUNK_SIZE, out))
            (*delta)++;
    ZSTD_freeCCtx(dc);
    ZSTD_freeCCtx(est);
    free(a), free(b);
    return rc;
}

static int classify(cs_store *st, const cs_image *im, const uint8_t *status, const cs_image *pim,
                    node_image_report *r)
{
    cs_id ids[BATCH], bases[BATCH];
    size_t n = 0;
    uint64_t candidates = 0;
    int rc = 0;
    for (uint64_t c = 0; c < im->nchunks && rc == 0; c++) {
        const cs_id *id = &im->chunks[c];
        const cs_id *pid = pim && c < pim->nchunks ? &pim->chunks[c] : &cs_zero_id;
        if (cs_id_is_zero(id)) r->zero++, r->zeroed += !cs_id_is_zero(pid);
        else if (cs_id_equal(id, pid)) r->same_as_parent++;
        else if (status[c] != CS_CHUNK_NEW) r->dedup++;
        else if (cs_id_is_zero(pid)) r->fresh++;
        else {
            ids[n] = *id, bases[n] = *pid;
            candidates++;
            if (++n == BATCH) rc = count_deltas(st, ids, bases, n, &r->delta), n = 0;
        }
    }
    if (rc == 0 && n) rc = count_deltas(st, ids, bases, n, &r->delta);
    r->fresh += candidates - r->delta;
    r->chunks = im->nchunks;
    return rc;
}

/* ---- the import ------------------------------------------------------------------------------ */

struct progress_all {
    uint64_t before, total;
    cs_progress_fn fn;
    void *arg;
};

static void progress_one(uint64_t done, uint64_t total, void *arg)
{
    (void)total;
    struct progress_all *p = arg;
    if (p->fn) p->fn(p->before + done, p->total, p->arg);
}

/* The memory import knows its own total only once the save file is parsed. */
static void progress_mem(uint64_t done, uint64_t total, void *arg)
{
    struct progress_all *p = arg;
    if (p->fn) p->fn(p->before + done, p->before + total, p->arg);
}

static bool is_qcow2(int fd)
{
    uint8_t magic[4];
    return pread(fd, magic, 4, 0) == 4 && memcmp(magic, "QFI\xfb", 4) == 0;
}

static char *read_text(const char *path, char err[NODE_ERRMSG])
{
    FILE *f = fopen(path, "r");
    if (!f) {
        node__errf(err, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&text, &cap, '\0', f);
    fclose(f);
    if (n < 0) {
        free(text);
        return strdup("");
    }
    if ((size_t)n != strlen(text)) {
        node__errf(err, "%s contains a NUL byte", path);
        free(text);
        return NULL;
    }
    return text;
}

/* Appends the report of image im (chunked with per-position status) to report. */
static int report_image(cs_store *st, const cs_image *im, const uint8_t *status,
                        const cs_manifest *parent, node_import_report *report)
{
    node_image_report *grown = realloc(report->images, (report->nimages + 1) * sizeof *grown);
    if (!grown) return -ENOMEM;
    report->images = grown;
    node_image_report *r = &report->images[report->nimages++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", im->name);
    r->kind = im->kind;
    r->length = im->length;
    const cs_image *pim = parent ? cs_manifest_find_image(parent, im->name) : NULL;
    return classify(st, im, status, pim, r);
}

static int import_disk(cs_store *st, const node_vm_import_opts *o, cs_manifest *m,
                       const cs_manifest *parent, node_import_report *report,
                       struct progress_all *pa, char err[NODE_ERRMSG])
{
    uint8_t *status = NULL;
    int fd = open(o->disk, O_RDONLY | O_CLOEXEC), rc = 0;
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        rc = -errno;
        node__errf(err, "cannot read %s: %s", o->disk, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode) && !S_ISBLK(sb.st_mode)) {
        node__errf(err, "%s is neither a regular file nor a block device", o->disk);
        rc = CS_EFORMAT;
        goto out;
    }
    if (is_qcow2(fd)) {
        node__errf(err, "%s is a qcow2 image; convert it to raw first: qemu-img convert -O raw %s %s.raw",
             o->disk, o->disk, o->disk);
        rc = CS_EFORMAT;
        goto out;
    }
    uint64_t size = S_ISREG(sb.st_mode) ? (uint64_t)sb.st_size : 0;
    if (S_ISBLK(sb.st_mode)) {
        off_t end = lseek(fd, 0, SEEK_END);
        size = end > 0 ? (uint64_t)end : 0;
    }
    cs_image *disk = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", size);
    status = disk ? malloc(disk->nchunks ? disk->nchunks : 1) : NULL;
    if (!disk || !status) {
        rc = -ENOMEM;
        goto out;
    }
    pa->total += size;
    cs_put_stats ps = {0};
    if ((rc = cs_image_import_fd(st, fd, disk, 0, progress_one, pa, &ps, status))) {
        node__errf(err, "importing %s: %s", o->disk, cs_strerror(rc));
        goto out;
    }
    pa->before += size;
    report->stored_bytes += ps.stored_bytes;
    if ((rc = report_image(st, disk, status, parent, report)))
        node__errf(err, "classifying %s: %s", o->disk, cs_strerror(rc));
out:
    if (fd >= 0) close(fd);
    free(status);
    return rc;
}

/* The save file is mapped whole: the parser is a pure function of its bytes, and pages are
 * chunked straight from the mapping. */
static int import_memory(cs_store *st, const node_vm_import_opts *o, cs_manifest *m,
                         const cs_manifest *parent, node_import_report *report,
                         struct progress_all *pa, char **xml, char err[NODE_ERRMSG])
{
    int fd = open(o->memory, O_RDONLY | O_CLOEXEC), rc = 0;
    struct stat sb;
    void *map = MAP_FAILED;
    node__memimport mi = {0};
    if (fd < 0 || fstat(fd, &sb) != 0) {
        rc = -errno;
        node__errf(err, "cannot read %s: %s", o->memory, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size == 0) {
        node__errf(err, "%s: not a save file (%s)", o->memory, S_ISREG(sb.st_mode) ? "empty" : "not a regular file");
        rc = CS_EFORMAT;
        goto out;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = -errno;
        node__errf(err, "cannot map %s: %s", o->memory, strerror(errno));
        goto out;
    }
    madvise(map, (size_t)sb.st_size, MADV_SEQUENTIAL);
    char perr[NODE_ERRMSG] = "";
    rc = node__savefile_import(st, map, (size_t)sb.st_size, m, &mi, progress_mem, pa, perr);
    if (rc) {
        node__errf(err, "%s: %s", o->memory, perr[0] ? perr : cs_strerror(rc));
        goto out;
    }
    report->stored_bytes += mi.stats.stored_bytes;
    for (size_t i = 0; i < mi.nimages && rc == 0; i++) {
        const cs_image *im = &m->images[mi.first + i];
        if ((rc = report_image(st, im, mi.status[i], parent, report)))
            node__errf(err, "classifying %s: %s", im->name, cs_strerror(rc));
    }
    if (rc == 0) *xml = mi.xml, mi.xml = NULL;
out:
    node__memimport_free(&mi);
    if (map != MAP_FAILED) munmap(map, (size_t)sb.st_size);
    if (fd >= 0) close(fd);
    return rc;
}

int node_vm_import(cs_store *st, const node_vm_import_opts *o, cs_id *id,
                   node_import_report *report, cs_progress_fn progress, void *arg,
                   char err[NODE_ERRMSG])
{
    memset(report, 0, sizeof *report);
    cs_manifest *m = cs_manifest_new(), *parent = NULL;
    uint8_t *buf = NULL;
    char *mem_xml = NULL;
    size_t len = 0;
    char hex[CS_ID_HEX + 1];
    bool ingesting = false;
    int rc = m ? 0 : -ENOMEM;
    if (rc) goto out;
    if (!o->disk && !o->memory) {
        node__errf(err, "nothing to import: give a disk image, a save file, or both");
        rc = CS_EFORMAT;
        goto out;
    }
    if (o->parent && (rc = cs_manifest_get(st, o->parent, &parent))) {
        node__errf(err, "parent %s: %s", cs_id_to_hex(o->parent, hex),
             rc == CS_ENOTFOUND ? "no such manifest in this store" : cs_strerror(rc));
        goto out;
    }
    if (o->xml_file) {
        char *xml = read_text(o->xml_file, err);
        if (!xml) {
            rc = CS_EFORMAT;
            goto out;
        }
        rc = cs_manifest_set_xml(m, xml);
        free(xml);
        if (rc) {
            node__errf(err, "%s: %s", o->xml_file, cs_strerror(rc));
            goto out;
        }
    }
    else if (parent && (rc = cs_manifest_set_xml(m, parent->xml))) /* a derived VM inherits it */
        goto out;
    if ((rc = cs_ingest_begin(st))) goto out;
    ingesting = true;
    struct progress_all pa = {0, 0, progress, arg};
    if (o->disk && (rc = import_disk(st, o, m, parent, report, &pa, err))) goto out;
    if (o->memory && (rc = import_memory(st, o, m, parent, report, &pa, &mem_xml, err))) goto out;
    /* Without --xml, the save file's own domain XML is the VM's. */
    if (mem_xml && !o->xml_file && (rc = cs_manifest_set_xml(m, mem_xml))) goto out;

    if (parent) m->has_parent = true, m->parent = *o->parent;
    if ((rc = cs_manifest_encode(m, parent, &buf, &len, NULL)) ||
        (rc = cs_manifest_put(st, buf, len, true, id))) {
        node__errf(err, "storing the manifest: %s", cs_strerror(rc));
        goto out;
    }
    cs_ingest_end(st);
    ingesting = false;
    if (o->name && (rc = cs_name_set(st, o->name, id))) {
        node__errf(err, "naming it %s: %s", o->name, cs_strerror(rc));
        goto out;
    }
    /* An overlay is what travels to a node holding the parent; a VM without parent has none
     * (sizing it would mean compressing the whole VM at the package's level for nothing). */
    if (parent) {
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        node_overlay_report orep;
        char oerr[NODE_ERRMSG];
        rc = null < 0 ? -errno : node_overlay_export(st, id, null, 0, NULL, NULL, &orep, oerr);
        if (null >= 0) close(null);
        if (rc) {
            node__errf(err, "sizing the overlay: %s", oerr);
            goto out;
        }
        report->overlay_bytes = orep.file_bytes;
    }
    char *json = node_import_report_json(report, id, o->name);
    rc = json ? cs_manifest_note_set(st, id, json, strlen(json)) : -ENOMEM;
    free(json);
    if (rc) node__errf(err, "keeping the import report: %s", cs_strerror(rc));
out:
    if (ingesting) cs_ingest_end(st);
    if (rc) node_import_report_free(report);
    free(buf), free(mem_xml);
    cs_manifest_free(m);
    cs_manifest_free(parent);
    return rc;
}

char *node_import_report_json(const node_import_report *r, const cs_id *id, const char *name)
{
    char *s = NULL, hex[CS_ID_HEX + 1];
    size_t cap = 0;
    FILE *f = open_memstream(&s, &cap);
    if (!f) return NULL;
    fprintf(f, "{\"id\": \"%s\", \"name\": ", cs_id_to_hex(id, hex));
    if (name) node__json_str(f, name);
    else fputs("null", f);
    fprintf(f, ", \"overlay_bytes\": %llu, \"stored_bytes\": %llu, \"images\": [",
            (unsigned long long)r->overlay_bytes, (unsigned long long)r->stored_bytes);
    for (size_t i = 0; i < r->nimages; i++) {
        const node_image_report *x = &r->images[i];
        fprintf(f, "%s{\"name\": ", i ? ", " : "");
        node__json_str(f, x->name);
        fprintf(f, ", \"kind\": %u, \"length\": %llu, \"chunks\": %llu, "
                   "\"zero\": %llu, \"zeroed\": %llu, \"same_as_parent\": %llu, \"dedup\": %llu, "
                   "\"delta\": %llu, \"new\": %llu}",
                x->kind, (unsigned long long)x->length,
                (unsigned long long)x->chunks, (unsigned long long)x->zero,
                (unsigned long long)x->zeroed,
                (unsigned long long)x->same_as_parent, (unsigned long long)x->dedup,
                (unsigned long long)x->delta, (unsigned long long)x->fresh);
    }
    fputs("]}", f);
    fclose(f);
    return s;
}
