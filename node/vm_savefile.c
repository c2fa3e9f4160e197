/*
 * vm_savefile.c — libvirt save files (docs/savefile.md): parsing one into RAM images and a state
 * image, storing those, and writing a valid save file back from them.
 *
 * Design notes:
 * - node__savefile_parse is a pure function of the bytes (the fuzz target drives it). It walks
 *   the libvirt header, the XML region and the QEMU stream section by section. Page records of
 *   the `ram` section go to the page callback, in stream order (the consumer keeps the last
 *   write); every other byte goes, in order, to the kept callback, minus the ram PART sections
 *   (nothing but pages) and minus the page records of the START and END sections. The result
 *   is the *state stream*; info->insert_at marks the place in it (the EOS record of the ram
 *   END section) where a rebuilder puts the page records back, all of them in that END section.
 * - Device state (FULL sections) has no length prefix: walking it would need QEMU's device
 *   descriptions. It comes after the ram END section and is kept whole; the parser checks only
 *   that the stream ends with QEMU's EOF and VM description (the JSON vmdesc), framed exactly,
 *   which a truncated stream does not.
 * - The rebuilt stream names every page of every block: PAGE for non-zero pages, ZERO (fill 0)
 *   for zero pages, so the destination's RAM content before the load does not matter (ROMs).
 *   It is written sequentially through a buffer, so the output may be a pipe or a FIFO.
 * - Import keeps, per page, where its last record is (an offset into the mapped file, or a
 *   fill byte), then chunks each block page by page, 256 pages per batch on two threads: no
 *   copy of the guest RAM is ever held.
 */
#define _GNU_SOURCE
#include "node.h"
#include "node_internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define LV_HDR 92u
#define LV_VERSION 2u
#define LV_MAGIC "LibvirtQemudSave"
#define LV_PARTIAL "LibvirtQemudPart"

/* QEMU's stream (migration/savevm.c, migration/ram.c) */
enum {
    SEC_EOF = 0x00, SEC_START = 0x01, SEC_PART = 0x02, SEC_END = 0x03, SEC_FULL = 0x04,
    SEC_SUB = 0x05, SEC_VMDESC = 0x06, SEC_CONFIG = 0x07, SEC_COMMAND = 0x08, SEC_FOOTER = 0x7e,
};
enum {
    F_FULL = 0x01, F_ZERO = 0x02, F_MEM_SIZE = 0x04, F_PAGE = 0x08, F_EOS = 0x10,
    F_CONTINUE = 0x20, F_XBZRLE = 0x40, F_HOOK = 0x80, F_COMPRESS = 0x100, F_MULTIFD = 0x200,
};
enum { CMD_RETURN_PATH = 1, CMD_PING = 2, CMD_ADVISE = 3, CMD_PACKAGED = 7 };

#define STATE_MAGIC "CLST"
#define STATE_VERSION 1u
#define STATE_HDR 40u

static const char *const formats[] = {"raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"};

/* ---- reading -------------------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *b;
    size_t end, off;
    char *err;
} rd;


/* Makes sure n more bytes are there; else the error names where the stream stops. */
static int need(rd *r, size_t n, const char *what)
{
    if (r->end - r->off >= n) return 0;
    node__errf(r->err, "truncated stream: %s at byte %zu needs %zu bytes, the stream ends at byte %zu",
               what, r->off, n, r->end);
    return CS_EFORMAT;
}

static int rd_be(rd *r, unsigned n, uint64_t *v, const char *what)
{
    int rc = need(r, n, what);
    if (rc) return rc;
    *v = node__get_be(r->b + r->off, n);
    r->off += n;
    return 0;
}

/* A u8-counted string into out (256 bytes). */
static int rd_str(rd *r, char out[256], const char *what)
{
    uint64_t n;
    int rc = rd_be(r, 1, &n, what);
    if (rc || (rc = need(r, (size_t)n, what))) return rc;
    memcpy(out, r->b + r->off, (size_t)n);
    out[n] = '\0';
    r->off += (size_t)n;
    if (strlen(out) != n) {
        node__errf(r->err, "%s at byte %zu contains a NUL byte", what, r->off - (size_t)n - 1);
        return CS_EFORMAT;
    }
    return 0;
}

/* ---- the parser ----------------------------------------------------------------------------- */

struct parse {
    rd r;
    const node__savefile_visitor *v;
    void *arg;
    node__savefile_info *info;
    uint64_t kept;       /* bytes of the state stream so far */
    bool ignore_shared;  /* x-ignore-shared: each block in the list carries its address */
    bool postcopy_huge;  /* postcopy advised with huge pages: per-block page sizes we cannot know */
    bool have_blocks, ram_started, ram_ended;
    uint32_t ram_id;
    long last_block;     /* for CONTINUE records */
};

static int keep(struct parse *p, size_t from, size_t to)
{
    if (to == from) return 0;
    p->kept += to - from;
    return p->v->kept ? p->v->kept(p->r.b + from, to - from, p->arg) : 0;
}

static int parse_config(struct parse *p)
{
    rd *r = &p->r;
    uint64_t n;
    int rc = rd_be(r, 4, &n, "the machine type's length");
    if (rc) return rc;
    if (n > 256) {
        node__errf(r->err, "machine type of %llu bytes at byte %zu", (unsigned long long)n, r->off - 4);
        return CS_EFORMAT;
    }
    if ((rc = need(r, (size_t)n, "the machine type"))) return rc;
    size_t mlen = (size_t)n < sizeof p->info->machine - 1 ? (size_t)n : sizeof p->info->machine - 1;
    memcpy(p->info->machine, r->b + r->off, mlen);
    p->info->machine[mlen] = '\0';
    r->off += (size_t)n;
    while (r->off < r->end && r->b[r->off] == SEC_SUB) {
        size_t at = r->off++;
        char name[256];
        uint64_t ver;
        if ((rc = rd_str(r, name, "a configuration subsection's name")) ||
            (rc = rd_be(r, 4, &ver, "a configuration subsection's version")))
            return rc;
        if (strcmp(name, "configuration/target-page-bits") == 0) {
            uint64_t bits;
            if ((rc = rd_be(r, 4, &bits, "the target page bits"))) return rc;
            if (bits != 12) {
                node__errf(r->err, "target pages of 2^%llu bytes (byte %zu): only 4 KiB pages are supported",
                           (unsigned long long)bits, at);
                return CS_EFORMAT;
            }
        } else if (strcmp(name, "configuration/capabilities") == 0) {
            uint64_t count;
            if ((rc = rd_be(r, 4, &count, "the capability count"))) return rc;
            if (count > 256) {
                node__errf(r->err, "%llu capabilities at byte %zu", (unsigned long long)count, at);
                return CS_EFORMAT;
            }
            for (uint64_t i = 0; i < count; i++) {
                char cap[256];
                if ((rc = rd_str(r, cap, "a capability"))) return rc;
                if (strcmp(cap, "x-ignore-shared") == 0) p->ignore_shared = true;
            }
        } else if (strcmp(name, "configuration/uuid") == 0) {
            if ((rc = need(r, 16, "the VM's UUID"))) return rc;
            r->off += 16;
        } else {
            node__errf(r->err, "unknown configuration subsection '%s' at byte %zu", name, at);
            return CS_EFORMAT;
        }
    }
    return 0;
}

static int parse_command(struct parse *p, size_t at)
{
    rd *r = &p->r;
    uint64_t cmd, len;
    int rc;
    if ((rc = rd_be(r, 2, &cmd, "a command")) || (rc = rd_be(r, 2, &len, "a command's length")) ||
        (rc = need(r, (size_t)len, "a command's data")))
        return rc;
    if (cmd == CMD_ADVISE && len == 16) {
        /* The OR of every block's page size: anything but 4 KiB means some block has huge
         * pages, whose page size the block list then carries for that block alone. */
        if (node__get_be(r->b + r->off, 8) != PAGE) p->postcopy_huge = true;
    } else if (cmd != CMD_RETURN_PATH && cmd != CMD_PING && cmd != CMD_ADVISE) {
        node__errf(r->err, "migration command %llu at byte %zu is not supported (postcopy or COLO stream)",
                   (unsigned long long)cmd, at);
        return CS_EFORMAT;
    }
    r->off += (size_t)len;
    return 0;
}

static int find_block(struct parse *p, const char *name)
{
    for (size_t i = 0; i < p->info->nblocks; i++)
        if (strcmp(p->info->blocks[i].name, name) == 0) return (int)i;
    return -1;
}

static int parse_block_list(struct parse *p, uint64_t total, size_t at)
{
    rd *r = &p->r;
    node__savefile_info *in = p->info;
    int rc;
    if (p->have_blocks) {
        node__errf(r->err, "a second RAM block list at byte %zu", at);
        return CS_EFORMAT;
    }
    if (p->postcopy_huge) {
        node__errf(r->err, "RAM block list at byte %zu: postcopy streams with huge-page RAM are not supported", at);
        return CS_EFORMAT;
    }
    if (total == 0) {
        node__errf(r->err, "empty RAM block list at byte %zu", at);
        return CS_EFORMAT;
    }
    p->have_blocks = true;
    while (total) {
        size_t bat = r->off;
        if (in->nblocks == NODE__SAVEFILE_MAX_BLOCKS) {
            node__errf(r->err, "more than %u RAM blocks at byte %zu", NODE__SAVEFILE_MAX_BLOCKS, bat);
            return CS_EFORMAT;
        }
        node__savefile_block *b = &in->blocks[in->nblocks];
        uint64_t len;
        if ((rc = rd_str(r, b->name, "a RAM block's name")) ||
            (rc = rd_be(r, 8, &len, "a RAM block's length")))
            return rc;
        if (!b->name[0] || find_block(p, b->name) >= 0 || strcmp(b->name, "state") == 0 ||
            strcmp(b->name, "disk") == 0) {
            node__errf(r->err, "RAM block at byte %zu has an empty, repeated or reserved name '%s'", bat, b->name);
            return CS_EFORMAT;
        }
        if (len == 0 || len % PAGE || len > total) {
            node__errf(r->err, "RAM block '%s' at byte %zu: length %llu is not a whole number of pages "
                       "within the total of %llu", b->name, bat, (unsigned long long)len,
                       (unsigned long long)total);
            return CS_EFORMAT;
        }
        if (p->ignore_shared) {
            uint64_t addr;
            if ((rc = rd_be(r, 8, &addr, "a RAM block's address"))) return rc;
        }
        b->length = len;
        total -= len;
        in->nblocks++;
        in->ram_bytes += len;
    }
    return p->v->blocks ? p->v->blocks(in, p->arg) : 0;
}

static const char *flag_name(unsigned flags)
{
    if (flags & F_XBZRLE) return "XBZRLE-encoded page";
    if (flags & F_COMPRESS) return "compressed page";
    if (flags & F_HOOK) return "RDMA hook";
    if (flags & F_MULTIFD) return "multifd flush";
    if (flags & F_FULL) return "obsolete FULL flag";
    return "unknown combination";
}

/* The records of one ram section, up to and including its EOS, then its footer if any.
 * Records other than pages are kept; pages go to the page callback. */
static int parse_ram(struct parse *p, int type, uint32_t id, size_t hdr_at)
{
    rd *r = &p->r;
    int rc;
    /* A PART section holds pages only: it is dropped whole. START and END keep their header,
     * EOS and footer; the rebuilt page records go right before END's EOS. */
    bool keep_it = type != SEC_PART;
    if (keep_it && (rc = keep(p, hdr_at, r->off))) return rc;
    for (;;) {
        size_t at = r->off;
        uint64_t v;
        if ((rc = rd_be(r, 8, &v, "a RAM record"))) return rc;
        unsigned flags = (unsigned)(v & (PAGE - 1));
        uint64_t addr = v & ~(uint64_t)(PAGE - 1);
        unsigned kind = flags & ~(unsigned)F_CONTINUE;
        if (kind == F_MEM_SIZE && !(flags & F_CONTINUE)) {
            if (type != SEC_START) {
                node__errf(r->err, "RAM block list at byte %zu outside the ram START section", at);
                return CS_EFORMAT;
            }
            if ((rc = parse_block_list(p, addr, at)) || (rc = keep(p, at, r->off))) return rc;
        } else if (kind == F_ZERO || kind == F_PAGE) {
            long bi = p->last_block;
            if (!(flags & F_CONTINUE)) {
                char name[256];
                if ((rc = rd_str(r, name, "a RAM block's name"))) return rc;
                bi = find_block(p, name);
                if (bi < 0) {
                    node__errf(r->err, "page record at byte %zu names RAM block '%s', which is not in the block list",
                               at, name);
                    return CS_EFORMAT;
                }
            } else if (bi < 0) {
                node__errf(r->err, "page record at byte %zu continues a block but none was named", at);
                return CS_EFORMAT;
            }
            p->last_block = bi;
            const node__savefile_block *b = &p->info->blocks[bi];
            if (addr >= b->length) {
                node__errf(r->err, "page at offset %llu past the end of RAM block '%s' (%llu bytes), record at byte %zu",
                           (unsigned long long)addr, b->name, (unsigned long long)b->length, at);
                return CS_EFORMAT;
            }
            const uint8_t *data = NULL;
            uint8_t fill = 0;
            if (kind == F_ZERO) {
                if ((rc = need(r, 1, "a ZERO record's fill byte"))) return rc;
                fill = r->b[r->off++];
            } else {
                if ((rc = need(r, PAGE, "a page's 4096 bytes"))) return rc;
                data = r->b + r->off;
                r->off += PAGE;
            }
            p->info->pages++;
            if (p->v->page && (rc = p->v->page((size_t)bi, addr, data, fill, at, p->arg))) return rc;
        } else if (flags == F_EOS) {
            if (type == SEC_END) p->info->insert_at = p->kept;
            if (keep_it && (rc = keep(p, at, r->off))) return rc;
            break;
        } else {
            node__errf(r->err, "RAM record at byte %zu has flags 0x%x (%s): not supported", at, flags,
                       flag_name(flags));
            return CS_EFORMAT;
        }
    }
    if (r->off < r->end && r->b[r->off] == SEC_FOOTER) {
        size_t at = r->off++;
        uint64_t fid;
        if ((rc = rd_be(r, 4, &fid, "a section footer"))) return rc;
        if (fid != id) {
            node__errf(r->err, "section footer at byte %zu names section %llu, not %u", at,
                       (unsigned long long)fid, id);
            return CS_EFORMAT;
        }
        if (keep_it && (rc = keep(p, at, r->off))) return rc;
    }
    return 0;
}

/* The device state, EOF and VM description: kept whole; it must end exactly with EOF, then
 * VMDESC, a be32 length and that many bytes of a JSON object. */
static int check_tail(struct parse *p, size_t from)
{
    const uint8_t *b = p->r.b;
    size_t end = p->r.end;
    /* The description is JSON (no NUL bytes) of well under 16 MiB: scan back for its frame. */
    if (end - from >= 8 && b[end - 1] == '}') {
        for (size_t i = end - 7;; i--) {
            if (b[i] == SEC_EOF && b[i + 1] == SEC_VMDESC && node__get_be(b + i + 2, 4) == end - (i + 6) &&
                b[i + 6] == '{') {
                p->info->vmdesc_len = end - (i + 6);
                return 0;
            }
            if (i == from || end - i > (16u << 20)) break;
        }
    }
    node__errf(p->r.err, "truncated stream: the device state from byte %zu does not end with QEMU's "
               "EOF and VM description (the stream ends at byte %zu)", from, end);
    return CS_EFORMAT;
}

static int parse_stream(struct parse *p)
{
    rd *r = &p->r;
    uint64_t magic, version;
    int rc;
    size_t start = r->off;
    if ((rc = rd_be(r, 4, &magic, "QEMU's stream header")) ||
        (rc = rd_be(r, 4, &version, "QEMU's stream version")))
        return rc;
    if (magic != 0x5145564du) {
        node__errf(r->err, "no QEMU migration stream at byte %zu (magic 0x%08llx, expected 'QEVM')", start,
                   (unsigned long long)magic);
        return CS_EFORMAT;
    }
    if (version != 3) {
        node__errf(r->err, "QEMU stream version %llu at byte %zu is not supported (3 is)",
                   (unsigned long long)version, start + 4);
        return CS_EVERSION;
    }
    if ((rc = keep(p, start, r->off))) return rc;
    for (;;) {
        size_t at = r->off;
        if ((rc = need(r, 1, "a section"))) return rc;
        uint8_t type = r->b[r->off++];
        if (type == SEC_CONFIG) {
            if ((rc = parse_config(p)) || (rc = keep(p, at, r->off))) return rc;
        } else if (type == SEC_COMMAND) {
            if ((rc = parse_command(p, at)) || (rc = keep(p, at, r->off))) return rc;
        } else if (type == SEC_START || type == SEC_FULL) {
            uint64_t id, inst, ver;
            char name[256];
            if ((rc = rd_be(r, 4, &id, "a section id")) || (rc = rd_str(r, name, "a section name")) ||
                (rc = rd_be(r, 4, &inst, "a section instance")) ||
                (rc = rd_be(r, 4, &ver, "a section version")))
                return rc;
            if (type == SEC_FULL && strcmp(name, "ram") != 0) {
                r->off = at; /* device state: the tail */
                break;
            }
            if (strcmp(name, "ram") != 0) {
                node__errf(r->err, "iterative section '%s' at byte %zu is not supported (only ram is)", name, at);
                return CS_EFORMAT;
            }
            if (type == SEC_FULL || p->ram_started || ver != 4) {
                node__errf(r->err, "unexpected ram section at byte %zu (%s, version %llu)", at,
                           type == SEC_FULL ? "FULL" : p->ram_started ? "a second START" : "START",
                           (unsigned long long)ver);
                return CS_EFORMAT;
            }
            p->ram_started = true;
            p->ram_id = (uint32_t)id;
            if ((rc = parse_ram(p, SEC_START, (uint32_t)id, at))) return rc;
            if (!p->have_blocks) {
                node__errf(r->err, "the ram START section at byte %zu has no RAM block list", at);
                return CS_EFORMAT;
            }
        } else if (type == SEC_PART || type == SEC_END) {
            uint64_t id;
            if ((rc = rd_be(r, 4, &id, "a section id"))) return rc;
            if (!p->ram_started || p->ram_ended || id != p->ram_id) {
                node__errf(r->err, "section %s for section id %llu at byte %zu: not an open ram section",
                           type == SEC_PART ? "PART" : "END", (unsigned long long)id, at);
                return CS_EFORMAT;
            }
            if ((rc = parse_ram(p, type, (uint32_t)id, at))) return rc;
            if (type == SEC_END) p->ram_ended = true;
        } else if (type == SEC_EOF) {
            r->off = at;
            break;
        } else {
            node__errf(r->err, "unknown section type 0x%02x at byte %zu", type, at);
            return CS_EFORMAT;
        }
    }
    if (!p->ram_ended) {
        node__errf(r->err, "the stream reaches the device state at byte %zu without a complete ram section",
                   r->off);
        return CS_EFORMAT;
    }
    if ((rc = check_tail(p, r->off))) return rc;
    return keep(p, r->off, r->end);
}

int node__savefile_parse(const uint8_t *buf, size_t len, const node__savefile_visitor *v, void *arg,
                         node__savefile_info *info, char err[NODE_ERRMSG])
{
    memset(info, 0, sizeof *info);
    if (len < LV_HDR) {
        node__errf(err, "not a libvirt save file: %zu bytes, shorter than its %u-byte header", len, LV_HDR);
        return CS_EFORMAT;
    }
    const uint8_t *hdr = buf;
    size_t end = len;
    if (memcmp(buf, LV_PARTIAL, 16) == 0) {
        /* Saved through a pipe: libvirt appended the finished header at the end. */
        if (len < 2 * LV_HDR || memcmp(buf + len - LV_HDR, LV_MAGIC, 16) != 0) {
            node__errf(err, "incomplete save file: magic %s and no finished header at its end "
                       "(libvirt did not complete the save)", LV_PARTIAL);
            return CS_EFORMAT;
        }
        hdr = buf + len - LV_HDR;
        end = len - LV_HDR;
    } else if (memcmp(buf, LV_MAGIC, 16) != 0) {
        node__errf(err, "not a libvirt save file (no %s magic at byte 0)", LV_MAGIC);
        return CS_EFORMAT;
    }
    uint32_t version = (uint32_t)node__get_le(hdr + 16, 4);
    info->data_len = (uint32_t)node__get_le(hdr + 20, 4);
    info->was_running = (uint32_t)node__get_le(hdr + 24, 4);
    uint32_t format = (uint32_t)node__get_le(hdr + 28, 4);
    info->cookie_off = (uint32_t)node__get_le(hdr + 32, 4);
    if (version != LV_VERSION) {
        node__errf(err, "libvirt save file version %u at byte 16 is not supported (%u is)", version, LV_VERSION);
        return CS_EVERSION;
    }
    if (format != 0) {
        if (format < sizeof formats / sizeof formats[0])
            node__errf(err, "save file format '%s' (%u at byte 28) is not supported: only raw save files "
                       "can be imported; save with save_image_format = \"raw\" in qemu.conf",
                       formats[format], format);
        else
            node__errf(err, "unknown save image format %u at byte 28", format);
        return CS_EFORMAT;
    }
    if (info->data_len == 0 || info->data_len > end - LV_HDR) {
        node__errf(err, "XML region of %u bytes (byte 20) %s", info->data_len,
                   info->data_len ? "runs past the end of the file" : "is empty");
        return CS_EFORMAT;
    }
    if (info->cookie_off >= info->data_len) {
        node__errf(err, "cookie offset %u (byte 32) is outside the %u-byte XML region", info->cookie_off,
                   info->data_len);
        return CS_EFORMAT;
    }
    memcpy(info->header, hdr, LV_HDR);
    memcpy(info->header, LV_MAGIC, 16);
    info->region = buf + LV_HDR;
    size_t xmlmax = info->cookie_off ? info->cookie_off : info->data_len;
    info->xml_len = strnlen((const char *)info->region, xmlmax);
    if (info->xml_len == 0 || info->xml_len == xmlmax) {
        node__errf(err, "the domain XML at byte %u is %s", LV_HDR,
                   info->xml_len ? "not NUL-terminated within its region" : "empty");
        return CS_EFORMAT;
    }
    info->stream_off = LV_HDR + info->data_len;
    info->stream_end = end;
    struct parse p = {.r = {buf, end, info->stream_off, err}, .v = v, .arg = arg, .info = info,
                      .last_block = -1};
    int rc = parse_stream(&p);
    info->state_stream_len = p.kept;
    return rc;
}

/* ---- the state image ------------------------------------------------------------------------ */

/* Layout (docs/savefile.md), little-endian: "CLST", u32 version, u32 header length (92),
 * u32 region length, u64 stream length, u64 insert_at, u32 block count, u32 0; per block a
 * u8-counted name and a u64 length; the libvirt header; the XML region; the state stream. */
static size_t state_prefix_len(const node__savefile_info *in)
{
    size_t n = STATE_HDR;
    for (size_t i = 0; i < in->nblocks; i++) n += 1 + strlen(in->blocks[i].name) + 8;
    return n + LV_HDR + in->data_len;
}

static void state_prefix(const node__savefile_info *in, uint8_t *out)
{
    memcpy(out, STATE_MAGIC, 4);
    node__put_le(out + 4, STATE_VERSION, 4);
    node__put_le(out + 8, LV_HDR, 4);
    node__put_le(out + 12, in->data_len, 4);
    node__put_le(out + 16, in->state_stream_len, 8);
    node__put_le(out + 24, in->insert_at, 8);
    node__put_le(out + 32, in->nblocks, 4);
    node__put_le(out + 36, 0, 4);
    uint8_t *q = out + STATE_HDR;
    for (size_t i = 0; i < in->nblocks; i++) {
        size_t n = strlen(in->blocks[i].name);
        *q++ = (uint8_t)n;
        memcpy(q, in->blocks[i].name, n);
        q += n;
        node__put_le(q, in->blocks[i].length, 8);
        q += 8;
    }
    memcpy(q, in->header, LV_HDR);
    memcpy(q + LV_HDR, in->region, in->data_len);
}

/* The decoded state image; pointers into the image's bytes. */
struct state {
    node__savefile_info *info; /* blocks, header, data_len */
    const uint8_t *region, *stream;
    uint64_t stream_len, insert_at;
};

static int state_decode(const uint8_t *b, size_t len, struct state *s, char err[NODE_ERRMSG])
{
    node__savefile_info *in = s->info;
    memset(in, 0, sizeof *in);
    if (len < STATE_HDR || memcmp(b, STATE_MAGIC, 4) != 0 || node__get_le(b + 4, 4) != STATE_VERSION ||
        node__get_le(b + 8, 4) != LV_HDR)
        goto bad;
    in->data_len = (uint32_t)node__get_le(b + 12, 4);
    s->stream_len = node__get_le(b + 16, 8);
    s->insert_at = node__get_le(b + 24, 8);
    uint64_t nblocks = node__get_le(b + 32, 4);
    if (nblocks == 0 || nblocks > NODE__SAVEFILE_MAX_BLOCKS) goto bad;
    size_t off = STATE_HDR;
    for (uint64_t i = 0; i < nblocks; i++) {
        if (off >= len || len - off < 1u + b[off] + 8u || b[off] == 0) goto bad;
        node__savefile_block *bl = &in->blocks[in->nblocks++];
        memcpy(bl->name, b + off + 1, b[off]);
        bl->name[b[off]] = '\0';
        off += 1u + b[off];
        bl->length = node__get_le(b + off, 8);
        off += 8;
        if (bl->length == 0 || bl->length % PAGE) goto bad;
        in->ram_bytes += bl->length;
    }
    if (len - off < LV_HDR || len - off - LV_HDR < in->data_len) goto bad;
    memcpy(in->header, b + off, LV_HDR);
    off += LV_HDR;
    uint32_t coff = (uint32_t)node__get_le(in->header + 32, 4);
    if (node__get_le(in->header + 20, 4) != in->data_len || coff >= in->data_len || in->data_len == 0) goto bad;
    s->region = b + off;
    off += in->data_len;
    if (len - off != s->stream_len || s->insert_at < 8 || s->insert_at > s->stream_len) goto bad;
    s->stream = b + off;
    return 0;
bad:
    node__errf(err, "the state image is not in cloudlet's state layout (damaged or of another version)");
    return CS_EFORMAT;
}

/* ---- import --------------------------------------------------------------------------------- */

#define BATCH 1024u /* chunks per cs_put: 4 MiB, one store commit */
#define SRC_FILL (1ull << 63)

struct imp {
    const uint8_t *base;
    uint64_t **src;  /* per block, per page: 0 = zero; SRC_FILL | byte; else the data's offset */
    size_t nsrc;
    uint8_t *kept;   /* the state stream */
    size_t kept_len, kept_cap;
};

static int imp_blocks(const node__savefile_info *info, void *arg)
{
    struct imp *im = arg;
    im->src = calloc(info->nblocks, sizeof *im->src);
    if (!im->src) return -ENOMEM;
    im->nsrc = info->nblocks;
    for (size_t i = 0; i < info->nblocks; i++)
        if (!(im->src[i] = calloc(info->blocks[i].length / PAGE, sizeof **im->src))) return -ENOMEM;
    return 0;
}

static int imp_page(size_t block, uint64_t offset, const uint8_t *data, uint8_t fill, size_t at, void *arg)
{
    struct imp *im = arg;
    (void)at;
    im->src[block][offset / PAGE] = data ? (uint64_t)(data - im->base) : fill ? SRC_FILL | fill : 0;
    return 0;
}

static int imp_kept(const uint8_t *p, size_t n, void *arg)
{
    struct imp *im = arg;
    if (im->kept_cap - im->kept_len < n) {
        size_t cap = im->kept_cap ? im->kept_cap : 1u << 16;
        while (cap - im->kept_len < n) cap *= 2;
        uint8_t *q = realloc(im->kept, cap);
        if (!q) return -ENOMEM;
        im->kept = q, im->kept_cap = cap;
    }
    memcpy(im->kept + im->kept_len, p, n);
    im->kept_len += n;
    return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* The chunk source of one image: fills dst with chunk c; returns false for a zero chunk
 * (dst untouched). */
typedef bool (*chunk_fn)(uint64_t c, uint8_t *dst, void *arg);

struct ram_src {
    const uint64_t *src;
    const uint8_t *base;
};

static bool ram_chunk(uint64_t c, uint8_t *dst, void *arg)
{
    const struct ram_src *r = arg;
    uint64_t s = r->src[c];
    if (s == 0) return false;
    if (s & SRC_FILL) memset(dst, (int)(s & 0xff), PAGE);
    else if (all_zero(r->base + s, PAGE)) return false;
    else memcpy(dst, r->base + s, PAGE);
    return true;
}

struct bytes_src {
    const uint8_t *p;
    size_t len;
};

static bool bytes_chunk(uint64_t c, uint8_t *dst, void *arg)
{
    const struct bytes_src *b = arg;
    size_t off = (size_t)c * PAGE, n = b->len - off < PAGE ? b->len - off : PAGE;
    memset(dst, 0, PAGE);
    memcpy(dst, b->p + off, n);
    return !all_zero(dst, PAGE);
}

struct progress_state {
    uint64_t done, total;
    cs_progress_fn fn;
    void *arg;
};

/* Storing one image: workers take batches of BATCH positions in turn (hashing and compression
 * dominate, and cs_put overlaps them across threads); each batch's status and ids land at its
 * own positions, so batches are independent. The first error stops every worker. */
struct store_job {
    cs_store *st;
    cs_image *im;
    chunk_fn get;
    void *garg;
    uint8_t *status;
    atomic_uint_fast64_t next;
    atomic_int rc;
    pthread_mutex_t mu; /* stats and progress */
    cs_put_stats *ps;
    struct progress_state *pr;
};

struct sorted_id {
    cs_id id;
    size_t q;
};

static int cmp_sorted_id(const void *a, const void *b)
{
    const struct sorted_id *x = a, *y = b;
    int c = memcmp(x->id.b, y->id.b, CS_ID_BYTES);
    return c ? c : (x->q > y->q) - (x->q < y->q);
}

static int store_batch(struct store_job *j, uint64_t first, uint8_t *buf, uint8_t *fresh)
{
    cs_image *im = j->im;
    static _Thread_local cs_id ids[BATCH], newids[BATCH];
    static _Thread_local struct sorted_id sorted[BATCH];
    static _Thread_local uint8_t repeat[BATCH];
    uint8_t held[BATCH / 8] = {0};
    size_t idx[BATCH];
    cs_put_stats ps = {0};
    size_t n = im->nchunks - first < BATCH ? (size_t)(im->nchunks - first) : BATCH, k = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *d = buf + (size_t)k * PAGE;
        if (!j->get(first + i, d, j->garg)) {
            im->chunks[first + i] = cs_zero_id;
            j->status[first + i] = CS_CHUNK_ZERO;
            continue;
        }
        cs_chunk_id(d, &ids[k]);
        idx[k++] = i;
    }
    int64_t h = k ? cs_has(j->st, ids, k, held) : 0;
    if (h < 0) return (int)h;
    /* A chunk repeated within the batch is new at its first position only. */
    for (size_t q = 0; q < k; q++) sorted[q] = (struct sorted_id){ids[q], q};
    qsort(sorted, k, sizeof *sorted, cmp_sorted_id);
    for (size_t q = 0; q < k; q++)
        repeat[sorted[q].q] = q > 0 && cs_id_equal(&sorted[q].id, &sorted[q - 1].id);
    size_t nn = 0;
    for (size_t q = 0; q < k; q++) {
        uint64_t c = first + idx[q];
        im->chunks[c] = ids[q];
        bool dup = (held[q / 8] & (1u << (q % 8))) || repeat[q];
        if (dup) {
            j->status[c] = CS_CHUNK_DUP;
            continue;
        }
        j->status[c] = CS_CHUNK_NEW;
        memcpy(fresh + nn * PAGE, buf + q * PAGE, PAGE);
        newids[nn++] = ids[q];
    }
    int rc = nn ? cs_put(j->st, fresh, nn, newids, NULL, NULL, &ps) : 0;
    if (rc) return rc;
    pthread_mutex_lock(&j->mu);
    j->ps->chunks += n;
    j->ps->zero += n - k;
    j->ps->dup += k - nn + ps.dup;
    j->ps->added += ps.added;
    j->ps->stored_bytes += ps.stored_bytes;
    struct progress_state *pr = j->pr;
    pr->done += (uint64_t)n * PAGE;
    if (pr->fn) pr->fn(pr->done < pr->total ? pr->done : pr->total, pr->total, pr->arg);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

static void *store_worker(void *arg)
{
    struct store_job *j = arg;
    uint8_t *buf = malloc((size_t)BATCH * PAGE), *fresh = malloc((size_t)BATCH * PAGE);
    int rc = buf && fresh ? 0 : -ENOMEM;
    while (rc == 0 && atomic_load(&j->rc) == 0) {
        uint64_t first = atomic_fetch_add(&j->next, BATCH);
        if (first >= j->im->nchunks) break;
        rc = store_batch(j, first, buf, fresh);
    }
    int none = 0;
    if (rc) atomic_compare_exchange_strong(&j->rc, &none, rc);
    free(buf), free(fresh);
    return NULL;
}

#define STORE_THREADS 2u

/* Stores image im's chunks and sets status (CS_CHUNK_*) per position. */
static int store_image(cs_store *st, cs_image *im, chunk_fn get, void *garg, uint8_t *status,
                       cs_put_stats *ps, struct progress_state *pr)
{
    struct store_job j = {.st = st, .im = im, .get = get, .garg = garg, .status = status,
                          .ps = ps, .pr = pr};
    atomic_init(&j.next, 0);
    atomic_init(&j.rc, 0);
    pthread_mutex_init(&j.mu, NULL);
    pthread_t tid[STORE_THREADS];
    unsigned started = 0;
    uint64_t batches = (im->nchunks + BATCH - 1) / BATCH;
    for (; started < STORE_THREADS && started < batches; started++)
        if (pthread_create(&tid[started], NULL, store_worker, &j) != 0) break;
    if (started == 0) store_worker(&j);
    for (unsigned t = 0; t < started; t++) pthread_join(tid[t], NULL);
    pthread_mutex_destroy(&j.mu);
    return atomic_load(&j.rc);
}

void node__memimport_free(node__memimport *mi)
{
    if (!mi) return;
    for (size_t i = 0; i < mi->nimages; i++) free(mi->status[i]);
    free(mi->status);
    free(mi->xml);
    memset(mi, 0, sizeof *mi);
}

int node__savefile_import(cs_store *st, const uint8_t *buf, size_t len, cs_manifest *m,
                          node__memimport *out, cs_progress_fn progress, void *arg,
                          char err[NODE_ERRMSG])
{
    memset(out, 0, sizeof *out);
    node__savefile_info *info = malloc(sizeof *info);
    struct imp im = {.base = buf};
    uint8_t *state = NULL;
    if (!info) return -ENOMEM;
    static const node__savefile_visitor v = {imp_blocks, imp_page, imp_kept};
    int rc = node__savefile_parse(buf, len, &v, &im, info, err);
    if (rc == -ENOMEM) node__errf(err, "out of memory reading the save file");
    if (rc) goto out;

    out->first = m->nimages;
    out->nimages = info->nblocks + 1;
    out->status = calloc(out->nimages, sizeof *out->status);
    out->xml = strndup((const char *)info->region, info->xml_len);
    size_t slen = state_prefix_len(info) + im.kept_len;
    state = malloc(slen);
    rc = out->status && out->xml && state ? 0 : -ENOMEM;
    for (size_t i = 0; i < out->nimages && rc == 0; i++) {
        const char *name = i < info->nblocks ? info->blocks[i].name : "state";
        uint64_t length = i < info->nblocks ? info->blocks[i].length : slen;
        cs_image *img = cs_manifest_add_image(m, i < info->nblocks ? CS_IMAGE_RAM : CS_IMAGE_STATE, name, length);
        if (!img && cs_manifest_find_image(m, name)) {
            node__errf(err, "RAM block '%s' has the name of another image of this VM", name);
            rc = CS_EFORMAT;
        } else if (!img || !(out->status[i] = malloc(img->nchunks ? img->nchunks : 1))) {
            rc = -ENOMEM;
        }
    }
    if (rc) goto out;
    state_prefix(info, state);
    memcpy(state + state_prefix_len(info), im.kept, im.kept_len);
    struct progress_state pr = {0, info->ram_bytes + slen, progress, arg};
    for (size_t i = 0; i < out->nimages && rc == 0; i++) {
        cs_image *img = &m->images[out->first + i];
        if (i < info->nblocks) {
            struct ram_src rs = {im.src[i], buf};
            rc = store_image(st, img, ram_chunk, &rs, out->status[i], &out->stats, &pr);
        } else {
            struct bytes_src bs = {state, slen};
            rc = store_image(st, img, bytes_chunk, &bs, out->status[i], &out->stats, &pr);
        }
        if (rc) node__errf(err, "storing image %s: %s", img->name, cs_strerror(rc));
    }
out:
    if (rc == -ENOMEM && !err[0]) node__errf(err, "out of memory");
    for (size_t i = 0; i < im.nsrc; i++) free(im.src[i]);
    free(im.src);
    free(im.kept);
    free(state);
    free(info);
    if (rc) node__memimport_free(out);
    return rc;
}

/* ---- writing a save file -------------------------------------------------------------------- */

bool node_vm_has_memory(const cs_manifest *m)
{
    bool ram = false, state = false;
    for (size_t i = 0; i < m->nimages; i++) {
        if (m->images[i].kind == CS_IMAGE_RAM) ram = true;
        if (m->images[i].kind == CS_IMAGE_STATE && strcmp(m->images[i].name, "state") == 0)
            state = true;
    }
    return ram && state;
}

#define OUTBUF (1u << 20)

struct out {
    int fd;
    uint8_t *buf;
    size_t len;
    uint64_t total;
    int rc;
};

static void out_flush(struct out *o)
{
    for (size_t off = 0; off < o->len && o->rc == 0;) {
        ssize_t w = write(o->fd, o->buf + off, o->len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) o->rc = errno == ENOSPC || errno == EDQUOT || errno == EFBIG ? CS_EFULL : -errno;
        else off += (size_t)w;
    }
    o->total += o->len;
    o->len = 0;
}

static void out_put(struct out *o, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n && o->rc == 0) {
        size_t k = OUTBUF - o->len < n ? OUTBUF - o->len : n;
        memcpy(o->buf + o->len, b, k);
        o->len += k, b += k, n -= k;
        if (o->len == OUTBUF) out_flush(o);
    }
}

static int read_image(cs_store *st, const cs_image *im, uint8_t **out, char err[NODE_ERRMSG])
{
    uint8_t *b = malloc(im->nchunks * PAGE + 1);
    cs_reader *r = NULL;
    int rc = b ? cs_reader_open(st, im, 0, &r) : -ENOMEM;
    uint64_t first, bad = 0;
    size_t n;
    const uint8_t *data;
    while (rc == 0 && (rc = cs_reader_next(r, &first, &n, &data, &bad)) == 0 && n)
        memcpy(b + first * PAGE, data, n * PAGE);
    cs_reader_close(r);
    if (rc == CS_ECORRUPT || rc == CS_ENOTFOUND) {
        char hex[CS_ID_HEX + 1];
        node__errf(err, "%s chunk %s at offset %llu: %s", im->name, cs_id_to_hex(&im->chunks[bad], hex),
                   (unsigned long long)bad * PAGE, rc == CS_ENOTFOUND ? "not in the store" : cs_strerror(rc));
    }
    if (rc) free(b), b = NULL;
    *out = b;
    return rc;
}

/* The XML region with xml in place of the domain XML: the cookie follows it, the rest is zero
 * padding. It keeps its length when the new XML fits, else grows with 64 KiB to spare (as
 * libvirt leaves room when it saves). Sets the header's data_len and cookieOffset. */
static uint8_t *new_region(const struct state *s, const char *xml, uint8_t hdr[LV_HDR], uint32_t *rlen)
{
    uint32_t dlen = s->info->data_len, coff = (uint32_t)node__get_le(hdr + 32, 4);
    const char *cookie = coff ? (const char *)s->region + coff : "";
    size_t clen = coff ? strnlen(cookie, dlen - coff) : 0;
    size_t xlen = strlen(xml) + 1, need = xlen + (clen ? clen + 1 : 0);
    size_t nlen = need <= dlen ? dlen : need + 65536;
    if (nlen > UINT32_MAX) return NULL;
    uint8_t *r = calloc(1, nlen);
    if (!r) return NULL;
    memcpy(r, xml, xlen);
    if (clen) memcpy(r + xlen, cookie, clen);
    node__put_le(hdr + 20, nlen, 4);
    node__put_le(hdr + 32, clen ? xlen : 0, 4);
    *rlen = (uint32_t)nlen;
    return r;
}

int node_savefile_write(cs_store *st, const cs_manifest *m, const char *xml, int fd,
                        cs_progress_fn progress, void *arg, char err[NODE_ERRMSG])
{
    err[0] = '\0';
    const cs_image *sim = cs_manifest_find_image(m, "state");
    if (!sim || sim->kind != CS_IMAGE_STATE || !node_vm_has_memory(m)) {
        node__errf(err, "this VM has no memory snapshot (no state and RAM images)");
        return CS_EFORMAT;
    }
    struct state s = {.info = malloc(sizeof *s.info)};
    uint8_t *sbuf = NULL, *region = NULL;
    struct out o = {.fd = fd, .buf = malloc(OUTBUF)};
    int rc = s.info && o.buf ? 0 : -ENOMEM;
    if (rc == 0) rc = read_image(st, sim, &sbuf, err);
    if (rc == 0) rc = state_decode(sbuf, (size_t)sim->length, &s, err);
    const cs_image **ims = rc == 0 ? calloc(s.info->nblocks, sizeof *ims) : NULL;
    if (rc == 0 && !ims) rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < s.info->nblocks; i++) {
        ims[i] = cs_manifest_find_image(m, s.info->blocks[i].name);
        if (!ims[i] || ims[i]->kind != CS_IMAGE_RAM || ims[i]->length != s.info->blocks[i].length) {
            node__errf(err, "RAM block '%s' (%llu bytes) has no RAM image of that length in the manifest",
                       s.info->blocks[i].name, (unsigned long long)s.info->blocks[i].length);
            rc = CS_EFORMAT;
        }
    }
    uint8_t hdr[LV_HDR];
    uint32_t rlen = 0;
    if (rc == 0) {
        memcpy(hdr, s.info->header, LV_HDR);
        region = xml ? new_region(&s, xml, hdr, &rlen) : NULL;
        if (xml && !region) rc = -ENOMEM;
    }
    /* A reader that goes away (a FIFO closed early) must come back as EPIPE, not a signal. */
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    if (rc == 0) {
        out_put(&o, hdr, LV_HDR);
        if (region) out_put(&o, region, rlen);
        else out_put(&o, s.region, s.info->data_len);
        out_put(&o, s.stream, (size_t)s.insert_at);
    }
    uint64_t done = 0;
    for (size_t i = 0; rc == 0 && o.rc == 0 && i < s.info->nblocks; i++) {
        const cs_image *im = ims[i];
        const char *name = s.info->blocks[i].name;
        uint8_t nlen = (uint8_t)strlen(name);
        cs_reader *r = NULL;
        rc = cs_reader_open(st, im, 0, &r);
        uint64_t first, bad = 0;
        size_t n;
        const uint8_t *data;
        while (rc == 0 && o.rc == 0 && (rc = cs_reader_next(r, &first, &n, &data, &bad)) == 0 && n) {
            for (size_t k = 0; k < n; k++) {
                uint64_t c = first + k;
                bool zero = cs_id_is_zero(&im->chunks[c]);
                uint8_t rec[8 + 1 + 255];
                node__put_be(rec, c * PAGE | (zero ? F_ZERO : F_PAGE) | (c ? F_CONTINUE : 0), 8);
                size_t rl = 8;
                if (c == 0) {
                    rec[8] = nlen;
                    memcpy(rec + 9, name, nlen);
                    rl += 1u + nlen;
                }
                out_put(&o, rec, rl);
                if (zero) out_put(&o, "", 1);
                else out_put(&o, data + k * PAGE, PAGE);
            }
            done += (uint64_t)n * PAGE;
            if (progress) progress(done, s.info->ram_bytes, arg);
        }
        cs_reader_close(r);
        if (rc == CS_ECORRUPT || rc == CS_ENOTFOUND) {
            char hex[CS_ID_HEX + 1];
            node__errf(err, "RAM block %s chunk %s at offset %llu: %s", name,
                       cs_id_to_hex(&im->chunks[bad], hex), (unsigned long long)bad * PAGE,
                       rc == CS_ENOTFOUND ? "not in the store" : cs_strerror(rc));
        }
    }
    if (rc == 0) {
        out_put(&o, s.stream + s.insert_at, (size_t)(s.stream_len - s.insert_at));
        if (o.rc == 0) out_flush(&o);
    }
    if (rc == 0 && o.rc) {
        rc = o.rc;
        node__errf(err, "writing the save file: %s", rc == -EPIPE ? "the reader went away" : cs_strerror(rc));
    }
    /* Drop a SIGPIPE this thread raised, so unblocking does not deliver it. */
    struct timespec zero_ts = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero_ts) == SIGPIPE) {}
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    if (rc && !err[0]) node__errf(err, "writing the save file: %s", cs_strerror(rc));
    free(ims);
    free(region);
    free(sbuf);
    free(o.buf);
    free(s.info);
    return rc;
}
