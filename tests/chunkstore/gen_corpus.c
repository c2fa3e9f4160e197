/* gen_corpus.c — writes the seed corpora of the chunk store's fuzz targets:
 * gen_corpus MANIFEST_DIR SEGMENT_DIR. Valid inputs of several shapes, and near-valid ones. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "cs_internal.h"
#include "testlib.h"

static void save(const char *dir, const char *name, const uint8_t *buf, size_t len)
{
    char *path;
    if (asprintf(&path, "%s/%s", dir, name) < 0) abort();
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) TL_FAIL("writing %s", path);
    free(path);
}

static cs_manifest *sample(uint64_t n, bool with_ram)
{
    cs_manifest *m = cs_manifest_new();
    CHECK_OK(cs_manifest_set_xml(m, "<domain type='qemu'><name>vm</name></domain>"));
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_DISK, "disk", n * CS_CHUNK_SIZE - 7);
    for (uint64_t i = 0; i < n; i++)
        if (i % 4 != 3) tl_fill_random(im->chunks[i].b, CS_ID_BYTES, i + 1);
    if (with_ram) {
        im = cs_manifest_add_image(m, CS_IMAGE_RAM, "pc.ram", 3 * CS_CHUNK_SIZE);
        tl_fill_random(im->chunks[1].b, CS_ID_BYTES, 99);
        CHECK(cs_manifest_add_image(m, CS_IMAGE_STATE, "state", 10) != NULL);
    }
    return m;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: gen_corpus MANIFEST_DIR SEGMENT_DIR\n");
        return 2;
    }
    uint8_t *buf;
    size_t len;
    cs_manifest *base = sample(12, true);
    CHECK_OK(cs_manifest_encode(base, NULL, &buf, &len, NULL));
    save(argv[1], "root-three-images", buf, len);
    save(argv[1], "root-truncated", buf, len - 5);
    cs_id bid;
    cs_manifest_id(buf, len, &bid);
    free(buf);
    cs_manifest *empty = cs_manifest_new();
    CHECK_OK(cs_manifest_encode(empty, NULL, &buf, &len, NULL));
    save(argv[1], "empty", buf, len);
    free(buf);
    cs_manifest *child = sample(14, true);
    child->has_parent = true, child->parent = bid;
    child->images[0].chunks[0] = cs_zero_id;
    tl_fill_random(child->images[0].chunks[13].b, CS_ID_BYTES, 1234);
    CHECK_OK(cs_manifest_encode(child, base, &buf, &len, NULL));
    save(argv[1], "derived", buf, len);
    free(buf);
    cs_manifest_free(base), cs_manifest_free(child), cs_manifest_free(empty);

    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    uint8_t *chunks = malloc(4 * CS_CHUNK_SIZE), *seg = malloc(CS__SEG_MAX);
    memset(chunks, 'q', 4 * CS_CHUNK_SIZE);
    CHECK_OK(cs__seg_encode(c, chunks, 4, seg, &len));
    save(argv[2], "zstd-4", seg, len);
    seg[len / 2] ^= 1;
    save(argv[2], "zstd-4-flipped", seg, len);
    tl_fill_random(chunks, 2 * CS_CHUNK_SIZE, 5);
    CHECK_OK(cs__seg_encode(c, chunks, 2, seg, &len));
    save(argv[2], "raw-2", seg, len);
    save(argv[2], "raw-2-short", seg, len - 1);
    ZSTD_freeCCtx(c);
    free(chunks), free(seg);
    return 0;
}
