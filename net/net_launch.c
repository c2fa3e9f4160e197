/*
 * net_launch.c — the messages of a launch asked by an app (docs/protocol.md §10): LAUNCH,
 * LAUNCH_PROGRESS and LAUNCH_DONE. Pure encoders and decoders, no sockets.
 *
 * Design notes:
 * - One encoding per message: every count, length and flag has exactly one valid value for a
 *   given struct, strings carry their length (no NUL on the wire) and their bytes come from a
 *   fixed alphabet, so whatever decodes re-encodes to the same bytes.
 * - Every bound the decoder checks is the size of a struct field minus its NUL, so a decoded
 *   message always fits its struct; the encoder refuses exactly what the decoder would.
 * - The decoder reads through a cursor that fails once and stays failed, so a truncated message
 *   is malformed whichever field it was cut in.
 */
#include "net.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define UUID_MAX  36u
#define ACCEL_MAX 7u

_Static_assert(sizeof(((net_launch_done *)0)->uuid) == UUID_MAX + 1, "uuid field");
_Static_assert(sizeof(((net_launch_done *)0)->accel) == ACCEL_MAX + 1, "accel field");

/* ---- alphabets ------------------------------------------------------------------------------ */

static bool name_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static bool printable(uint8_t c)
{
    return c >= 0x20 && c <= 0x7e;
}

static bool all_of(const uint8_t *s, size_t n, bool (*ok)(uint8_t))
{
    for (size_t i = 0; i < n; i++)
        if (!ok(s[i])) return false;
    return true;
}

/* The length of a field's string if it is NUL-terminated within max + 1 bytes and every byte
 * is of the alphabet; -1 otherwise. */
static long str_check(const char *s, size_t max, bool (*ok)(uint8_t))
{
    size_t n = strnlen(s, max + 1);
    if (n > max || !all_of((const uint8_t *)s, n, ok)) return -1;
    return (long)n;
}

/* ---- writing -------------------------------------------------------------------------------- */

/* Encoders size the buffer exactly first, then write without checks. */
typedef struct wbuf {
    uint8_t *p;
    size_t len;
} wbuf;

static void w8(wbuf *w, uint8_t v)
{
    w->p[w->len++] = v;
}

static void w32(wbuf *w, uint32_t v)
{
    for (int s = 24; s >= 0; s -= 8) w8(w, (uint8_t)(v >> s));
}

static void w64(wbuf *w, uint64_t v)
{
    w32(w, (uint32_t)(v >> 32));
    w32(w, (uint32_t)v);
}

static void wbytes(wbuf *w, const void *b, size_t n)
{
    if (n) memcpy(w->p + w->len, b, n);
    w->len += n;
}

static void wstr16(wbuf *w, const char *s)
{
    size_t n = strlen(s);
    w8(w, (uint8_t)(n >> 8));
    w8(w, (uint8_t)n);
    wbytes(w, s, n);
}

static int walloc(wbuf *w, size_t size)
{
    w->p = malloc(size);
    w->len = 0;
    return w->p ? 0 : -ENOMEM;
}

static int wdone(const wbuf *w, uint8_t **out, size_t *len)
{
    *out = w->p;
    *len = w->len;
    return 0;
}

/* ---- reading -------------------------------------------------------------------------------- */

typedef struct rbuf {
    const uint8_t *p;
    size_t len, at;
    bool bad;
} rbuf;

static const uint8_t *take(rbuf *r, size_t n)
{
    if (r->bad || r->len - r->at < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->at;
    r->at += n;
    return p;
}

static uint8_t r8(rbuf *r)
{
    const uint8_t *p = take(r, 1);
    return p ? p[0] : 0;
}

static uint32_t r32(rbuf *r)
{
    const uint8_t *p = take(r, 4);
    return p ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
}

static uint64_t r64(rbuf *r)
{
    uint64_t hi = r32(r);
    return hi << 32 | r32(r);
}

/* A string of n bytes of the alphabet into out (which holds n + 1). */
static void rstr(rbuf *r, size_t n, char *out, bool (*ok)(uint8_t))
{
    const uint8_t *p = take(r, n);
    if (!p) return;
    if (!all_of(p, n, ok)) {
        r->bad = true;
        return;
    }
    memcpy(out, p, n);
    out[n] = '\0';
}

static void rstr16(rbuf *r, size_t max, char *out, bool (*ok)(uint8_t))
{
    size_t n = (size_t)r8(r) << 8;
    n |= r8(r);
    if (n > max) {
        r->bad = true;
        return;
    }
    rstr(r, n, out, ok);
}

/* ---- sources -------------------------------------------------------------------------------- */

/* source = kind u8 (0..2) || bytes u64 || llen u8 (<= 64) || label[llen] (printable) */
static long sources_size(const net_launch_source *src, uint32_t n)
{
    if (n > NET_LAUNCH_SOURCES_MAX) return -1;
    long total = 1;
    for (uint32_t i = 0; i < n; i++) {
        long l = str_check(src[i].label, NET_LAUNCH_LABEL_MAX, printable);
        if (src[i].kind > NET_SOURCE_ORIGIN || l < 0) return -1;
        total += 10 + l;
    }
    return total;
}

static void sources_write(wbuf *w, const net_launch_source *src, uint32_t n)
{
    w8(w, (uint8_t)n);
    for (uint32_t i = 0; i < n; i++) {
        size_t l = strlen(src[i].label);
        w8(w, src[i].kind);
        w64(w, src[i].bytes);
        w8(w, (uint8_t)l);
        wbytes(w, src[i].label, l);
    }
}

static void sources_read(rbuf *r, net_launch_source *src, uint32_t *n)
{
    *n = r8(r);
    if (*n > NET_LAUNCH_SOURCES_MAX) {
        r->bad = true;
        return;
    }
    for (uint32_t i = 0; i < *n && !r->bad; i++) {
        src[i].kind = r8(r);
        src[i].bytes = r64(r);
        uint8_t l = r8(r);
        if (src[i].kind > NET_SOURCE_ORIGIN || l > NET_LAUNCH_LABEL_MAX) {
            r->bad = true;
            return;
        }
        rstr(r, l, src[i].label, printable);
    }
}

static int finish(rbuf *r, void *out, size_t size)
{
    if (!r->bad && r->at == r->len) return 0;
    memset(out, 0, size);
    return NET_EFORMAT;
}

/* ---- LAUNCH: req u32 || id[32] || nlen u8 || name[nlen] ------------------------------------ */

int net_launch_encode_req(const net_launch_req *q, uint8_t **out, size_t *len)
{
    long n = str_check(q->name, NET_LAUNCH_NAME_MAX, name_char);
    if (n < 0) return -EINVAL;
    wbuf w;
    if (walloc(&w, 4 + NET_ID_BYTES + 1 + (size_t)n + 1)) return -ENOMEM;
    w32(&w, q->req);
    wbytes(&w, q->id, NET_ID_BYTES);
    w8(&w, (uint8_t)n);
    wbytes(&w, q->name, (size_t)n);
    w8(&w, q->flags);
    return wdone(&w, out, len);
}

int net_launch_decode_req(const uint8_t *p, size_t len, net_launch_req *out)
{
    memset(out, 0, sizeof *out);
    rbuf r = {p, len, 0, false};
    out->req = r32(&r);
    const uint8_t *id = take(&r, NET_ID_BYTES);
    if (id) memcpy(out->id, id, NET_ID_BYTES);
    uint8_t n = r8(&r);
    if (n > NET_LAUNCH_NAME_MAX) r.bad = true;
    rstr(&r, n, out->name, name_char);
    /* flags came later: a LAUNCH without them is an older app's. Bits this node does not know
     * are a newer app's, and ignored. */
    if (!r.bad && r.at < r.len) out->flags = r8(&r);
    return finish(&r, out, sizeof *out);
}

/* ---- LAUNCH_PROGRESS ------------------------------------------------------------------------- */

#define PROGRESS_FIXED (4u + 1u + 4u + 4u * 8u)

static bool progress_ok(const net_launch_progress *q)
{
    return q->stage >= NET_LAUNCH_RESOLVE && q->stage <= NET_LAUNCH_RUNNING &&
           q->fetch_done <= q->fetch_total && q->vm_done <= q->vm_total;
}

int net_launch_encode_progress(const net_launch_progress *q, uint8_t **out, size_t *len)
{
    long s = sources_size(q->src, q->nsources);
    if (s < 0 || !progress_ok(q)) return -EINVAL;
    wbuf w;
    if (walloc(&w, PROGRESS_FIXED + (size_t)s)) return -ENOMEM;
    w32(&w, q->req);
    w8(&w, q->stage);
    w32(&w, q->elapsed_ms);
    w64(&w, q->fetch_total);
    w64(&w, q->fetch_done);
    w64(&w, q->vm_total);
    w64(&w, q->vm_done);
    sources_write(&w, q->src, q->nsources);
    return wdone(&w, out, len);
}

int net_launch_decode_progress(const uint8_t *p, size_t len, net_launch_progress *out)
{
    memset(out, 0, sizeof *out);
    rbuf r = {p, len, 0, false};
    out->req = r32(&r);
    out->stage = r8(&r);
    out->elapsed_ms = r32(&r);
    out->fetch_total = r64(&r);
    out->fetch_done = r64(&r);
    out->vm_total = r64(&r);
    out->vm_done = r64(&r);
    if (!progress_ok(out)) r.bad = true;
    sources_read(&r, out->src, &out->nsources);
    return finish(&r, out, sizeof *out);
}

/* ---- LAUNCH_DONE ----------------------------------------------------------------------------- */

#define DONE_FIXED (4u + 1u + 5u * 4u)

/* The six strings' bounds and alphabets, in wire order. */
typedef struct str_field {
    size_t off, max;
    bool (*ok)(uint8_t);
} str_field;

static const str_field done_strs[] = {
    {offsetof(net_launch_done, domain), NET_LAUNCH_NAME_MAX, name_char},
    {offsetof(net_launch_done, uuid), UUID_MAX, printable},
    {offsetof(net_launch_done, accel), ACCEL_MAX, printable},
    {offsetof(net_launch_done, console), NET_LAUNCH_TEXT_MAX, printable},
    {offsetof(net_launch_done, address), NET_LAUNCH_TEXT_MAX, printable},
    {offsetof(net_launch_done, error), NET_LAUNCH_TEXT_MAX, printable},
};
#define NSTRS (sizeof done_strs / sizeof done_strs[0])

/* ok: a domain and no error; not ok: an error. */
static bool done_ok(const net_launch_done *q)
{
    return q->ok ? q->error[0] == '\0' && q->domain[0] != '\0' : q->error[0] != '\0';
}

int net_launch_encode_done(const net_launch_done *q, uint8_t **out, size_t *len)
{
    long s = sources_size(q->src, q->nsources);
    if (s < 0) return -EINVAL;
    size_t total = DONE_FIXED + (size_t)s;
    for (size_t i = 0; i < NSTRS; i++) {
        long l = str_check((const char *)q + done_strs[i].off, done_strs[i].max, done_strs[i].ok);
        if (l < 0) return -EINVAL;
        total += 2 + (size_t)l;
    }
    if (!done_ok(q)) return -EINVAL;
    wbuf w;
    if (walloc(&w, total)) return -ENOMEM;
    w32(&w, q->req);
    w8(&w, q->ok ? 1 : 0);
    w32(&w, q->resolve_ms);
    w32(&w, q->transfer_ms);
    w32(&w, q->apply_ms);
    w32(&w, q->restore_ms);
    w32(&w, q->total_ms);
    sources_write(&w, q->src, q->nsources);
    for (size_t i = 0; i < NSTRS; i++) wstr16(&w, (const char *)q + done_strs[i].off);
    return wdone(&w, out, len);
}

int net_launch_decode_done(const uint8_t *p, size_t len, net_launch_done *out)
{
    memset(out, 0, sizeof *out);
    rbuf r = {p, len, 0, false};
    out->req = r32(&r);
    uint8_t ok = r8(&r);
    if (ok > 1) r.bad = true;
    out->ok = ok == 1;
    out->resolve_ms = r32(&r);
    out->transfer_ms = r32(&r);
    out->apply_ms = r32(&r);
    out->restore_ms = r32(&r);
    out->total_ms = r32(&r);
    sources_read(&r, out->src, &out->nsources);
    for (size_t i = 0; i < NSTRS; i++)
        rstr16(&r, done_strs[i].max, (char *)out + done_strs[i].off, done_strs[i].ok);
    if (!r.bad && !done_ok(out)) r.bad = true;
    return finish(&r, out, sizeof *out);
}

const char *net_launch_stage_name(uint8_t stage)
{
    switch (stage) {
    case NET_LAUNCH_RESOLVE: return "resolve";
    case NET_LAUNCH_TRANSFER: return "transfer";
    case NET_LAUNCH_APPLY: return "apply";
    case NET_LAUNCH_RESTORE: return "restore";
    case NET_LAUNCH_RUNNING: return "running";
    default: return "?";
    }
}
