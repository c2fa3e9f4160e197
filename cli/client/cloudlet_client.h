/*
 * cloudlet_client.h — the client library: what an app (a phone, or the `cloudlet` command on a
 * laptop) uses to have a cloudlet node launch a VM that the app holds. docs/client.md explains
 * it with a complete example (cli/client/example_launch.c).
 *
 * The app keeps its VMs in a cloudlet home of its own (`cloudlet init`, then `vm import` or
 * `overlay import`), holding the app's key pair (node.key) and the fleet's client key
 * (client.key, `cloudlet init --client-key FILE`). It finds a node (cl_discover, cl_probe, or a
 * known address and key), asks it to launch a manifest id (cl_launch), and answers the node's
 * requests for manifests and chunks from its own store while the node fetches what its
 * neighbours lack: the app is the launch's origin.
 *
 * What an app can do with the client key (and all it can do): name a manifest and have it
 * launched, hand out the manifests of that manifest's chain of parents and the chunks they name
 * when the node asks for them, and read how its launch goes. It never hands out any other chunk
 * of its store, and a node never hands chunks to an app.
 *
 * Conventions:
 * - Errors: functions return 0 or a negative code: CL_E* below, a negative errno, or a code of
 *   the store or the network layer. cl_strerror() names any of them. Functions that can fail for
 *   a reason worth a sentence also write one into an err buffer (CL_ERRMSG bytes).
 * - Blocking: every call blocks the calling thread. cl_launch runs its own libuv loop in that
 *   thread (store reads and compression go to libuv's worker pool) and returns when the launch
 *   ends. Callbacks run in the calling thread, from inside cl_launch.
 * - Threads: a cl_client is used by one thread at a time; separate handles may be used by
 *   separate threads at once.
 * - Ownership: the caller owns every struct it passes; the library keeps no pointer to them
 *   after a call returns. Pointers handed to a callback are valid during the call only.
 */
#ifndef CLOUDLET_CLIENT_H
#define CLOUDLET_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of the library: a reserved negative range, apart from -errno and the ranges of
 * the store (-30xxx) and the network layer (-31xxx). */
enum {
    CL_ENOKEY = -32001,    /* the home has no client key: `cloudlet init --client-key FILE` */
    CL_ENONODE = -32002,   /* no node answered the discovery probe */
    CL_EFLEET = -32003,    /* the handshake failed: the node is not of this fleet */
    CL_EGONE = -32004,     /* the node went away before the launch ended */
    CL_ELAUNCH = -32005,   /* the node reports that the launch failed (the result says why) */
    CL_EPROTOCOL = -32006, /* the node sent something the protocol does not allow */
    CL_EADDRESS = -32007,  /* a malformed HOST[:PORT], or a host name that does not resolve */
};

/* A string for any code the library returns; never NULL, valid forever. */
const char *cl_strerror(int err);

#define CL_ERRMSG          1040 /* err buffers: a sentence, room for a node's error text */
#define CL_KEY_BYTES       32
#define CL_ID_BYTES        32
#define CL_PORT            7420 /* where nodes listen for peers and apps, by default */
#define CL_DISCOVERY_PORT  7421
#define CL_DISCOVERY_GROUP "239.255.67.76"
#define CL_CLIENT_KEY_FILE "client.key" /* in the app's home: the client key, mode 0600 */

/* ---- the app's home ------------------------------------------------------------------------ */

typedef struct cl_client cl_client;

/* Opens the app's home (NULL: $CLOUDLET_HOME, else the user's default home, as `cloudlet`
 * chooses it): its store, read only, its key pair (node.key) and its client key (client.key).
 * Refuses a secret key file that group or others may read. CL_ENOKEY when the home has no
 * client key. *out is set on success only; err says what went wrong, naming the file. */
int cl_client_open(const char *home, cl_client **out, char err[CL_ERRMSG]);
/* Closes the handle (NULL is fine). No call may be running on it. */
void cl_client_close(cl_client *c);
/* The app's public key (the static key nodes see). Valid until cl_client_close. */
const uint8_t *cl_client_key(const cl_client *c);

/* ---- finding a node ------------------------------------------------------------------------ */

/* A node to launch on. */
typedef struct cl_node {
    char host[256];             /* a numeric address or a host name */
    uint16_t port;              /* its TCP port */
    bool has_key;               /* key is known (cl_launch needs it) */
    uint8_t key[CL_KEY_BYTES];  /* its node key (the X25519 public key in its node.pub) */
    uint64_t chunks, manifests; /* what its store holds, from a probe's answer (0 otherwise) */
} cl_node;

/* Parses "HOST", "HOST:PORT" or "[IPV6]:PORT" into out (port CL_PORT when absent; no key).
 * CL_EADDRESS when malformed. */
int cl_node_parse(const char *hostport, cl_node *out);
/* Parses a node key as node.pub holds it ("cloudlet-node-key:<64 hex digits>"): 0, or
 * CL_EADDRESS with err saying what is wrong with it. */
int cl_node_key_parse(const char *text, uint8_t key[CL_KEY_BYTES], char err[CL_ERRMSG]);

/* Sends the fleet's discovery probe to the multicast group (NULL: CL_DISCOVERY_GROUP) at port
 * (0: CL_DISCOVERY_PORT) and collects the nodes that answer within wait_ms (0: 1500), in the
 * order they answered, with their keys and TCP ports. Returns how many (1..max), CL_ENONODE
 * when none answered, or another negative error. */
int cl_discover(cl_client *c, const char *group, uint16_t port, unsigned wait_ms, cl_node *out,
                size_t max);
/* The same probe sent by unicast to one host (a name or an address) at the discovery port:
 * fills out with that node's key and TCP port. 0, CL_ENONODE when it did not answer within
 * wait_ms (0: 1500), CL_EADDRESS when host does not resolve. */
int cl_probe(cl_client *c, const char *host, uint16_t port, unsigned wait_ms, cl_node *out);

/* ---- launching ----------------------------------------------------------------------------- */

/* The stages of a launch. RUNNING comes between TRANSFER and APPLY when the node resumes the
 * VM before every chunk has arrived (early start): the VM answers, the app still serves. */
enum {
    CL_STAGE_RESOLVE = 1,
    CL_STAGE_TRANSFER = 2,
    CL_STAGE_APPLY = 3,
    CL_STAGE_RESTORE = 4,
    CL_STAGE_RUNNING = 5
};
/* "resolve", "transfer", "apply", "restore", "running"; "?" for anything else. */
const char *cl_stage_name(int stage);

/* Where the node got chunk bytes from. */
enum { CL_SOURCE_LOCAL = 0, CL_SOURCE_NEIGHBOUR = 1, CL_SOURCE_ORIGIN = 2 };
#define CL_SOURCES_MAX 32
typedef struct cl_source {
    int kind;       /* CL_SOURCE_* */
    uint64_t bytes; /* local: chunk bytes held; neighbour, origin: bytes received (compressed
                       manifests and chunks) */
    char label[65]; /* "local", a neighbour's node key's first 12 hex digits, "origin" */
} cl_source;

/* How a launch goes, as the node last reported it, and what this app has served so far. */
typedef struct cl_progress {
    int stage;                        /* CL_STAGE_* */
    uint32_t elapsed_ms;              /* since the node took the launch */
    uint64_t fetch_total, fetch_done; /* chunk bytes the node fetches, and has fetched */
    uint64_t vm_total, vm_done;       /* bytes of VM the node writes, and has written */
    unsigned nsources;
    cl_source src[CL_SOURCES_MAX]; /* bytes by source */
    uint64_t served_chunks;        /* chunks this app sent whole */
    uint64_t served_deltas;        /* chunks this app sent as deltas */
    uint64_t served_manifests;     /* manifest parts this app sent */
    uint64_t refused;              /* chunks asked for that this app did not send (not
                                      held, or not named by the launched manifest's chain) */
    uint64_t sent_bytes;           /* message bytes this app sent for them */
} cl_progress;

typedef struct cl_launch_opts {
    const char *name; /* the domain's name ([A-Za-z0-9._-], at most 64), NULL: the node picks */
    /* true: stay until the node reports the launch done. false: return as soon as the node
     * needs nothing more from this app (it reports stage apply or restore); the node continues
     * the launch, and the result has done false. */
    bool wait;
    /* Called for each progress report of the node (may be NULL). */
    void (*progress)(const cl_progress *p, void *arg);
    void *arg;
    /* A node that sends nothing for this long is taken as gone (CL_EGONE); 0: 120 s. Nodes
     * report progress several times a second while a launch runs. */
    unsigned silence_ms;
} cl_launch_opts;

typedef struct cl_result {
    bool done;       /* the node reported the end of the launch (ok or not) */
    bool ok;         /* ... and the VM runs */
    char domain[65]; /* the libvirt domain's name on the node */
    char uuid[37];
    char accel[8];      /* "kvm" or "tcg" */
    char console[1025]; /* the serial console's socket on the node, or "" */
    char address[1025]; /* how to reach the VM, or "" */
    uint32_t resolve_ms, transfer_ms, apply_ms, restore_ms, total_ms;
    uint32_t running_ms; /* when the node first reported the VM running while chunks still
                            arrived (early start), since it took the launch; 0 when it did not */
    unsigned nsources;
    cl_source src[CL_SOURCES_MAX]; /* chunk bytes by source */
    cl_progress last;      /* the last progress report, with this app's counters at the end */
    char error[CL_ERRMSG]; /* on error: a sentence (the node's own text for CL_ELAUNCH) */
} cl_result;

/*
 * Has node (its host, port and key: has_key must be set) launch manifest id, serving the
 * node's requests from the app's store until the launch ends (opts->wait) or the node needs
 * nothing more. Blocks; runs its own loop in the calling thread. Returns 0 (r filled), or an
 * error with r->error saying why: CL_ELAUNCH (the node's own reason), CL_EFLEET, CL_EGONE (it
 * closed, or said nothing for opts->silence_ms), CL_EPROTOCOL, CL_EADDRESS, a connection error
 * (-ECONNREFUSED, ...), -EINVAL for a bad name or a node without key. The manifest need not
 * be in the app's store (a node may hold it). Before it connects it reads the manifest's chain
 * from the store and keeps the set of chunk ids it may serve: at most 64 bytes per distinct
 * chunk, for the length of the call.
 */
int cl_launch(cl_client *c, const cl_node *node, const uint8_t id[CL_ID_BYTES],
              const cl_launch_opts *opts, cl_result *r);

#ifdef __cplusplus
}
#endif
#endif
