/* net_error.c — the error sentences of net/. */
#include "net.h"

#include <string.h>

const char *net_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case NET_EFORMAT: return "malformed frame or message";
    case NET_ETOOBIG: return "frame or message over the size bound";
    case NET_EMAC: return "handshake pre-check failed (not of this fleet)";
    case NET_EAUTH: return "authentication failed";
    case NET_EREPLAY: return "replayed or stale handshake";
    case NET_ETRUNCATED: return "stream truncated (no FINAL message)";
    case NET_ECLOSED: return "connection closed";
    case NET_ETIMEDOUT: return "timed out";
    case NET_ELIMIT: return "refused by a connection limit";
    case NET_EAGAIN: return "send queue full";
    case NET_EROLE: return "role not allowed or no key for it";
    case NET_EREJECTED: return "peer refused";
    }
    if (err < 0 && err > -4096) return uv_strerror(err);
    return "unknown error";
}
