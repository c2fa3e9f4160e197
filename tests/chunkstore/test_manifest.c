/* Manifests: the canonical encoding, storage, pins, names and garbage collection. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "cs_internal.h"
#include "testlib.h"

static cs_store *open_new(char **dir)
{
    *dir = tl_tmpdir();
    cs_store *st;
    CHECK_OK(cs_open(*dir, CS_OPEN_CREATE, &st));
    return st;
}

static void done(cs_store *st, char *dir)
{
    cs_close(st);
    tl_rmtree(dir);
    free(dir);
}

static cs_id fake_id(unsigned i)
{
    cs_id id;
    tl_fill_random(id.b, sizeof id.b, 7000 + i);
    return id;
}

/* A root manifest with one disk: positions 0..n-1, every third zero. */
static cs_manifest *root_manifest(uint64_t n)
{
    cs_manifest *m = cs_manifest_new();
    CHECK_OK(cs_manifest_set_xml(m, "<domain type='qemu'><name>base</name></domain>"));
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", n * CS_CHUNK_SIZE - 100);
    CHECK(im != NULL);
    CHECK_EQ(im->nchunks, n);
    for (uint64_t i = 0; i < n; i++) im->chunks[i] = i % 3 == 2 ? cs_zero_id : fake_id((unsigned)i);
    return m;
}

static void root_manifest_round_trips_bit_exactly(void)
{
    cs_manifest *m = root_manifest(100);
    CHECK(cs_manifest_add_image(m, CS_IMAGE_RAM, "pc.ram", 8 * CS_CHUNK_SIZE) != NULL);
    CHECK(cs_manifest_add_image(m, CS_IMAGE_RAM, "pc.ram", 1) == NULL); /* names are unique */
    uint8_t *buf, *buf2;
    size_t len, len2;
    cs_id id, id2;
    CHECK_OK(cs_manifest_encode(m, NULL, &buf, &len, &id));
    cs_manifest *d;
    CHECK_OK(cs_manifest_decode(buf, len, &d));
    CHECK_STR(d->xml, m->xml);
    CHECK_EQ(d->nimages, 2);
    CHECK_EQ(d->images[0].length, m->images[0].length);
    CHECK_MEM(d->images[0].chunks, m->images[0].chunks, 100 * sizeof(cs_id));
    CHECK_OK(cs_manifest_encode(d, NULL, &buf2, &len2, &id2));
    CHECK_EQ(len2, len);
    CHECK_MEM(buf2, buf, len);
    CHECK(cs_id_equal(&id, &id2));
    free(buf), free(buf2);
    cs_manifest_free(d);
    cs_manifest_free(m);
}

static void derived_manifest_records_only_the_differences(void)
{
    cs_manifest *base = root_manifest(10000);
    uint8_t *bbuf, *cbuf;
    size_t blen, clen;
    cs_id bid;
    CHECK_OK(cs_manifest_encode(base, NULL, &bbuf, &blen, &bid));

    cs_manifest *child = root_manifest(10000);
    child->has_parent = true;
    child->parent = bid;
    cs_image *im = &child->images[0];
    im->chunks[5] = fake_id(99999);  /* changed */
    im->chunks[6] = cs_zero_id;      /* cleared */
    im->chunks[2] = fake_id(88888);  /* was zero */
    CHECK_OK(cs_manifest_encode(child, base, &cbuf, &clen, NULL));
    CHECK(clen < 250); /* three positions, not ten thousand */
    CHECK(blen > 10000 * 2 / 3 * CS_ID_BYTES);

    cs_manifest *d;
    CHECK_OK(cs_manifest_decode(cbuf, clen, &d));
    CHECK(d->has_parent);
    CHECK(cs_id_equal(&d->parent, &bid));
    CHECK_OK(cs_manifest_resolve(d, base));
    CHECK_MEM(d->images[0].chunks, im->chunks, 10000 * sizeof(cs_id));
    free(bbuf), free(cbuf);
    cs_manifest_free(d), cs_manifest_free(child), cs_manifest_free(base);
}

static void decoder_rejects_malformed_and_non_canonical_bytes(void)
{
    cs_manifest *m = root_manifest(20);
    uint8_t *buf;
    size_t len;
    CHECK_OK(cs_manifest_encode(m, NULL, &buf, &len, NULL));
    cs_manifest *d;
    for (size_t cut = 0; cut < len; cut++) CHECK_EQ(cs_manifest_decode(buf, cut, &d), CS_EFORMAT);
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    CHECK_EQ(cs_manifest_decode(longer, len + 1, &d), CS_EFORMAT);
    buf[4] = 2; /* version */
    CHECK_EQ(cs_manifest_decode(buf, len, &d), CS_EVERSION);
    buf[4] = 1;
    /* Split the first run (positions 0..1) into two touching runs of one type: same manifest,
     * another encoding, refused. Layout: header 6, xml 4+n, nimages 4, kind 1, nlen 1, name 4,
     * length 8, nruns 4, then run 0: start 8, count 4, type 1, ids. */
    size_t xlen = strlen(m->xml);
    size_t img = 6 + 4 + xlen + 4;
    size_t run0 = img + 1 + 1 + 4 + 8 + 4;
    CHECK_EQ(buf[run0 + 8], 2); /* count of run 0 */
    size_t nlen2 = len + 13;
    uint8_t *split = malloc(nlen2);
    size_t at = run0 + 13 + CS_ID_BYTES; /* after run 0's header and first id */
    memcpy(split, buf, at);
    split[run0 + 8] = 1;
    uint8_t hdr[13] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}; /* start 1, count 1, DATA */
    memcpy(split + at, hdr, 13);
    memcpy(split + at + 13, buf + at, len - at);
    split[img + 14] += 1; /* nruns + 1 */
    CHECK_EQ(cs_manifest_decode(split, nlen2, &d), CS_EFORMAT);
    free(split), free(longer), free(buf);
    cs_manifest_free(m);
}

static void derived_manifest_needs_its_parent_in_the_store(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    cs_manifest *base = root_manifest(10), *child = root_manifest(10);
    uint8_t *bbuf, *cbuf;
    size_t blen, clen;
    cs_id bid, cid;
    CHECK_OK(cs_manifest_encode(base, NULL, &bbuf, &blen, &bid));
    child->has_parent = true, child->parent = bid;
    child->images[0].chunks[0] = fake_id(5555);
    CHECK_OK(cs_manifest_encode(child, base, &cbuf, &clen, &cid));
    CHECK_EQ(cs_manifest_put(st, cbuf, clen, true, NULL), CS_EMISSING);
    CHECK_OK(cs_manifest_put(st, bbuf, blen, false, NULL));
    CHECK_OK(cs_manifest_put(st, cbuf, clen, true, NULL));
    cs_manifest *got;
    CHECK_OK(cs_manifest_get(st, &cid, &got)); /* resolved through the parent */
    CHECK_MEM(got->images[0].chunks, child->images[0].chunks, 10 * sizeof(cs_id));
    cs_manifest_free(got);
    free(bbuf), free(cbuf);
    cs_manifest_free(base), cs_manifest_free(child);
    done(st, dir);
}

/* Stores n distinct chunks and a root manifest naming them; returns the manifest id. */
static cs_id store_file(cs_store *st, size_t n, uint64_t seed, bool pin, cs_id *ids)
{
    uint8_t *data = malloc(n * CS_CHUNK_SIZE);
    for (size_t i = 0; i < n; i++) {
        memset(data + i * CS_CHUNK_SIZE, 'x', CS_CHUNK_SIZE);
        tl_fill_random(data + i * CS_CHUNK_SIZE, 32, seed * 100000 + i);
    }
    CHECK_OK(cs_ingest_begin(st));
    CHECK_OK(cs_put(st, data, n, NULL, ids, NULL, NULL));
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", n * CS_CHUNK_SIZE);
    memcpy(im->chunks, ids, n * sizeof *ids);
    uint8_t *buf;
    size_t len;
    cs_id id;
    CHECK_OK(cs_manifest_encode(m, NULL, &buf, &len, NULL));
    CHECK_OK(cs_manifest_put(st, buf, len, pin, &id));
    cs_ingest_end(st);
    free(buf), free(data);
    cs_manifest_free(m);
    return id;
}

static void gc_frees_what_no_pinned_manifest_names(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    cs_id a[100], b[100];
    cs_id ma = store_file(st, 100, 1, true, a);
    cs_id mb = store_file(st, 100, 2, true, b);
    CHECK_OK(cs_name_set(st, "bee", &mb));
    CHECK_OK(cs_manifest_note_set(st, &mb, "{}", 2));
    CHECK_OK(cs_manifest_unpin(st, &mb));
    cs_gc_report r;
    CHECK_OK(cs_gc(st, false, &r));
    CHECK_EQ(r.manifests_removed, 1);
    CHECK_EQ(r.chunks_removed, 100);
    CHECK(r.bytes_reclaimed > 0);
    uint8_t bm[13];
    CHECK_EQ(cs_has(st, b, 100, bm), 0);
    CHECK_EQ(cs_has(st, a, 100, bm), 100);
    cs_id got;
    CHECK_EQ(cs_name_get(st, "bee", &got), CS_ENOTFOUND);
    uint8_t *note;
    size_t nlen;
    CHECK_EQ(cs_manifest_note_get(st, &mb, &note, &nlen), CS_ENOTFOUND); /* gone with it */
    uint8_t *raw;
    size_t len;
    CHECK_EQ(cs_manifest_get_raw(st, &mb, &raw, &len), CS_ENOTFOUND);
    CHECK_OK(cs_manifest_get_raw(st, &ma, &raw, &len));
    free(raw);
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.chunks, 100);
    CHECK_EQ(s.manifests, 1);
    cs_verify_report vr;
    CHECK_OK(cs_verify(st, NULL, NULL, NULL, &vr));
    CHECK_EQ(vr.bad_chunks + vr.bad_index + vr.bad_manifests, 0);
    done(st, dir);
}

static void gc_keeps_the_parent_of_a_pinned_child(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    cs_id ids[10];
    cs_id base = store_file(st, 10, 3, false, ids); /* unpinned base */
    cs_manifest *p;
    CHECK_OK(cs_manifest_get(st, &base, &p));
    cs_manifest *c = cs_manifest_new();
    c->has_parent = true, c->parent = base;
    cs_image *im = cs_manifest_add_image(c, CS_IMAGE_FILE, "file", 10 * CS_CHUNK_SIZE);
    memcpy(im->chunks, ids, sizeof ids);
    im->chunks[0] = cs_zero_id;
    uint8_t *buf;
    size_t len;
    CHECK_OK(cs_manifest_encode(c, p, &buf, &len, NULL));
    CHECK_OK(cs_manifest_put(st, buf, len, true, NULL));
    cs_gc_report r;
    CHECK_OK(cs_gc(st, false, &r));
    CHECK_EQ(r.manifests_removed, 0);
    uint8_t bm[2];
    CHECK_EQ(cs_has(st, ids, 10, bm), 10);
    free(buf);
    cs_manifest_free(p), cs_manifest_free(c);
    done(st, dir);
}

static void gc_rewrites_sparse_segments_and_every_live_chunk_stays_readable(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    /* Interleave two files in the same segments: put both, then drop one. */
    size_t n = 4 * CS__SEG_SLOTS;
    uint8_t *data = malloc(n * CS_CHUNK_SIZE);
    for (size_t i = 0; i < n; i++) {
        memset(data + i * CS_CHUNK_SIZE, (int)(i & 0xff), CS_CHUNK_SIZE);
        tl_fill_random(data + i * CS_CHUNK_SIZE, 16, 4242 + i);
    }
    cs_id *ids = calloc(n, sizeof *ids);
    CHECK_OK(cs_ingest_begin(st));
    CHECK_OK(cs_put(st, data, n, NULL, ids, NULL, NULL));
    cs_id keep_m = {{0}}, drop_m = {{0}};
    for (int which = 0; which < 2; which++) {
        cs_manifest *m = cs_manifest_new();
        cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", n / 4 * CS_CHUNK_SIZE);
        /* "keep" names every fourth chunk, "drop" the rest. */
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if ((i % 4 == 0) == (which == 0) && k < im->nchunks) im->chunks[k++] = ids[i];
        if (which == 1) {
            cs_manifest_free(m);
            m = cs_manifest_new();
            im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", n * 3 / 4 * CS_CHUNK_SIZE);
            k = 0;
            for (size_t i = 0; i < n; i++)
                if (i % 4 != 0) im->chunks[k++] = ids[i];
        }
        uint8_t *buf;
        size_t len;
        CHECK_OK(cs_manifest_encode(m, NULL, &buf, &len, NULL));
        CHECK_OK(cs_manifest_put(st, buf, len, which == 0, which == 0 ? &keep_m : &drop_m));
        free(buf);
        cs_manifest_free(m);
    }
    cs_ingest_end(st);
    cs_stats before, after;
    CHECK_OK(cs_stats_get(st, &before));
    cs_gc_report r;
    CHECK_OK(cs_gc(st, false, &r));
    CHECK_EQ(r.chunks_removed, n * 3 / 4);
    CHECK_EQ(r.segments_rewritten, 4);
    CHECK_OK(cs_stats_get(st, &after));
    CHECK_EQ(after.chunks, n / 4);
    CHECK(after.stored_bytes < before.stored_bytes);
    CHECK_EQ(after.segments, 1);
    uint8_t *out = malloc(CS_CHUNK_SIZE);
    for (size_t i = 0; i < n; i += 4) {
        CHECK_OK(cs_get(st, &ids[i], 1, out, NULL));
        CHECK_MEM(out, data + i * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    }
    cs_verify_report vr;
    CHECK_OK(cs_verify(st, NULL, NULL, NULL, &vr));
    CHECK_EQ(vr.chunks_checked, n / 4);
    CHECK_EQ(vr.bad_chunks + vr.bad_index + vr.bad_manifests, 0);
    free(out), free(ids), free(data);
    done(st, dir);
}

static void manifest_may_name_chunks_before_they_arrive(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    uint8_t data[3 * CS_CHUNK_SIZE];
    tl_fill_random(data, sizeof data, 77);
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", sizeof data);
    for (int i = 0; i < 3; i++) cs_chunk_id(data + i * CS_CHUNK_SIZE, &im->chunks[i]);
    uint8_t *buf;
    size_t len;
    CHECK_OK(cs_manifest_encode(m, NULL, &buf, &len, NULL));
    CHECK_OK(cs_manifest_put(st, buf, len, true, NULL));
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.referenced_missing, 3);
    CHECK_EQ(s.chunks, 0);
    uint8_t bm[1];
    CHECK_EQ(cs_has(st, im->chunks, 3, bm), 0);
    CHECK_OK(cs_put(st, data, 3, im->chunks, NULL, NULL, NULL));
    CHECK_OK(cs_stats_get(st, &s));
    CHECK_EQ(s.referenced_missing, 0);
    CHECK_EQ(s.chunks, 3);
    cs_gc_report r; /* referenced since before they arrived: GC keeps them */
    CHECK_OK(cs_gc(st, false, &r));
    CHECK_EQ(r.chunks_removed, 0);
    CHECK_EQ(cs_has(st, im->chunks, 3, bm), 3);
    free(buf);
    cs_manifest_free(m);
    done(st, dir);
}

static int count_names(const char *name, const cs_id *id, void *arg)
{
    (void)id;
    int *n = arg;
    CHECK(!strcmp(name, *n == 0 ? "api" : "web")); /* in name order */
    (*n)++;
    return 0;
}

static void names_point_at_manifests(void)
{
    char *dir;
    cs_store *st = open_new(&dir);
    cs_id ids[2], got;
    cs_id m = store_file(st, 2, 9, true, ids);
    CHECK_OK(cs_name_set(st, "web", &m));
    CHECK_OK(cs_name_get(st, "web", &got));
    CHECK(cs_id_equal(&got, &m));
    CHECK_EQ(cs_name_get(st, "nope", &got), CS_ENOTFOUND);
    CHECK_EQ(cs_name_set(st, "", &m), CS_EFORMAT);
    uint8_t *note;
    size_t nlen;
    CHECK_OK(cs_manifest_note_set(st, &m, "report", 6));
    CHECK_OK(cs_manifest_note_get(st, &m, &note, &nlen));
    CHECK_EQ(nlen, 6);
    CHECK_MEM(note, "report", 6);
    free(note);
    cs_id unknown = {{1}};
    CHECK_EQ(cs_manifest_note_set(st, &unknown, "x", 1), CS_ENOTFOUND);
    CHECK_OK(cs_name_set(st, "api", &m));
    int count = 0;
    CHECK_OK(cs_name_list(st, count_names, &count));
    CHECK_EQ(count, 2);
    CHECK_OK(cs_name_del(st, "web"));
    CHECK_EQ(cs_name_get(st, "web", &got), CS_ENOTFOUND);
    done(st, dir);
}

TL_MAIN(TL_CASE(root_manifest_round_trips_bit_exactly),
        TL_CASE(derived_manifest_records_only_the_differences),
        TL_CASE(decoder_rejects_malformed_and_non_canonical_bytes),
        TL_CASE(derived_manifest_needs_its_parent_in_the_store),
        TL_CASE(gc_frees_what_no_pinned_manifest_names),
        TL_CASE(gc_keeps_the_parent_of_a_pinned_child),
        TL_CASE(gc_rewrites_sparse_segments_and_every_live_chunk_stays_readable),
        TL_CASE(manifest_may_name_chunks_before_they_arrive), TL_CASE(names_point_at_manifests))
