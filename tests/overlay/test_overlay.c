/* Overlay packages: export from one store, import into another that holds the parent. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "node.h"
#include "testlib.h"

#include <sodium.h>
#include <zstd.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define N 600 /* chunks per image */

struct world {
    char *dir;
    cs_store *a, *b; /* a: exporter, b: importer */
    cs_id base, child;
    uint8_t *base_data, *child_data;
    cs_id base_ids[N], child_ids[N];
};

static cs_store *open_at(const char *dir, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0) abort();
    cs_store *st;
    CHECK_OK(cs_open(p, CS_OPEN_CREATE, &st));
    free(p);
    return st;
}

static cs_id put_manifest(cs_store *st, const cs_id *ids, const cs_manifest *parent, const cs_id *pid)
{
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", (uint64_t)N * CS_CHUNK_SIZE);
    memcpy(im->chunks, ids, N * sizeof *ids);
    if (parent) m->has_parent = true, m->parent = *pid;
    uint8_t *buf;
    size_t len;
    cs_id id;
    CHECK_OK(cs_manifest_encode(m, parent, &buf, &len, NULL));
    CHECK_OK(cs_manifest_put(st, buf, len, true, &id));
    free(buf);
    cs_manifest_free(m);
    return id;
}

/* The base: text-like chunks. The child: 20 chunks with a few bytes changed (deltas), nrandom
 * (30 unless a test wants a smaller package) new random chunks, one of them twice, 10 chunks
 * moved from elsewhere in the base (dedup), 5 zeroed. */
static size_t nrandom = 30;

static void build(struct world *w, bool import_base_into_b)
{
    w->dir = tl_tmpdir();
    w->a = open_at(w->dir, "a");
    w->b = open_at(w->dir, "b");
    w->base_data = malloc((size_t)N * CS_CHUNK_SIZE);
    w->child_data = malloc((size_t)N * CS_CHUNK_SIZE);
    for (size_t i = 0; i < N; i++) {
        uint8_t *c = w->base_data + i * CS_CHUNK_SIZE;
        for (size_t k = 0; k < CS_CHUNK_SIZE; k++) c[k] = (uint8_t)("the quick brown fox "[k % 20] + i % 7);
        tl_fill_random(c, 16, i);
    }
    memcpy(w->child_data, w->base_data, (size_t)N * CS_CHUNK_SIZE);
    for (size_t i = 100; i < 120; i++) tl_fill_random(w->child_data + i * CS_CHUNK_SIZE + 1000, 8, 5000 + i);
    tl_fill_random(w->child_data + 200 * CS_CHUNK_SIZE, nrandom * CS_CHUNK_SIZE, 77);
    for (size_t i = 300; i < 310; i++)
        memcpy(w->child_data + i * CS_CHUNK_SIZE, w->base_data + (i + 100) * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    memset(w->child_data + 400 * CS_CHUNK_SIZE, 0, 5 * CS_CHUNK_SIZE);
    /* A new chunk twice: carried once, its second place names the first. */
    memcpy(w->child_data + 450 * CS_CHUNK_SIZE, w->child_data + 200 * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    CHECK_OK(cs_put(w->a, w->base_data, N, NULL, w->base_ids, NULL, NULL));
    CHECK_OK(cs_put(w->a, w->child_data, N, NULL, w->child_ids, NULL, NULL));
    w->base = put_manifest(w->a, w->base_ids, NULL, NULL);
    cs_manifest *bm;
    CHECK_OK(cs_manifest_get(w->a, &w->base, &bm));
    w->child = put_manifest(w->a, w->child_ids, bm, &w->base);
    cs_manifest_free(bm);
    if (import_base_into_b) {
        CHECK_OK(cs_put(w->b, w->base_data, N, NULL, NULL, NULL, NULL));
        cs_id again = put_manifest(w->b, w->base_ids, NULL, NULL);
        CHECK(cs_id_equal(&again, &w->base));
    }
}

static void teardown(struct world *w)
{
    cs_close(w->a);
    cs_close(w->b);
    tl_rmtree(w->dir);
    free(w->dir), free(w->base_data), free(w->child_data);
}

static uint8_t *export_pkg(struct world *w, size_t *len, node_overlay_report *r)
{
    char *path;
    if (asprintf(&path, "%s/pkg", w->dir) < 0) abort();
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    char err[NODE_ERRMSG];
    CHECK_OK(node_overlay_export(w->a, &w->child, fd, 19, NULL, NULL, r, err));
    struct stat sb;
    CHECK_OK(fstat(fd, &sb));
    *len = (size_t)sb.st_size;
    uint8_t *buf = malloc(*len);
    CHECK_EQ(pread(fd, buf, *len, 0), (ssize_t)*len);
    close(fd);
    free(path);
    return buf;
}

static void import_restores_the_vm_bit_exactly(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    CHECK_EQ(r.file_bytes, len);
    cs_id id;
    char err[NODE_ERRMSG];
    node_overlay_report ri;
    CHECK_OK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, &ri, err));
    CHECK(cs_id_equal(&id, &w.child));
    CHECK_EQ(ri.chunks, r.chunks);
    cs_manifest *m;
    CHECK_OK(cs_manifest_get(w.b, &id, &m));
    uint8_t *out = malloc((size_t)N * CS_CHUNK_SIZE);
    CHECK_OK(cs_get(w.b, m->images[0].chunks, N, out, NULL));
    CHECK_MEM(out, w.child_data, (size_t)N * CS_CHUNK_SIZE);
    free(out), free(pkg);
    cs_manifest_free(m);
    teardown(&w);
}

static void package_holds_only_what_the_parent_lacks(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    /* 20 changed + 30 new; the moved and zeroed chunks cost nothing. */
    CHECK_EQ(r.chunks, 50);
    CHECK_EQ(r.delta_chunks, 20);
    CHECK(r.delta_bytes < 20 * 100); /* a few changed bytes each */
    CHECK(len < 30 * CS_CHUNK_SIZE + 20 * 200 + 4096);
    free(pkg);
    teardown(&w);
}

static void damaged_or_truncated_package_stores_nothing(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    cs_stats before, after;
    CHECK_OK(cs_stats_get(w.b, &before));
    char err[NODE_ERRMSG];
    cs_id id;
    for (size_t cut = 0; cut < len; cut += len / 97 + 1) {
        CHECK(node_overlay_import(w.b, pkg, cut, &id, NULL, NULL, NULL, err) != 0);
        CHECK(strstr(err, "truncated") || strstr(err, "not an overlay"));
    }
    for (size_t at = 0; at < len; at += len / 41 + 1) {
        pkg[at] ^= 0x20;
        CHECK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) != 0);
        pkg[at] ^= 0x20;
    }
    CHECK_OK(cs_stats_get(w.b, &after));
    CHECK_EQ(after.chunks, before.chunks);
    CHECK_EQ(after.manifests, before.manifests);
    free(pkg);
    teardown(&w);
}

static void rehash(uint8_t *pkg, size_t len)
{
    crypto_generichash(pkg + len - 32, 32, pkg, len - 32, NULL, 0);
}

/* Header 40 bytes, the stream, the carried manifest, its length (4) and the hash (32). */
static size_t manifest_at(const uint8_t *pkg, size_t len)
{
    const uint8_t *l = pkg + len - 36;
    return len - 36 - ((size_t)l[0] | (size_t)l[1] << 8 | (size_t)l[2] << 16 | (size_t)l[3] << 24);
}

static void store_is_unchanged(struct world *w)
{
    cs_stats s;
    CHECK_OK(cs_stats_get(w->b, &s));
    CHECK_EQ(s.manifests, 1);
    CHECK_EQ(s.chunks, N); /* the base's chunks only */
}

/* A package re-hashed after tampering passes the trailer check: the rebuilt manifest's id and
 * every part of the package are still checked, before anything is stored. */
static void tampered_package_with_a_valid_hash_stores_nothing(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    size_t mat = manifest_at(pkg, len);
    char err[NODE_ERRMSG];
    cs_id id;
    /* The header's manifest id, the stream's start, middle and end, the carried manifest's
     * start, middle (tags and ids) and end, and its length. */
    size_t spots[] = {8 + 5, 40 + 9, 40 + (mat - 40) / 2, mat - 3, mat + 2, mat + (len - 36 - mat) / 2,
                      len - 37, len - 36};
    for (size_t k = 0; k < sizeof spots / sizeof spots[0]; k++) {
        pkg[spots[k]] ^= 0x01;
        rehash(pkg, len);
        CHECK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) != 0);
        pkg[spots[k]] ^= 0x01;
    }
    rehash(pkg, len);
    store_is_unchanged(&w);
    CHECK_OK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err)); /* restored: fine */
    free(pkg);
    teardown(&w);
}

static void old_version_is_refused(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    CHECK_EQ(pkg[4], 2);
    pkg[4] = 1;
    rehash(pkg, len);
    char err[NODE_ERRMSG];
    cs_id id;
    CHECK_EQ(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err), CS_EVERSION);
    CHECK(strstr(err, "version 1 is not supported") != NULL);
    store_is_unchanged(&w);
    free(pkg);
    teardown(&w);
}

/* The carried manifest travels as one zstd frame (flag 1); other flags are refused, and so is
 * a compressed manifest read as raw or a raw one read as compressed. */
static void manifest_flag_is_checked(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    CHECK_EQ(pkg[5], 1);
    char err[NODE_ERRMSG];
    cs_id id;
    pkg[5] = 3;
    rehash(pkg, len);
    CHECK_EQ(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err), CS_EFORMAT);
    CHECK(strstr(err, "unknown flags") != NULL);
    pkg[5] = 0; /* the frame taken for a raw manifest */
    rehash(pkg, len);
    CHECK_EQ(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err), CS_EFORMAT);
    CHECK(strstr(err, "manifest is malformed") != NULL);
    store_is_unchanged(&w);
    pkg[5] = 1;
    rehash(pkg, len);
    CHECK_OK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err));
    free(pkg);
    teardown(&w);
}

static void every_truncation_is_refused_and_stores_nothing(void)
{
    struct world w;
    nrandom = 1; /* a package of a few KiB: every cut is tried */
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    CHECK(len < 16384);
    char err[NODE_ERRMSG];
    cs_id id;
    for (size_t cut = 0; cut < len; cut++) {
        CHECK(node_overlay_import(w.b, pkg, cut, &id, NULL, NULL, NULL, err) != 0);
        CHECK(strstr(err, "truncated") || strstr(err, "not an overlay"));
    }
    store_is_unchanged(&w);
    CHECK_OK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err));
    free(pkg);
    teardown(&w);
}

/* Every byte of the stream flipped: the trailing hash refuses it. With the hash made right
 * again, decoding or the rebuilt manifest's id refuses it, before anything is stored; the rare
 * flip that zstd decodes to the same bytes (a table entry no symbol uses) gives the same VM. */
static void flipped_byte_in_the_stream_is_refused_and_stores_nothing(void)
{
    struct world w;
    nrandom = 1;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    size_t mat = manifest_at(pkg, len), same = 0;
    char err[NODE_ERRMSG];
    cs_id id;
    for (size_t at = 40; at < mat; at++) {
        pkg[at] ^= 0x10;
        CHECK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) != 0);
        CHECK(strstr(err, "damaged") != NULL);
        store_is_unchanged(&w);
        rehash(pkg, len);
        if (node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) == 0) {
            CHECK(cs_id_equal(&id, &w.child));
            same++;
            CHECK_OK(cs_manifest_unpin(w.b, &id));
            cs_gc_report gr;
            CHECK_OK(cs_gc(w.b, false, &gr));
        }
        store_is_unchanged(&w);
        pkg[at] ^= 0x10;
        rehash(pkg, len);
    }
    CHECK(same * 100 < mat - 40);
    free(pkg);
    teardown(&w);
}

/* The package with its stream's content compressed again as one frame that names a window of
 * 2^wlog bytes (no content size known in advance, so the frame header carries the window). */
static uint8_t *reframe(const uint8_t *pkg, size_t len, int wlog, size_t *blen)
{
    size_t mat = manifest_at(pkg, len);
    unsigned long long clen = ZSTD_getFrameContentSize(pkg + 40, mat - 40);
    CHECK(clen != ZSTD_CONTENTSIZE_UNKNOWN && clen != ZSTD_CONTENTSIZE_ERROR);
    uint8_t *content = malloc(clen), *big = malloc(len + clen + 4096);
    CHECK_EQ(ZSTD_decompress(content, clen, pkg + 40, mat - 40), clen);
    ZSTD_CCtx *c = ZSTD_createCCtx();
    CHECK(!ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, wlog)));
    memcpy(big, pkg, 40);
    ZSTD_outBuffer o = {big + 40, clen + 4096, 0};
    ZSTD_inBuffer in = {content, clen, 0};
    CHECK(!ZSTD_isError(ZSTD_compressStream2(c, &o, &in, ZSTD_e_continue)));
    CHECK_EQ(ZSTD_compressStream2(c, &o, &in, ZSTD_e_end), 0);
    ZSTD_freeCCtx(c);
    *blen = 40 + o.pos + (len - mat);
    memcpy(big + 40 + o.pos, pkg + mat, len - mat);
    rehash(big, *blen);
    free(content);
    return big;
}

static void oversized_declared_window_is_refused(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    char err[NODE_ERRMSG];
    cs_id id;
    /* In the header: more than the 2^27 bytes an importer allows. */
    uint8_t wlog = pkg[6];
    CHECK(wlog >= 10 && wlog <= 27);
    pkg[6] = 28;
    rehash(pkg, len);
    CHECK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) != 0);
    CHECK(strstr(err, "window") != NULL);
    pkg[6] = wlog;
    /* In the stream's frame: a window of 2^28 bytes where the header declares less. */
    size_t blen;
    uint8_t *big = reframe(pkg, len, 28, &blen);
    CHECK(node_overlay_import(w.b, big, blen, &id, NULL, NULL, NULL, err) != 0);
    CHECK(strstr(err, "window") != NULL);
    free(big);
    store_is_unchanged(&w);
    /* The same content framed with the header's window is fine: the refusal is the window's. */
    big = reframe(pkg, len, wlog, &blen);
    CHECK_OK(node_overlay_import(w.b, big, blen, &id, NULL, NULL, NULL, err));
    CHECK(cs_id_equal(&id, &w.child));
    free(big), free(pkg);
    teardown(&w);
}

/* Enough chunks for the import's decoder to go round its batch slots more than once, with the
 * caller's thread and a second one storing. */
static void large_root_package_imports_bit_exactly(void)
{
    enum { M = 5500 };
    char *dir = tl_tmpdir();
    cs_store *a = open_at(dir, "a"), *b = open_at(dir, "b");
    uint8_t *data = malloc((size_t)M * CS_CHUNK_SIZE), *out = malloc((size_t)M * CS_CHUNK_SIZE);
    for (size_t i = 0; i < M; i++) {
        uint8_t *c = data + i * CS_CHUNK_SIZE;
        for (size_t k = 0; k < CS_CHUNK_SIZE; k++) c[k] = (uint8_t)("a slow red fox "[k % 15] + i % 11);
        tl_fill_random(c + (i % 7) * 512, 64 + i % 200, i);
    }
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", (uint64_t)M * CS_CHUNK_SIZE);
    CHECK_OK(cs_put(a, data, M, NULL, im->chunks, NULL, NULL));
    uint8_t *enc;
    size_t elen;
    cs_id mid, id;
    CHECK_OK(cs_manifest_encode(m, NULL, &enc, &elen, NULL));
    CHECK_OK(cs_manifest_put(a, enc, elen, true, &mid));
    char *path;
    if (asprintf(&path, "%s/pkg", dir) < 0) abort();
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    char err[NODE_ERRMSG];
    node_overlay_report r, ri;
    CHECK_OK(node_overlay_export(a, &mid, fd, 1, NULL, NULL, &r, err));
    CHECK_EQ(r.chunks, M);
    uint8_t *pkg = malloc(r.file_bytes);
    CHECK_EQ(pread(fd, pkg, r.file_bytes, 0), (ssize_t)r.file_bytes);
    close(fd);
    CHECK_OK(node_overlay_import(b, pkg, r.file_bytes, &id, NULL, NULL, &ri, err));
    CHECK(cs_id_equal(&id, &mid));
    CHECK_EQ(ri.chunks, M);
    CHECK_OK(cs_get(b, im->chunks, M, out, NULL));
    CHECK_MEM(out, data, (size_t)M * CS_CHUNK_SIZE);
    cs_stats s;
    CHECK_OK(cs_stats_get(b, &s));
    CHECK_EQ(s.chunks, M);
    CHECK_EQ(s.referenced_missing, 0);
    free(pkg), free(path), free(enc), free(data), free(out);
    cs_manifest_free(m);
    cs_close(a), cs_close(b);
    tl_rmtree(dir);
    free(dir);
}

/* Ids are random bytes that do not compress: no id the importer can find itself travels, neither
 * of a chunk the package carries nor of one the parent holds. */
static void carried_chunk_ids_do_not_travel(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    size_t found = 0, moved = 0;
    for (size_t i = 0; i < N; i++) {
        bool in_pkg = memmem(pkg, len, w.child_ids[i].b, CS_ID_BYTES) != NULL;
        if (i >= 100 && i < 120) found += in_pkg;          /* deltas */
        if (i >= 200 && i < 200 + nrandom) found += in_pkg; /* new chunks */
        if (i >= 300 && i < 310) moved += in_pkg;          /* the parent holds them */
    }
    CHECK_EQ(found, 0);
    CHECK_EQ(moved, 0); /* named by their place in the parent */
    free(pkg);
    teardown(&w);
}

static void missing_parent_is_named_in_the_error(void)
{
    struct world w;
    build(&w, false);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    char err[NODE_ERRMSG], hex[CS_ID_HEX + 1];
    cs_id id;
    CHECK_EQ(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err), CS_EMISSING);
    CHECK(strstr(err, cs_id_to_hex(&w.base, hex)) != NULL);
    cs_stats s;
    CHECK_OK(cs_stats_get(w.b, &s));
    CHECK_EQ(s.chunks, 0);
    free(pkg);
    teardown(&w);
}

static void parent_without_its_chunks_is_refused(void)
{
    struct world w;
    build(&w, false);
    /* b knows the base manifest but holds none of its chunks. */
    uint8_t *raw;
    size_t rawlen;
    CHECK_OK(cs_manifest_get_raw(w.a, &w.base, &raw, &rawlen));
    CHECK_OK(cs_manifest_put(w.b, raw, rawlen, true, NULL));
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    char err[NODE_ERRMSG];
    cs_id id;
    CHECK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) != 0);
    cs_stats s;
    CHECK_OK(cs_stats_get(w.b, &s));
    CHECK_EQ(s.chunks, 0);
    CHECK_EQ(s.manifests, 1);
    free(raw), free(pkg);
    teardown(&w);
}

TL_MAIN(TL_CASE(import_restores_the_vm_bit_exactly), TL_CASE(package_holds_only_what_the_parent_lacks),
        TL_CASE(damaged_or_truncated_package_stores_nothing),
        TL_CASE(tampered_package_with_a_valid_hash_stores_nothing),
        TL_CASE(missing_parent_is_named_in_the_error), TL_CASE(parent_without_its_chunks_is_refused),
        TL_CASE(old_version_is_refused), TL_CASE(manifest_flag_is_checked),
        TL_CASE(every_truncation_is_refused_and_stores_nothing),
        TL_CASE(flipped_byte_in_the_stream_is_refused_and_stores_nothing),
        TL_CASE(oversized_declared_window_is_refused), TL_CASE(carried_chunk_ids_do_not_travel),
        TL_CASE(large_root_package_imports_bit_exactly))
