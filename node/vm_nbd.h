/*
 * vm_nbd.h — a VM's disk image served to QEMU straight from the store, over NBD.
 *
 * A launch resumes the VM before every disk chunk has arrived (the seed's early start): QEMU
 * opens a qcow2 overlay whose backing file is this read-only NBD export on a Unix socket. A
 * read of a chunk still on its way waits for it (cs_get_arriving). The protocol is the NBD
 * "fixed newstyle" handshake, with simple or structured replies and the base:allocation
 * context, so zero chunks read and report as holes (docs/launch.md, "Early start").
 */
#ifndef CLOUDLET_VM_NBD_H
#define CLOUDLET_VM_NBD_H

#include "node.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The export's name: a client may also ask for the default export (""). */
#define NODE_NBD_EXPORT "disk"

typedef struct node_nbd node_nbd;

typedef struct node_nbd_stats {
    uint64_t connections; /* accepted */
    uint64_t requests;    /* transmission-phase requests answered */
    uint64_t read_bytes;  /* sent in answer to reads */
    uint64_t waits;       /* reads that had to wait for a chunk still on its way */
} node_nbd_stats;

typedef struct node_nbd_owner {
    uid_t uid;
    gid_t gid;
} node_nbd_owner;

typedef struct node_nbd_opts {
    /* With owner the socket is that user's and group's, mode 0600, from the moment it exists
     * (QEMU runs as another user, and only it may read the disk); NULL: mode 0666. */
    const node_nbd_owner *owner;
    /* (may be NULL) Called on a connection's thread when a read needs chunks the store does
     * not hold yet, before the read waits for them: their ids (each once, in image order, n
     * at most the chunks the read covers), so a fetch can bring them first. */
    void (*want)(const cs_id *ids, size_t n, void *arg);
    void *arg;
} node_nbd_opts;

/*
 * Serves image im (its chunks resolved; st and im must outlive the server) as a read-only NBD
 * export on a new Unix socket at path (opts may be NULL: all defaults). Each connection is
 * served on a thread of its own. The export is the image rounded up to whole 512-byte sectors,
 * zeros after the image's end: QEMU's client waits for a partial last sector forever, and
 * reads a raw file of that length the same way.
 */
int node_nbd_start(cs_store *st, const cs_image *im, const char *path, const node_nbd_opts *opts,
                   node_nbd **out, char err[NODE_ERRMSG]);
void node_nbd_stats_get(node_nbd *n, node_nbd_stats *out);
/* Stops listening, cuts every connection (a read waiting for a chunk gives up), joins the
 * threads and removes the socket. NULL is a no-op. */
void node_nbd_stop(node_nbd *n);

/* ---- the protocol, apart from sockets and the store (tests, the fuzz target) ---- */

typedef struct node__nbd_io {
    /* Reads exactly n bytes: 0, or negative on error or end of stream. */
    int (*recv)(void *arg, void *buf, size_t n);
    /* Writes exactly n bytes: 0, or negative. */
    int (*send)(void *arg, const void *buf, size_t n);
    /* Fills out with len bytes of the image at off (off + len <= size): 0, or a negative
     * error that becomes the reply's EIO. */
    int (*read_at)(void *arg, uint64_t off, size_t len, uint8_t *out);
    void *arg;
    uint64_t size; /* of the export, bytes */
} node__nbd_io;

/* Runs one connection, handshake then requests, until the client disconnects, the stream
 * ends or breaks the protocol. Returns 0 after a clean NBD_CMD_DISC or NBD_OPT_ABORT,
 * negative otherwise. Counts into stats (may be NULL). */
int node__nbd_session(const node__nbd_io *io, node_nbd_stats *stats);

#endif
