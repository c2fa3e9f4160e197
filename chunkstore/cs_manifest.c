/*
 * cs_manifest.c — the manifest's canonical encoding (docs/manifest.md).
 *
 * Design notes: a manifest names its images' chunks as runs of positions. A root manifest lists
 * only its non-zero chunks (gaps are zero); a derived manifest lists only the positions where it
 * differs from its parent (gaps inherit), with ZERO runs for positions it cleared. So a derived
 * manifest grows with the change, not with the VM. The decoder accepts exactly one encoding per
 * manifest (runs ordered, maximal, in bounds; no trailing bytes), bounds every allocation by the
 * input length or max_chunks, and never trusts a count before checking the bytes are there.
 */
#include "cs_internal.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "CLMF"
#define VERSION 1u
#define FLAG_PARENT 1u
#define MAX_XML (16u << 20)
#define MAX_IMAGES 4096u
#define RUN_ZERO 0u
#define RUN_DATA 1u

cs_manifest *cs_manifest_new(void)
{
    cs_manifest *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (!(m->xml = strdup(""))) {
        free(m);
        return NULL;
    }
    return m;
}

static void image_clear(cs_image *im)
{
    free(im->name);
    free(im->chunks);
    free(im->explicit_mask);
}

void cs_manifest_free(cs_manifest *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->nimages; i++) image_clear(&m->images[i]);
    free(m->images);
    free(m->xml);
    free(m);
}

int cs_manifest_set_xml(cs_manifest *m, const char *xml)
{
    if (strlen(xml) > MAX_XML) return CS_EFORMAT;
    char *copy = strdup(xml);
    if (!copy) return -ENOMEM;
    free(m->xml);
    m->xml = copy;
    return 0;
}

cs_image *cs_manifest_find_image(const cs_manifest *m, const char *name)
{
    for (size_t i = 0; i < m->nimages; i++)
        if (strcmp(m->images[i].name, name) == 0) return &m->images[i];
    return NULL;
}

static uint64_t chunks_for(uint64_t length)
{
    return length / CS_CHUNK_SIZE + (length % CS_CHUNK_SIZE != 0);
}

cs_image *cs_manifest_add_image(cs_manifest *m, uint8_t kind, const char *name, uint64_t length)
{
    size_t nlen = strlen(name);
    if (kind > CS_IMAGE_KIND_MAX || nlen == 0 || nlen > 255 || m->nimages >= MAX_IMAGES ||
        cs_manifest_find_image(m, name) || chunks_for(length) > CS__MANIFEST_MAX_CHUNKS)
        return NULL;
    cs_image *imgs = realloc(m->images, (m->nimages + 1) * sizeof *imgs);
    if (!imgs) return NULL;
    m->images = imgs;
    cs_image *im = &imgs[m->nimages];
    memset(im, 0, sizeof *im);
    im->kind = kind;
    im->length = length;
    im->nchunks = chunks_for(length);
    im->name = strdup(name);
    im->chunks = calloc(im->nchunks ? im->nchunks : 1, sizeof *im->chunks);
    if (!im->name || !im->chunks) {
        image_clear(im);
        return NULL;
    }
    m->nimages++;
    return im;
}

void cs_manifest_id(const uint8_t *buf, size_t len, cs_id *id)
{
    crypto_generichash(id->b, CS_ID_BYTES, buf, len, NULL, 0);
}

/* ---- encoding -------------------------------------------------------------------------------- */

struct wbuf {
    uint8_t *p;
    size_t len, cap;
    int err;
};

static void w_bytes(struct wbuf *w, const void *src, size_t n)
{
    if (w->err) return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n) cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            w->err = -ENOMEM;
            return;
        }
        w->p = p, w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

static void w_le(struct wbuf *w, uint64_t v, unsigned n)
{
    uint8_t b[8];
    for (unsigned i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    w_bytes(w, b, n);
}

/* Position state relative to the parent: 0 = same as parent (not written), 1 = differs. */
static bool differs(const cs_image *im, const cs_image *pim, uint64_t i)
{
    if (!pim) return !cs_id_is_zero(&im->chunks[i]);
    const cs_id *pid = i < pim->nchunks ? &pim->chunks[i] : &cs_zero_id;
    return !cs_id_equal(&im->chunks[i], pid);
}

static void encode_image(struct wbuf *w, const cs_image *im, const cs_image *pim, bool derived)
{
    size_t nlen = strlen(im->name);
    w_le(w, im->kind, 1);
    w_le(w, nlen, 1);
    w_bytes(w, im->name, nlen);
    w_le(w, im->length, 8);
    size_t count_at = w->len;
    w_le(w, 0, 4);
    uint32_t nruns = 0;
    for (uint64_t i = 0; i < im->nchunks;) {
        if (!(derived ? differs(im, pim, i) : !cs_id_is_zero(&im->chunks[i]))) {
            i++;
            continue;
        }
        bool zero = cs_id_is_zero(&im->chunks[i]);
        uint64_t j = i + 1;
        while (j < im->nchunks && j - i < UINT32_MAX &&
               (derived ? differs(im, pim, j) : !cs_id_is_zero(&im->chunks[j])) &&
               cs_id_is_zero(&im->chunks[j]) == zero)
            j++;
        w_le(w, i, 8);
        w_le(w, j - i, 4);
        w_le(w, zero ? RUN_ZERO : RUN_DATA, 1);
        if (!zero) w_bytes(w, im->chunks + i, (size_t)(j - i) * CS_ID_BYTES);
        nruns++;
        i = j;
    }
    if (!w->err)
        for (unsigned b = 0; b < 4; b++) w->p[count_at + b] = (uint8_t)(nruns >> (8 * b));
}

int cs_manifest_encode(const cs_manifest *m, const cs_manifest *parent, uint8_t **buf,
                       size_t *len, cs_id *id)
{
    if (m->has_parent && !parent) return CS_EMISSING;
    size_t xlen = strlen(m->xml);
    if (xlen > MAX_XML || m->nimages > MAX_IMAGES) return CS_EFORMAT;
    struct wbuf w = {0};
    w_bytes(&w, MAGIC, 4);
    w_le(&w, VERSION, 1);
    w_le(&w, m->has_parent ? FLAG_PARENT : 0, 1);
    if (m->has_parent) w_bytes(&w, m->parent.b, CS_ID_BYTES);
    w_le(&w, xlen, 4);
    w_bytes(&w, m->xml, xlen);
    w_le(&w, m->nimages, 4);
    for (size_t i = 0; i < m->nimages; i++) {
        const cs_image *pim = m->has_parent ? cs_manifest_find_image(parent, m->images[i].name)
                                            : NULL;
        encode_image(&w, &m->images[i], pim, m->has_parent);
    }
    if (w.err) {
        free(w.p);
        return w.err;
    }
    if (id) cs_manifest_id(w.p, w.len, id);
    *buf = w.p;
    *len = w.len;
    return 0;
}

/* ---- decoding -------------------------------------------------------------------------------- */

struct rbuf {
    const uint8_t *p;
    size_t len, off;
};

static bool r_le(struct rbuf *r, unsigned n, uint64_t *v)
{
    if (r->len - r->off < n) return false;
    uint64_t x = 0;
    for (unsigned i = 0; i < n; i++) x |= (uint64_t)r->p[r->off + i] << (8 * i);
    r->off += n;
    *v = x;
    return true;
}

static const uint8_t *r_take(struct rbuf *r, size_t n)
{
    if (r->len - r->off < n) return NULL;
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

static int decode_image(struct rbuf *r, cs_manifest *m, bool derived, uint64_t *budget)
{
    uint64_t kind, nlen, length, nruns;
    const uint8_t *name;
    if (!r_le(r, 1, &kind) || !r_le(r, 1, &nlen) || !(name = r_take(r, nlen)) ||
        !r_le(r, 8, &length) || !r_le(r, 4, &nruns))
        return CS_EFORMAT;
    if (kind > CS_IMAGE_KIND_MAX || nlen == 0 || memchr(name, 0, nlen)) return CS_EFORMAT;
    uint64_t nchunks = chunks_for(length);
    if (nchunks > *budget) return CS_EFORMAT;
    *budget -= nchunks;
    char namez[256];
    memcpy(namez, name, nlen);
    namez[nlen] = '\0';
    if (cs_manifest_find_image(m, namez)) return CS_EFORMAT;
    cs_image *im = cs_manifest_add_image(m, (uint8_t)kind, namez, length);
    if (!im) return -ENOMEM;
    if (derived && !(im->explicit_mask = calloc(nchunks / 8 + 1, 1))) return -ENOMEM;

    uint64_t end_prev = 0, type_prev = 2;
    for (uint64_t k = 0; k < nruns; k++) {
        uint64_t start, count, type;
        if (!r_le(r, 8, &start) || !r_le(r, 4, &count) || !r_le(r, 1, &type)) return CS_EFORMAT;
        if (count == 0 || type > RUN_DATA || (type == RUN_ZERO && !derived)) return CS_EFORMAT;
        if (start < end_prev || start > nchunks || count > nchunks - start) return CS_EFORMAT;
        /* Canonical: touching runs of one type would have been one run. */
        if (k > 0 && start == end_prev && type == type_prev) return CS_EFORMAT;
        if (type == RUN_DATA) {
            const uint8_t *ids = r_take(r, (size_t)count * CS_ID_BYTES);
            if (!ids) return CS_EFORMAT;
            memcpy(im->chunks + start, ids, (size_t)count * CS_ID_BYTES);
            for (uint64_t i = start; i < start + count; i++)
                if (cs_id_is_zero(&im->chunks[i])) return CS_EFORMAT;
        }
        if (derived)
            for (uint64_t i = start; i < start + count; i++)
                im->explicit_mask[i / 8] |= (uint8_t)(1u << (i % 8));
        end_prev = start + count;
        type_prev = type;
    }
    return 0;
}

int cs__manifest_decode(const uint8_t *buf, size_t len, uint64_t max_chunks, cs_manifest **out)
{
    struct rbuf r = {buf, len, 0};
    const uint8_t *magic = r_take(&r, 4);
    uint64_t version, flags, xlen, nimages;
    if (!magic || memcmp(magic, MAGIC, 4) != 0 || !r_le(&r, 1, &version)) return CS_EFORMAT;
    if (version != VERSION) return CS_EVERSION;
    if (!r_le(&r, 1, &flags) || (flags & ~(uint64_t)FLAG_PARENT)) return CS_EFORMAT;
    cs_manifest *m = cs_manifest_new();
    if (!m) return -ENOMEM;
    int rc = CS_EFORMAT;
    if (flags & FLAG_PARENT) {
        const uint8_t *pid = r_take(&r, CS_ID_BYTES);
        if (!pid) goto fail;
        m->has_parent = true;
        memcpy(m->parent.b, pid, CS_ID_BYTES);
    }
    const uint8_t *xml;
    if (!r_le(&r, 4, &xlen) || xlen > MAX_XML || !(xml = r_take(&r, xlen)) ||
        memchr(xml, 0, xlen))
        goto fail;
    char *x = malloc(xlen + 1);
    if (!x) {
        rc = -ENOMEM;
        goto fail;
    }
    memcpy(x, xml, xlen);
    x[xlen] = '\0';
    free(m->xml);
    m->xml = x;
    if (!r_le(&r, 4, &nimages) || nimages > MAX_IMAGES) goto fail;
    uint64_t budget = max_chunks;
    for (uint64_t i = 0; i < nimages; i++)
        if ((rc = decode_image(&r, m, m->has_parent, &budget))) goto fail;
    rc = CS_EFORMAT;
    if (r.off != r.len) goto fail;
    *out = m;
    return 0;
fail:
    cs_manifest_free(m);
    return rc;
}

int cs_manifest_decode(const uint8_t *buf, size_t len, cs_manifest **out)
{
    return cs__manifest_decode(buf, len, CS__MANIFEST_MAX_CHUNKS, out);
}

int cs_manifest_decode_limit(const uint8_t *buf, size_t len, uint64_t max_positions,
                             cs_manifest **out)
{
    if (max_positions > CS__MANIFEST_MAX_CHUNKS) max_positions = CS__MANIFEST_MAX_CHUNKS;
    return cs__manifest_decode(buf, len, max_positions, out);
}

int cs_manifest_resolve(cs_manifest *m, const cs_manifest *parent)
{
    if (!m->has_parent) return 0;
    for (size_t i = 0; i < m->nimages; i++) {
        cs_image *im = &m->images[i];
        const cs_image *pim = cs_manifest_find_image(parent, im->name);
        if (!im->explicit_mask) continue; /* built in memory, already whole */
        for (uint64_t k = 0; k < im->nchunks; k++) {
            if (im->explicit_mask[k / 8] & (1u << (k % 8))) continue;
            im->chunks[k] = pim && k < pim->nchunks ? pim->chunks[k] : cs_zero_id;
        }
    }
    return 0;
}

int cs__manifest_each_explicit(const cs_manifest *m, int (*fn)(const cs_id *id, void *arg),
                               void *arg)
{
    for (size_t i = 0; i < m->nimages; i++) {
        const cs_image *im = &m->images[i];
        for (uint64_t k = 0; k < im->nchunks; k++) {
            if (cs_id_is_zero(&im->chunks[k])) continue;
            if (im->explicit_mask && !(im->explicit_mask[k / 8] & (1u << (k % 8)))) continue;
            int rc = fn(&im->chunks[k], arg);
            if (rc) return rc;
        }
    }
    return 0;
}
