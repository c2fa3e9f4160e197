/*
 * nbd_serve.c — test helper: imports a file into a store as an image and serves it over NBD
 * (node/vm_nbd.c) until standard input closes, so a test script can point QEMU at it.
 * Usage: nbd_serve STORE_DIR FILE SOCKET. Prints "ready" once the socket listens and, at the
 * end, the server's counters.
 */
#include "vm_nbd.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: nbd_serve STORE_DIR FILE SOCKET\n");
        return 2;
    }
    cs_store *st;
    int rc = cs_open(argv[1], CS_OPEN_CREATE, &st);
    if (rc) {
        fprintf(stderr, "nbd_serve: opening the store %s: %s\n", argv[1], cs_strerror(rc));
        return 1;
    }
    int fd = open(argv[2], O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        perror(argv[2]);
        return 1;
    }
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", (uint64_t)sb.st_size);
    if (!im || (rc = cs_image_import_fd(st, fd, im, 2, NULL, NULL, NULL, NULL))) {
        fprintf(stderr, "nbd_serve: importing %s: %s\n", argv[2], cs_strerror(rc));
        return 1;
    }
    close(fd);
    node_nbd *n;
    char err[NODE_ERRMSG] = "";
    if ((rc = node_nbd_start(st, im, argv[3], NULL, &n, err))) {
        fprintf(stderr, "nbd_serve: %s\n", err);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char buf[256];
    while (read(0, buf, sizeof buf) > 0) {}
    node_nbd_stats s;
    node_nbd_stats_get(n, &s);
    node_nbd_stop(n);
    printf("connections %llu requests %llu read_bytes %llu waits %llu\n",
           (unsigned long long)s.connections, (unsigned long long)s.requests,
           (unsigned long long)s.read_bytes, (unsigned long long)s.waits);
    cs_manifest_free(m);
    cs_close(st);
    return 0;
}
