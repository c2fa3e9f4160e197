/* node_daemon.h — the daemon's state and parts (private to node/). */
#ifndef CLOUDLET_NODE_DAEMON_H
#define CLOUDLET_NODE_DAEMON_H

#include "node.h"

#include <uv.h>

typedef struct node_daemon_opts {
    const char *home, *config, *log_level; /* NULL = defaults */
} node_daemon_opts;

typedef struct node_daemon {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_pipe_t control;
    bool control_open, stopping;
    node_config cfg;
    char *home, *control_path;
    cs_store *st;
    int lock_fd;
    uint64_t started_ms;
    unsigned control_clients;
} node_daemon;

/* Reads the configuration and takes the home's lock; nothing runs yet (safe to fork after). */
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

#endif
