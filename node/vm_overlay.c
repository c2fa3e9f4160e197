/*
 * vm_overlay.c — overlay packages: a derived VM's manifest plus the chunks its parent lacks,
 * in one self-contained file (docs/overlay.md, version 2).
 *
 * Design notes:
 * - Export names each chunk once (dedup against the whole parent VM and within the child) and
 *   writes the chunks, in image order, into one zstd stream with a window as large as the
 *   package needs (at most 2^27 bytes) and long-distance matching: VM data resembles itself at
 *   distances far beyond the few MiB independent blocks would see. A chunk whose parent had a
 *   non-zero chunk at the same place goes into the same stream as a zstd delta against that
 *   chunk (ZSTD_CCtx_refPrefix) when that is clearly smaller than the chunk on its own.
 * - No id the importer can find itself travels: ids are random bytes that do not compress. The
 *   manifest travels in a "carried" form: a tag in place of each carried chunk's id (the
 *   importer hashes every chunk it decodes anyway), a place in the parent for a chunk the
 *   parent holds, the number of an earlier carried chunk for a repeat. The importer rebuilds
 *   the canonical manifest, and the manifest id the header names then verifies it all at once.
 * - Import never stores anything from a package it has not checked whole: the trailing hash
 *   first (truncation, damage), then the carried manifest and the parent, then a decode that
 *   hashes every chunk and checks the rebuilt manifest's id and that the package and the store
 *   together hold every chunk it names, and only then a second decode that stores. The chunk
 *   store takes no ids on trust (cs_put hashes what it stores), so checking before storing costs
 *   one more decode and hash; in both passes the stream decodes on a thread of its own while
 *   the caller's thread (and, storing, one more) hashes or stores.
 * - Memory is bounded whatever the bytes say: the stream's window by the header's window log
 *   (at most 2^27, enforced with ZSTD_d_windowLogMax), everything else by the package's length.
 * - The parser and the stream reader are pure functions of the bytes: the fuzz target drives
 *   them.
 */
#define _GNU_SOURCE
#include "node.h"
#include "node_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#define OV_MAGIC "CLOV"
#define OV_VERSION 2u
#define OV_HDR 40u         /* magic, version, flags, window log, reserved, manifest id */
#define OV_TRAILER (4u + 32u) /* carried manifest length, hash */
#define OV_WLOG_MIN 10u
#define OV_WLOG_MAX NODE__OVERLAY_WLOG_MAX
#define OV_FLAG_ZMANIFEST 1u     /* the carried manifest is one zstd frame */
#define OV_ZMANIFEST_MAX (64u << 20) /* what such a frame may decompress to */
#define DELTA_MAX NODE__DELTA_MAX
#define MAX_POSITIONS (1u << 25) /* what cs_manifest_decode accepts */
#define MF_XML_MAX (16u << 20)
#define MF_IMAGES_MAX 4096u
enum { TAG_REF = 0, TAG_CHUNK = 1, TAG_DELTA = 2, TAG_PARENT = 3, TAG_SAME = 4 };
enum { RUN_ZERO = 0, RUN_DATA = 1 };

/* ---- the manifest's two forms ----------------------------------------------------------------- */

/* Walks a manifest encoding (docs/manifest.md) in its canonical form (32-byte ids in DATA runs)
 * or its carried form (per DATA position a tag, then the id for TAG_REF, a place in the parent
 * for TAG_PARENT, a carried chunk's index for TAG_SAME). Only the structure is walked:
 * cs_manifest_decode checks the canonical rules on the result. Every byte but the DATA
 * positions' fields goes to copy, in order; each DATA position to pos. */
struct mw_ref {
    uint64_t a, b; /* TAG_PARENT: the parent's image and position; TAG_SAME: a carried chunk */
};

struct mwalk {
    const uint8_t *p;
    size_t len, off, mark;
    bool carried;
    uint64_t positions;
    struct mw_ref ref; /* of the position being given to pos */
    int (*copy)(void *arg, const uint8_t *p, size_t n);
    int (*pos)(void *arg, uint32_t image, uint64_t pos, unsigned tag, const uint8_t *id);
    void *arg;
};

static const uint8_t *mw_take(struct mwalk *w, uint64_t n)
{
    if (w->len - w->off < n) return NULL;
    const uint8_t *p = w->p + w->off;
    w->off += (size_t)n;
    return p;
}

/* An unsigned LEB128 number of at most 64 bits. */
static int mw_varint(struct mwalk *w, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        const uint8_t *b = mw_take(w, 1);
        if (!b) return CS_EFORMAT;
        *v |= (uint64_t)(*b & 0x7f) << shift;
        if (!(*b & 0x80)) return 0;
    }
    return CS_EFORMAT;
}

static int mw_position(struct mwalk *w, uint32_t image, uint64_t pos)
{
    int rc = w->copy(w->arg, w->p + w->mark, w->off - w->mark);
    const uint8_t *t, *id = NULL;
    struct mw_ref ref = {0, 0};
    unsigned tag = TAG_REF;
    if (rc) return rc;
    if (w->carried) {
        if (!(t = mw_take(w, 1)) || *t > TAG_SAME) return CS_EFORMAT;
        tag = *t;
    }
    if (tag == TAG_REF && !(id = mw_take(w, CS_ID_BYTES))) return CS_EFORMAT;
    if (tag == TAG_PARENT && ((rc = mw_varint(w, &ref.a)) || (rc = mw_varint(w, &ref.b)))) return rc;
    if (tag == TAG_SAME && (rc = mw_varint(w, &ref.a))) return rc;
    w->mark = w->off;
    w->ref = ref;
    return w->pos(w->arg, image, pos, tag, id);
}

static int manifest_walk(struct mwalk *w)
{
    const uint8_t *p;
    int rc;
    w->off = w->mark = 0;
    if (!(p = mw_take(w, 6)) || memcmp(p, "CLMF", 4) != 0) return CS_EFORMAT;
    if (p[4] != 1) return CS_EVERSION;
    if ((p[5] & 1) && !mw_take(w, CS_ID_BYTES)) return CS_EFORMAT;
    if (!(p = mw_take(w, 4)) || node__get_le(p, 4) > MF_XML_MAX || !mw_take(w, node__get_le(p, 4)))
        return CS_EFORMAT;
    if (!(p = mw_take(w, 4)) || node__get_le(p, 4) > MF_IMAGES_MAX) return CS_EFORMAT;
    uint32_t nimages = (uint32_t)node__get_le(p, 4);
    for (uint32_t i = 0; i < nimages; i++) {
        if (!(p = mw_take(w, 2)) || !mw_take(w, p[1]) || !mw_take(w, 8) || !(p = mw_take(w, 4)))
            return CS_EFORMAT;
        uint64_t nruns = node__get_le(p, 4);
        for (uint64_t r = 0; r < nruns; r++) {
            if (!(p = mw_take(w, 13)) || p[12] > RUN_DATA) return CS_EFORMAT;
            if (p[12] == RUN_ZERO) continue;
            uint64_t start = node__get_le(p, 8), count = node__get_le(p + 8, 4);
            if ((w->positions += count) > MAX_POSITIONS) return CS_EFORMAT;
            for (uint64_t c = 0; c < count; c++)
                if ((rc = mw_position(w, i, start + c))) return rc;
        }
    }
    if (w->off != w->len) return CS_EFORMAT;
    return w->copy(w->arg, w->p + w->mark, w->off - w->mark);
}

/* The carried form to the canonical one, carried ids left as placeholders. */
struct canon {
    node__overlay_pkg *p;
    const struct mwalk *w;
    size_t cap, capc, capd, capr;
};

static int canon_copy(void *arg, const uint8_t *b, size_t n)
{
    struct canon *c = arg;
    node__overlay_pkg *p = c->p;
    if (p->mlen + n > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < p->mlen + n) cap *= 2;
        uint8_t *m = realloc(p->manifest, cap);
        if (!m) return -ENOMEM;
        p->manifest = m, c->cap = cap;
    }
    memcpy(p->manifest + p->mlen, b, n);
    p->mlen += n;
    return 0;
}

static int grow(void **v, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap * 2 : 1024;
    void *n = realloc(*v, c * size);
    if (!n) return -ENOMEM;
    *v = n, *cap = c;
    return 0;
}

static int canon_pos(void *arg, uint32_t image, uint64_t pos, unsigned tag, const uint8_t *id)
{
    static const uint8_t placeholder[CS_ID_BYTES] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    struct canon *c = arg;
    node__overlay_pkg *p = c->p;
    if (tag == TAG_REF) return canon_copy(c, id, CS_ID_BYTES);
    int rc;
    if (tag == TAG_PARENT || tag == TAG_SAME) {
        if (tag == TAG_PARENT && c->w->ref.a >= MF_IMAGES_MAX) return CS_EFORMAT;
        if ((rc = grow((void **)&p->refs, &c->capr, p->nrefs + 1, sizeof *p->refs))) return rc;
        p->refs[p->nrefs++] = (struct node__overlay_ref){
            p->mlen, tag == TAG_PARENT ? (uint32_t)c->w->ref.a : NODE__OVERLAY_CARRIED,
            tag == TAG_PARENT ? c->w->ref.b : c->w->ref.a};
        return canon_copy(c, placeholder, CS_ID_BYTES);
    }
    rc = grow((void **)&p->carried, &c->capc, p->ncarried + 1, sizeof *p->carried);
    if (rc) return rc;
    p->carried[p->ncarried++] = (uint64_t)p->mlen << 1 | (tag == TAG_DELTA);
    if (tag == TAG_DELTA) {
        if ((rc = grow((void **)&p->delta_at, &c->capd, p->ndelta + 1, sizeof *p->delta_at))) return rc;
        p->delta_at[p->ndelta++] = (struct node__overlay_place){image, pos};
    }
    return canon_copy(c, placeholder, CS_ID_BYTES);
}

/* ---- parsing and the stream (shared by import and the fuzz target) ---------------------------- */

void node__overlay_pkg_free(node__overlay_pkg *p)
{
    if (!p) return;
    free(p->manifest), free(p->carried), free(p->delta_at), free(p->refs);
    memset(p, 0, sizeof *p);
}

int node__overlay_parse(const uint8_t *buf, size_t len, node__overlay_pkg *out, char err[NODE_ERRMSG])
{
    memset(out, 0, sizeof *out);
    if (len < 5 || memcmp(buf, OV_MAGIC, 4) != 0) {
        node__errf(err, "not an overlay package (bad magic or too short: %zu bytes)", len);
        return CS_EFORMAT;
    }
    if (buf[4] != OV_VERSION) {
        node__errf(err, "overlay package version %u is not supported (this is version %u): "
                        "export it again with this cloudlet", buf[4], OV_VERSION);
        return CS_EVERSION;
    }
    if (len < OV_HDR + OV_TRAILER) {
        node__errf(err, "overlay package is truncated (%zu bytes)", len);
        return CS_EFORMAT;
    }
    if ((buf[5] & ~OV_FLAG_ZMANIFEST) != 0 || buf[7] != 0) {
        node__errf(err, "unknown flags in the overlay header");
        return CS_EFORMAT;
    }
    uint8_t h[32];
    crypto_generichash(h, sizeof h, buf, len - 32, NULL, 0);
    if (sodium_memcmp(h, buf + len - 32, 32) != 0) {
        node__errf(err, "overlay package is truncated or damaged (its trailing hash does not match)");
        return CS_ECORRUPT;
    }
    /* After the hash: a window log out of range is a package made to be refused, not damage. */
    if (buf[6] < OV_WLOG_MIN || buf[6] > OV_WLOG_MAX) {
        node__errf(err, "the package declares a window of 2^%u bytes (%u..%u allowed)", buf[6],
                   OV_WLOG_MIN, OV_WLOG_MAX);
        return CS_EFORMAT;
    }
    out->wlog = buf[6];
    memcpy(out->id.b, buf + 8, CS_ID_BYTES);
    uint64_t mlen = node__get_le(buf + len - OV_TRAILER, 4);
    if (mlen > len - OV_HDR - OV_TRAILER) {
        node__errf(err, "manifest length %llu runs past the start of the package",
                   (unsigned long long)mlen);
        return CS_EFORMAT;
    }
    out->stream = buf + OV_HDR;
    out->slen = len - OV_HDR - OV_TRAILER - (size_t)mlen;
    const uint8_t *carried = buf + OV_HDR + out->slen;
    uint8_t *plain = NULL;
    if (buf[5] & OV_FLAG_ZMANIFEST) {
        /* One frame that says how large it is, within bounds: the importer's memory does not
         * follow what a small hostile frame claims. */
        unsigned long long size = ZSTD_getFrameContentSize(carried, (size_t)mlen);
        size_t zl = ZSTD_findFrameCompressedSize(carried, (size_t)mlen);
        if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR ||
            size > OV_ZMANIFEST_MAX || ZSTD_isError(zl) || zl != mlen) {
            node__errf(err, "the package's compressed manifest is malformed");
            return CS_EFORMAT;
        }
        if (!(plain = malloc(size ? (size_t)size : 1))) {
            node__errf(err, "out of memory reading the package's manifest");
            return -ENOMEM;
        }
        size_t got = ZSTD_decompress(plain, (size_t)size, carried, (size_t)mlen);
        if (ZSTD_isError(got) || got != size) {
            free(plain);
            node__errf(err, "the package's compressed manifest does not decompress");
            return CS_ECORRUPT;
        }
        carried = plain, mlen = size;
    }
    struct canon c = {.p = out};
    struct mwalk w = {.p = carried, .len = (size_t)mlen, .carried = true,
                      .copy = canon_copy, .pos = canon_pos, .arg = &c};
    c.w = &w;
    int rc = manifest_walk(&w);
    free(plain);
    for (size_t i = 0; rc == 0 && i < out->nrefs; i++)
        if (out->refs[i].image == NODE__OVERLAY_CARRIED && out->refs[i].pos >= out->ncarried)
            rc = CS_EFORMAT; /* names a carried chunk the package does not carry */
    if (rc == -ENOMEM) node__errf(err, "out of memory reading the package's manifest");
    else if (rc) node__errf(err, "the package's manifest is malformed");
    return rc;
}

int node__overlay_stream_open(node__overlay_stream *s, const node__overlay_pkg *p, unsigned wlog_max)
{
    memset(s, 0, sizeof *s);
    if (!(s->d = ZSTD_createDCtx())) return -ENOMEM;
    ZSTD_DCtx_setParameter(s->d, ZSTD_d_windowLogMax, (int)(p->wlog < wlog_max ? p->wlog : wlog_max));
    s->in = (ZSTD_inBuffer){p->stream, p->slen, 0};
    s->hint = 1; /* no frame has ended yet */
    return 0;
}

void node__overlay_stream_close(node__overlay_stream *s)
{
    ZSTD_freeDCtx(s->d);
    s->d = NULL;
}

static int stream_error(size_t r, char err[NODE_ERRMSG])
{
    if (ZSTD_getErrorCode(r) == ZSTD_error_frameParameter_windowTooLarge)
        node__errf(err, "the package's stream needs a larger window than its header declares");
    else
        node__errf(err, "the package's stream does not decompress (%s)", ZSTD_getErrorName(r));
    return CS_ECORRUPT;
}

/* Exactly n bytes of the stream into out. */
static int stream_read(node__overlay_stream *s, uint8_t *out, size_t n, char err[NODE_ERRMSG])
{
    ZSTD_outBuffer o = {out, n, 0};
    while (o.pos < n) {
        size_t in0 = s->in.pos, out0 = o.pos;
        size_t r = ZSTD_decompressStream(s->d, &o, &s->in);
        if (ZSTD_isError(r)) return stream_error(r, err);
        s->hint = r;
        if (s->in.pos == in0 && o.pos == out0) {
            node__errf(err, "the package's stream ends before the last chunk its manifest names");
            return CS_EFORMAT;
        }
    }
    return 0;
}

int node__overlay_stream_item(node__overlay_stream *s, bool delta, uint8_t chunk[CS_CHUNK_SIZE],
                              uint8_t z[NODE__DELTA_MAX], size_t *zlen, char err[NODE_ERRMSG])
{
    if (!delta) return stream_read(s, chunk, CS_CHUNK_SIZE, err);
    uint8_t l[2];
    int rc = stream_read(s, l, sizeof l, err);
    if (rc) return rc;
    *zlen = (size_t)node__get_le(l, 2);
    if (*zlen == 0 || *zlen > DELTA_MAX) {
        node__errf(err, "a delta in the package's stream has a bad length %zu", *zlen);
        return CS_EFORMAT;
    }
    return stream_read(s, z, *zlen, err);
}

int node__overlay_stream_end(node__overlay_stream *s, char err[NODE_ERRMSG])
{
    uint8_t extra;
    for (;;) {
        ZSTD_outBuffer o = {&extra, 1, 0};
        size_t in0 = s->in.pos;
        size_t r = ZSTD_decompressStream(s->d, &o, &s->in);
        if (ZSTD_isError(r)) return stream_error(r, err);
        if (o.pos) {
            node__errf(err, "the package's stream carries more than its manifest names");
            return CS_EFORMAT;
        }
        if (s->in.pos == in0) break; /* r is then the start of a next frame's hint */
        s->hint = r;
    }
    if (s->hint != 0 || s->in.pos != s->in.size) {
        node__errf(err, "the package's stream ends inside a zstd frame");
        return CS_EFORMAT;
    }
    return 0;
}

int node__overlay_delta_decode(ZSTD_DCtx *d, const uint8_t *base, const uint8_t *z, size_t zlen,
                               uint8_t out[CS_CHUNK_SIZE])
{
    if (ZSTD_isError(ZSTD_DCtx_refPrefix(d, base, CS_CHUNK_SIZE))) return CS_ECORRUPT;
    size_t got = ZSTD_decompressDCtx(d, out, CS_CHUNK_SIZE, z, zlen);
    ZSTD_DCtx_reset(d, ZSTD_reset_session_and_parameters);
    return ZSTD_isError(got) || got != CS_CHUNK_SIZE ? CS_ECORRUPT : 0;
}

/* ---- export ---------------------------------------------------------------------------------- */

struct writer {
    int fd;          /* -1: into mem */
    uint8_t *mem;
    size_t mlen, mcap;
    crypto_generichash_state h;
    uint8_t buf[1 << 16];
    size_t n;
    uint64_t total;
    int err;
};

static void w_flush(struct writer *w)
{
    if (w->fd < 0 && w->n && !w->err) {
        if (w->mlen + w->n > w->mcap) {
            size_t cap = w->mcap ? w->mcap : 1 << 16;
            while (cap < w->mlen + w->n) cap *= 2;
            uint8_t *m = realloc(w->mem, cap);
            if (!m) {
                w->err = -ENOMEM;
                return;
            }
            w->mem = m, w->mcap = cap;
        }
        memcpy(w->mem + w->mlen, w->buf, w->n);
        w->mlen += w->n;
    }
    for (size_t off = 0; w->fd >= 0 && off < w->n && !w->err;) {
        ssize_t r = write(w->fd, w->buf + off, w->n - off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) w->err = errno == ENOSPC || errno == EFBIG ? CS_EFULL : -errno;
        else off += (size_t)r;
    }
    w->n = 0;
}

static void w_bytes(struct writer *w, const void *p, size_t len)
{
    crypto_generichash_update(&w->h, p, len);
    w->total += len;
    const uint8_t *s = p;
    while (len && !w->err) {
        size_t k = sizeof w->buf - w->n < len ? sizeof w->buf - w->n : len;
        memcpy(w->buf + w->n, s, k);
        w->n += k, s += k, len -= k;
        if (w->n == sizeof w->buf) w_flush(w);
    }
}

static void w_le(struct writer *w, uint64_t v, unsigned n)
{
    uint8_t b[8];
    node__put_le(b, v, n);
    w_bytes(w, b, n);
}

struct cand {
    cs_id id;
    uint32_t image;
    uint64_t pos;
};

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, CS_ID_BYTES);
}

static int cmp_cand_id(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    int c = memcmp(x->id.b, y->id.b, CS_ID_BYTES);
    if (c) return c;
    if (x->image != y->image) return x->image < y->image ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int cmp_cand_pos(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->image != y->image) return x->image < y->image ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Every non-zero id of a resolved manifest with its first place, sorted by id, unique. */
static int place_set(const cs_manifest *m, struct cand **out, size_t *n)
{
    size_t total = 0, k = 0;
    for (size_t i = 0; i < m->nimages; i++) total += m->images[i].nchunks;
    struct cand *v = malloc((total ? total : 1) * sizeof *v);
    if (!v) return -ENOMEM;
    for (size_t i = 0; i < m->nimages; i++)
        for (uint64_t c = 0; c < m->images[i].nchunks; c++)
            if (!cs_id_is_zero(&m->images[i].chunks[c]))
                v[k++] = (struct cand){m->images[i].chunks[c], (uint32_t)i, c};
    qsort(v, k, sizeof *v, cmp_cand_id);
    size_t u = 0;
    for (size_t j = 0; j < k; j++)
        if (u == 0 || !cs_id_equal(&v[u - 1].id, &v[j].id)) v[u++] = v[j];
    *out = v, *n = u;
    return 0;
}

/* The entry of a place_set (or of any id-sorted cand array) with id, or NULL. */
static const struct cand *place_of(const struct cand *set, size_t n, const cs_id *id)
{
    return n ? bsearch(id, set, n, sizeof *set, cmp_id) : NULL;
}

static bool in_set(const cs_id *set, size_t n, const cs_id *id)
{
    return n && bsearch(id, set, n, sizeof *set, cmp_id) != NULL;
}

static bool explicit_at(const cs_image *im, uint64_t c)
{
    return !im->explicit_mask || (im->explicit_mask[c / 8] & (1u << (c % 8)));
}

/* Delta against base when it beats 3/4 of the chunk compressed on its own: blocks compress
 * about 1.3x better than single chunks, so a smaller margin would often lose. dcctx carries
 * the delta's level and frame parameters; est compresses the estimate at level 3. */
size_t node__delta_if_smaller(ZSTD_CCtx *dcctx, ZSTD_CCtx *est, const uint8_t *base,
                              const uint8_t *chunk, uint8_t out[NODE__DELTA_MAX])
{
    uint8_t plain[NODE__DELTA_MAX];
    ZSTD_CCtx_reset(dcctx, ZSTD_reset_session_only);
    ZSTD_CCtx_refPrefix(dcctx, base, CS_CHUNK_SIZE);
    size_t dl = ZSTD_compress2(dcctx, out, NODE__DELTA_MAX, chunk, CS_CHUNK_SIZE);
    size_t pl = ZSTD_compressCCtx(est, plain, sizeof plain, chunk, CS_CHUNK_SIZE, 3);
    return !ZSTD_isError(dl) && !ZSTD_isError(pl) && dl * 4 < pl * 3 ? dl : 0;
}

ZSTD_CCtx *node__delta_cctx(int level)
{
    ZSTD_CCtx *c = ZSTD_createCCtx();
    if (!c) return NULL;
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
    ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0);
    return c;
}

struct export {
    cs_store *st;
    const cs_manifest *m, *parent;
    struct writer *w;
    ZSTD_CCtx *cctx, *dcctx, *est; /* the stream and deltas at `level`; estimates at level 3 */
    uint8_t *in;                   /* stream input gathered before each compression call */
    size_t nin;
    uint8_t *out;
    size_t outcap;
    uint8_t *isdelta;              /* per candidate */
    uint64_t stream_bytes;
    node_overlay_report *rep;
};

#define STREAM_IN (1u << 20)

/* Compresses what was gathered (everything, with end) into the stream. */
static int stream_flush(struct export *x, ZSTD_EndDirective end)
{
    ZSTD_inBuffer in = {x->in, x->nin, 0};
    size_t left;
    do {
        ZSTD_outBuffer o = {x->out, x->outcap, 0};
        left = ZSTD_compressStream2(x->cctx, &o, &in, end);
        if (ZSTD_isError(left)) return CS_EZSTD;
        w_bytes(x->w, x->out, o.pos);
        x->stream_bytes += o.pos;
    } while (in.pos < in.size || (end == ZSTD_e_end && left != 0));
    x->nin = 0;
    return x->w->err;
}

static int stream_push(struct export *x, const void *p, size_t n)
{
    if (x->nin + n > STREAM_IN) {
        int rc = stream_flush(x, ZSTD_e_continue);
        if (rc) return rc;
    }
    memcpy(x->in + x->nin, p, n);
    x->nin += n;
    return 0;
}

static int emit(struct export *x, size_t k, const uint8_t *chunk, const uint8_t *base)
{
    x->rep->chunks++;
    if (base) {
        uint8_t d[2 + NODE__DELTA_MAX];
        size_t dl = node__delta_if_smaller(x->dcctx, x->est, base, chunk, d + 2);
        if (dl) {
            node__put_le(d, dl, 2);
            x->isdelta[k] = 1;
            x->rep->delta_chunks++;
            x->rep->delta_bytes += dl;
            return stream_push(x, d, 2 + dl);
        }
    }
    return stream_push(x, chunk, CS_CHUNK_SIZE);
}

#define EXPORT_BATCH 256u

static int export_cands(struct export *x, const struct cand *cands, size_t n,
                        cs_progress_fn progress, void *arg)
{
    uint8_t *chunks = malloc((size_t)EXPORT_BATCH * CS_CHUNK_SIZE);
    uint8_t *bases = malloc((size_t)EXPORT_BATCH * CS_CHUNK_SIZE);
    cs_id ids[EXPORT_BATCH], bids[EXPORT_BATCH];
    int has_base[EXPORT_BATCH];
    int rc = chunks && bases ? 0 : -ENOMEM;
    for (size_t j = 0; j < n && rc == 0; j += EXPORT_BATCH) {
        size_t k = n - j < EXPORT_BATCH ? n - j : EXPORT_BATCH, nb = 0;
        for (size_t i = 0; i < k; i++) {
            ids[i] = cands[j + i].id;
            has_base[i] = -1;
            if (!x->parent) continue;
            const cs_image *pim = cs_manifest_find_image(x->parent, x->m->images[cands[j + i].image].name);
            if (pim && cands[j + i].pos < pim->nchunks && !cs_id_is_zero(&pim->chunks[cands[j + i].pos]))
                bids[nb] = pim->chunks[cands[j + i].pos], has_base[i] = (int)nb++;
        }
        if ((rc = cs_get(x->st, ids, k, chunks, NULL))) break;
        /* A parent chunk the store does not hold (a parent still being pulled) just means no
         * delta for that position. */
        uint8_t held[EXPORT_BATCH / 8];
        if (nb && cs_has(x->st, bids, nb, held) != (int64_t)nb) {
            for (size_t i = 0; i < k; i++)
                if (has_base[i] >= 0 && !(held[has_base[i] / 8] & (1u << (has_base[i] % 8))))
                    has_base[i] = -1;
            size_t m2 = 0;
            for (size_t i = 0; i < k; i++)
                if (has_base[i] >= 0) bids[m2] = bids[has_base[i]], has_base[i] = (int)m2++;
            nb = m2;
        }
        if (nb && (rc = cs_get(x->st, bids, nb, bases, NULL))) break;
        for (size_t i = 0; i < k && rc == 0; i++)
            rc = emit(x, j + i, chunks + i * CS_CHUNK_SIZE,
                      has_base[i] >= 0 ? bases + (size_t)has_base[i] * CS_CHUNK_SIZE : NULL);
        if (progress) progress(j + k, n, arg);
    }
    free(chunks), free(bases);
    return rc ? rc : stream_flush(x, ZSTD_e_end);
}

/* The canonical manifest to its carried form: the candidates (sorted by place, as the walk
 * meets them) become tags. */
struct carry {
    struct writer *w;
    const struct cand *cands;
    const uint8_t *isdelta;
    size_t n, next;
    const struct cand *parent, *byid; /* the parent's places and the carried chunks, by id */
    size_t nparent;
};

static void w_varint(struct writer *w, uint64_t v)
{
    uint8_t b[10];
    unsigned n = 0;
    for (; v >= 0x80; v >>= 7) b[n++] = (uint8_t)(v | 0x80);
    b[n++] = (uint8_t)v;
    w_bytes(w, b, n);
}

static int carry_copy(void *arg, const uint8_t *p, size_t n)
{
    struct carry *c = arg;
    w_bytes(c->w, p, n);
    return c->w->err;
}

static int carry_pos(void *arg, uint32_t image, uint64_t pos, unsigned tag, const uint8_t *id)
{
    struct carry *c = arg;
    (void)tag;
    const struct cand *at;
    if (c->next < c->n && c->cands[c->next].image == image && c->cands[c->next].pos == pos) {
        w_le(c->w, c->isdelta[c->next++] ? TAG_DELTA : TAG_CHUNK, 1);
    } else if ((at = place_of(c->parent, c->nparent, (const cs_id *)id))) {
        w_le(c->w, TAG_PARENT, 1);
        w_varint(c->w, at->image);
        w_varint(c->w, at->pos);
    } else if ((at = place_of(c->byid, c->n, (const cs_id *)id))) {
        w_le(c->w, TAG_SAME, 1);
        w_varint(c->w, at->pos);
    } else {
        w_le(c->w, TAG_REF, 1);
        w_bytes(c->w, id, CS_ID_BYTES);
    }
    return c->w->err;
}

int node_overlay_export(cs_store *st, const cs_id *id, int fd, int level,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG])
{
    node_overlay_report rep = {0};
    cs_manifest *m = NULL, *p = NULL;
    struct cand *pset = NULL, *byid = NULL;
    size_t npset = 0;
    struct cand *cands = NULL;
    struct writer *w = calloc(1, sizeof *w), *mem = NULL;
    struct export x = {.st = st, .rep = &rep, .w = w};
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    char hex[CS_ID_HEX + 1];
    if (!level) level = NODE_OVERLAY_LEVEL;
    int rc = w ? cs_manifest_get(st, id, &m) : -ENOMEM;
    if (rc) {
        node__errf(err, "manifest %s: %s", cs_id_to_hex(id, hex),
             rc == CS_ENOTFOUND ? "not in this store" : cs_strerror(rc));
        goto out;
    }
    if (m->has_parent && (rc = cs_manifest_get(st, &m->parent, &p))) {
        node__errf(err, "parent manifest %s: %s", cs_id_to_hex(&m->parent, hex), cs_strerror(rc));
        goto out;
    }
    if (p && (rc = place_set(p, &pset, &npset))) goto out;
    size_t total = 0, n = 0;
    for (size_t i = 0; i < m->nimages; i++) total += m->images[i].nchunks;
    if (!(cands = malloc((total ? total : 1) * sizeof *cands))) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < m->nimages; i++) {
        const cs_image *im = &m->images[i];
        for (uint64_t c = 0; c < im->nchunks; c++)
            if (!cs_id_is_zero(&im->chunks[c]) && explicit_at(im, c) &&
                !place_of(pset, npset, &im->chunks[c]))
                cands[n++] = (struct cand){im->chunks[c], (uint32_t)i, c};
    }
    /* Each chunk once (its first place), then in image order, which compresses best. */
    qsort(cands, n, sizeof *cands, cmp_cand_id);
    size_t u = 0;
    for (size_t j = 0; j < n; j++)
        if (u == 0 || !cs_id_equal(&cands[u - 1].id, &cands[j].id)) cands[u++] = cands[j];
    qsort(cands, u, sizeof *cands, cmp_cand_pos);
    /* The carried chunks by id, with their index in the stream in place of their position:
     * what a later place naming the same chunk refers to. */
    if (!(byid = malloc((u ? u : 1) * sizeof *byid))) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t j = 0; j < u; j++) byid[j] = (struct cand){cands[j].id, 0, j};
    qsort(byid, u, sizeof *byid, cmp_cand_id);

    /* The smallest window that spans the whole stream, up to what importers allow: the
     * importer allocates the window, so a small package must not ask for 128 MiB. */
    unsigned wlog = OV_WLOG_MIN;
    while (wlog < OV_WLOG_MAX && (1ull << wlog) < (uint64_t)u * (CS_CHUNK_SIZE + 2)) wlog++;

    if ((rc = cs_manifest_get_raw(st, id, &raw, &rawlen))) goto out;
    x.m = m, x.parent = p;
    x.cctx = ZSTD_createCCtx();
    x.dcctx = node__delta_cctx(level);
    x.est = ZSTD_createCCtx();
    x.in = malloc(STREAM_IN);
    x.outcap = ZSTD_CStreamOutSize();
    x.out = malloc(x.outcap);
    x.isdelta = calloc(u ? u : 1, 1);
    if (!x.cctx || !x.dcctx || !x.est || !x.in || !x.out || !x.isdelta) {
        rc = -ENOMEM;
        goto out;
    }
    ZSTD_CCtx_setParameter(x.cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(x.cctx, ZSTD_c_windowLog, (int)wlog);
    /* The stream's size, at most: zstd sizes its match tables by it (a small package at level
     * 22 would otherwise take 650 MiB of tables). The parameter is zstd's srcSizeHint, not in
     * its stable API; a library that refuses it costs memory, never correctness. */
    uint64_t hint = (uint64_t)u * (CS_CHUNK_SIZE + 2);
    ZSTD_CCtx_setParameter(x.cctx, ZSTD_c_experimentalParam7, hint < INT_MAX ? (int)hint : INT_MAX);
    ZSTD_CCtx_setParameter(x.cctx, ZSTD_c_enableLongDistanceMatching, 1);
    w->fd = fd;
    crypto_generichash_init(&w->h, NULL, 0, 32);
    /* The carried manifest is compressed (ids of the parent's chunks are small varints, and
     * tags repeat): it is never larger than the canonical one, which bounds the frame. */
    bool zman = rawlen <= OV_ZMANIFEST_MAX;
    uint8_t hdr[OV_HDR] = {'C', 'L', 'O', 'V', OV_VERSION, zman ? OV_FLAG_ZMANIFEST : 0,
                           (uint8_t)wlog, 0};
    memcpy(hdr + 8, id->b, CS_ID_BYTES);
    w_bytes(w, hdr, sizeof hdr);
    if ((rc = export_cands(&x, cands, u, progress, arg))) goto fail;
    uint64_t before = w->total;
    if (zman && !(mem = calloc(1, sizeof *mem))) {
        rc = -ENOMEM;
        goto fail;
    }
    if (mem) mem->fd = -1;
    struct carry c = {.w = mem ? mem : w, .cands = cands, .isdelta = x.isdelta, .n = u,
                      .parent = pset, .nparent = npset, .byid = byid};
    struct mwalk mw = {.p = raw, .len = rawlen, .copy = carry_copy, .pos = carry_pos, .arg = &c};
    if ((rc = manifest_walk(&mw))) goto fail;
    if (c.next != u) { /* a candidate the walk did not meet: the stored manifest is not canonical */
        rc = CS_ECORRUPT;
        goto fail;
    }
    if (mem) {
        w_flush(mem);
        size_t cap = ZSTD_compressBound(mem->mlen);
        uint8_t *z = mem->err ? NULL : malloc(cap);
        size_t zl = z ? ZSTD_compress(z, cap, mem->mem, mem->mlen, level) : 0;
        if (!z || ZSTD_isError(zl)) {
            free(z);
            rc = mem->err ? mem->err : z ? CS_EZSTD : -ENOMEM;
            goto fail;
        }
        w_bytes(w, z, zl);
        free(z);
    }
    w_le(w, w->total - before, 4);
    uint8_t h[32];
    crypto_generichash_final(&w->h, h, sizeof h);
    w_bytes(w, h, sizeof h);
    w_flush(w);
    rc = w->err;
    rep.block_bytes = x.stream_bytes > rep.delta_bytes ? x.stream_bytes - rep.delta_bytes : 0;
    rep.file_bytes = w->total;
fail:
    if (rc) node__errf(err, "writing the overlay package: %s", cs_strerror(rc));
out:
    if (report) *report = rep;
    ZSTD_freeCCtx(x.cctx);
    ZSTD_freeCCtx(x.dcctx);
    ZSTD_freeCCtx(x.est);
    free(x.in), free(x.out), free(x.isdelta), free(raw), free(cands), free(pset), free(byid), free(w);
    if (mem) free(mem->mem), free(mem);
    cs_manifest_free(m);
    cs_manifest_free(p);
    return rc;
}

/* ---- import ---------------------------------------------------------------------------------- */

/*
 * The stream decodes on a thread of its own into PIPE_DEPTH batches of PIPE_BATCH chunks; the
 * caller's thread (and, storing, STORE_THREADS - 1 more) take full batches in order and hash or
 * store them. A slot is refilled only once its batch is done. The first error stops all.
 */
#define PIPE_BATCH 1024u
#define PIPE_DEPTH 4u
#define STORE_THREADS 2u

enum { SLOT_EMPTY, SLOT_FULL, SLOT_BUSY };

struct pipe {
    cs_store *st;
    const node__overlay_pkg *pkg;
    const cs_id *bases; /* per delta: the parent's chunk at its place */
    cs_id *ids;         /* per carried chunk: computed (verifying) or expected (storing) */
    bool storing;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *buf[PIPE_DEPTH];
    int state[PIPE_DEPTH];
    size_t first[PIPE_DEPTH], n[PIPE_DEPTH];
    size_t produced, taken, done_chunks;
    bool decoded; /* the decoder has published its last batch */
    int rc;
    char err[NODE_ERRMSG];
    uint64_t delta_bytes;
    cs_progress_fn progress;
    void *arg;
    size_t len;   /* of the package, what progress counts */
    size_t batch; /* chunks per batch: PIPE_BATCH, or fewer for a small package */
};

static void pipe_fail(struct pipe *p, int rc, const char *err)
{
    pthread_mutex_lock(&p->mu);
    if (!p->rc) {
        p->rc = rc;
        snprintf(p->err, sizeof p->err, "%s", err);
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static int decode_batch(struct pipe *p, node__overlay_stream *s, ZSTD_DCtx *dd, uint8_t *out,
                        size_t first, size_t n, size_t *ndelta, uint8_t *bases, size_t *bfirst,
                        size_t *bn, char err[NODE_ERRMSG])
{
    const node__overlay_pkg *pkg = p->pkg;
    uint8_t z[DELTA_MAX];
    for (size_t j = 0; j < n; j++) {
        bool delta = pkg->carried[first + j] & 1;
        uint8_t *chunk = out + j * CS_CHUNK_SIZE;
        size_t zl = 0;
        int rc = node__overlay_stream_item(s, delta, chunk, z, &zl, err);
        if (rc || !delta) {
            if (rc) return rc;
            continue;
        }
        size_t k = (*ndelta)++;
        if (k >= *bfirst + *bn) { /* the next bases, fetched together */
            *bfirst = k;
            *bn = pkg->ndelta - k < p->batch ? pkg->ndelta - k : p->batch;
            if ((rc = cs_get(p->st, p->bases + k, *bn, bases, NULL))) {
                node__errf(err, "reading the parent's chunks the deltas apply to: %s", cs_strerror(rc));
                return rc;
            }
        }
        if ((rc = node__overlay_delta_decode(dd, bases + (k - *bfirst) * CS_CHUNK_SIZE, z, zl, chunk))) {
            node__errf(err, "delta %zu of the package does not decode against its base", k);
            return rc;
        }
        p->delta_bytes += zl;
    }
    return 0;
}

static void *decode_main(void *arg)
{
    struct pipe *p = arg;
    const node__overlay_pkg *pkg = p->pkg;
    char err[NODE_ERRMSG] = "";
    node__overlay_stream s;
    ZSTD_DCtx *dd = ZSTD_createDCtx();
    uint8_t *bases = malloc(p->batch * CS_CHUNK_SIZE);
    size_t ndelta = 0, bfirst = 0, bn = 0;
    int rc = dd && bases ? node__overlay_stream_open(&s, pkg, OV_WLOG_MAX) : -ENOMEM;
    if (rc) pipe_fail(p, rc, "out of memory decoding the package");
    for (size_t i = 0; rc == 0 && i < pkg->ncarried;) {
        size_t slot = p->produced % PIPE_DEPTH;
        pthread_mutex_lock(&p->mu);
        while (p->state[slot] != SLOT_EMPTY && !p->rc) pthread_cond_wait(&p->cv, &p->mu);
        rc = p->rc;
        pthread_mutex_unlock(&p->mu);
        if (rc) break; /* someone else failed: their message stands */
        size_t n = pkg->ncarried - i < p->batch ? pkg->ncarried - i : p->batch;
        rc = decode_batch(p, &s, dd, p->buf[slot], i, n, &ndelta, bases, &bfirst, &bn, err);
        if (rc) {
            pipe_fail(p, rc, err);
            break;
        }
        pthread_mutex_lock(&p->mu);
        p->first[slot] = i, p->n[slot] = n, p->state[slot] = SLOT_FULL;
        p->produced++;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        i += n;
    }
    if (rc == 0 && (rc = node__overlay_stream_end(&s, err))) pipe_fail(p, rc, err);
    if (dd && bases) node__overlay_stream_close(&s);
    ZSTD_freeDCtx(dd);
    free(bases);
    pthread_mutex_lock(&p->mu);
    p->decoded = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static int consume_batch(struct pipe *p, const uint8_t *chunks, size_t first, size_t n, char err[NODE_ERRMSG])
{
    if (p->storing) {
        size_t bad = 0;
        int rc = cs_put_nosync(p->st, chunks, n, p->ids + first, NULL, &bad, NULL);
        if (rc == CS_ECORRUPT)
            node__errf(err, "chunk %zu of the package changed between its check and its storing", first + bad);
        else if (rc)
            node__errf(err, "storing chunks: %s", cs_strerror(rc));
        return rc;
    }
    for (size_t j = 0; j < n; j++) {
        cs_chunk_id(chunks + j * CS_CHUNK_SIZE, &p->ids[first + j]);
        if (cs_id_is_zero(&p->ids[first + j])) {
            node__errf(err, "the package carries the zero chunk (chunk %zu)", first + j);
            return CS_EFORMAT;
        }
    }
    return 0;
}

static void *consume_main(void *arg)
{
    struct pipe *p = arg;
    char err[NODE_ERRMSG] = "";
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->rc && p->taken == p->produced && !p->decoded) pthread_cond_wait(&p->cv, &p->mu);
        if (p->rc || p->taken == p->produced) break;
        size_t slot = p->taken++ % PIPE_DEPTH;
        p->state[slot] = SLOT_BUSY;
        pthread_mutex_unlock(&p->mu);
        int rc = consume_batch(p, p->buf[slot], p->first[slot], p->n[slot], err);
        pthread_mutex_lock(&p->mu);
        if (rc) {
            if (!p->rc) p->rc = rc, snprintf(p->err, sizeof p->err, "%s", err);
            pthread_cond_broadcast(&p->cv);
            break;
        }
        p->state[slot] = SLOT_EMPTY;
        p->done_chunks += p->n[slot];
        if (p->progress) { /* under the lock: one call at a time; in the package's bytes, each
                            * pass counting for half */
            double done = (double)((p->storing ? p->pkg->ncarried : 0) + p->done_chunks);
            p->progress((uint64_t)(done * (double)p->len / (2.0 * (double)p->pkg->ncarried)), p->len, p->arg);
        }
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* One pass over the stream: verifying (fills ids) or storing (stores what matches ids). */
static int run_pass(struct pipe *p, unsigned consumers, char err[NODE_ERRMSG])
{
    pthread_t dec, more[STORE_THREADS];
    unsigned started = 0;
    int rc = 0;
    p->produced = p->taken = p->done_chunks = 0;
    p->decoded = false;
    p->delta_bytes = 0;
    for (size_t i = 0; i < PIPE_DEPTH; i++) p->state[i] = SLOT_EMPTY;
    if ((rc = -pthread_create(&dec, NULL, decode_main, p))) {
        node__errf(err, "starting the decoder thread: %s", strerror(-rc));
        return rc;
    }
    while (started + 1 < consumers && pthread_create(&more[started], NULL, consume_main, p) == 0)
        started++;
    consume_main(p);
    for (unsigned i = 0; i < started; i++) pthread_join(more[i], NULL);
    pthread_join(dec, NULL);
    if (p->rc) node__errf(err, "%s", p->err);
    return p->rc;
}

/* Every chunk the rebuilt manifest names explicitly is in the package or already held. */
static int check_complete(cs_store *st, const cs_manifest *m, const cs_id *ids, size_t nids,
                          char err[NODE_ERRMSG])
{
    cs_id *carried = malloc((nids ? nids : 1) * sizeof *carried);
    if (!carried) return -ENOMEM;
    memcpy(carried, ids, nids * sizeof *ids);
    qsort(carried, nids, sizeof *carried, cmp_id);
    cs_id batch[EXPORT_BATCH];
    size_t nb = 0, missing = 0;
    cs_id first_missing = {{0}};
    int rc = 0;
    for (size_t i = 0; i < m->nimages && rc == 0; i++) {
        const cs_image *img = &m->images[i];
        for (uint64_t c = 0; c <= img->nchunks && rc == 0; c++) {
            bool last = i + 1 == m->nimages && c == img->nchunks;
            if (c < img->nchunks && !cs_id_is_zero(&img->chunks[c]) && explicit_at(img, c) &&
                !in_set(carried, nids, &img->chunks[c]))
                batch[nb++] = img->chunks[c];
            if (nb == EXPORT_BATCH || (last && nb)) {
                uint8_t held[EXPORT_BATCH / 8];
                int64_t h = cs_has(st, batch, nb, held);
                if (h < 0) rc = (int)h;
                for (size_t k = 0; k < nb && h >= 0; k++)
                    if (!(held[k / 8] & (1u << (k % 8))) && missing++ == 0) first_missing = batch[k];
                nb = 0;
            }
        }
    }
    free(carried);
    if (rc) node__errf(err, "checking the store: %s", cs_strerror(rc));
    else if (missing) {
        char hex[CS_ID_HEX + 1];
        node__errf(err, "the package lacks %zu chunks this store does not hold either (first: %s)",
                   missing, cs_id_to_hex(&first_missing, hex));
        rc = CS_EMISSING;
    }
    return rc;
}

/* The parent of the package's manifest, and the parent's chunk under every delta. */
static int resolve(cs_store *st, node__overlay_pkg *pkg, cs_manifest *m, cs_manifest **parent,
                   cs_id **bases, char err[NODE_ERRMSG])
{
    char hex[CS_ID_HEX + 1];
    int rc = 0;
    if (m->has_parent) {
        rc = cs_manifest_get(st, &m->parent, parent);
        if (rc == CS_ENOTFOUND || rc == CS_EMISSING) {
            node__errf(err, "parent manifest %s is not in this store: import or pull the base VM first",
                       cs_id_to_hex(&m->parent, hex));
            return CS_EMISSING;
        }
        if (rc) {
            node__errf(err, "parent manifest %s: %s", cs_id_to_hex(&m->parent, hex), cs_strerror(rc));
            return rc;
        }
        if ((rc = cs_manifest_resolve(m, *parent))) {
            node__errf(err, "the package's manifest does not fit its parent");
            return rc;
        }
    }
    /* Places the package names by a place in the parent get the parent's id there. */
    for (size_t i = 0; i < pkg->nrefs; i++) {
        const struct node__overlay_ref *r = &pkg->refs[i];
        if (r->image == NODE__OVERLAY_CARRIED) continue;
        if (!*parent || r->image >= (*parent)->nimages || r->pos >= (*parent)->images[r->image].nchunks ||
            cs_id_is_zero(&(*parent)->images[r->image].chunks[r->pos])) {
            node__errf(err, "the package names a place the parent does not hold a chunk at");
            return CS_EFORMAT;
        }
        memcpy(pkg->manifest + r->off, (*parent)->images[r->image].chunks[r->pos].b, CS_ID_BYTES);
    }
    if (!(*bases = malloc((pkg->ndelta ? pkg->ndelta : 1) * sizeof **bases))) return -ENOMEM;
    for (size_t k = 0; k < pkg->ndelta; k++) {
        const struct node__overlay_place *at = &pkg->delta_at[k];
        const cs_image *pim = *parent ? cs_manifest_find_image(*parent, m->images[at->image].name) : NULL;
        if (!pim || at->pos >= pim->nchunks || cs_id_is_zero(&pim->chunks[at->pos])) {
            node__errf(err, "a delta of the package is for a place where the parent has no chunk");
            return CS_EFORMAT;
        }
        (*bases)[k] = pim->chunks[at->pos];
    }
    for (size_t k = 0; k < pkg->ndelta; k += EXPORT_BATCH) {
        size_t n = pkg->ndelta - k < EXPORT_BATCH ? pkg->ndelta - k : EXPORT_BATCH;
        uint8_t held[EXPORT_BATCH / 8];
        int64_t h = cs_has(st, *bases + k, n, held);
        if (h < 0) return (int)h;
        for (size_t i = 0; i < n; i++)
            if (!(held[i / 8] & (1u << (i % 8)))) {
                node__errf(err, "the parent's chunk %s, base of a delta, is not in this store",
                           cs_id_to_hex(&(*bases)[k + i], hex));
                return CS_EMISSING;
            }
    }
    return 0;
}

int node_overlay_import(cs_store *st, const uint8_t *buf, size_t len, cs_id *id,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG])
{
    node_overlay_report rep = {.file_bytes = len};
    node__overlay_pkg pkg;
    cs_manifest *m = NULL, *parent = NULL, *final = NULL;
    cs_id *bases = NULL;
    struct pipe p = {.st = st, .pkg = &pkg, .progress = progress, .arg = arg, .len = len};
    bool ingest = false, locks = false;
    char hex[CS_ID_HEX + 1];
    int rc = node__overlay_parse(buf, len, &pkg, err);
    if (rc) goto out;
    if ((rc = cs_manifest_decode(pkg.manifest, pkg.mlen, &m))) {
        node__errf(err, "the package's manifest is malformed");
        goto out;
    }
    if ((rc = resolve(st, &pkg, m, &parent, &bases, err))) goto out;
    rc = -ENOMEM;
    p.bases = bases;
    if (!(p.ids = malloc((pkg.ncarried ? pkg.ncarried : 1) * sizeof *p.ids))) goto out;
    p.batch = pkg.ncarried < PIPE_BATCH ? (pkg.ncarried ? pkg.ncarried : 1) : PIPE_BATCH;
    for (size_t i = 0; i < PIPE_DEPTH; i++)
        if (!(p.buf[i] = malloc(p.batch * CS_CHUNK_SIZE))) goto out;
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    locks = true;
    if ((rc = cs_ingest_begin(st))) {
        node__errf(err, "cannot start storing: %s", cs_strerror(rc));
        goto out;
    }
    ingest = true;

    /* 1. Decode and hash everything; rebuild the manifest and check it is the one named. */
    if ((rc = run_pass(&p, 1, err))) goto out;
    for (size_t i = 0; i < pkg.ncarried; i++)
        memcpy(pkg.manifest + (pkg.carried[i] >> 1), p.ids[i].b, CS_ID_BYTES);
    for (size_t i = 0; i < pkg.nrefs; i++)
        if (pkg.refs[i].image == NODE__OVERLAY_CARRIED)
            memcpy(pkg.manifest + pkg.refs[i].off, p.ids[pkg.refs[i].pos].b, CS_ID_BYTES);
    cs_id got;
    cs_manifest_id(pkg.manifest, pkg.mlen, &got);
    if (!cs_id_equal(&got, &pkg.id)) {
        node__errf(err, "the package's chunks do not make the manifest %s it names",
                   cs_id_to_hex(&pkg.id, hex));
        rc = CS_ECORRUPT;
        goto out;
    }
    if ((rc = cs_manifest_decode(pkg.manifest, pkg.mlen, &final)) ||
        (parent && (rc = cs_manifest_resolve(final, parent)))) {
        node__errf(err, "the package's manifest is malformed");
        goto out;
    }
    if ((rc = check_complete(st, final, p.ids, pkg.ncarried, err))) goto out;
    rep.chunks = pkg.ncarried;
    rep.delta_chunks = pkg.ndelta;
    rep.delta_bytes = p.delta_bytes;
    rep.block_bytes = pkg.slen > p.delta_bytes ? pkg.slen - p.delta_bytes : 0;

    /* 2. Store, made durable before the manifest that names the chunks. */
    p.storing = true;
    if ((rc = run_pass(&p, STORE_THREADS, err))) goto out;
    if ((rc = cs_sync(st)) || (rc = cs_manifest_put(st, pkg.manifest, pkg.mlen, true, id)))
        node__errf(err, "storing the package: %s", cs_strerror(rc));
out:
    if (ingest) cs_ingest_end(st);
    if (locks) pthread_cond_destroy(&p.cv), pthread_mutex_destroy(&p.mu);
    if (report) *report = rep;
    for (size_t i = 0; i < PIPE_DEPTH; i++) free(p.buf[i]);
    free(p.ids), free(bases);
    cs_manifest_free(m);
    cs_manifest_free(final);
    cs_manifest_free(parent);
    node__overlay_pkg_free(&pkg);
    return rc;
}
