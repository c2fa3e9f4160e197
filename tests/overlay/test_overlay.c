/* Overlay packages: export from one store, import into another that holds the parent. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "node.h"
#include "testlib.h"

#include <sodium.h>

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

/* The base: text-like chunks. The child: 20 chunks with a few bytes changed (deltas), 30
 * new random chunks, 10 chunks moved from elsewhere in the base (dedup), 5 zeroed. */
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
    tl_fill_random(w->child_data + 200 * CS_CHUNK_SIZE, 30 * CS_CHUNK_SIZE, 77);
    for (size_t i = 300; i < 310; i++)
        memcpy(w->child_data + i * CS_CHUNK_SIZE, w->base_data + (i + 100) * CS_CHUNK_SIZE, CS_CHUNK_SIZE);
    memset(w->child_data + 400 * CS_CHUNK_SIZE, 0, 5 * CS_CHUNK_SIZE);
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

/* A package re-hashed after tampering passes the trailer check: every record is still checked. */
static void tampered_package_with_a_valid_hash_stores_nothing(void)
{
    struct world w;
    build(&w, true);
    size_t len;
    node_overlay_report r;
    uint8_t *pkg = export_pkg(&w, &len, &r);
    size_t mlen = (size_t)pkg[8] | (size_t)pkg[9] << 8 | (size_t)pkg[10] << 16 | (size_t)pkg[11] << 24;
    size_t first = 12 + mlen;
    char err[NODE_ERRMSG];
    cs_id id;
    /* Inside the first record's ids (block) or place and id (delta), and deep in its data. */
    size_t spots[] = {first + 7, first + 20, first + 60, len - 41 - 10};
    for (size_t k = 0; k < sizeof spots / sizeof spots[0]; k++) {
        pkg[spots[k]] ^= 0x01;
        crypto_generichash(pkg + len - 32, 32, pkg, len - 32, NULL, 0);
        CHECK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err) != 0);
        pkg[spots[k]] ^= 0x01;
    }
    crypto_generichash(pkg + len - 32, 32, pkg, len - 32, NULL, 0);
    cs_stats s;
    CHECK_OK(cs_stats_get(w.b, &s));
    CHECK_EQ(s.manifests, 1);
    CHECK_EQ(s.chunks, N); /* the base's chunks only */
    CHECK_OK(node_overlay_import(w.b, pkg, len, &id, NULL, NULL, NULL, err)); /* restored: fine */
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
        TL_CASE(missing_parent_is_named_in_the_error), TL_CASE(parent_without_its_chunks_is_refused))
