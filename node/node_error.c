#include "node.h"

const char *node_strerror(int err)
{
    return cs_strerror(err);
}
