/*
 * node.h — cloudlet's node: VM images, overlays, synthesis and launch.
 *
 * Everything here blocks; a daemon runs it on worker threads. Functions return 0, a negative
 * errno, a chunk store code (CS_E*, see chunkstore.h) or a NODE_E* code; node_strerror()
 * names any of them. Where a function takes `char err[NODE_ERRMSG]`, it writes a sentence that
 * says what was wrong and where (a byte offset, an id) on failure.
 */
#ifndef CLOUDLET_NODE_H
#define CLOUDLET_NODE_H

#include "chunkstore.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NODE_ERRMSG 256

const char *node_strerror(int err);

/* ---- overlay packages (docs/overlay.md) ----------------------------------------------------- */

typedef struct node_overlay_report {
    uint64_t chunks;       /* chunks in the package */
    uint64_t delta_chunks; /* of which zstd deltas against the parent's chunk at the same place */
    uint64_t delta_bytes;  /* bytes of those deltas */
    uint64_t block_bytes;  /* compressed bytes of the others, in blocks */
    uint64_t file_bytes;   /* the whole package */
} node_overlay_report;

/*
 * Writes the overlay package of manifest id to fd: the manifest plus every chunk it names that
 * its parent VM does not hold (all its chunks for a manifest without parent), each changed chunk
 * as a zstd delta against the parent's chunk at the same place when that is clearly smaller,
 * the rest compressed together in blocks at zstd level `level` (0 = 19). Sequential writes
 * only: fd may be a pipe.
 */
int node_overlay_export(cs_store *st, const cs_id *id, int fd, int level,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG]);

/*
 * Reads an overlay package from buf (e.g. a mapped file), checks it whole (its trailing hash,
 * every record, every chunk against its id, that the parent is in the store and that the
 * package plus the store hold every chunk the manifest names) and only then stores its chunks
 * and its manifest, pinned. A bad package stores nothing. *id receives the manifest id.
 */
int node_overlay_import(cs_store *st, const uint8_t *buf, size_t len, cs_id *id,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG]);

typedef enum node_log_level {
    NODE_LOG_ERROR = 0,
    NODE_LOG_WARN = 1,
    NODE_LOG_INFO = 2,
    NODE_LOG_DEBUG = 3,
} node_log_level;

/* ---- VM import (docs/vm.md) ------------------------------------------------------------------ */

/* Per image: how its chunks relate to the parent and to what the store held before. */
typedef struct node_image_report {
    char name[256];
    uint8_t kind;            /* enum cs_image_kind */
    uint64_t length;
    uint64_t chunks;         /* positions */
    uint64_t zero;           /* zero chunks (holes, TRIMmed blocks, freed pages) */
    uint64_t same_as_parent; /* the parent has the same chunk at the same place */
    uint64_t dedup;          /* held elsewhere already: base disk, base memory, or itself */
    uint64_t delta;          /* new, and a zstd delta against the parent's chunk here is smaller */
    uint64_t fresh;          /* new, with nothing to delta against (or no gain) */
} node_image_report;

typedef struct node_import_report {
    size_t nimages;
    node_image_report *images; /* malloc'd; free with node_import_report_free */
    uint64_t overlay_bytes;    /* the overlay package: what a node holding the parent needs
                                  (0 for a VM without parent) */
    uint64_t stored_bytes;     /* compressed bytes this import added to the store */
} node_import_report;
void node_import_report_free(node_import_report *r);
/* The report as one JSON object (malloc'd), as kept in the manifest's note. */
char *node_import_report_json(const node_import_report *r, const cs_id *id, const char *name);

typedef struct node_vm_import_opts {
    const char *name;     /* names the manifest in the store (may be NULL) */
    const char *disk;     /* raw disk image (sparse-aware); required */
    const char *xml_file; /* libvirt domain XML (may be NULL) */
    const cs_id *parent;  /* the base VM's manifest id (may be NULL) */
} node_vm_import_opts;

/* Stores a VM as a pinned manifest and reports per image how its chunks relate to the parent.
 * A qcow2 disk is refused with an error naming the `qemu-img convert` command. */
int node_vm_import(cs_store *st, const node_vm_import_opts *o, cs_id *id,
                   node_import_report *report, cs_progress_fn progress, void *arg,
                   char err[NODE_ERRMSG]);

/* ---- synthesis -------------------------------------------------------------------------------- */

typedef struct node_synth_report {
    double resolve_s;     /* loading and resolving the manifest chain */
    double disk_s;        /* writing disk.raw */
    uint64_t disk_bytes;  /* logical bytes of the disk */
    uint64_t disk_written;/* non-zero bytes written (the rest are holes) */
} node_synth_report;

/* Rebuilds a VM from the store alone into directory outdir (created if missing): disk.raw
 * (sparse) and domain.xml. Every chunk is verified against its id on the way. */
int node_vm_synth(cs_store *st, const cs_id *id, const char *outdir, node_synth_report *report,
                  cs_progress_fn progress, void *arg, char err[NODE_ERRMSG]);

/* ---- the node home ------------------------------------------------------------------------- */

/* The node home: explicit (if not NULL or empty), else $CLOUDLET_HOME, else /var/lib/cloudlet
 * for root, else $XDG_DATA_HOME/cloudlet or ~/.local/share/cloudlet. Returns a malloc'd path
 * (NULL only when out of memory). */
char *node_home(const char *explicit_home);
/* A malloc'd "<home>/<name>". */
char *node_home_path(const char *home, const char *name);

/* ---- logging ---------------------------------------------------------------------------------- */

/* Log to standard error (with time and level) or, after node_log_to_syslog, to syslog. Messages
 * above the level are dropped. Thread-safe. */
void node_log_set_level(node_log_level level);
void node_log_to_syslog(const char *ident);
void node_log(node_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the daemon's configuration (docs/config.md) -------------------------------------------- */

#define NODE_MAX_STATIC_PEERS 64

typedef struct node_addr {
    char host[256]; /* a numeric IPv4/IPv6 address or a host name */
    uint16_t port;
} node_addr;

typedef struct node_config {
    node_addr listen;    /* TCP for peers and apps; default 0.0.0.0:7420 */
    node_addr multicast; /* discovery beacons; default 239.255.67.76:7421 */
    bool discovery;      /* send and hear beacons; default on */
    node_addr peers[NODE_MAX_STATIC_PEERS]; /* static peers (networks without multicast) */
    unsigned npeers;
    unsigned max_peers;              /* default 64 */
    unsigned max_inflight_per_peer;  /* chunks requested from one peer at a time; default 4096 */
    uint64_t rate_total;             /* bytes/s received from all peers; 0 = no cap */
    uint64_t rate_per_peer;          /* bytes/s from one peer; 0 = no cap */
    unsigned beacon_interval_s;      /* default 30 */
    unsigned peer_timeout_s;         /* a silent peer expires; default 95 */
    node_log_level log_level;        /* default info */
    char control_socket[512];        /* default <home>/control.sock when empty */
} node_config;

/* The defaults: what a node on a LAN runs with when it has no configuration file. */
void node_config_defaults(node_config *cfg);
/* Parses `key = value` lines (docs/config.md) over cfg (start from the defaults). Unknown keys,
 * bad values and overlong lines are errors naming the line. A pure function of the bytes. */
int node_config_parse(const char *text, size_t len, node_config *cfg, char err[NODE_ERRMSG]);
/* Reads and parses a file; a missing file is CS_ENOTFOUND (callers then keep the defaults). */
int node_config_load(const char *path, node_config *cfg, char err[NODE_ERRMSG]);

#ifdef __cplusplus
}
#endif
#endif
