/*
 * vm_nbd.c — a read-only NBD export of one image, read straight from the store (vm_nbd.h).
 *
 * Design notes:
 * - The protocol (node__nbd_session) knows nothing of sockets or the store: it reads the
 *   client's bytes, writes replies and asks for image bytes through node__nbd_io, so the fuzz
 *   target and the tests drive it from memory. It speaks the "fixed newstyle" handshake
 *   (docs: the NBD project's doc/proto.md), with simple replies unless the client negotiates
 *   structured replies, and then the base:allocation meta context if it asks. A simple reply's
 *   error code must be known before its data goes out, so a read is assembled whole before it
 *   is answered, in either form.
 * - Which ranges are holes (read as zeros by construction) is the server's knowledge, not the
 *   protocol's: the session asks an extent function (the image's zero chunks), or, run from
 *   node__nbd_session, knows of none and calls everything data, which the protocol always
 *   allows. Holes become OFFSET_HOLE chunks in a structured read (no zeros cross the socket)
 *   and HOLE|ZERO extents in BLOCK_STATUS, so QEMU knows where a sparse disk's zeros are.
 * - Nothing the client sends decides an allocation beyond fixed bounds: option data is at most
 *   NBD__OPT_MAX bytes (larger options are discarded in pieces), a read or a write at most
 *   NBD__IO_MAX, a BLOCK_STATUS reply at most NBD__EXTENTS_MAX extents. A write's payload is
 *   read and discarded: the export is read-only.
 * - The server runs one accept thread and one thread per connection (at most NBD__CONNS).
 *   A connection closes its own socket, under the server's lock, when its session ends;
 *   node_nbd_stop shuts down the sockets still open under that lock (so it never touches a
 *   descriptor number already reused) and joins every thread. A read waiting for a chunk
 *   still on its way asks `stopping` every 100 ms, so a stop is never held up by a fetch.
 * - The export's size is the image's length rounded up to whole 512-byte sectors, the tail
 *   reading as zeros (export_size says why).
 * - Counters are shared by all connections and updated with atomic adds.
 */
#define _GNU_SOURCE
#include "vm_nbd.h"

#include "node_internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- the protocol ------------------------------------------------------------------------ */

#define NBD_MAGIC              0x4e42444d41474943ull /* "NBDMAGIC" */
#define NBD_IHAVEOPT           0x49484156454f5054ull
#define NBD_REP_MAGIC          0x3e889045565a9ull
#define NBD_REQUEST_MAGIC      0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_MAGIC   0x668e33efu

#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES      (1u << 1)

#define NBD_FLAG_HAS_FLAGS      (1u << 0)
#define NBD_FLAG_READ_ONLY      (1u << 1)
#define NBD_FLAG_SEND_FLUSH     (1u << 2)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_TRANSMISSION_FLAGS                                                                     \
    (NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN)

enum {
    NBD_OPT_EXPORT_NAME = 1,
    NBD_OPT_ABORT = 2,
    NBD_OPT_LIST = 3,
    NBD_OPT_INFO = 6,
    NBD_OPT_GO = 7,
    NBD_OPT_STRUCTURED_REPLY = 8,
    NBD_OPT_LIST_META_CONTEXT = 9,
    NBD_OPT_SET_META_CONTEXT = 10,
};

#define NBD_REP_ACK          1u
#define NBD_REP_SERVER       2u
#define NBD_REP_INFO         3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR_UNSUP    (0x80000000u + 1)
#define NBD_REP_ERR_INVALID  (0x80000000u + 3)
#define NBD_REP_ERR_UNKNOWN  (0x80000000u + 6)
#define NBD_REP_ERR_TOO_BIG  (0x80000000u + 9)

#define NBD_INFO_EXPORT     0u
#define NBD_INFO_BLOCK_SIZE 3u

enum {
    NBD_CMD_READ = 0,
    NBD_CMD_WRITE = 1,
    NBD_CMD_DISC = 2,
    NBD_CMD_FLUSH = 3,
    NBD_CMD_TRIM = 4,
    NBD_CMD_CACHE = 5,
    NBD_CMD_WRITE_ZEROES = 6,
    NBD_CMD_BLOCK_STATUS = 7,
};
/* FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO: any other request flag is refused. */
#define NBD_CMD_FLAGS_KNOWN  0x1fu
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)

#define NBD_REPLY_FLAG_DONE         1u
#define NBD_REPLY_TYPE_NONE         0u
#define NBD_REPLY_TYPE_OFFSET_DATA  1u
#define NBD_REPLY_TYPE_OFFSET_HOLE  2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_ERROR        0x8001u

/* base:allocation, the one meta context served, and its extents' flags. */
#define NBD_META_ALLOCATION "base:allocation"
#define NBD_STATE_HOLE      (1u << 0)
#define NBD_STATE_ZERO      (1u << 1)
/* The id SET_META_CONTEXT gives base:allocation (LIST answers 0, as the protocol says). */
#define NBD__CONTEXT_ID 1u
/* The most extents one BLOCK_STATUS reply carries: the client asks again from where it ends. */
#define NBD__EXTENTS_MAX 1024u

#define NBD_EPERM  1u
#define NBD_EIO    5u
#define NBD_EINVAL 22u

/* The most a read or a write may carry: what the export advertises as its largest block. */
#define NBD__IO_MAX (32u << 20)
/* The most option data kept: a name of up to 4096 bytes (the protocol's limit on strings)
 * with the fields around it and a generous list of information requests. */
#define NBD__OPT_MAX (4096u + 4096u)

/* Where the export reads as zeros by construction: the length of the run from off (more than
 * 0, at most len; len > 0 and off + len within the export) whose bytes all do (*hole true) or
 * may not (*hole false). Called with the io's arg. */
typedef uint64_t extent_fn(void *arg, uint64_t off, uint64_t len, bool *hole);

struct session {
    const node__nbd_io *io;
    extent_fn *extent; /* NULL: no hole known, everything is data */
    node_nbd_stats *stats;
    bool no_zeroes;
    bool structured; /* NBD_OPT_STRUCTURED_REPLY was acknowledged */
    bool allocation; /* the last NBD_OPT_SET_META_CONTEXT selected base:allocation */
    uint8_t *buf;    /* a read's reply, header and data; grown on demand up to NBD__IO_MAX */
    size_t cap;
    uint8_t opt[NBD__OPT_MAX];
    uint8_t status[20 + 4 + 8 * NBD__EXTENTS_MAX]; /* a BLOCK_STATUS reply: header, id, extents */
};

static void count(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

/* Reads and drops n bytes in pieces of the option buffer's size. */
static int discard(struct session *s, uint64_t n)
{
    while (n) {
        size_t k = n < sizeof s->opt ? (size_t)n : sizeof s->opt;
        int rc = s->io->recv(s->io->arg, s->opt, k);
        if (rc) return rc;
        n -= k;
    }
    return 0;
}

static int opt_reply(struct session *s, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
    uint8_t h[20];
    node__put_be(h, NBD_REP_MAGIC, 8);
    node__put_be(h + 8, opt, 4);
    node__put_be(h + 12, type, 4);
    node__put_be(h + 16, len, 4);
    int rc = s->io->send(s->io->arg, h, sizeof h);
    if (rc == 0 && len) rc = s->io->send(s->io->arg, data, len);
    return rc;
}

static int opt_error(struct session *s, uint32_t opt, uint32_t type, const char *why)
{
    return opt_reply(s, opt, type, why, (uint32_t)strlen(why));
}

static bool export_name_ok(const uint8_t *name, size_t len)
{
    return len == 0 || (len == strlen(NODE_NBD_EXPORT) && memcmp(name, NODE_NBD_EXPORT, len) == 0);
}

/* NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 count, count u16 information
 * requests. Both answers carry the export's size, flags and block sizes whatever was asked.
 * Sets *go when the client may enter transmission. */
static int opt_info(struct session *s, uint32_t opt, uint32_t len, bool *go)
{
    const uint8_t *d = s->opt;
    if (len < 6 || node__get_be(d, 4) > len - 6)
        return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed export request");
    uint32_t namelen = node__get_be(d, 4);
    uint16_t nreq = node__get_be(d + 4 + namelen, 2);
    if (len != 6 + namelen + 2u * nreq)
        return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed export request");
    if (!export_name_ok(d + 4, namelen))
        return opt_error(s, opt, NBD_REP_ERR_UNKNOWN,
                         "no such export (it is \"" NODE_NBD_EXPORT "\")");

    uint8_t info[14];
    node__put_be(info, NBD_INFO_EXPORT, 2);
    node__put_be(info + 2, s->io->size, 8);
    node__put_be(info + 10, NBD_TRANSMISSION_FLAGS, 2);
    int rc = opt_reply(s, opt, NBD_REP_INFO, info, 12);
    node__put_be(info, NBD_INFO_BLOCK_SIZE, 2);
    node__put_be(info + 2, 1, 4);
    node__put_be(info + 6, CS_CHUNK_SIZE, 4);
    node__put_be(info + 10, NBD__IO_MAX, 4);
    if (rc == 0) rc = opt_reply(s, opt, NBD_REP_INFO, info, 14);
    if (rc == 0) rc = opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
    *go = rc == 0 && opt == NBD_OPT_GO;
    return rc;
}

static bool string_is(const uint8_t *p, size_t len, const char *str)
{
    return len == strlen(str) && memcmp(p, str, len) == 0;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: u32 name length, name, u32 count,
 * count queries of u32 length and string. The one context is base:allocation: SET selects it
 * when a query names it; LIST names it for no query, for "base:" or for its name. Queries for
 * anything else are ignored, as the protocol says. SET replaces the selection even when it
 * fails. */
static int opt_meta(struct session *s, uint32_t opt, uint32_t len)
{
    const uint8_t *d = s->opt;
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (set) s->allocation = false;
    if (!s->structured)
        return opt_error(s, opt, NBD_REP_ERR_INVALID, "meta contexts need structured replies");
    if (len < 8 || node__get_be(d, 4) > len - 8)
        return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
    uint32_t namelen = node__get_be(d, 4), nquery = node__get_be(d + 4 + namelen, 4);
    bool match = !set && nquery == 0;
    size_t at = 8 + (size_t)namelen; /* at <= len throughout */
    for (uint32_t i = 0; i < nquery; i++) {
        if (len - at < 4 || node__get_be(d + at, 4) > len - at - 4)
            return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
        const uint8_t *q = d + at + 4;
        uint32_t qlen = node__get_be(d + at, 4);
        match |= string_is(q, qlen, NBD_META_ALLOCATION) || (!set && string_is(q, qlen, "base:"));
        at += 4 + (size_t)qlen;
    }
    if (at != len) return opt_error(s, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
    if (!export_name_ok(d + 4, namelen))
        return opt_error(s, opt, NBD_REP_ERR_UNKNOWN,
                         "no such export (it is \"" NODE_NBD_EXPORT "\")");
    int rc = 0;
    if (match) {
        uint8_t ctx[4 + sizeof NBD_META_ALLOCATION - 1];
        node__put_be(ctx, set ? NBD__CONTEXT_ID : 0, 4);
        memcpy(ctx + 4, NBD_META_ALLOCATION, sizeof NBD_META_ALLOCATION - 1);
        rc = opt_reply(s, opt, NBD_REP_META_CONTEXT, ctx, sizeof ctx);
    }
    if (rc == 0) rc = opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
    s->allocation = set && match && rc == 0;
    return rc;
}

/* The handshake up to transmission: 1 when the client chose the export, 0 after
 * NBD_OPT_ABORT, negative when the stream ends or breaks the protocol. */
static int handshake(struct session *s)
{
    const node__nbd_io *io = s->io;
    uint8_t h[18];
    node__put_be(h, NBD_MAGIC, 8);
    node__put_be(h + 8, NBD_IHAVEOPT, 8);
    node__put_be(h + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 2);
    int rc = io->send(io->arg, h, 18);
    if (rc == 0) rc = io->recv(io->arg, h, 4);
    if (rc) return rc;
    uint32_t cflags = node__get_be(h, 4);
    if (cflags & ~(uint32_t)(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)) return -EPROTO;
    s->no_zeroes = cflags & NBD_FLAG_NO_ZEROES;

    for (;;) {
        uint8_t oh[16];
        if ((rc = io->recv(io->arg, oh, sizeof oh))) return rc;
        if (node__get_be(oh, 8) != NBD_IHAVEOPT) return -EPROTO;
        uint32_t opt = node__get_be(oh + 8, 4), len = node__get_be(oh + 12, 4);
        if (len > sizeof s->opt) {
            /* EXPORT_NAME has no error reply: the protocol says to close. */
            if (opt == NBD_OPT_EXPORT_NAME) return -EPROTO;
            if (opt == NBD_OPT_SET_META_CONTEXT) s->allocation = false; /* a failed SET too */
            rc = discard(s, len);
            if (rc == 0) rc = opt_error(s, opt, NBD_REP_ERR_TOO_BIG, "option too long");
            if (rc) return rc;
            continue;
        }
        if (len && (rc = io->recv(io->arg, s->opt, len))) return rc;
        bool go = false;
        switch (opt) {
        case NBD_OPT_EXPORT_NAME: {
            if (!export_name_ok(s->opt, len)) return -ENOENT;
            uint8_t e[10 + 124] = {0};
            node__put_be(e, io->size, 8);
            node__put_be(e + 8, NBD_TRANSMISSION_FLAGS, 2);
            rc = io->send(io->arg, e, s->no_zeroes ? 10 : sizeof e);
            return rc ? rc : 1;
        }
        case NBD_OPT_ABORT: return opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
        case NBD_OPT_LIST: {
            if (len) {
                rc = opt_error(s, opt, NBD_REP_ERR_INVALID, "LIST takes no data");
                break;
            }
            uint8_t srv[4 + sizeof NODE_NBD_EXPORT - 1];
            node__put_be(srv, sizeof NODE_NBD_EXPORT - 1, 4);
            memcpy(srv + 4, NODE_NBD_EXPORT, sizeof NODE_NBD_EXPORT - 1);
            rc = opt_reply(s, opt, NBD_REP_SERVER, srv, sizeof srv);
            if (rc == 0) rc = opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
            break;
        }
        case NBD_OPT_INFO:
        case NBD_OPT_GO: rc = opt_info(s, opt, len, &go); break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len) {
                rc = opt_error(s, opt, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                break;
            }
            s->structured = true;
            rc = opt_reply(s, opt, NBD_REP_ACK, NULL, 0);
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT: rc = opt_meta(s, opt, len); break;
        default: /* STARTTLS, EXTENDED_HEADERS and anything newer */
            rc = opt_error(s, opt, NBD_REP_ERR_UNSUP, "option not supported");
            break;
        }
        if (rc) return rc;
        if (go) return 1;
    }
}

static void chunk_header(uint8_t h[20], uint16_t flags, uint16_t type, const uint8_t cookie[8],
                         uint32_t len)
{
    node__put_be(h, NBD_STRUCTURED_MAGIC, 4);
    node__put_be(h + 4, flags, 2);
    node__put_be(h + 6, type, 2);
    memcpy(h + 8, cookie, 8);
    node__put_be(h + 16, len, 4);
}

/* The whole answer to a request that carries no data back: a simple reply, or with structured
 * replies a NONE chunk (success) or an ERROR chunk without a message, marked the last. */
static int reply(struct session *s, uint32_t error, const uint8_t cookie[8])
{
    uint8_t r[20 + 6];
    size_t n = 16;
    if (!s->structured) {
        node__put_be(r, NBD_SIMPLE_REPLY_MAGIC, 4);
        node__put_be(r + 4, error, 4);
        memcpy(r + 8, cookie, 8);
    } else if (error == 0) {
        chunk_header(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
        n = 20;
    } else {
        chunk_header(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6);
        node__put_be(r + 20, error, 4);
        node__put_be(r + 24, 0, 2);
        n = 26;
    }
    int rc = s->io->send(s->io->arg, r, n);
    if (rc == 0) count(&s->stats->requests, 1);
    return rc;
}

/* The run at off (at most len bytes) that is all hole or all data. */
static uint64_t extent_at(struct session *s, uint64_t off, uint64_t len, bool *hole)
{
    *hole = false;
    if (!s->extent) return len;
    uint64_t k = s->extent(s->io->arg, off, len, hole);
    assert(k > 0 && k <= len);
    return k;
}

/* A read's bytes (data, [off, off + len) of the export) as structured chunks: OFFSET_HOLE for
 * each run of hole, OFFSET_DATA for each run of data, the last marked DONE. Only the data
 * counts as read bytes sent. */
static int send_read_chunks(struct session *s, const uint8_t cookie[8], uint64_t off, uint32_t len,
                            const uint8_t *data)
{
    int rc = 0;
    for (uint64_t at = off, end = off + len; rc == 0 && at < end;) {
        bool hole;
        uint32_t k = (uint32_t)extent_at(s, at, end - at, &hole);
        uint16_t flags = at + k == end ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t h[20 + 12];
        node__put_be(h + 20, at, 8);
        if (hole) {
            chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12);
            node__put_be(h + 28, k, 4);
            rc = s->io->send(s->io->arg, h, 32);
        } else {
            chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + k);
            rc = s->io->send(s->io->arg, h, 28);
            if (rc == 0) rc = s->io->send(s->io->arg, data + (at - off), k);
            if (rc == 0) count(&s->stats->read_bytes, k);
        }
        at += k;
    }
    return rc;
}

static int cmd_read(struct session *s, const uint8_t cookie[8], uint64_t off, uint32_t len)
{
    if (len == 0 || len > NBD__IO_MAX || off > s->io->size || len > s->io->size - off)
        return reply(s, NBD_EINVAL, cookie);
    size_t need = 16 + (size_t)len;
    if (need > s->cap) {
        uint8_t *b = realloc(s->buf, need);
        if (!b) return reply(s, NBD_EIO, cookie);
        s->buf = b, s->cap = need;
    }
    if (s->io->read_at(s->io->arg, off, len, s->buf + 16)) return reply(s, NBD_EIO, cookie);
    int rc;
    if (s->structured) {
        rc = send_read_chunks(s, cookie, off, len, s->buf + 16);
    } else {
        node__put_be(s->buf, NBD_SIMPLE_REPLY_MAGIC, 4);
        node__put_be(s->buf + 4, 0, 4);
        memcpy(s->buf + 8, cookie, 8);
        rc = s->io->send(s->io->arg, s->buf, need);
        if (rc == 0) count(&s->stats->read_bytes, len);
    }
    if (rc == 0) count(&s->stats->requests, 1);
    return rc;
}

/* base:allocation from off: one BLOCK_STATUS chunk of extents, holes (HOLE | ZERO) and data
 * (0) in turn, covering at most len bytes in at most NBD__EXTENTS_MAX extents (one with
 * REQ_ONE); a client asks again from where the reply ends. */
static int cmd_block_status(struct session *s, const uint8_t cookie[8], uint16_t flags,
                            uint64_t off, uint32_t len)
{
    if (!s->allocation || len == 0 || off > s->io->size || len > s->io->size - off)
        return reply(s, NBD_EINVAL, cookie);
    uint32_t max = flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD__EXTENTS_MAX, n = 0;
    uint8_t *e = s->status + 24;
    for (uint64_t at = off, end = off + len; at < end && n < max; n++, e += 8) {
        bool hole;
        uint32_t k = (uint32_t)extent_at(s, at, end - at, &hole);
        node__put_be(e, k, 4);
        node__put_be(e + 4, hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0, 4);
        at += k;
    }
    chunk_header(s->status, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, 4 + 8 * n);
    node__put_be(s->status + 20, NBD__CONTEXT_ID, 4);
    int rc = s->io->send(s->io->arg, s->status, 24 + 8 * (size_t)n);
    if (rc == 0) count(&s->stats->requests, 1);
    return rc;
}

/* Requests until NBD_CMD_DISC (0) or a failure (negative). */
static int transmission(struct session *s)
{
    for (;;) {
        uint8_t q[28];
        int rc = s->io->recv(s->io->arg, q, sizeof q);
        if (rc) return rc;
        if (node__get_be(q, 4) != NBD_REQUEST_MAGIC) return -EPROTO;
        uint16_t flags = node__get_be(q + 4, 2), type = node__get_be(q + 6, 2);
        const uint8_t *cookie = q + 8;
        uint64_t off = node__get_be(q + 16, 8);
        uint32_t len = node__get_be(q + 24, 4);
        if (type == NBD_CMD_WRITE) {
            /* The payload follows whatever the answer: read it to stay in step. */
            if (len > NBD__IO_MAX) return -EPROTO;
            if ((rc = discard(s, len))) return rc;
        }
        if (type == NBD_CMD_DISC) return 0;
        if (flags & ~NBD_CMD_FLAGS_KNOWN) {
            rc = reply(s, NBD_EINVAL, cookie);
        } else {
            switch (type) {
            case NBD_CMD_READ: rc = cmd_read(s, cookie, off, len); break;
            case NBD_CMD_WRITE:
            case NBD_CMD_TRIM:
            case NBD_CMD_WRITE_ZEROES: rc = reply(s, NBD_EPERM, cookie); break;
            case NBD_CMD_FLUSH:
            case NBD_CMD_CACHE: rc = reply(s, 0, cookie); break;
            case NBD_CMD_BLOCK_STATUS: rc = cmd_block_status(s, cookie, flags, off, len); break;
            default: rc = reply(s, NBD_EINVAL, cookie); break;
            }
        }
        if (rc) return rc;
    }
}

/* A session whose holes extent tells (NULL: none). */
static int session_run(const node__nbd_io *io, extent_fn *extent, node_nbd_stats *stats)
{
    node_nbd_stats ignored = {0};
    struct session *s = malloc(sizeof *s);
    if (!s) return -ENOMEM;
    s->io = io;
    s->extent = extent;
    s->stats = stats ? stats : &ignored;
    s->no_zeroes = s->structured = s->allocation = false;
    s->buf = NULL;
    s->cap = 0;
    int rc = handshake(s);
    if (rc == 1) rc = transmission(s);
    free(s->buf);
    free(s);
    return rc;
}

int node__nbd_session(const node__nbd_io *io, node_nbd_stats *stats)
{
    return session_run(io, NULL, stats);
}
/* ---- the server ---------------------------------------------------------------------------- */

/* Connections served at once; more are closed as soon as they are accepted. */
#define NBD__CONNS 16

struct conn {
    node_nbd *n;
    int fd;    /* -1 once the session closed it */
    bool done; /* the thread has ended: join it */
    pthread_t thread;
    struct conn *next;
    uint8_t bounce[CS_CHUNK_SIZE]; /* a chunk a read covers only in part */
};

struct node_nbd {
    cs_store *st;
    const cs_image *im;
    void (*want)(const cs_id *ids, size_t n, void *arg); /* from node_nbd_opts */
    void *want_arg;
    char *path;
    int lfd;
    int wake[2];   /* written by node_nbd_stop to end the accept thread's poll */
    bool stopping; /* atomic */
    pthread_t acceptor;
    pthread_mutex_t mu; /* guards conns and every conn's fd and done */
    struct conn *conns;
    node_nbd_stats stats; /* atomic adds */
};

static int sock_recv(void *arg, void *buf, size_t n)
{
    struct conn *c = arg;
    for (uint8_t *p = buf; n;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -ECONNRESET;
        p += r, n -= (size_t)r;
    }
    return 0;
}

static int sock_send(void *arg, const void *buf, size_t n)
{
    struct conn *c = arg;
    for (const uint8_t *p = buf; n;) {
        ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        p += r, n -= (size_t)r;
    }
    return 0;
}

static bool stopping(void *arg)
{
    node_nbd *n = arg;
    return __atomic_load_n(&n->stopping, __ATOMIC_ACQUIRE);
}

/* One read's way through the store: the chunks it covers, whether it waited for one, and
 * whether it told want what it lacks (once per read). */
struct store_read {
    uint64_t first; /* the read's first chunk */
    size_t count;   /* and how many it covers */
    bool waited, wanted;
};

struct missing {
    const cs_id *id;
    size_t pos;
};

static int missing_by_id(const void *a, const void *b)
{
    const struct missing *x = a, *y = b;
    int c = memcmp(x->id->b, y->id->b, CS_ID_BYTES);
    return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

static int missing_by_pos(const void *a, const void *b)
{
    const struct missing *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Tells want the ids of the read's chunks that the store lacks: each once (an image may name a
 * chunk at several positions), in image order; cs_has counts the zero id as held. Sorted by id
 * then position, the first of each id is the one kept. */
static void want_missing(struct conn *c, const struct store_read *r)
{
    node_nbd *s = c->n;
    const cs_id *ids = &s->im->chunks[r->first];
    size_t n = r->count, k = 0;
    uint8_t *held = malloc((n + 7) / 8);
    struct missing *m = malloc(n * sizeof *m);
    cs_id *out = malloc(n * sizeof *out);
    int64_t rc = held && m && out ? cs_has(s->st, ids, n, held) : -ENOMEM;
    if (rc >= 0) {
        for (size_t i = 0; i < n; i++)
            if (!(held[i / 8] >> (i % 8) & 1)) m[k++] = (struct missing){&ids[i], i};
        qsort(m, k, sizeof *m, missing_by_id);
        size_t u = 0;
        for (size_t i = 0; i < k; i++)
            if (u == 0 || !cs_id_equal(m[i].id, m[u - 1].id)) m[u++] = m[i];
        qsort(m, u, sizeof *m, missing_by_pos);
        for (size_t i = 0; i < u; i++) out[i] = *m[i].id;
        if (u) s->want(out, u, s->want_arg);
    } else {
        node_log(NODE_LOG_WARN, "nbd: finding the chunks a read lacks: %s", cs_strerror((int)rc));
    }
    free(out);
    free(m);
    free(held);
}

/* n chunks at positions pos.. of read r into out; a chunk still on its way is waited for,
 * after want has heard of every chunk r lacks. */
static int get_chunks(struct conn *c, struct store_read *r, uint64_t pos, size_t n, uint8_t *out)
{
    node_nbd *s = c->n;
    size_t bad = 0;
    int rc = cs_get(s->st, &s->im->chunks[pos], n, out, &bad);
    if (rc == CS_ENOTFOUND) {
        if (!r->wanted && s->want) want_missing(c, r);
        r->wanted = r->waited = true;
        rc = cs_get_arriving(s->st, &s->im->chunks[pos], n, out, &bad, stopping, s);
    }
    if (rc && rc != -ECANCELED) {
        char why[NODE_ERRMSG];
        node__disk_chunk_errf(why, s->im, pos + bad, cs_strerror(rc));
        node_log(NODE_LOG_WARN, "nbd: %s", why);
    }
    return rc;
}

/* The chunks covering [off, off + len): whole chunks go straight into out, a chunk covered
 * in part (at most one at each end) through the bounce buffer; past the image's end (the
 * export is rounded up to whole sectors), zeros. */
static int store_read_at(void *arg, uint64_t off, size_t len, uint8_t *out)
{
    struct conn *c = arg;
    int rc = 0;
    uint64_t end = off + len, length = c->n->im->length;
    if (end > length) {
        size_t pad = (size_t)(end - (off > length ? off : length));
        memset(out + len - pad, 0, pad);
        end -= pad;
    }
    struct store_read r = {off / CS_CHUNK_SIZE, 0, false, false};
    if (off < end) r.count = (size_t)((end + CS_CHUNK_SIZE - 1) / CS_CHUNK_SIZE - r.first);
    while (rc == 0 && off < end) {
        uint64_t pos = off / CS_CHUNK_SIZE;
        size_t in = (size_t)(off % CS_CHUNK_SIZE);
        if (in == 0 && end - off >= CS_CHUNK_SIZE) {
            size_t k = (size_t)((end - off) / CS_CHUNK_SIZE);
            rc = get_chunks(c, &r, pos, k, out);
            off += (uint64_t)k * CS_CHUNK_SIZE, out += (size_t)k * CS_CHUNK_SIZE;
        } else {
            size_t m = CS_CHUNK_SIZE - in;
            if (m > end - off) m = (size_t)(end - off);
            if ((rc = get_chunks(c, &r, pos, 1, c->bounce)) == 0) memcpy(out, c->bounce + in, m);
            off += m, out += m;
        }
    }
    if (r.waited) count(&c->n->stats.waits, 1);
    return rc;
}

static bool chunk_is_hole(const cs_image *im, uint64_t pos)
{
    return pos >= im->nchunks || cs_id_is_zero(&im->chunks[pos]);
}

/* The image's holes are its zero chunks, whole chunks at a time: the export ends within the
 * last chunk (its length is rounded up to 512 bytes, not to a chunk), so the few bytes past
 * the image's end take that chunk's state and every extent but the export's last is a whole
 * number of chunks. Positions past the last chunk, had the export any, would be holes. */
static uint64_t store_extent(void *arg, uint64_t off, uint64_t len, bool *hole)
{
    struct conn *c = arg;
    const cs_image *im = c->n->im;
    uint64_t end = off + len, pos = off / CS_CHUNK_SIZE;
    *hole = chunk_is_hole(im, pos);
    uint64_t at = (pos + 1) * CS_CHUNK_SIZE;
    while (at < end && chunk_is_hole(im, at / CS_CHUNK_SIZE) == *hole) at += CS_CHUNK_SIZE;
    return (at < end ? at : end) - off;
}

/* The image's length rounded up to whole 512-byte sectors. QEMU's NBD client (7.2, simple
 * replies) rounds the size up itself and then waits for the bytes of the last sector that the
 * server never sends; a raw file of that length looks the same to QEMU (zeros to the end of
 * its last sector), so the overlay sees the disk it would see on a file. */
static uint64_t export_size(const cs_image *im)
{
    return (im->length + 511) / 512 * 512;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    node_nbd *n = c->n;
    node__nbd_io io = {sock_recv, sock_send, store_read_at, c, export_size(n->im)};
    session_run(&io, store_extent, &n->stats);
    pthread_mutex_lock(&n->mu);
    close(c->fd);
    c->fd = -1;
    c->done = true;
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

/* Joins and frees the connections whose threads have ended; with all, every one (the caller
 * has cut them). Returns how many remain. Called with n->mu held when !all. */
static unsigned reap(node_nbd *n, bool all)
{
    unsigned live = 0;
    for (struct conn **pp = &n->conns; *pp;) {
        struct conn *c = *pp;
        if (!all && !c->done) {
            live++;
            pp = &c->next;
            continue;
        }
        pthread_join(c->thread, NULL); /* done: it has left its critical section or will */
        *pp = c->next;
        free(c);
    }
    return live;
}

static void accept_one(node_nbd *n)
{
    int fd = accept4(n->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
            /* Out of descriptors or memory: wait a little rather than spin. */
            struct pollfd w = {n->wake[0], POLLIN, 0};
            poll(&w, 1, 100);
        }
        return;
    }
    pthread_mutex_lock(&n->mu);
    struct conn *c = NULL;
    if (reap(n, false) < NBD__CONNS && (c = calloc(1, sizeof *c))) {
        c->n = n;
        c->fd = fd;
        if (pthread_create(&c->thread, NULL, conn_main, c) == 0) {
            c->next = n->conns;
            n->conns = c;
            count(&n->stats.connections, 1);
        } else {
            free(c);
            c = NULL;
        }
    }
    pthread_mutex_unlock(&n->mu);
    if (!c) close(fd);
}

static void *accept_main(void *arg)
{
    node_nbd *n = arg;
    while (!stopping(n)) {
        struct pollfd p[2] = {{n->lfd, POLLIN, 0}, {n->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) break;
        if (p[0].revents) accept_one(n);
    }
    return NULL;
}

static void server_free(node_nbd *n)
{
    if (n->lfd >= 0) close(n->lfd);
    if (n->wake[0] >= 0) close(n->wake[0]), close(n->wake[1]);
    pthread_mutex_destroy(&n->mu);
    free(n->path);
    free(n);
}

int node_nbd_start(cs_store *st, const cs_image *im, const char *path, const node_nbd_opts *opts,
                   node_nbd **out, char err[NODE_ERRMSG])
{
    const node_nbd_owner *owner = opts ? opts->owner : NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        node__errf(err, "NBD socket path %s is longer than a Unix socket allows (%zu bytes)", path,
                   sizeof sa.sun_path - 1);
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    node_nbd *n = calloc(1, sizeof *n);
    if (!n || !(n->path = strdup(path))) {
        free(n);
        return -ENOMEM;
    }
    n->st = st;
    n->im = im;
    if (opts) n->want = opts->want, n->want_arg = opts->arg;
    n->lfd = n->wake[0] = n->wake[1] = -1;
    pthread_mutex_init(&n->mu, NULL);

    int rc = 0;
    const char *what = "creating the NBD socket";
    struct stat sb;
    bool exists = lstat(path, &sb) == 0;
    if (exists && !S_ISSOCK(sb.st_mode)) {
        node__errf(err, "%s exists and is not a socket: not replacing it with the NBD socket",
                   path);
        server_free(n);
        return -EEXIST;
    }
    if (exists && unlink(path) != 0 && errno != ENOENT) { /* a stale socket of an earlier run */
        rc = -errno, what = "removing the stale NBD socket";
    } else if (pipe2(n->wake, O_CLOEXEC) != 0) {
        rc = -errno;
    } else if ((n->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
        rc = -errno;
    } else if (owner && fchmod(n->lfd, 0600) != 0) { /* Linux creates the file with this mode */
        rc = -errno;
    } else if (bind(n->lfd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        rc = -errno, what = "binding the NBD socket";
    } else if ((owner ? lchown(path, owner->uid, owner->gid) : chmod(path, 0666)) != 0 ||
               listen(n->lfd, NBD__CONNS) != 0) {
        rc = -errno, what = "setting up the NBD socket";
        unlink(path);
    } else if ((rc = -pthread_create(&n->acceptor, NULL, accept_main, n))) {
        what = "starting the NBD server's thread";
        unlink(path);
    }
    if (rc) {
        node__errf(err, "%s %s: %s", what, path, node_strerror(rc));
        server_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

void node_nbd_stats_get(node_nbd *n, node_nbd_stats *out)
{
    out->connections = __atomic_load_n(&n->stats.connections, __ATOMIC_RELAXED);
    out->requests = __atomic_load_n(&n->stats.requests, __ATOMIC_RELAXED);
    out->read_bytes = __atomic_load_n(&n->stats.read_bytes, __ATOMIC_RELAXED);
    out->waits = __atomic_load_n(&n->stats.waits, __ATOMIC_RELAXED);
}

void node_nbd_stop(node_nbd *n)
{
    if (!n) return;
    __atomic_store_n(&n->stopping, true, __ATOMIC_RELEASE);
    ssize_t w;
    do w = write(n->wake[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(n->acceptor, NULL);
    close(n->lfd);
    n->lfd = -1;
    pthread_mutex_lock(&n->mu);
    for (struct conn *c = n->conns; c; c = c->next)
        if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&n->mu);
    reap(n, true); /* no new connection can come: the acceptor has ended */
    unlink(n->path);
    server_free(n);
}
