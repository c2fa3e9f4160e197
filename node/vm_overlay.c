/*
 * vm_overlay.c — overlay packages: a derived VM's manifest plus the chunks its parent lacks,
 * in one self-contained file (docs/overlay.md).
 *
 * Design notes:
 * - Export names each chunk once (dedup against the whole parent VM and within the child).
 *   A chunk whose parent had a non-zero chunk at the same place travels as a zstd delta against
 *   that chunk (ZSTD_CCtx_refPrefix) when the delta is clearly smaller than the chunk would be
 *   compressed on its own; every other chunk goes into blocks of up to 1024 chunks compressed
 *   together, which compresses far better than chunk by chunk.
 * - Import never stores anything from a package it has not checked whole: the trailing hash
 *   first, then a full decode that re-hashes every chunk and checks that the package and the
 *   store together hold every chunk the manifest names, and only then a second decode that
 *   stores. Decoding twice costs far less than the transfer the package replaces.
 * - The parser (node__overlay_parse) is a pure function of the bytes: the fuzz target drives it.
 */
#define _GNU_SOURCE
#include "node.h"
#include "node_internal.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#define OV_MAGIC "CLOV"
#define OV_VERSION 1u
#define OV_HDR 12u /* magic, version, flags, reserved u16, manifest length u32 */
#define OV_TRAILER (1u + 8u + 32u)
#define BLOCK_CHUNKS 1024u
#define DELTA_MAX NODE__DELTA_MAX
enum { REC_END = 0, REC_BLOCK = 1, REC_DELTA = 2 };

static uint64_t get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- decoding primitives (shared by import and the fuzz target) ----------------------------- */

int node__overlay_block_decode(ZSTD_DCtx *d, const uint8_t *z, size_t zlen, uint32_t n,
                               uint8_t *out)
{
    size_t want = (size_t)n * CS_CHUNK_SIZE;
    if (ZSTD_getFrameContentSize(z, zlen) != want || ZSTD_findFrameCompressedSize(z, zlen) != zlen)
        return CS_EFORMAT;
    size_t got = ZSTD_decompressDCtx(d, out, want, z, zlen);
    return ZSTD_isError(got) || got != want ? CS_ECORRUPT : 0;
}

int node__overlay_delta_decode(ZSTD_DCtx *d, const uint8_t *base, const uint8_t *z, size_t zlen,
                               uint8_t out[CS_CHUNK_SIZE])
{
    if (ZSTD_isError(ZSTD_DCtx_refPrefix(d, base, CS_CHUNK_SIZE))) return CS_ECORRUPT;
    size_t got = ZSTD_decompressDCtx(d, out, CS_CHUNK_SIZE, z, zlen);
    ZSTD_DCtx_reset(d, ZSTD_reset_session_and_parameters);
    return ZSTD_isError(got) || got != CS_CHUNK_SIZE ? CS_ECORRUPT : 0;
}

int node__overlay_parse(const uint8_t *buf, size_t len, const node__overlay_visitor *v, void *arg,
                        char err[NODE_ERRMSG])
{
    if (len < OV_HDR + OV_TRAILER || memcmp(buf, OV_MAGIC, 4) != 0) {
        node__errf(err, "not an overlay package (bad magic or too short: %zu bytes)", len);
        return CS_EFORMAT;
    }
    if (buf[4] != OV_VERSION) {
        node__errf(err, "overlay package version %u is not supported (this is version %u)", buf[4], OV_VERSION);
        return CS_EVERSION;
    }
    if (buf[5] != 0 || buf[6] != 0 || buf[7] != 0) {
        node__errf(err, "unknown flags in the overlay header");
        return CS_EFORMAT;
    }
    uint8_t h[32];
    crypto_generichash(h, sizeof h, buf, len - 32, NULL, 0);
    if (sodium_memcmp(h, buf + len - 32, 32) != 0) {
        node__errf(err, "overlay package is truncated or damaged (its trailing hash does not match)");
        return CS_ECORRUPT;
    }
    uint64_t mlen = get_le(buf + 8, 4);
    size_t end = len - OV_TRAILER; /* where the END record must start */
    if (mlen > end - OV_HDR) {
        node__errf(err, "manifest length %llu runs past the end of the package", (unsigned long long)mlen);
        return CS_EFORMAT;
    }
    int rc = v->manifest ? v->manifest(buf + OV_HDR, (size_t)mlen, arg) : 0;
    if (rc) return rc;
    size_t off = OV_HDR + (size_t)mlen;
    uint64_t chunks = 0;
    while (off < end) {
        size_t at = off;
        uint8_t type = buf[off++];
        if (type == REC_BLOCK) {
            if (end - off < 4) goto truncated;
            uint64_t n = get_le(buf + off, 4);
            off += 4;
            if (n == 0 || n > BLOCK_CHUNKS) {
                node__errf(err, "block at byte %zu holds %llu chunks (1..%u allowed)", at,
                     (unsigned long long)n, BLOCK_CHUNKS);
                return CS_EFORMAT;
            }
            if (end - off < n * CS_ID_BYTES + 4) goto truncated;
            const cs_id *ids = (const cs_id *)(buf + off);
            off += n * CS_ID_BYTES;
            uint64_t zlen = get_le(buf + off, 4);
            off += 4;
            if (zlen == 0 || zlen > end - off) goto truncated;
            if (v->block && (rc = v->block(ids, (uint32_t)n, buf + off, (size_t)zlen, at, arg)))
                return rc;
            off += zlen;
            chunks += n;
        } else if (type == REC_DELTA) {
            if (end - off < 2 + 8 + CS_ID_BYTES + 4) goto truncated;
            uint32_t image = (uint32_t)get_le(buf + off, 2);
            uint64_t pos = get_le(buf + off + 2, 8);
            const cs_id *id = (const cs_id *)(buf + off + 10);
            uint64_t zlen = get_le(buf + off + 10 + CS_ID_BYTES, 4);
            off += 2 + 8 + CS_ID_BYTES + 4;
            if (zlen == 0 || zlen > DELTA_MAX || zlen > end - off) {
                node__errf(err, "delta at byte %zu has a bad length %llu", at, (unsigned long long)zlen);
                return CS_EFORMAT;
            }
            if (v->delta && (rc = v->delta(image, pos, id, buf + off, (size_t)zlen, at, arg)))
                return rc;
            off += zlen;
            chunks++;
        } else {
            node__errf(err, "unknown record type %u at byte %zu", type, at);
            return CS_EFORMAT;
        }
    }
    if (off != end || buf[end] != REC_END || get_le(buf + end + 1, 8) != chunks) {
        node__errf(err, "the package's end record does not match its %llu chunks",
             (unsigned long long)chunks);
        return CS_EFORMAT;
    }
    return 0;
truncated:
    node__errf(err, "record at byte %zu runs past the end of the package", off);
    return CS_EFORMAT;
}

/* ---- export ---------------------------------------------------------------------------------- */

struct writer {
    int fd;
    crypto_generichash_state h;
    uint8_t buf[1 << 16];
    size_t n;
    uint64_t total;
    int err;
};

static void w_flush(struct writer *w)
{
    for (size_t off = 0; off < w->n && !w->err;) {
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
    put_le(b, v, n);
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

/* Every non-zero id of a resolved manifest, sorted and unique. */
static int id_set(const cs_manifest *m, cs_id **out, size_t *n)
{
    size_t total = 0, k = 0;
    for (size_t i = 0; i < m->nimages; i++) total += m->images[i].nchunks;
    cs_id *v = malloc((total ? total : 1) * sizeof *v);
    if (!v) return -ENOMEM;
    for (size_t i = 0; i < m->nimages; i++)
        for (uint64_t c = 0; c < m->images[i].nchunks; c++)
            if (!cs_id_is_zero(&m->images[i].chunks[c])) v[k++] = m->images[i].chunks[c];
    qsort(v, k, sizeof *v, cmp_id);
    size_t u = 0;
    for (size_t j = 0; j < k; j++)
        if (u == 0 || !cs_id_equal(&v[u - 1], &v[j])) v[u++] = v[j];
    *out = v, *n = u;
    return 0;
}

static bool in_set(const cs_id *set, size_t n, const cs_id *id)
{
    return n && bsearch(id, set, n, sizeof *set, cmp_id) != NULL;
}

static bool explicit_at(const cs_image *im, uint64_t c)
{
    return !im->explicit_mask || (im->explicit_mask[c / 8] & (1u << (c % 8)));
}

struct export {
    cs_store *st;
    const cs_manifest *m, *parent;
    struct writer *w;
    ZSTD_CCtx *cctx, *dcctx, *est; /* blocks and deltas at `level`; estimates at level 3 */
    int level;
    uint8_t *block;            /* BLOCK_CHUNKS chunks being gathered */
    cs_id block_ids[BLOCK_CHUNKS];
    uint32_t nblock;
    uint8_t *zbuf;
    size_t zcap;
    node_overlay_report *rep;
};

static int flush_block(struct export *x)
{
    if (x->nblock == 0) return 0;
    ZSTD_CCtx_reset(x->cctx, ZSTD_reset_session_only);
    size_t z = ZSTD_compress2(x->cctx, x->zbuf, x->zcap, x->block, (size_t)x->nblock * CS_CHUNK_SIZE);
    if (ZSTD_isError(z)) return CS_EZSTD;
    w_le(x->w, REC_BLOCK, 1);
    w_le(x->w, x->nblock, 4);
    w_bytes(x->w, x->block_ids, (size_t)x->nblock * CS_ID_BYTES);
    w_le(x->w, z, 4);
    w_bytes(x->w, x->zbuf, z);
    x->rep->chunks += x->nblock;
    x->rep->block_bytes += z;
    x->nblock = 0;
    return x->w->err;
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

static int emit(struct export *x, const struct cand *c, const uint8_t *chunk, const uint8_t *base)
{
    if (base) {
        uint8_t d[NODE__DELTA_MAX];
        size_t dl = node__delta_if_smaller(x->dcctx, x->est, base, chunk, d);
        if (dl) {
            w_le(x->w, REC_DELTA, 1);
            w_le(x->w, c->image, 2);
            w_le(x->w, c->pos, 8);
            w_bytes(x->w, c->id.b, CS_ID_BYTES);
            w_le(x->w, dl, 4);
            w_bytes(x->w, d, dl);
            x->rep->chunks++;
            x->rep->delta_chunks++;
            x->rep->delta_bytes += dl;
            return x->w->err;
        }
    }
    memcpy(x->block + (size_t)x->nblock * CS_CHUNK_SIZE, chunk, CS_CHUNK_SIZE);
    x->block_ids[x->nblock++] = c->id;
    return x->nblock == BLOCK_CHUNKS ? flush_block(x) : 0;
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
            rc = emit(x, &cands[j + i], chunks + i * CS_CHUNK_SIZE,
                      has_base[i] >= 0 ? bases + (size_t)has_base[i] * CS_CHUNK_SIZE : NULL);
        if (progress) progress(j + k, n, arg);
    }
    free(chunks), free(bases);
    return rc ? rc : flush_block(x);
}

int node_overlay_export(cs_store *st, const cs_id *id, int fd, int level,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG])
{
    node_overlay_report rep = {0};
    cs_manifest *m = NULL, *p = NULL;
    cs_id *pset = NULL;
    size_t npset = 0;
    struct cand *cands = NULL;
    struct writer *w = calloc(1, sizeof *w);
    struct export x = {.st = st, .level = level ? level : 19, .rep = &rep, .w = w};
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    char hex[CS_ID_HEX + 1];
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
    if (p && (rc = id_set(p, &pset, &npset))) goto out;
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
                !in_set(pset, npset, &im->chunks[c]))
                cands[n++] = (struct cand){im->chunks[c], (uint32_t)i, c};
    }
    /* Each chunk once (its first place), then in image order, which compresses best. */
    qsort(cands, n, sizeof *cands, cmp_cand_id);
    size_t u = 0;
    for (size_t j = 0; j < n; j++)
        if (u == 0 || !cs_id_equal(&cands[u - 1].id, &cands[j].id)) cands[u++] = cands[j];
    qsort(cands, u, sizeof *cands, cmp_cand_pos);

    if ((rc = cs_manifest_get_raw(st, id, &raw, &rawlen))) goto out;
    x.m = m, x.parent = p;
    x.cctx = ZSTD_createCCtx();
    x.dcctx = node__delta_cctx(x.level);
    x.est = ZSTD_createCCtx();
    x.block = malloc((size_t)BLOCK_CHUNKS * CS_CHUNK_SIZE);
    x.zcap = ZSTD_compressBound((size_t)BLOCK_CHUNKS * CS_CHUNK_SIZE);
    x.zbuf = malloc(x.zcap);
    if (!x.cctx || !x.dcctx || !x.est || !x.block || !x.zbuf) {
        rc = -ENOMEM;
        goto out;
    }
    ZSTD_CCtx_setParameter(x.cctx, ZSTD_c_compressionLevel, x.level);
    w->fd = fd;
    crypto_generichash_init(&w->h, NULL, 0, 32);
    uint8_t hdr[OV_HDR] = {'C', 'L', 'O', 'V', OV_VERSION, 0, 0, 0};
    put_le(hdr + 8, rawlen, 4);
    w_bytes(w, hdr, sizeof hdr);
    w_bytes(w, raw, rawlen);
    if ((rc = export_cands(&x, cands, u, progress, arg))) goto fail;
    w_le(w, REC_END, 1);
    w_le(w, rep.chunks, 8);
    uint8_t h[32];
    crypto_generichash_final(&w->h, h, sizeof h);
    w_bytes(w, h, sizeof h);
    w_flush(w);
    rc = w->err;
    rep.file_bytes = w->total;
fail:
    if (rc) node__errf(err, "writing the overlay package: %s", cs_strerror(rc));
out:
    if (report) *report = rep;
    ZSTD_freeCCtx(x.cctx);
    ZSTD_freeCCtx(x.dcctx);
    ZSTD_freeCCtx(x.est);
    free(x.block), free(x.zbuf), free(raw), free(cands), free(pset), free(w);
    cs_manifest_free(m);
    cs_manifest_free(p);
    return rc;
}

/* ---- import ---------------------------------------------------------------------------------- */

struct import {
    cs_store *st;
    cs_manifest *m, *parent; /* resolved */
    ZSTD_DCtx *dctx;
    uint8_t *block;
    bool storing;         /* second pass */
    cs_id *seen;          /* first pass: every chunk id in the package */
    size_t nseen, capseen;
    uint8_t *pending;     /* second pass: decoded deltas waiting to be stored */
    cs_id pending_ids[EXPORT_BATCH];
    size_t npending;
    const uint8_t *base_of_buf;
    size_t buflen;
    cs_progress_fn progress;
    void *arg;
    node_overlay_report *rep;
    char *err;
};

static int remember(struct import *im, const cs_id *ids, size_t n)
{
    if (im->nseen + n > im->capseen) {
        size_t cap = im->capseen ? im->capseen : 1024;
        while (cap < im->nseen + n) cap *= 2;
        cs_id *p = realloc(im->seen, cap * sizeof *p);
        if (!p) return -ENOMEM;
        im->seen = p, im->capseen = cap;
    }
    memcpy(im->seen + im->nseen, ids, n * sizeof *ids);
    im->nseen += n;
    return 0;
}

static int on_manifest(const uint8_t *buf, size_t len, void *arg)
{
    struct import *im = arg;
    if (im->m) return 0; /* second pass */
    char hex[CS_ID_HEX + 1];
    int rc = cs_manifest_decode(buf, len, &im->m);
    if (rc) {
        node__errf(im->err, "the package's manifest is malformed");
        return rc;
    }
    if (im->m->has_parent) {
        rc = cs_manifest_get(im->st, &im->m->parent, &im->parent);
        if (rc == CS_ENOTFOUND || rc == CS_EMISSING) {
            node__errf(im->err, "parent manifest %s is not in this store: import or pull the base VM first",
                 cs_id_to_hex(&im->m->parent, hex));
            return CS_EMISSING;
        }
        if (rc) {
            node__errf(im->err, "parent manifest %s: %s", cs_id_to_hex(&im->m->parent, hex), cs_strerror(rc));
            return rc;
        }
        rc = cs_manifest_resolve(im->m, im->parent);
    }
    return rc;
}

static int store_batch(struct import *im, const uint8_t *chunks, const cs_id *ids, size_t n)
{
    size_t bad = 0;
    int rc = cs_put(im->st, chunks, n, ids, NULL, &bad, NULL);
    if (rc) node__errf(im->err, "storing chunks: %s", cs_strerror(rc));
    return rc;
}

static int check_ids(struct import *im, const uint8_t *chunks, const cs_id *ids, size_t n, size_t at)
{
    for (size_t i = 0; i < n; i++) {
        cs_id got;
        cs_chunk_id(chunks + i * CS_CHUNK_SIZE, &got);
        if (!cs_id_equal(&got, &ids[i]) || cs_id_is_zero(&ids[i])) {
            char hex[CS_ID_HEX + 1];
            node__errf(im->err, "chunk %s in the record at byte %zu does not match its id",
                 cs_id_to_hex(&ids[i], hex), at);
            return CS_ECORRUPT;
        }
    }
    return 0;
}

static void report_progress(struct import *im, size_t at)
{
    if (im->progress && im->storing) im->progress(at, im->buflen, im->arg);
}

static int on_block(const cs_id *ids, uint32_t n, const uint8_t *z, size_t zlen, size_t at, void *arg)
{
    struct import *im = arg;
    int rc = node__overlay_block_decode(im->dctx, z, zlen, n, im->block);
    if (rc) {
        node__errf(im->err, "block at byte %zu does not decompress", at);
        return rc;
    }
    if ((rc = check_ids(im, im->block, ids, n, at))) return rc;
    report_progress(im, at);
    if (im->storing) return store_batch(im, im->block, ids, n);
    im->rep->chunks += n;
    im->rep->block_bytes += zlen;
    return remember(im, ids, n);
}

static int on_delta(uint32_t image, uint64_t pos, const cs_id *id, const uint8_t *z, size_t zlen,
                    size_t at, void *arg)
{
    struct import *im = arg;
    char hex[CS_ID_HEX + 1];
    if (image >= im->m->nimages || pos >= im->m->images[image].nchunks ||
        !cs_id_equal(&im->m->images[image].chunks[pos], id) || !im->parent) {
        node__errf(im->err, "delta at byte %zu is for a place the manifest does not name", at);
        return CS_EFORMAT;
    }
    const cs_image *pim = cs_manifest_find_image(im->parent, im->m->images[image].name);
    if (!pim || pos >= pim->nchunks || cs_id_is_zero(&pim->chunks[pos])) {
        node__errf(im->err, "delta at byte %zu has no base chunk in the parent", at);
        return CS_EFORMAT;
    }
    uint8_t base[CS_CHUNK_SIZE];
    int rc = cs_get(im->st, &pim->chunks[pos], 1, base, NULL);
    if (rc) {
        node__errf(im->err, "base chunk %s of the delta at byte %zu: %s",
             cs_id_to_hex(&pim->chunks[pos], hex), at, cs_strerror(rc));
        return rc == CS_ENOTFOUND ? CS_EMISSING : rc;
    }
    uint8_t *out = im->storing ? im->pending + im->npending * CS_CHUNK_SIZE : im->block;
    if ((rc = node__overlay_delta_decode(im->dctx, base, z, zlen, out))) {
        node__errf(im->err, "delta at byte %zu does not decode against its base", at);
        return rc;
    }
    if ((rc = check_ids(im, out, id, 1, at))) return rc;
    if (!im->storing) {
        im->rep->chunks++;
        im->rep->delta_chunks++;
        im->rep->delta_bytes += zlen;
        return remember(im, id, 1);
    }
    im->pending_ids[im->npending++] = *id;
    report_progress(im, at);
    if (im->npending < EXPORT_BATCH) return 0;
    im->npending = 0;
    return store_batch(im, im->pending, im->pending_ids, EXPORT_BATCH);
}

/* Every chunk the manifest names explicitly is in the package or already in the store. */
static int check_complete(struct import *im)
{
    qsort(im->seen, im->nseen, sizeof *im->seen, cmp_id);
    cs_id batch[EXPORT_BATCH];
    size_t nb = 0, missing = 0;
    cs_id first_missing = {{0}};
    for (size_t i = 0; i < im->m->nimages; i++) {
        const cs_image *img = &im->m->images[i];
        for (uint64_t c = 0; c <= img->nchunks; c++) {
            bool last = i + 1 == im->m->nimages && c == img->nchunks;
            if (c < img->nchunks && !cs_id_is_zero(&img->chunks[c]) && explicit_at(img, c) &&
                !in_set(im->seen, im->nseen, &img->chunks[c]))
                batch[nb++] = img->chunks[c];
            if (nb == EXPORT_BATCH || (last && nb)) {
                uint8_t held[EXPORT_BATCH / 8];
                int64_t h = cs_has(im->st, batch, nb, held);
                if (h < 0) return (int)h;
                for (size_t k = 0; k < nb; k++)
                    if (!(held[k / 8] & (1u << (k % 8))) && missing++ == 0) first_missing = batch[k];
                nb = 0;
            }
        }
    }
    if (missing) {
        char hex[CS_ID_HEX + 1];
        node__errf(im->err, "the package lacks %zu chunks this store does not hold either (first: %s)",
             missing, cs_id_to_hex(&first_missing, hex));
        return CS_EMISSING;
    }
    return 0;
}

int node_overlay_import(cs_store *st, const uint8_t *buf, size_t len, cs_id *id,
                        cs_progress_fn progress, void *arg, node_overlay_report *report,
                        char err[NODE_ERRMSG])
{
    node_overlay_report rep = {0};
    struct import im = {.st = st, .progress = progress, .arg = arg, .rep = &rep, .err = err,
                        .buflen = len};
    static const node__overlay_visitor visit = {on_manifest, on_block, on_delta};
    im.dctx = ZSTD_createDCtx();
    im.block = malloc((size_t)BLOCK_CHUNKS * CS_CHUNK_SIZE);
    im.pending = malloc((size_t)EXPORT_BATCH * CS_CHUNK_SIZE);
    int rc = im.dctx && im.block && im.pending ? 0 : -ENOMEM;
    if (rc == 0) rc = cs_ingest_begin(st);
    if (rc) goto out;
    rc = node__overlay_parse(buf, len, &visit, &im, err);
    if (rc == 0) rc = check_complete(&im);
    if (rc == 0) {
        im.storing = true;
        rc = node__overlay_parse(buf, len, &visit, &im, err);
        if (rc == 0 && im.npending) rc = store_batch(&im, im.pending, im.pending_ids, im.npending);
        uint64_t mlen = get_le(buf + 8, 4);
        if (rc == 0) rc = cs_manifest_put(st, buf + OV_HDR, (size_t)mlen, true, id);
        if (rc) node__errf(err, "storing the package: %s", cs_strerror(rc));
    }
    cs_ingest_end(st);
    rep.file_bytes = len;
out:
    if (report) *report = rep;
    ZSTD_freeDCtx(im.dctx);
    free(im.block), free(im.pending), free(im.seen);
    cs_manifest_free(im.m);
    cs_manifest_free(im.parent);
    return rc;
}
