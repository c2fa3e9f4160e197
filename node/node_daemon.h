/* node_daemon.h — the daemon's state and parts (private to node/). */
#ifndef CLOUDLET_NODE_DAEMON_H
#define CLOUDLET_NODE_DAEMON_H

#include "net.h"
#include "node.h"

#include <uv.h>

typedef struct node_daemon_opts {
    const char *home, *config, *log_level; /* NULL = defaults */
} node_daemon_opts;

typedef struct node__discovery node__discovery;
typedef struct node__exchange node__exchange;
typedef struct node__repl node__repl;
typedef struct node__launch node__launch;

typedef struct node_daemon {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_pipe_t control;
    bool control_open, stopping;
    node_config cfg;
    char *home, *control_path;
    cs_store *st;
    node_keys keys; /* the node's key pair and the fleet key, loaded by prepare */
    int lock_fd;
    uint64_t started_ms;
    unsigned control_clients;
    node__discovery *disc; /* beacons and the peer table; NULL when the node has none */
    node__exchange *xchg;  /* chunk exchange with peers; NULL for a node without a fleet key */
    node__repl *repls;     /* replication views and replicate requests under way */
    node__launch *launches; /* launches for apps under way */
    int accel;              /* the accelerator launches use, once detected (0: not yet) */
} node_daemon;

/* Reads the configuration and the keys (refusing key files others may read) and takes the
 * home's lock; nothing runs yet (safe to fork after). */
int node_daemon_prepare(node_daemon *d, const node_daemon_opts *o, char err[NODE_ERRMSG]);
/* Opens the store and sets up the loop: signals, the control socket. */
int node_daemon_start(node_daemon *d, char err[NODE_ERRMSG]);
/* Runs until SIGTERM/SIGINT and a clean shutdown. */
int node_daemon_run(node_daemon *d);
/* Releases everything; safe after a failed prepare or start. */
void node_daemon_free(node_daemon *d);
/* In the parent of a fork: releases its copy of what prepare made, leaving the lock (shared
 * with the child) and the files alone. */
void node_daemon_free_parent(node_daemon *d);
/* Begins a clean shutdown (closes listeners; the loop ends when pending work is done). */
void node_daemon_stop(node_daemon *d);

/* The control socket (node_control.c). */
int node__control_listen(node_daemon *d, char err[NODE_ERRMSG]);
void node__control_close(node_daemon *d);

/* LAN discovery and the peer table (node_peers.c, docs/discovery.md). start does nothing for a
 * node without a fleet key, or with discovery off and no static peers. stop closes its handles;
 * free releases the rest once the loop has ended. */
int node__discovery_start(node_daemon *d, char err[NODE_ERRMSG]);
void node__discovery_stop(node_daemon *d);
void node__discovery_free(node_daemon *d);
/* The answer to the control socket's `peers` request: one JSON line (malloc'd; NULL when out of
 * memory). */
char *node__peers_json(node_daemon *d);

/* The chunk exchange (node_exchange.c, docs/protocol.md §9). start listens on the listen
 * address (port 0: the bound port is written back into cfg.listen.port) and does nothing for a
 * node without a fleet key; a listen failure fails the start, naming the address. stop ends
 * every pull and closes every connection; free releases the rest once the loop has ended. */
int node__exchange_start(node_daemon *d, char err[NODE_ERRMSG]);
void node__exchange_stop(node_daemon *d);
void node__exchange_free(node_daemon *d);

/* Pulls (node_pull.c, docs/fetch.md). A pull reports with one JSON line (ending in a newline, valid during the call) now and then,
 * and a last one (last true) when it ends: {"done": ...} or {"error": ...}. */
typedef void (*node__pull_report_fn)(const char *line, bool last, void *arg);
/* Starts pulling manifest id and every chunk it names that the store lacks, from the known
 * peers (or only those matching peer: a node key, "host:port" or a host). On error (err says
 * why) fn never runs; otherwise its last call comes exactly once, unless the requester is
 * detached first. */
int node__pull_start(node_daemon *d, const cs_id *id, const char *peer, node__pull_report_fn fn,
                     void *arg, char err[NODE_ERRMSG]);
/* The requester arg goes away: its pull stops (what was stored stays) and fn is not called
 * again. */
void node__pull_detach(node_daemon *d, void *arg);
/* The same, pulling also from the nodes src names (a PULL_ASK's sources) besides the known
 * peers. */
int node__pull_start_from(node_daemon *d, const cs_id *id, const net_pull_source *src,
                          unsigned n, node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG]);
/* The same for a launch: pulls also from the app on connection origin (an xconn of a client
 * that sent LAUNCH), last of all sources, for what no peer holds. */
int node__pull_start_origin(node_daemon *d, const cs_id *id, void *origin,
                            node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG]);
/* How a pull of id goes: the one requested by arg, else any pull of id under way (a launch
 * sharing another's fetch); id NULL: the pull requested by arg. CS_ENOTFOUND when there is
 * none. During a pull's last report it still answers, with done set. */
#define NODE__PULL_SOURCES_MAX 31u
typedef struct node__pull_progress_t {
    bool planned;      /* the missing set is known: the manifest is stored, chunks are coming */
    bool done, failed;
    uint64_t unique_chunks, held_before, missing, chunks_done, bytes_done;
    unsigned nsrc;
    struct {
        uint8_t pk[NET_KEY_BYTES];
        bool origin;
        uint64_t bytes;      /* chunk bytes received (uncompressed) */
        uint64_t data_bytes; /* manifest and chunk messages' bytes on the wire */
    } src[NODE__PULL_SOURCES_MAX];
    char err[NODE_ERRMSG]; /* failed: why */
} node__pull_progress_t;
int node__pull_progress(node_daemon *d, const cs_id *id, void *arg, node__pull_progress_t *out);

/* Chunks of manifest id that a running VM waits for (early start, read through NBD): the pull
 * of id under way asks for them before any other (kept until its fetch begins, if it has not
 * yet). CS_ENOTFOUND when no pull of id runs (ids it does not fetch are ignored). */
int node__pull_urgent(node_daemon *d, const cs_id *id, const cs_id *ids, size_t n);

/* The first 12 hex digits of a node key, as logs and tables show it. Returns out. */
const char *node__short_hex(const uint8_t *k, char out[13]);

/* Which of ids[0..n) the store holds: a malloc'd bitmap of n bits (bit i = byte i/8,
 * 1 << i%8), asked 65,536 ids at a time (each a short read transaction; on the worker pool,
 * never on the loop). NULL with *rc set on error. */
uint8_t *node__held_bits(cs_store *st, const cs_id *ids, size_t n, int *rc);

/* Launches for apps (node_launch.c, docs/launch.md): the exchange hands over a client's LAUNCH
 * with its connection (conn), and says when that connection is gone. The launch answers with
 * node__conn_send (takes buf) and lets go of the connection with node__conn_end (a clean
 * close). */
void node__launch_asked(node_daemon *d, void *conn, const uint8_t *payload, size_t len);
void node__launch_conn_gone(node_daemon *d, void *conn);
void node__launch_stop(node_daemon *d);
void node__conn_send(void *conn, uint8_t type, uint8_t *buf, size_t len);
void node__conn_end(void *conn);

/* The exchange's endpoint (to connect to peers), NULL without one or once stopping. */
net_endpoint *node__exchange_endpoint(node_daemon *d);

/* The replication view and replicate (node_replication.c, docs/replication.md). A view of
 * manifest id (NULL: every manifest of the store) with threshold k, or (replicate) pulls until
 * every chunk of id is on k nodes. Reports like a pull: lines now and then, then a last one
 * ({"done": ...} or {"error": ...}). On error (err says why) fn never runs. */
int node__replication_start(node_daemon *d, const cs_id *id, unsigned k, bool replicate,
                            node__pull_report_fn fn, void *arg, char err[NODE_ERRMSG]);
/* The requester arg goes away: its request stops and fn is not called again. */
void node__replication_detach(node_daemon *d, void *arg);
/* Ends every request (the daemon is stopping). */
void node__replication_stop(node_daemon *d);

typedef struct node__discovery_counters {
    uint64_t received, accepted; /* datagrams; beacons believed */
    uint64_t foreign;            /* not a beacon of this fleet (malformed or not authentic) */
    uint64_t replayed, stale, own, table_full, expired;
    uint64_t sent, send_failed, prompts, join_failed;
} node__discovery_counters;

/* The peer table: node key -> where it was heard, its TCP port, its instance and summary.
 * Pure (time is the caller's, in ms), bounded by max. */
typedef struct node__peer {
    uint8_t pk[NET_KEY_BYTES];
    char ip[64];       /* the source address of its beacons */
    uint16_t port;     /* its TCP port, from the beacon */
    uint64_t instance, seq;
    uint64_t first_ms, last_ms;
    uint64_t chunks, manifests;
    int static_idx;    /* the static peer (cfg.peers index) at that address, or -1 */
} node__peer;
typedef struct node__peer_table {
    node__peer *p;
    unsigned n, max;
} node__peer_table;
int node__peer_table_init(node__peer_table *t, unsigned max);
void node__peer_table_free(node__peer_table *t);
node__peer *node__peer_find(node__peer_table *t, const uint8_t pk[NET_KEY_BYTES]);
/* Records a beacon the filter believed: 1 for a peer the table did not hold, 0 for one it did,
 * -ENOSPC (nothing kept) for a newcomer while the table is full. */
int node__peer_heard(node__peer_table *t, const net_beacon *b, const char *ip, int static_idx,
                     uint64_t now_ms);
/* Removes the peers silent for more than timeout_ms, calling gone (may be NULL) for each first;
 * returns how many. */
unsigned node__peer_expire(node__peer_table *t, uint64_t now_ms, uint64_t timeout_ms,
                           void (*gone)(const node__peer *p, void *arg), void *arg);
/* The daemon's peer table, NULL when discovery is not running; valid until the loop runs on. */
const node__peer_table *node__discovery_table(node_daemon *d);

#endif
