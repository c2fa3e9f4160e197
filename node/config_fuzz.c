/* Fuzz target: the configuration parser on arbitrary bytes. What it accepts must hold together:
 * no more static peers than the table has, a NUL-terminated host for every address, and no port
 * 0 for a peer (a listen port 0 is valid: the system picks one). */
#include "node.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    node_config c;
    node_config_defaults(&c);
    char err[NODE_ERRMSG];
    if (node_config_parse((const char *)data, size, &c, err) != 0) return 0;
    if (c.npeers > NODE_MAX_STATIC_PEERS) abort();
    if (!memchr(c.listen.host, '\0', sizeof c.listen.host)) abort();
    for (unsigned i = 0; i < c.npeers; i++)
        if (c.peers[i].port == 0 || !memchr(c.peers[i].host, '\0', sizeof c.peers[i].host)) abort();
    return 0;
}
