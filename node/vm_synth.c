/*
 * vm_synth.c — rebuilding a VM's files from the store.
 *
 * Design notes: the disk goes through the store's ordered reader, so decompression and
 * verification run on worker threads while this thread writes; zero chunks stay holes. A VM
 * with a memory snapshot also gets memory.save, a libvirt save file rebuilt by
 * node_savefile_write (vm_savefile.c) the same way. Output
 * files are written under a temporary name and renamed into place only when whole, so an
 * interrupted synthesis never leaves a file that looks complete.
 */
#define _GNU_SOURCE
#include "node_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Creates dir/name.partial, lets write() fill it, then renames it to dir/name. */
static int write_file(const char *dir, const char *name, int (*write)(int fd, void *arg),
                      void *arg, char err[NODE_ERRMSG])
{
    char *tmp = NULL, *final = NULL;
    if (asprintf(&tmp, "%s/%s.partial", dir, name) < 0 || asprintf(&final, "%s/%s", dir, name) < 0) {
        free(tmp);
        return -ENOMEM;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : write(fd, arg);
    if (fd >= 0 && close(fd) != 0 && rc == 0) rc = -errno;
    if (rc == 0 && rename(tmp, final) != 0) rc = -errno;
    if (rc) {
        if (!err[0]) node__errf(err, "writing %s: %s", final, node_strerror(rc));
        unlink(tmp);
    }
    free(tmp), free(final);
    return rc;
}

void node__disk_chunk_errf(char err[NODE_ERRMSG], const cs_image *im, uint64_t pos,
                           const char *why)
{
    char hex[CS_ID_HEX + 1];
    node__errf(err, "disk chunk %s at offset %llu: %s", cs_id_to_hex(&im->chunks[pos], hex),
               (unsigned long long)pos * CS_CHUNK_SIZE, why);
}

int node__export_disk(cs_store *st, const cs_image *im, int fd, cs_progress_fn progress, void *arg,
                      char err[NODE_ERRMSG])
{
    uint64_t bad = 0;
    int rc = cs_image_export_fd(st, im, fd, progress, arg, &bad);
    if (rc == CS_ECORRUPT || rc == CS_ENOTFOUND)
        node__disk_chunk_errf(err, im, bad, rc == CS_ENOTFOUND ? "not in the store" : cs_strerror(rc));
    return rc;
}

struct disk_job {
    cs_store *st;
    const cs_image *im;
    cs_progress_fn progress;
    void *arg;
    char *err;
};

static int write_disk(int fd, void *arg)
{
    struct disk_job *j = arg;
    return node__export_disk(j->st, j->im, fd, j->progress, j->arg, j->err);
}

struct memory_job {
    cs_store *st;
    const cs_manifest *m;
    cs_progress_fn progress;
    void *arg;
    char *err;
    uint64_t bytes;
};

static int write_memory(int fd, void *arg)
{
    struct memory_job *j = arg;
    int rc = node_savefile_write(j->st, j->m, NULL, fd, j->progress, j->arg, j->err);
    off_t end = rc == 0 ? lseek(fd, 0, SEEK_CUR) : -1;
    j->bytes = end > 0 ? (uint64_t)end : 0;
    return rc;
}

static int write_xml(int fd, void *arg)
{
    const char *xml = arg;
    size_t len = strlen(xml);
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, xml + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -errno;
        off += (size_t)w;
    }
    return 0;
}

int node_vm_synth(cs_store *st, const cs_id *id, const char *outdir, node_synth_report *report,
                  cs_progress_fn progress, void *arg, char err[NODE_ERRMSG])
{
    memset(report, 0, sizeof *report);
    err[0] = '\0';
    double t0 = node__now_s();
    cs_manifest *m = NULL;
    char hex[CS_ID_HEX + 1];
    int rc = cs_manifest_get(st, id, &m);
    if (rc) {
        node__errf(err, "manifest %s: %s", cs_id_to_hex(id, hex),
             rc == CS_ENOTFOUND ? "not in this store" : cs_strerror(rc));
        return rc;
    }
    report->resolve_s = node__now_s() - t0;
    const cs_image *disk = cs_manifest_find_image(m, "disk");
    bool memory = node_vm_has_memory(m);
    if (!disk && !memory) {
        node__errf(err, "manifest %s has neither a disk image nor a memory snapshot", hex);
        rc = CS_EFORMAT;
        goto out;
    }
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        rc = -errno;
        node__errf(err, "cannot create %s: %s", outdir, strerror(errno));
        goto out;
    }
    if (disk) {
        double t1 = node__now_s();
        struct disk_job dj = {st, disk, progress, arg, err};
        if ((rc = write_file(outdir, "disk.raw", write_disk, &dj, err))) goto out;
        report->disk_s = node__now_s() - t1;
        report->disk_bytes = disk->length;
        for (uint64_t c = 0; c < disk->nchunks; c++)
            if (!cs_id_is_zero(&disk->chunks[c])) report->disk_written += CS_CHUNK_SIZE;
    }
    if (memory) {
        double t2 = node__now_s();
        struct memory_job mj = {st, m, progress, arg, err, 0};
        if ((rc = write_file(outdir, "memory.save", write_memory, &mj, err))) goto out;
        report->memory_s = node__now_s() - t2;
        report->memory_bytes = mj.bytes;
    }
    if (m->xml[0]) rc = write_file(outdir, "domain.xml", write_xml, m->xml, err);
out:
    cs_manifest_free(m);
    return rc;
}
