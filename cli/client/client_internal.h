/* client_internal.h — what the client library's files share (private to cli/client/). */
#ifndef CLOUDLET_CLIENT_INTERNAL_H
#define CLOUDLET_CLIENT_INTERNAL_H

#include "chunkstore.h"
#include "cloudlet_client.h"
#include "net.h"

struct cl_client {
    cs_store *st;                      /* the app's store, read only */
    net_keypair kp;                    /* the app's static key pair (node.key) */
    uint8_t client_key[NET_KEY_BYTES]; /* the fleet's client key */
};

/* The first numeric address host resolves to (a name or an address), into out. 0 or
 * CL_EADDRESS. Blocks (getaddrinfo). */
int cl__resolve(const char *host, char out[64]);

#endif
