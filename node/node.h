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
    uint64_t block_bytes;  /* compressed bytes of the stream, not counting the deltas that
                              pass through it */
    uint64_t file_bytes;   /* the whole package */
} node_overlay_report;

/*
 * Writes the overlay package of manifest id to fd: the manifest plus every chunk it names that
 * its parent VM does not hold (all its chunks for a manifest without parent), each changed chunk
 * as a zstd delta against the parent's chunk at the same place when that is clearly smaller,
 * the rest in one long-window zstd stream at zstd level `level` (0 = NODE_OVERLAY_LEVEL).
 * Sequential writes only: fd may be a pipe.
 */
#define NODE_OVERLAY_LEVEL 22 /* zstd's highest: a package is made once and sent many times */
int node_overlay_export(cs_store *st, const cs_id *id, int fd, int level,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG]);

/*
 * Reads an overlay package from buf (e.g. a mapped file), checks it whole (its trailing hash,
 * its carried manifest, every chunk: the rebuilt manifest's id against the header's, that the
 * parent is in the store and that the
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
    uint64_t zeroed;         /* of those, positions where the parent had data: what the guest
                                freed since (TRIM on a discard='unmap' disk, init_on_free) */
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
    const char *disk;     /* raw disk image (sparse-aware); may be NULL when memory is given */
    const char *xml_file; /* libvirt domain XML (may be NULL) */
    const char *memory;   /* libvirt save file (docs/savefile.md), may be NULL; its domain XML
                             is used when xml_file is NULL */
    const cs_id *parent;  /* the base VM's manifest id (may be NULL) */
} node_vm_import_opts;

/* Stores a VM as a pinned manifest and reports per image how its chunks relate to the parent.
 * A qcow2 disk is refused with an error naming the `qemu-img convert` command; a bad save file
 * with the byte offset where it goes wrong. The manifest is stored only when every image is. */
int node_vm_import(cs_store *st, const node_vm_import_opts *o, cs_id *id,
                   node_import_report *report, cs_progress_fn progress, void *arg,
                   char err[NODE_ERRMSG]);

/* ---- synthesis -------------------------------------------------------------------------------- */

typedef struct node_synth_report {
    double resolve_s;     /* loading and resolving the manifest chain */
    double disk_s;        /* writing disk.raw; early: the NBD server and the overlay */
    double resumed_s;     /* from the start until the VM ran */
    double complete_s;    /* early: from then until the disk was whole in disk.qcow2 */
    uint64_t disk_bytes;  /* logical bytes of the disk */
    uint64_t disk_written;/* non-zero bytes written (the rest are holes) */
    double memory_s;      /* writing memory.save (0 for a VM without memory snapshot) */
    uint64_t memory_bytes;/* bytes of memory.save */
} node_synth_report;

/* Rebuilds a VM from the store alone into directory outdir (created if missing): disk.raw
 * (sparse) when it has a disk, memory.save (a libvirt save file) when it has a memory
 * snapshot, and domain.xml. Every chunk is verified against its id on the way. */
int node_vm_synth(cs_store *st, const cs_id *id, const char *outdir, node_synth_report *report,
                  cs_progress_fn progress, void *arg, char err[NODE_ERRMSG]);

/* ---- memory snapshots: libvirt save files (docs/savefile.md) -------------------------------- */

/* Writes the memory snapshot of VM manifest m (resolved; it has RAM and state images) as a libvirt
 * save file to fd, sequentially (fd may be a pipe or FIFO). xml, when not NULL, replaces the
 * domain XML in its header. Every chunk is verified on the way; progress gets bytes of RAM. */
int node_savefile_write(cs_store *st, const cs_manifest *m, const char *xml, int fd,
                        cs_progress_fn progress, void *arg, char err[NODE_ERRMSG]);
/* True when manifest m holds a memory snapshot (a state image and at least one RAM image). */
bool node_vm_has_memory(const cs_manifest *m);

/* ---- libvirt control: capture and local launch (docs/launch.md; library node_libvirt) ------- */

typedef enum node_accel {
    NODE_ACCEL_AUTO = 0, /* detect: KVM when it really runs guest code at native speed */
    NODE_ACCEL_KVM = 1,  /* <domain type='kvm'> */
    NODE_ACCEL_TCG = 2,  /* <domain type='qemu'>: QEMU's emulator */
} node_accel;

/* "kvm" or "tcg". */
const char *node_accel_name(node_accel a);
/* KVM when /dev/kvm opens, runs a few million guest instructions within a bounded time (in a
 * child process, so a hung shim costs that time only) and libvirt at uri (NULL:
 * qemu:///system) reports QEMU with KVM; TCG otherwise. $CLOUDLET_ACCEL=kvm|tcg overrides. */
node_accel node_accel_detect(const char *uri);

/* What node_vm_xml_rewrite changes in a domain XML; NULL fields are left as they are. */
typedef struct node_vm_xml_edit {
    const char *name;         /* the <name> */
    const char *uuid;         /* the <uuid> (inserted after <name> when absent) */
    const char *disk;         /* the source file of the first <disk device='disk'> */
    const char *disk_nbd;     /* with disk: that file is a qcow2 overlay whose backing is the
                                 NBD export on this Unix socket (vm_nbd.h) */
    node_accel accel;         /* <domain type=…>: kvm or qemu; AUTO leaves it */
    const char *serial_sock;  /* the first <serial type='unix'>'s socket, wherever its path is */
    const char *serial_log;   /* that serial's <log file=…>, wherever that path is */
} node_vm_xml_edit;

/* Rewrites a domain XML as a string: elements and attributes are found with a small tag
 * scanner (comments, CDATA and processing instructions skipped, either quote style), values
 * are escaped. The disk must be type='file'. Returns 0 and a malloc'd *out, or CS_EFORMAT with
 * the reason in err. */
int node_vm_xml_rewrite(const char *xml, const node_vm_xml_edit *e, char **out,
                        char err[NODE_ERRMSG]);
/* The first <disk device='disk'>'s source file and driver type (either may be NULL): malloc'd
 * strings in *file and *format (NULL when absent). 0 or CS_EFORMAT. */
int node_vm_xml_first_disk(const char *xml, char **file, char **format, char err[NODE_ERRMSG]);

/* Saves running domain `domain` (a name or UUID) of libvirt at uri (NULL: qemu:///system) with
 * virDomainSave to a temporary file in tmpdir, then imports it with node_vm_import (o->disk
 * and o->memory are filled in here: the disk is the domain XML's first disk, which must be a
 * raw file) and removes the file. The domain stops: it is saved, not copied while running.
 * When the import fails the domain is restored from the file; should that fail too, the file
 * is kept and err names it. */
int node_vm_capture(cs_store *st, const char *uri, const char *domain, const char *tmpdir,
                    const node_vm_import_opts *o, cs_id *id, node_import_report *report,
                    cs_progress_fn progress, void *arg, char err[NODE_ERRMSG]);

/* A domain name for a launch of VM id, so that launches of one VM do not collide: base (a VM's
 * name), or "vm-" and the id's first 12 hex digits when base is NULL, empty or an id in hex,
 * then "-" and 6 random hex digits. Truncated to cap - 1 bytes. */
void node_domain_name(const char *base, const cs_id *id, char *out, size_t cap);

typedef struct node_launch_opts {
    const char *uri;  /* NULL: qemu:///system */
    const char *name; /* the new domain's name; required, no domain may have it yet */
    const char *dir;  /* the launch directory: created, must not exist; holds disk.raw,
                         domain.xml and the console socket and log while the domain runs */
    bool fifo;        /* stream the save file through a FIFO into the restore */
    node_accel accel; /* AUTO: node_accel_detect */
    /* Early start (a VM with memory only): resume once the memory is written, before every
     * disk chunk has arrived. The disk is disk.qcow2, an overlay whose backing file is the
     * disk image served from the store over NBD (vm_nbd.h; reads of chunks still on their way
     * wait for them); once the store holds the whole image, libvirt pulls it into the overlay
     * and the NBD server stops. */
    bool early;
    void (*resumed)(void *arg); /* early (may be NULL): called on the launch's thread once the
                                   VM runs, before the disk is complete */
    /* (may be NULL) asked while the launch waits (for the disk's chunks, for libvirt's pull)
     * and once more before it succeeds: true makes it give up and undo everything, the
     * domain included. */
    bool (*cancelled)(void *arg);
    /* early (may be NULL): called on the NBD server's threads with the chunks a read of the
     * running VM waits for (node_nbd_opts.want), so the fetch can bring them first */
    void (*want)(const cs_id *ids, size_t n, void *arg);
    void *arg; /* for resumed, cancelled and want */
} node_launch_opts;

typedef struct node_launch_report {
    node_accel accel;
    bool booted;          /* a VM without memory snapshot: booted, not resumed */
    double resolve_s;     /* loading and resolving the manifest chain */
    double disk_s;        /* writing disk.raw; early: the NBD server and the overlay */
    double resumed_s;     /* from the start until the VM ran */
    double complete_s;    /* early: from then until the disk was whole in disk.qcow2 */
    double memory_s;      /* writing the save file (with fifo: while restore reads it) */
    double restore_s;     /* virDomainRestoreFlags (or virDomainCreateXML when booted); with
                             fifo it overlaps memory_s */
    double total_s;
    uint64_t disk_bytes;
    uint64_t memory_bytes; /* RAM and device state, as stored */
    uint64_t save_bytes;   /* the save file written (zero pages left out); 0 with fifo */
    char uuid[37];
    char address[256];     /* the guest's addresses from libvirt's DHCP leases, or "" */
} node_launch_report;

/* Synthesizes VM id from the store into o->dir and resumes it (restores its memory snapshot)
 * or, without one, boots it, as domain o->name with a new UUID, its first disk on disk.raw,
 * the domain type of o->accel and its first unix serial console in o->dir. The domain is
 * transient: destroying it removes it from libvirt; o->dir stays until removed. On failure
 * nothing is left: no domain, and o->dir is removed with everything in it. progress gets the
 * disk's bytes, then the RAM's (one call at a time, from this or a writer thread). */
int node_vm_launch_local(cs_store *st, const cs_id *id, const node_launch_opts *o,
                         node_launch_report *report, cs_progress_fn progress, void *arg,
                         char err[NODE_ERRMSG]);

/* ---- the node home ------------------------------------------------------------------------- */

/* The node home: explicit (if not NULL or empty), else $CLOUDLET_HOME, else /var/lib/cloudlet
 * for root, else $XDG_DATA_HOME/cloudlet or ~/.local/share/cloudlet. Returns a malloc'd path
 * (NULL only when out of memory). */
char *node_home(const char *explicit_home);
/* A malloc'd "<home>/<name>". */
char *node_home_path(const char *home, const char *name);

/* ---- keys (docs/keys.md) ------------------------------------------------------------------- */

/* Every key is 32 bytes: a node's X25519 key pair, the fleet key every node of a fleet shares,
 * and keys derived from the fleet key with crypto_kdf (context "cloudlet"). */
#define NODE_KEY_BYTES  32
#define NODE_KEY_TEXT   96 /* a key's text line, "<kind>:<64 hex digits>", with its NUL */
#define NODE_KEY_FILE   "node.key"  /* in the home: the node's secret key, 0600 */
#define NODE_PUB_FILE   "node.pub"  /* its public key, 0644 (a copy; node.key is what counts) */
#define NODE_FLEET_FILE "fleet.key" /* the fleet key, 0600; absent on a node alone */

typedef enum node_key_kind {
    NODE_KEY_NODE_SECRET = 0, /* "cloudlet-node-secret-key:" */
    NODE_KEY_NODE_PUBLIC = 1, /* "cloudlet-node-key:" */
    NODE_KEY_FLEET = 2,       /* "cloudlet-fleet-key:" */
    NODE_KEY_CLIENT = 3,      /* "cloudlet-client-key:" (handed to apps) */
} node_key_kind;

/* The key's text line (no newline) into out, lowercase hex; returns out. */
const char *node_key_encode(node_key_kind kind, const uint8_t key[NODE_KEY_BYTES],
                            char out[NODE_KEY_TEXT]);
/* Decodes a key line of the given kind; whitespace around it (a final newline) is allowed. A
 * key of another kind, a wrong number of digits or anything else is CS_EFORMAT with err saying
 * which. A pure function of the bytes. */
int node_key_decode(const char *text, size_t len, node_key_kind kind, uint8_t key[NODE_KEY_BYTES],
                    char err[NODE_ERRMSG]) __attribute__((warn_unused_result));
/* Reads a key file: CS_ENOTFOUND when it is missing. With check_mode (a node's own key files),
 * the file must be a regular file, and a secret kind in a file that group or others may access
 * is refused with -EACCES and err naming the file and the chmod that fixes it; without it
 * (a copy handed over) a pipe or terminal will do too. Errors in err name the file. */
int node_key_read(const char *path, node_key_kind kind, bool check_mode,
                  uint8_t key[NODE_KEY_BYTES], char err[NODE_ERRMSG])
    __attribute__((warn_unused_result));
/* Writes a key file whole or not at all (temporary file, fsync, rename or link, fsync of the
 * directory): mode 0600, 0644 for a public key. Without replace an existing path is left as it
 * is and -EEXIST returned. */
int node_key_write(const char *path, node_key_kind kind, const uint8_t key[NODE_KEY_BYTES],
                   bool replace, char err[NODE_ERRMSG]) __attribute__((warn_unused_result));

/* Makes the node's key pair in home (node.key and node.pub) unless node.key exists: an existing
 * key is never replaced. pk receives the node's public key, *created whether it is new.
 * node.pub is rewritten from node.key when it is missing or differs. */
int node_keypair_init(const char *home, uint8_t pk[NODE_KEY_BYTES], bool *created,
                      char err[NODE_ERRMSG]) __attribute__((warn_unused_result));
/* Makes a fresh random fleet key in home; -EEXIST if home has a fleet key already. */
int node_fleet_key_new(const char *home, char err[NODE_ERRMSG])
    __attribute__((warn_unused_result));
/* Joins home to the fleet of key fleet. The same key already there is success (*already);
 * a different one is -EEXIST and is left as it is. */
int node_fleet_key_set(const char *home, const uint8_t fleet[NODE_KEY_BYTES], bool *already,
                       char err[NODE_ERRMSG]) __attribute__((warn_unused_result));
/* home's fleet key; CS_ENOTFOUND (err saying how to make or join a fleet) when it has none. */
int node_fleet_key_load(const char *home, uint8_t fleet[NODE_KEY_BYTES], char err[NODE_ERRMSG])
    __attribute__((warn_unused_result));
/* The client key apps authenticate with: crypto_kdf subkey 3 of the fleet key. */
void node_client_key(const uint8_t fleet[NODE_KEY_BYTES], uint8_t client[NODE_KEY_BYTES]);
/* Zeroes a secret (a key, its text) in a way the compiler cannot drop (sodium_memzero). */
void node_secret_wipe(void *secret, size_t len);

/* What a daemon runs with. Holds secrets: wipe with node_keys_wipe. */
typedef struct node_keys {
    uint8_t node_pk[NODE_KEY_BYTES];
    uint8_t node_sk[NODE_KEY_BYTES];
    uint8_t fleet[NODE_KEY_BYTES];
    bool has_fleet; /* false: no fleet.key, the node runs alone */
} node_keys;
/* Loads node.key (required) and fleet.key (optional) from home, refusing key files that group
 * or others may access. On error k is wiped. */
int node_keys_load(const char *home, node_keys *k, char err[NODE_ERRMSG])
    __attribute__((warn_unused_result));
/* Zeroes k (NULL is fine). */
void node_keys_wipe(node_keys *k);

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
    bool has_key;                /* a static peer given with its node key */
    uint8_t key[NODE_KEY_BYTES]; /* that key: lets the node connect without hearing a beacon */
} node_addr;

typedef struct node_config {
    node_addr listen;    /* TCP for peers and apps; default 0.0.0.0:7420 (port 0: any) */
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
    char libvirt_uri[256];           /* where launches run; default qemu:///system */
    char launch_dir[512];            /* launch directories go here; default
                                        /var/tmp/cloudlet-launch */
    unsigned max_launches;           /* launches for apps under way at once; default 8 */
    bool early_start;                /* resume a launch's VM once its memory is here, the disk
                                        served from the store meanwhile; default on */
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
