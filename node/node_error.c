/* node_error.c — error codes and the error sentences of node/. */
#include "node_internal.h"

#include <stdarg.h>
#include <stdio.h>

const char *node_strerror(int err)
{
    return cs_strerror(err);
}

void node__errf(char err[NODE_ERRMSG], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err) vsnprintf(err, NODE_ERRMSG, fmt, ap);
    va_end(ap);
}
