/* Fuzz target: the configuration parser on arbitrary bytes. */
#include "node.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    node_config c;
    node_config_defaults(&c);
    char err[NODE_ERRMSG];
    if (node_config_parse((const char *)data, size, &c, err) == 0 &&
        (c.npeers > NODE_MAX_STATIC_PEERS || c.listen.port == 0))
        abort();
    return 0;
}
