/* libvirt save files: parsing into RAM and state images, storing them, rebuilding the file;
 * on streams made here by a small writer of the format, and on a real QEMU's. */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "node.h"
#include "node_internal.h"
#include "testlib.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096u

/* ---- a small writer of the format ------------------------------------------------------------ */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->cap - b->len < n) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void be(buf *b, uint64_t v, unsigned n)
{
    uint8_t x[8];
    for (unsigned i = 0; i < n; i++) x[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    put(b, x, n);
}

static void u8(buf *b, uint8_t v) { put(b, &v, 1); }

static void str8(buf *b, const char *s)
{
    u8(b, (uint8_t)strlen(s));
    put(b, s, strlen(s));
}

static void le32_at(uint8_t *p, uint32_t v)
{
    for (unsigned i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The libvirt header and XML region: domain XML, NUL, cookie, NUL, padding to region bytes. */
static void libvirt_header(buf *b, const char *magic, const char *xml, const char *cookie,
                           uint32_t region, uint32_t format)
{
    uint8_t h[92] = {0};
    memcpy(h, magic, 16);
    le32_at(h + 16, 2);
    le32_at(h + 20, region);
    le32_at(h + 28, format);
    le32_at(h + 32, cookie ? (uint32_t)strlen(xml) + 1 : 0);
    put(b, h, 92);
    size_t start = b->len;
    put(b, xml, strlen(xml) + 1);
    if (cookie) put(b, cookie, strlen(cookie) + 1);
    while (b->len - start < region) u8(b, 0);
}

static void section_start(buf *b, uint8_t type, uint32_t id, const char *name, uint32_t version)
{
    u8(b, type);
    be(b, id, 4);
    str8(b, name);
    be(b, 0, 4);
    be(b, version, 4);
}

static void footer(buf *b, uint32_t id)
{
    u8(b, 0x7e);
    be(b, id, 4);
}

struct blk {
    const char *name;
    uint64_t len;
};
static const struct blk blocks[] = {{"pc.ram", 64 * PG}, {"pc.rom", 4 * PG}, {"/rom@etc/acpi/tables", 2 * PG}};
#define NBLK 3

static void stream_head(buf *b)
{
    be(b, 0x5145564d, 4);
    be(b, 3, 4);
    u8(b, 0x07); /* CONFIGURATION */
    be(b, strlen("pc-i440fx-7.2"), 4);
    put(b, "pc-i440fx-7.2", strlen("pc-i440fx-7.2"));
    section_start(b, 0x01, 2, "ram", 4);
    uint64_t total = 0;
    for (int i = 0; i < NBLK; i++) total += blocks[i].len;
    be(b, total | 0x04, 8);
    for (int i = 0; i < NBLK; i++) {
        str8(b, blocks[i].name);
        be(b, blocks[i].len, 8);
    }
    be(b, 0x10, 8);
    footer(b, 2);
}

static void page(buf *b, const char *block, uint64_t off, const uint8_t *data)
{
    be(b, off | 0x08 | (block ? 0 : 0x20), 8);
    if (block) str8(b, block);
    put(b, data, PG);
}

static void zero(buf *b, const char *block, uint64_t off, uint8_t fill)
{
    be(b, off | 0x02 | (block ? 0 : 0x20), 8);
    if (block) str8(b, block);
    u8(b, fill);
}

static const char vmdesc[] = "{\"page_size\": 4096, \"devices\": [{\"name\": \"timer\"}]}";

/* Device state, EOF and the VM description. */
static void stream_tail(buf *b)
{
    section_start(b, 0x04, 3, "timer", 2);
    uint8_t dev[300];
    tl_fill_random(dev, sizeof dev, 77);
    for (size_t i = 0; i < sizeof dev; i++) dev[i] |= 1; /* no NUL: never looks like an EOF */
    put(b, dev, sizeof dev);
    footer(b, 3);
    u8(b, 0x00);
    u8(b, 0x06);
    be(b, strlen(vmdesc), 4);
    put(b, vmdesc, strlen(vmdesc));
}

static const char xml0[] = "<domain type='qemu'><name>tiny</name></domain>";
static const char cookie0[] = "<cookie><cpu/></cookie>";

static uint8_t pagebuf[PG];
static const uint8_t *pattern(unsigned seed)
{
    tl_fill_random(pagebuf, PG, seed);
    return pagebuf;
}

/* A save file as `virsh save` writes one, plus re-sent pages as a live migration has them:
 * pc.ram page 3 sent twice (second wins), page 5 sent then zeroed, page 6 ZERO with fill 0x5a,
 * page 9 never sent; pc.rom pages sent in the END section. */
static buf sample_variant(const char *magic, bool child)
{
    buf b = {0};
    libvirt_header(&b, magic, xml0, cookie0, 8192, 0);
    stream_head(&b);
    u8(&b, 0x02);
    be(&b, 2, 4);
    page(&b, "pc.ram", 0, pattern(100));
    for (unsigned p = 1; p < 64; p++) {
        if (p == 9 || p == 6) continue;
        if (child && p == 10) { /* a few bytes changed: a delta against the parent's page */
            uint8_t edited[PG];
            memcpy(edited, pattern(100 + p), PG);
            memcpy(edited + 100, "EDITED", 6);
            page(&b, NULL, p * PG, edited);
        } else {
            page(&b, NULL, p * PG, pattern(child && p == 11 ? 5000 : 100 + p));
        }
    }
    page(&b, NULL, 3 * PG, pattern(999));
    zero(&b, NULL, 5 * PG, 0);
    zero(&b, NULL, 6 * PG, 0x5a);
    be(&b, 0x10, 8);
    footer(&b, 2);
    u8(&b, 0x03);
    be(&b, 2, 4);
    page(&b, "pc.rom", 0, pattern(200));
    zero(&b, NULL, 1 * PG, 0);
    page(&b, NULL, 3 * PG, pattern(203));
    page(&b, "/rom@etc/acpi/tables", PG, pattern(300));
    be(&b, 0x10, 8);
    footer(&b, 2);
    stream_tail(&b);
    if (strcmp(magic, "LibvirtQemudPart") == 0) { /* libvirt appends the finished header */
        uint8_t h[92];
        memcpy(h, b.p, 92);
        memcpy(h, "LibvirtQemudSave", 16);
        put(&b, h, 92);
    }
    return b;
}

static buf sample(const char *magic) { return sample_variant(magic, false); }

/* What the guest's RAM holds after loading the sample. */
static void sample_ram(uint8_t *ram[NBLK])
{
    for (int i = 0; i < NBLK; i++) ram[i] = calloc(1, blocks[i].len);
    for (unsigned p = 0; p < 64; p++)
        if (p != 9 && p != 6 && p != 5) memcpy(ram[0] + p * PG, pattern(100 + p), PG);
    memcpy(ram[0] + 3 * PG, pattern(999), PG);
    memset(ram[0] + 6 * PG, 0x5a, PG);
    memcpy(ram[1], pattern(200), PG);
    memcpy(ram[1] + 3 * PG, pattern(203), PG);
    memcpy(ram[2] + PG, pattern(300), PG);
}

/* ---- a reader: the RAM as loaded, and the state stream ---------------------------------------- */

struct loaded {
    node__savefile_info *info;
    uint8_t *ram[NODE__SAVEFILE_MAX_BLOCKS];
    buf kept;
    uint64_t records;
};

static int on_blocks(const node__savefile_info *info, void *arg)
{
    struct loaded *l = arg;
    for (size_t i = 0; i < info->nblocks; i++) l->ram[i] = calloc(1, info->blocks[i].length);
    return 0;
}

static int on_page(size_t block, uint64_t offset, const uint8_t *data, uint8_t fill, size_t at, void *arg)
{
    struct loaded *l = arg;
    (void)at;
    if (data) memcpy(l->ram[block] + offset, data, PG);
    else memset(l->ram[block] + offset, fill, PG);
    l->records++;
    return 0;
}

static int on_kept(const uint8_t *p, size_t n, void *arg)
{
    put(&((struct loaded *)arg)->kept, p, n);
    return 0;
}

static const node__savefile_visitor visitor = {on_blocks, on_page, on_kept};

static int load(const uint8_t *p, size_t n, struct loaded *l, char err[NODE_ERRMSG])
{
    memset(l, 0, sizeof *l);
    l->info = malloc(sizeof *l->info);
    return node__savefile_parse(p, n, &visitor, l, l->info, err);
}

static void loaded_free(struct loaded *l)
{
    for (size_t i = 0; i < NODE__SAVEFILE_MAX_BLOCKS; i++) free(l->ram[i]);
    free(l->kept.p);
    free(l->info);
}

static uint8_t *read_all(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat sb;
    CHECK(fstat(fd, &sb) == 0);
    uint8_t *p = malloc((size_t)sb.st_size + 1);
    size_t off = 0;
    while (off < (size_t)sb.st_size) {
        ssize_t r = read(fd, p + off, (size_t)sb.st_size - off);
        CHECK(r > 0);
        off += (size_t)r;
    }
    close(fd);
    *len = off;
    return p;
}

static void write_all(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, p, n) == (ssize_t)n);
    close(fd);
}

struct env {
    char *dir, *file;
    cs_store *st;
};

static struct env env_new(void)
{
    struct env e = {tl_tmpdir(), NULL, NULL};
    char *sd;
    CHECK(asprintf(&sd, "%s/store", e.dir) > 0);
    CHECK_OK(cs_open(sd, CS_OPEN_CREATE, &e.st));
    free(sd);
    CHECK(asprintf(&e.file, "%s/vm.save", e.dir) > 0);
    return e;
}

static void env_free(struct env *e)
{
    cs_close(e->st);
    tl_rmtree(e->dir);
    free(e->dir), free(e->file);
}

static int import_file(struct env *e, const char *path, cs_id *id, node_import_report *r, char err[NODE_ERRMSG])
{
    node_vm_import_opts o = {.name = "vm", .memory = path};
    return node_vm_import(e->st, &o, id, r, NULL, NULL, err);
}

/* Rebuilds manifest id into path (xml replaces the domain XML when not NULL). */
static void rebuild(struct env *e, const cs_id *id, const char *xml, const char *path)
{
    cs_manifest *m;
    CHECK_OK(cs_manifest_get(e->st, id, &m));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    char err[NODE_ERRMSG] = "";
    int rc = node_savefile_write(e->st, m, xml, fd, NULL, NULL, err);
    if (rc) TL_FAIL("node_savefile_write: %s", err);
    close(fd);
    cs_manifest_free(m);
}

static uint64_t count_manifests(cs_store *st)
{
    cs_stats s;
    CHECK_OK(cs_stats_get(st, &s));
    return s.manifests;
}

/* ---- cases ------------------------------------------------------------------------------------- */

static void round_trip_keeps_pages_and_sections(void)
{
    struct env e = env_new();
    buf b = sample("LibvirtQemudSave");
    write_all(e.file, b.p, b.len);
    cs_id id;
    node_import_report r;
    char err[NODE_ERRMSG] = "";
    int rc = import_file(&e, e.file, &id, &r, err);
    if (rc) TL_FAIL("import: %s", err);
    CHECK_EQ(r.nimages, NBLK + 1);
    CHECK_STR(r.images[0].name, "pc.ram");
    CHECK_EQ(r.images[0].kind, CS_IMAGE_RAM);
    CHECK_EQ(r.images[0].length, 64 * PG);
    CHECK_EQ(r.images[0].zero, 2); /* page 5 zeroed, page 9 never sent */
    CHECK_STR(r.images[NBLK].name, "state");
    CHECK_EQ(r.images[NBLK].kind, CS_IMAGE_STATE);
    node_import_report_free(&r);

    cs_manifest *m;
    CHECK_OK(cs_manifest_get(e.st, &id, &m));
    CHECK_STR(m->xml, xml0); /* taken from the header */
    CHECK(node_vm_has_memory(m));
    cs_manifest_free(m);

    char *out;
    CHECK(asprintf(&out, "%s/rebuilt.save", e.dir) > 0);
    rebuild(&e, &id, NULL, out);
    size_t n;
    uint8_t *rb = read_all(out, &n);
    struct loaded a, c;
    CHECK_OK(load(b.p, b.len, &a, err));
    rc = load(rb, n, &c, err);
    if (rc) TL_FAIL("parsing the rebuilt file: %s", err);
    uint8_t *want[NBLK];
    sample_ram(want);
    for (int i = 0; i < NBLK; i++) {
        CHECK_STR(c.info->blocks[i].name, blocks[i].name);
        CHECK_MEM(a.ram[i], want[i], blocks[i].len);
        CHECK_MEM(c.ram[i], want[i], blocks[i].len);
        free(want[i]);
    }
    /* Every page of every block is named in the rebuilt stream. */
    CHECK_EQ(c.records, (64 + 4 + 2));
    /* Everything but the page records is the same: header, XML region, sections, tail. */
    CHECK_MEM(c.info->header, a.info->header, 92);
    CHECK_EQ(c.info->data_len, a.info->data_len);
    CHECK_MEM(c.info->region, a.info->region, a.info->data_len);
    CHECK_EQ(c.kept.len, a.kept.len);
    CHECK_MEM(c.kept.p, a.kept.p, a.kept.len);
    loaded_free(&a), loaded_free(&c);
    free(rb), free(out), free(b.p);
    env_free(&e);
}

static void last_write_wins_and_zero_overwrites(void)
{
    buf b = sample("LibvirtQemudSave");
    struct loaded l;
    char err[NODE_ERRMSG];
    CHECK_OK(load(b.p, b.len, &l, err));
    CHECK_MEM(l.ram[0] + 3 * PG, pattern(999), PG); /* sent twice: the second */
    static const uint8_t z[PG];
    CHECK_MEM(l.ram[0] + 5 * PG, z, PG);            /* a page, then a ZERO record */
    uint8_t fill[PG];
    memset(fill, 0x5a, PG);
    CHECK_MEM(l.ram[0] + 6 * PG, fill, PG);         /* ZERO with a fill byte */
    loaded_free(&l);

    /* And what is stored is what was loaded. */
    struct env e = env_new();
    write_all(e.file, b.p, b.len);
    cs_id id;
    node_import_report r;
    CHECK_OK(import_file(&e, e.file, &id, &r, err));
    node_import_report_free(&r);
    cs_manifest *m;
    CHECK_OK(cs_manifest_get(e.st, &id, &m));
    const cs_image *ram = cs_manifest_find_image(m, "pc.ram");
    uint8_t got[PG];
    CHECK_OK(cs_get(e.st, &ram->chunks[3], 1, got, NULL));
    CHECK_MEM(got, pattern(999), PG);
    CHECK(cs_id_is_zero(&ram->chunks[5]));
    CHECK(cs_id_is_zero(&ram->chunks[9]));
    CHECK_OK(cs_get(e.st, &ram->chunks[6], 1, got, NULL));
    CHECK_MEM(got, fill, PG);
    cs_manifest_free(m);
    free(b.p);
    env_free(&e);
}

static void fifo_style_file_is_read_from_its_final_header(void)
{
    buf b = sample("LibvirtQemudPart");
    struct loaded l;
    char err[NODE_ERRMSG] = "";
    int rc = load(b.p, b.len, &l, err);
    if (rc) TL_FAIL("%s", err);
    CHECK_MEM(l.info->header, "LibvirtQemudSave", 16);
    CHECK_EQ(l.info->stream_end, b.len - 92);
    CHECK_MEM(l.ram[0] + 3 * PG, pattern(999), PG);
    loaded_free(&l);

    /* Without the finished header at the end, libvirt never completed it. */
    CHECK_EQ(load(b.p, b.len - 92, &l, err), CS_EFORMAT);
    CHECK(strstr(err, "incomplete") != NULL);
    loaded_free(&l);
    free(b.p);
}

static void truncation_is_an_error_naming_the_offset(void)
{
    buf b = sample("LibvirtQemudSave");
    struct loaded l;
    char err[NODE_ERRMSG];
    /* Every length within the header, XML region and sections; every 97th in the pages. */
    for (size_t n = 0; n < b.len; n += n < 8800 || b.len - n < 800 ? 1 : 97) {
        err[0] = '\0';
        int rc = load(b.p, n, &l, err);
        if (rc != CS_EFORMAT && rc != CS_EVERSION) TL_FAIL("length %zu: rc %d", n, rc);
        if (n >= 92 + 8192 && !strstr(err, "byte")) TL_FAIL("length %zu: %s", n, err);
        loaded_free(&l);
    }
    /* The reason names where the stream stops, e.g. in the middle of a page. */
    size_t cut = 92 + 8192 + 200;
    CHECK_EQ(load(b.p, cut, &l, err), CS_EFORMAT);
    char want[64];
    snprintf(want, sizeof want, "ends at byte %zu", cut);
    if (!strstr(err, "truncated") || !strstr(err, want)) TL_FAIL("%s", err);
    loaded_free(&l);

    /* Through the import: nothing is stored. */
    struct env e = env_new();
    write_all(e.file, b.p, b.len / 2);
    cs_id id;
    node_import_report r;
    CHECK_EQ(import_file(&e, e.file, &id, &r, err), CS_EFORMAT);
    CHECK(strstr(err, "byte") != NULL);
    CHECK_EQ(count_manifests(e.st), 0);
    CHECK_EQ(cs_name_get(e.st, "vm", &id), CS_ENOTFOUND);
    free(b.p);
    env_free(&e);
}

/* A stream whose pc.ram holds one record built by rec(). */
static buf with_record(void (*rec)(buf *b), size_t *rec_at)
{
    buf b = {0};
    libvirt_header(&b, "LibvirtQemudSave", xml0, NULL, 4096, 0);
    stream_head(&b);
    u8(&b, 0x02);
    be(&b, 2, 4);
    page(&b, "pc.ram", 0, pattern(1));
    *rec_at = b.len;
    rec(&b);
    be(&b, 0x10, 8);
    footer(&b, 2);
    u8(&b, 0x03);
    be(&b, 2, 4);
    be(&b, 0x10, 8);
    footer(&b, 2);
    stream_tail(&b);
    return b;
}

static void rec_xbzrle(buf *b)
{
    be(b, 4 * PG | 0x40 | 0x20, 8);
    u8(b, 0);
    be(b, 0, 2);
}
static void rec_compressed(buf *b) { be(b, 4 * PG | 0x100 | 0x20, 8); }
static void rec_past_end(buf *b) { page(b, NULL, 64 * PG, pattern(2)); }
static void rec_unknown_block(buf *b) { page(b, "pc.ram2", 0, pattern(2)); }

static void expect_error(void (*rec)(buf *b), const char *words)
{
    size_t at;
    buf b = with_record(rec, &at);
    struct loaded l;
    char err[NODE_ERRMSG] = "", want[64];
    CHECK_EQ(load(b.p, b.len, &l, err), CS_EFORMAT);
    snprintf(want, sizeof want, "byte %zu", at);
    if (!strstr(err, want) || !strstr(err, words)) TL_FAIL("expected '%s' and '%s' in: %s", want, words, err);
    loaded_free(&l);
    free(b.p);
}

static void unknown_flags_are_an_error_naming_the_offset(void)
{
    expect_error(rec_xbzrle, "XBZRLE");
    expect_error(rec_compressed, "compressed");
}

static void page_past_block_end_is_refused(void) { expect_error(rec_past_end, "past the end of RAM block 'pc.ram'"); }

static void unknown_block_is_refused(void) { expect_error(rec_unknown_block, "'pc.ram2'"); }

static void compressed_save_file_is_refused(void)
{
    buf b = {0};
    libvirt_header(&b, "LibvirtQemudSave", xml0, NULL, 4096, 3);
    struct loaded l;
    char err[NODE_ERRMSG] = "";
    CHECK_EQ(load(b.p, b.len, &l, err), CS_EFORMAT);
    if (!strstr(err, "xz")) TL_FAIL("%s", err);
    loaded_free(&l);
    free(b.p);
}

static void derived_vm_records_only_changed_pages(void)
{
    struct env e = env_new();
    buf base = sample("LibvirtQemudSave"), child = sample_variant("LibvirtQemudSave", true);
    write_all(e.file, base.p, base.len);
    cs_id bid, cid;
    node_import_report r;
    char err[NODE_ERRMSG] = "";
    CHECK_OK(import_file(&e, e.file, &bid, &r, err));
    node_import_report_free(&r);
    write_all(e.file, child.p, child.len);
    node_vm_import_opts o = {.name = "child", .memory = e.file, .parent = &bid};
    int rc = node_vm_import(e.st, &o, &cid, &r, NULL, NULL, err);
    if (rc) TL_FAIL("%s", err);
    const node_image_report *ram = &r.images[0], *state = &r.images[NBLK];
    CHECK_STR(ram->name, "pc.ram");
    CHECK_EQ(ram->zero, 2);
    CHECK_EQ(ram->delta, 1);                         /* page 10 */
    CHECK_EQ(ram->fresh, 1);                         /* page 11 */
    CHECK_EQ(ram->same_as_parent, 64 - 2 - 2);
    CHECK_EQ(state->same_as_parent + state->zero, state->chunks); /* the same device state */
    CHECK(r.overlay_bytes > 0 && r.overlay_bytes < 3 * PG);
    node_import_report_free(&r);
    free(base.p), free(child.p);
    env_free(&e);
}

static void xml_replacement_grows_the_header(void)
{
    struct env e = env_new();
    buf b = sample("LibvirtQemudSave");
    write_all(e.file, b.p, b.len);
    cs_id id;
    node_import_report r;
    char err[NODE_ERRMSG];
    CHECK_OK(import_file(&e, e.file, &id, &r, err));
    node_import_report_free(&r);
    char *out;
    CHECK(asprintf(&out, "%s/renamed.save", e.dir) > 0);

    /* A short XML stays in the region; a long one grows it (and data_len). */
    const char *small = "<domain type='qemu'><name>x</name></domain>";
    size_t big_len = 20000;
    char *big = malloc(big_len + 1);
    memset(big, ' ', big_len);
    memcpy(big, "<domain>", 8);
    memcpy(big + big_len - 9, "</domain>", 9);
    big[big_len] = '\0';
    const char *xmls[2] = {small, big};
    for (int k = 0; k < 2; k++) {
        rebuild(&e, &id, xmls[k], out);
        size_t n;
        uint8_t *rb = read_all(out, &n);
        struct loaded a, c;
        CHECK_OK(load(b.p, b.len, &a, err));
        int rc = load(rb, n, &c, err);
        if (rc) TL_FAIL("%s", err);
        CHECK_EQ(c.info->xml_len, strlen(xmls[k]));
        CHECK_MEM(c.info->region, xmls[k], strlen(xmls[k]) + 1);
        if (k == 0) CHECK_EQ(c.info->data_len, 8192);
        else CHECK(c.info->data_len >= big_len + 1 + sizeof cookie0);
        CHECK(c.info->cookie_off == strlen(xmls[k]) + 1);
        CHECK_STR((const char *)c.info->region + c.info->cookie_off, cookie0);
        for (int i = 0; i < NBLK; i++) CHECK_MEM(c.ram[i], a.ram[i], blocks[i].len);
        CHECK_MEM(c.kept.p, a.kept.p, a.kept.len);
        loaded_free(&a), loaded_free(&c);
        free(rb);
    }
    free(big), free(out), free(b.p);
    env_free(&e);
}

struct drain {
    int fd;
    buf got;
};

static void *drain_pipe(void *arg)
{
    struct drain *d = arg;
    uint8_t tmp[65536];
    ssize_t r;
    while ((r = read(d->fd, tmp, sizeof tmp)) > 0) put(&d->got, tmp, (size_t)r);
    return NULL;
}

static void writes_sequentially_into_a_pipe(void)
{
    struct env e = env_new();
    buf b = sample("LibvirtQemudSave");
    write_all(e.file, b.p, b.len);
    cs_id id;
    node_import_report r;
    char err[NODE_ERRMSG];
    CHECK_OK(import_file(&e, e.file, &id, &r, err));
    node_import_report_free(&r);
    char *out;
    CHECK(asprintf(&out, "%s/file.save", e.dir) > 0);
    rebuild(&e, &id, NULL, out);
    size_t n;
    uint8_t *want = read_all(out, &n);

    int p[2];
    CHECK(pipe(p) == 0);
    struct drain d = {p[0], {0}};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, drain_pipe, &d) == 0);
    cs_manifest *m;
    CHECK_OK(cs_manifest_get(e.st, &id, &m));
    CHECK_OK(node_savefile_write(e.st, m, NULL, p[1], NULL, NULL, err));
    close(p[1]);
    pthread_join(t, NULL);
    close(p[0]);
    CHECK_EQ(d.got.len, n);
    CHECK_MEM(d.got.p, want, n);

    /* A reader that goes away is an error, not a signal. */
    CHECK(pipe(p) == 0);
    close(p[0]);
    CHECK(node_savefile_write(e.st, m, NULL, p[1], NULL, NULL, err) == -EPIPE);
    close(p[1]);
    cs_manifest_free(m);
    free(d.got.p), free(want), free(out), free(b.p);
    env_free(&e);
}

/* ---- a real QEMU ------------------------------------------------------------------------------ */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct qemu {
    pid_t pid;
    int fd;
    char *sock;
};

static struct qemu qemu_start(const char *dir, const char *tag, bool incoming)
{
    struct qemu q = {0};
    CHECK(asprintf(&q.sock, "%s/%s.qmp", dir, tag) > 0);
    char *qmp;
    CHECK(asprintf(&qmp, "unix:%s,server=on,wait=off", q.sock) > 0);
    q.pid = fork();
    CHECK(q.pid >= 0);
    if (q.pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0), dup2(null, 1);
        char *argv[] = {"qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "64",
                        "-nodefaults", "-display", "none", "-S", "-qmp", qmp,
                        incoming ? "-incoming" : NULL, "defer", NULL};
        execvp(argv[0], argv);
        _exit(127);
    }
    free(qmp);
    /* The socket appears once QEMU has set up its monitor. */
    double deadline = now() + 20;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", q.sock);
    for (;;) {
        q.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(q.fd, (struct sockaddr *)&sa, sizeof sa) == 0) break;
        close(q.fd);
        if (now() > deadline) TL_FAIL("QEMU's monitor did not come up");
        int st;
        if (waitpid(q.pid, &st, WNOHANG) == q.pid) TL_FAIL("QEMU exited at start (status %d)", st);
        poll(NULL, 0, 20);
    }
    return q;
}

/* Reads one line of the monitor (bounded wait). */
static char *qmp_line(struct qemu *q)
{
    buf b = {0};
    for (;;) {
        struct pollfd pf = {q->fd, POLLIN, 0};
        if (poll(&pf, 1, 30000) != 1) TL_FAIL("QEMU's monitor went silent");
        char c;
        if (read(q->fd, &c, 1) != 1) TL_FAIL("QEMU's monitor closed");
        if (c == '\n') break;
        put(&b, &c, 1);
    }
    u8(&b, 0);
    return (char *)b.p;
}

/* Sends a command and returns its answer (events before it are skipped). */
static char *qmp(struct qemu *q, const char *cmd)
{
    CHECK(write(q->fd, cmd, strlen(cmd)) == (ssize_t)strlen(cmd));
    for (;;) {
        char *l = qmp_line(q);
        if (strstr(l, "\"return\"")) return l;
        if (strstr(l, "\"error\"")) TL_FAIL("QEMU refused %s: %s", cmd, l);
        free(l);
    }
}

static void qmp_ok(struct qemu *q, const char *cmd) { free(qmp(q, cmd)); }

static void qemu_wait_migration(struct qemu *q)
{
    double deadline = now() + 40;
    for (;;) {
        char *l = qmp(q, "{\"execute\": \"query-migrate\"}\n");
        bool done = strstr(l, "\"completed\"") != NULL;
        if (strstr(l, "\"failed\"")) TL_FAIL("migration failed: %s", l);
        free(l);
        if (done) return;
        if (now() > deadline) TL_FAIL("migration did not complete");
        poll(NULL, 0, 50);
    }
}

static void qemu_quit(struct qemu *q)
{
    free(qmp(q, "{\"execute\": \"quit\"}\n"));
    int st;
    waitpid(q->pid, &st, 0);
    close(q->fd);
    free(q->sock);
}

/* The stream at path, wrapped as libvirt wraps it. */
static void wrap(const char *stream, const char *save)
{
    size_t n;
    uint8_t *s = read_all(stream, &n);
    buf b = {0};
    libvirt_header(&b, "LibvirtQemudSave", "<domain type='qemu'><name>t</name></domain>", NULL, 65536, 0);
    put(&b, s, n);
    write_all(save, b.p, b.len);
    free(s), free(b.p);
}

static void migrate_to(struct qemu *q, const char *path)
{
    char *cmd;
    CHECK(asprintf(&cmd, "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"exec:cat > %s\"}}\n", path) > 0);
    qmp_ok(q, cmd);
    free(cmd);
    qemu_wait_migration(q);
}

static void real_qemu_round_trip(bool stop_first)
{
    if (system("command -v qemu-system-x86_64 > /dev/null 2>&1") != 0) {
        fprintf(stderr, "SKIP: qemu-system-x86_64 is not installed (Debian package qemu-system-x86)\n");
        return;
    }
    signal(SIGPIPE, SIG_IGN);
    struct env e = env_new();
    char *s1, *f1, *f2, *s3, *f3;
    CHECK(asprintf(&s1, "%s/a.stream", e.dir) > 0 && asprintf(&f1, "%s/a.save", e.dir) > 0);
    CHECK(asprintf(&f2, "%s/rebuilt.save", e.dir) > 0);
    CHECK(asprintf(&s3, "%s/c.stream", e.dir) > 0 && asprintf(&f3, "%s/c.save", e.dir) > 0);

    /* 1. A guest runs its firmware for a moment (no condition to wait for: the firmware just
     *    has to have written to RAM) and is saved: stopped first as `virsh save` does, or
     *    running, as a live migration (pages may then be sent more than once). */
    struct qemu a = qemu_start(e.dir, "a", false);
    free(qmp_line(&a)); /* greeting */
    qmp_ok(&a, "{\"execute\": \"qmp_capabilities\"}\n");
    qmp_ok(&a, "{\"execute\": \"cont\"}\n");
    poll(NULL, 0, 500);
    if (stop_first) qmp_ok(&a, "{\"execute\": \"stop\"}\n");
    migrate_to(&a, s1);
    qemu_quit(&a);
    wrap(s1, f1);

    /* 2. Imported and rebuilt. */
    cs_id id;
    node_import_report r;
    char err[NODE_ERRMSG] = "";
    int rc = import_file(&e, f1, &id, &r, err);
    if (rc) TL_FAIL("import of QEMU's save: %s", err);
    bool have_ram = false;
    for (size_t i = 0; i < r.nimages; i++) {
        fprintf(stderr, "%-24s %10llu bytes %6llu chunks %6llu zero\n", r.images[i].name,
                (unsigned long long)r.images[i].length, (unsigned long long)r.images[i].chunks,
                (unsigned long long)r.images[i].zero);
        if (strcmp(r.images[i].name, "pc.ram") == 0) have_ram = r.images[i].length == 64u << 20;
    }
    CHECK(have_ram);
    node_import_report_free(&r);
    rebuild(&e, &id, NULL, f2);

    /* 3. A second QEMU loads the rebuilt file, stays stopped, and is saved again. */
    struct loaded la, lb, lc;
    size_t n1, n2;
    uint8_t *b1 = read_all(f1, &n1), *b2 = read_all(f2, &n2);
    CHECK_OK(load(b1, n1, &la, err));
    rc = load(b2, n2, &lb, err);
    if (rc) TL_FAIL("parsing the rebuilt file: %s", err);
    struct qemu b = qemu_start(e.dir, "b", true);
    free(qmp_line(&b));
    qmp_ok(&b, "{\"execute\": \"qmp_capabilities\"}\n");
    char *cmd;
    CHECK(asprintf(&cmd, "{\"execute\": \"migrate-incoming\", \"arguments\": {\"uri\": \"exec:tail -c +%zu %s\"}}\n",
                   lb.info->stream_off + 1, f2) > 0);
    qmp_ok(&b, cmd);
    free(cmd);
    qemu_wait_migration(&b);
    migrate_to(&b, s3);
    qemu_quit(&b);
    wrap(s3, f3);

    /* 4. The RAM of the first and the third save is the same, page for page. */
    size_t n3;
    uint8_t *b3 = read_all(f3, &n3);
    rc = load(b3, n3, &lc, err);
    if (rc) TL_FAIL("parsing the second QEMU's save: %s", err);
    CHECK_EQ(la.info->nblocks, lc.info->nblocks);
    uint64_t nonzero = 0;
    for (size_t i = 0; i < la.info->nblocks; i++) {
        CHECK_STR(la.info->blocks[i].name, lc.info->blocks[i].name);
        CHECK_EQ(la.info->blocks[i].length, lc.info->blocks[i].length);
        for (uint64_t p = 0; p < la.info->blocks[i].length; p += PG) {
            if (memcmp(la.ram[i] + p, lc.ram[i] + p, PG) != 0)
                TL_FAIL("block %s page at %llu differs", la.info->blocks[i].name, (unsigned long long)p);
            static const uint8_t z[PG];
            if (memcmp(la.ram[i] + p, z, PG) != 0) nonzero++;
        }
    }
    fprintf(stderr, "%llu page records in the first stream for %llu pages; %llu non-zero pages "
            "identical after import, rebuild, load and save\n", (unsigned long long)la.records,
            (unsigned long long)(la.info->ram_bytes / PG), (unsigned long long)nonzero);
    CHECK(nonzero > 10);
    loaded_free(&la), loaded_free(&lb), loaded_free(&lc);
    free(b1), free(b2), free(b3);
    free(s1), free(f1), free(f2), free(s3), free(f3);
    env_free(&e);
}

static void real_qemu_save_survives_import_and_rebuild(void) { real_qemu_round_trip(true); }

static void real_qemu_live_migration_stream_survives_import_and_rebuild(void)
{
    real_qemu_round_trip(false);
}

TL_MAIN(TL_CASE(round_trip_keeps_pages_and_sections), TL_CASE(last_write_wins_and_zero_overwrites),
        TL_CASE(fifo_style_file_is_read_from_its_final_header),
        TL_CASE(truncation_is_an_error_naming_the_offset),
        TL_CASE(unknown_flags_are_an_error_naming_the_offset), TL_CASE(page_past_block_end_is_refused),
        TL_CASE(unknown_block_is_refused), TL_CASE(compressed_save_file_is_refused),
        TL_CASE(derived_vm_records_only_changed_pages), TL_CASE(xml_replacement_grows_the_header), TL_CASE(writes_sequentially_into_a_pipe),
        TL_CASE(real_qemu_save_survives_import_and_rebuild),
        TL_CASE(real_qemu_live_migration_stream_survives_import_and_rebuild))
