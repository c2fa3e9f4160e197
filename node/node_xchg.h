/*
 * node_xchg.h — the chunk exchange's connections and pulls (private to node_exchange.c and
 * node_pull.c): the state of a connection, which both use, and the calls between the two.
 */
#ifndef CLOUDLET_NODE_XCHG_H
#define CLOUDLET_NODE_XCHG_H

#include "node_daemon.h"

typedef struct node__pull node__pull;
typedef struct xconn xconn;
typedef struct xsource xsource;
typedef struct sreq sreq;

/* A connection of the exchange, incoming or made by a pull; it outlives its net_conn until its
 * work on the pool has come back. */
struct xconn {
    node__exchange *x;
    xconn *next;
    net_conn *c; /* NULL once closed */
    sreq *q_head, *q_tail;
    unsigned queued, working;
    net_outbox out; /* answers waiting for the send queue */
    xsource *src; /* the pull source this connection serves, if any */
    bool asked;   /* a peer asked this node to pull over it (PULL_ASK); its pull runs */
    bool ask_seen;
    bool launch;  /* an app asked for a launch over it (node_launch.c holds it) */
};

struct node__exchange {
    node_daemon *d;
    net_endpoint *ep;
    net_keypair kp;
    net_keys keys;
    bool stopping;
    xconn *conns;
    node__pull *pulls;
};

/* node_exchange.c: connections. */
xconn *node__xconn_new(node__exchange *x);
/* Frees xc once its net_conn is closed and no work of it runs. */
void node__xconn_maybe_free(xconn *xc);
extern const net_conn_cbs node__xconn_cbs;

/* node_pull.c: what a pull's connections tell it. */
void node__pull_on_answer(xsource *s, uint8_t type, const uint8_t *payload, size_t len);
void node__pull_connected(xsource *s);
void node__pull_source_gone(xsource *s, int status); /* its connection closed */
void node__pull_drained(xsource *s); /* its send queue has room again */
/* Ends every pull (the daemon is stopping). */
void node__pull_stop_all(node__exchange *x, const char *why);

#endif
