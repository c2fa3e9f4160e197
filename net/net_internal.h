/* net_internal.h — declarations shared by net/'s own files; never included outside net/. */
#ifndef CLOUDLET_NET_INTERNAL_H
#define CLOUDLET_NET_INTERNAL_H

#include "net.h"

/* Per-source-address token buckets in a bounded set-associative table: a source that was not
 * seen recently takes the slot of the least recently seen one in its set, so the table's memory
 * is fixed whatever the number of sources. */
typedef struct net__rate net__rate;

int net__rate_new(uint32_t per_sec, uint32_t burst, uint32_t slots, net__rate **out);
void net__rate_free(net__rate *r);
/* Takes one token for the address (len bytes: 4 for IPv4, 16 for IPv6) at time now_ms.
 * Returns true if the attempt is allowed. */
bool net__rate_take(net__rate *r, const uint8_t *addr, size_t len, uint64_t now_ms);

/* The mac1 an initiation in role must carry for the responder whose static key is
 * responder_pk (msg: the first NET_HS_INIT_BYTES - NET_HS_MAC_BYTES bytes). NET_EROLE if keys
 * lack the role's key. For fuzzing past the pre-check. */
int net__hs_mac1(const net_keys *keys, net_role role, const uint8_t responder_pk[NET_KEY_BYTES],
                 const uint8_t *msg, uint8_t out[NET_HS_MAC_BYTES]);

#endif
