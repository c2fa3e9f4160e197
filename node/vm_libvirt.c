/*
 * vm_libvirt.c — libvirt control: accelerator detection, domain XML rewriting, capture of a
 * running domain into the store, and local launch (synthesis, then restore or boot).
 *
 * Design notes:
 * - The domain XML is rewritten as a string, not through an XML library: the project has no
 *   XML dependency and the edits are few (the root's type attribute, <name>, <uuid>, the
 *   first disk's source, the first unix serial's paths). A small scanner walks the tags,
 *   skipping comments, CDATA and processing instructions, and tracks depth, so <name> means
 *   the root's child and not some nested element's; values written are escaped. Edits are
 *   collected as (offset, length, replacement) and applied in one pass.
 * - Launch is all-or-nothing: the launch directory must not exist beforehand, so on failure
 *   everything in it is ours to remove; the domain is transient (restored or created, never
 *   defined), so destroying it removes it from libvirt.
 * - With a FIFO, a writer thread streams the rebuilt save file into the FIFO while
 *   virDomainRestoreFlags reads it. The writer opens the FIFO non-blocking in a bounded retry
 *   loop, so a restore that fails before opening it cannot strand the thread; SIGPIPE is
 *   blocked in the writer, so a reader that gives up makes write() fail with EPIPE. A save
 *   file has no checksums: the writer verifies every chunk against its id, and a damaged
 *   chunk ends the stream early, which QEMU refuses as a truncated migration.
 * - KVM detection runs real guest code: /dev/kvm may exist yet be a shim that runs guests
 *   about 1000 times too slowly. A child process creates a VM, runs a loop of 5 million
 *   iterations in real mode and must reach HLT within 0.25 s (80 times what real hardware
 *   needs); the parent kills it if not.
 */
#define _GNU_SOURCE
#include "node.h"
#include "node_internal.h"
#include "vm_nbd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URI "qemu:///system"

/* ---- libvirt connection ---------------------------------------------------------------------- */

/* libvirt prints every error to stderr unless a handler is set; errors are reported through
 * err sentences instead. */
static void quiet_errors(void *arg, virErrorPtr e)
{
    (void)arg, (void)e;
}

static const char *virt_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m ? m : "unknown libvirt error";
}

static virConnectPtr connect_uri(const char *uri, char err[NODE_ERRMSG])
{
    virSetErrorFunc(NULL, quiet_errors);
    const char *u = uri && uri[0] ? uri : DEFAULT_URI;
    virConnectPtr c = virConnectOpen(u);
    if (!c) node__errf(err, "cannot connect to libvirt at %s: %s", u, virt_msg());
    return c;
}

/* ---- accelerator ----------------------------------------------------------------------------- */

const char *node_accel_name(node_accel a)
{
    return a == NODE_ACCEL_KVM ? "kvm" : "tcg";
}

/* In a child: 0 when KVM ran the loop to HLT, 1 otherwise. 16-bit real mode at 0x1000:
 * 66 49 (dec ecx), 75 fc (jnz back), f4 (hlt), with ecx = 5 million: about 3 ms on real
 * hardware; on the slow shim one million iterations took 1.4 s. */
static int kvm_probe_child(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0 || ioctl(kvm, KVM_GET_API_VERSION, 0) != 12) return 1;
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) return 1;
    uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 1;
    static const uint8_t code[] = {0x66, 0x49, 0x75, 0xfc, 0xf4};
    memcpy(mem, code, sizeof code);
    struct kvm_userspace_memory_region region = {.slot = 0,
                                                 .guest_phys_addr = 0x1000,
                                                 .memory_size = 0x1000,
                                                 .userspace_addr = (uint64_t)(uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return 1;
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (vcpu < 0 || mmap_size <= 0) return 1;
    struct kvm_run *run =
        mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) return 1;
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return 1;
    sregs.cs.base = 0, sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return 1;
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2, .rcx = 5000000};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return 1;
    for (int i = 0; i < 100; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0 && errno != EINTR) return 1;
        if (run->exit_reason == KVM_EXIT_HLT) return 0;
        if (run->exit_reason != KVM_EXIT_INTR) return 1;
    }
    return 1;
}

static bool kvm_runs_guest_code(double deadline_s)
{
    if (access("/dev/kvm", R_OK | W_OK) != 0) return false;
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) _exit(kvm_probe_child());
    double end = node__now_s() + deadline_s;
    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (w < 0 && errno != EINTR) return false;
        if (node__now_s() > end) break;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return false;
}

node_accel node_accel_detect(const char *uri)
{
    const char *env = getenv("CLOUDLET_ACCEL");
    if (env && !strcmp(env, "kvm")) return NODE_ACCEL_KVM;
    if (env && !strcmp(env, "tcg")) return NODE_ACCEL_TCG;
    if (!kvm_runs_guest_code(0.25)) return NODE_ACCEL_TCG;
    char err[NODE_ERRMSG];
    virConnectPtr c = connect_uri(uri, err);
    if (!c) return NODE_ACCEL_TCG;
    char *caps = virConnectGetDomainCapabilities(c, NULL, NULL, NULL, "kvm", 0);
    virConnectClose(c);
    free(caps);
    return caps ? NODE_ACCEL_KVM : NODE_ACCEL_TCG;
}

/* ---- domain XML as a string ------------------------------------------------------------------ */

typedef struct tag {
    size_t start, end; /* '<' and one past '>' */
    const char *name;  /* into the XML */
    size_t name_len;
    bool closing, empty; /* </x>, <x/> */
    int depth;           /* of the element: the root is 0 */
} tag;

typedef struct scanner {
    const char *xml;
    size_t pos;
    int depth;
} scanner;

/* The next tag, skipping text, comments, CDATA, <?…?> and <!DOCTYPE>. False at the end or on
 * a malformed tag. */
static bool next_tag(scanner *s, tag *t)
{
    const char *x = s->xml;
    for (;;) {
        const char *lt = strchr(x + s->pos, '<');
        if (!lt) return false;
        size_t at = (size_t)(lt - x);
        const char *close = NULL;
        if (!strncmp(lt, "<!--", 4))
            close = strstr(lt + 4, "-->"), close = close ? close + 3 : NULL;
        else if (!strncmp(lt, "<![CDATA[", 9))
            close = strstr(lt + 9, "]]>"), close = close ? close + 3 : NULL;
        else if (lt[1] == '?')
            close = strstr(lt + 2, "?>"), close = close ? close + 2 : NULL;
        else if (lt[1] == '!')
            close = strchr(lt, '>'), close = close ? close + 1 : NULL;
        else {
            /* A start or end tag: '>' inside a quoted attribute value does not end it. A quote
             * opens a value only after '=', as attr_next reads values. */
            const char *p = lt + 1;
            char q = 0;
            bool after_eq = false;
            for (; *p; p++) {
                if (q) {
                    if (*p == q) q = 0;
                } else if (after_eq && (*p == '\'' || *p == '"')) {
                    q = *p, after_eq = false;
                } else if (*p == '=') {
                    after_eq = true;
                } else if (*p == '>') {
                    break;
                } else if (!strchr(" \t\r\n", *p)) {
                    after_eq = false;
                }
            }
            if (!*p) return false;
            t->start = at;
            t->end = (size_t)(p - x) + 1;
            t->closing = lt[1] == '/';
            t->empty = p[-1] == '/';
            t->name = lt + 1 + t->closing;
            t->name_len = strcspn(t->name, " \t\r\n/>");
            if (t->closing) {
                t->depth = --s->depth;
            } else {
                t->depth = s->depth;
                if (!t->empty) s->depth++;
            }
            s->pos = t->end;
            return t->name_len > 0 && t->depth >= 0;
        }
        if (!close) return false;
        s->pos = (size_t)(close - x);
    }
}

static bool tag_is(const tag *t, const char *name)
{
    return t->name_len == strlen(name) && !strncmp(t->name, name, t->name_len);
}

/* The value of attribute `name` in tag t: offset and length within the XML. */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The next attribute with a quoted value in [*pp, end): its name and value spans. False at the
 * end of the tag or at anything that is not name="value" (then no later attribute counts). */
static bool attr_next(const char **pp, const char *end, const char **an, size_t *anl,
                      const char **v, size_t *vl)
{
    const char *p = *pp;
    for (;;) {
        while (p < end && is_space(*p)) p++;
        *an = p;
        while (p < end && !is_space(*p) && *p != '=' && *p != '/' && *p != '>') p++;
        *anl = (size_t)(p - *an);
        while (p < end && is_space(*p)) p++;
        if (p >= end) return false;
        if (*p == '=') break;
        if (*anl == 0) p++; /* a '/' or '>' */
    }
    p++;
    while (p < end && is_space(*p)) p++;
    if (p >= end || (*p != '\'' && *p != '"')) return false;
    char q = *p++;
    *v = p;
    while (p < end && *p != q) p++;
    if (p >= end) return false;
    *vl = (size_t)(p - *v);
    *pp = p + 1;
    return true;
}

static bool tag_attr(const char *xml, const tag *t, const char *name, size_t *off, size_t *len)
{
    size_t nl = strlen(name), anl, vl;
    const char *p = xml + t->start + 1 + t->name_len, *end = xml + t->end, *an, *v;
    while (attr_next(&p, end, &an, &anl, &v, &vl)) {
        if (anl == nl && !strncmp(an, name, nl)) {
            *off = (size_t)(v - xml), *len = vl;
            return true;
        }
    }
    return false;
}

/* Unescapes the five predefined entities and numeric references below 128. */
static char *xml_unescape(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out) return NULL;
    static const struct {
        const char *e;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&apos;", '\''}, {"&quot;", '"'}};
    for (size_t i = 0; i < len;) {
        bool done = false;
        if (s[i] == '&') {
            for (size_t k = 0; k < 5 && !done; k++) {
                size_t el = strlen(ents[k].e);
                if (i + el <= len && !strncmp(s + i, ents[k].e, el))
                    *o++ = ents[k].c, i += el, done = true;
            }
            if (!done && i + 3 < len && s[i + 1] == '#') {
                char *e;
                long v = s[i + 2] == 'x' ? strtol(s + i + 3, &e, 16) : strtol(s + i + 2, &e, 10);
                if (*e == ';' && v > 0 && v < 128 && (size_t)(e - s) < len) {
                    *o++ = (char)v, i = (size_t)(e - s) + 1, done = true;
                }
            }
        }
        if (!done) *o++ = s[i++];
    }
    *o = '\0';
    return out;
}

static char *xml_escape(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++) n += strchr("&<>'\"", *p) ? 6 : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '&': o = stpcpy(o, "&amp;"); break;
        case '<': o = stpcpy(o, "&lt;"); break;
        case '>': o = stpcpy(o, "&gt;"); break;
        case '\'': o = stpcpy(o, "&apos;"); break;
        case '"': o = stpcpy(o, "&quot;"); break;
        default: *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

typedef struct edit {
    size_t off, len;
    char *repl; /* malloc'd */
    size_t seq; /* order of addition: among edits of one span, the first wins */
} edit;

typedef struct edits {
    edit e[64];
    size_t n;
    bool nomem;
} edits;

static void edit_add(edits *ed, size_t off, size_t len, char *repl)
{
    if (!repl || ed->n == sizeof ed->e / sizeof ed->e[0]) {
        free(repl);
        ed->nomem = true;
        return;
    }
    ed->e[ed->n] = (edit){off, len, repl, ed->n};
    ed->n++;
}

static int edit_cmp(const void *a, const void *b)
{
    const edit *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts the edits; false when two of them overlap (only in malformed XML), except edits of one
 * same span, where the first added wins. */
static bool edits_sort(edits *ed)
{
    qsort(ed->e, ed->n, sizeof ed->e[0], edit_cmp);
    for (size_t i = 1; i < ed->n; i++) {
        const edit *a = &ed->e[i - 1], *b = &ed->e[i];
        if (a->off == b->off && a->len == b->len) continue;
        if (b->off < a->off + a->len) return false;
    }
    return true;
}

static char *edits_apply(const char *xml, edits *ed)
{
    size_t len = strlen(xml), n = len;
    for (size_t i = 0; i < ed->n; i++) n += strlen(ed->e[i].repl);
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    size_t at = 0;
    for (size_t i = 0; i < ed->n; i++) {
        /* Two edits of one span (a serial whose socket and log share a path): the first wins. */
        if (i && ed->e[i].off == ed->e[i - 1].off && ed->e[i].len == ed->e[i - 1].len) continue;
        memcpy(o, xml + at, ed->e[i].off - at), o += ed->e[i].off - at;
        o = stpcpy(o, ed->e[i].repl);
        at = ed->e[i].off + ed->e[i].len;
    }
    memcpy(o, xml + at, len - at), o += len - at;
    *o = '\0';
    return out;
}

static void edits_free(edits *ed)
{
    for (size_t i = 0; i < ed->n; i++) free(ed->e[i].repl);
    ed->n = 0;
}

/* What the scanner finds in one pass over a domain XML. */
typedef struct domain_scan {
    tag root;
    bool has_name, has_uuid, has_disk, has_serial, has_log;
    size_t name_off, name_len; /* text of the root's <name> */
    size_t uuid_off, uuid_len; /* text of the root's <uuid> */
    tag disk, disk_source, disk_driver, disk_backing;
    bool has_disk_source, has_disk_driver, has_disk_backing;
    size_t disk_close;             /* where its </disk> starts (0: none seen) */
    size_t serial_off, serial_len; /* the first unix serial's source path attribute value */
    size_t log_off, log_len;       /* its <log file=…> value */
} domain_scan;

static int scan_domain(const char *xml, domain_scan *d, char err[NODE_ERRMSG])
{
    memset(d, 0, sizeof *d);
    scanner s = {xml, 0, 0};
    tag t;
    bool got_root = false, in_devices = false, in_disk = false, in_serial = false,
         serial_unix = false;
    size_t text_from = 0;
    int text_of = 0; /* 1 name, 2 uuid */
    while (next_tag(&s, &t)) {
        if (!got_root) {
            if (t.closing || !tag_is(&t, "domain")) {
                node__errf(err, "domain XML: the root element is not <domain>");
                return CS_EFORMAT;
            }
            d->root = t, got_root = true;
            continue;
        }
        if (t.depth == 1 && !t.closing && !t.empty && (tag_is(&t, "name") || tag_is(&t, "uuid"))) {
            text_from = t.end, text_of = tag_is(&t, "name") ? 1 : 2;
            continue;
        }
        if (text_of && !(t.depth == 1 && t.closing && tag_is(&t, text_of == 1 ? "name" : "uuid"))) {
            text_of = 0; /* <name> or <uuid> with elements inside: not the domain's */
        }
        if (t.depth == 1 && t.closing && text_of) {
            if (text_of == 1 && !d->has_name)
                d->has_name = true, d->name_off = text_from, d->name_len = t.start - text_from;
            if (text_of == 2 && !d->has_uuid)
                d->has_uuid = true, d->uuid_off = text_from, d->uuid_len = t.start - text_from;
            text_of = 0;
            continue;
        }
        if (t.depth == 1 && tag_is(&t, "devices")) {
            in_devices = !t.closing && !t.empty;
            continue;
        }
        if (!in_devices) continue;
        if (t.depth == 2 && tag_is(&t, "disk") && !t.closing && !d->has_disk) {
            size_t o, l;
            bool is_disk =
                !tag_attr(xml, &t, "device", &o, &l) || (l == 4 && !strncmp(xml + o, "disk", 4));
            if (is_disk) {
                d->has_disk = true, d->disk = t;
                in_disk = !t.empty;
            }
            continue;
        }
        if (in_disk) {
            if (t.depth == 2 && t.closing)
                in_disk = false, d->disk_close = t.start;
            else if (t.depth == 3 && tag_is(&t, "backingStore") && !t.closing &&
                     !d->has_disk_backing)
                d->disk_backing = t, d->has_disk_backing = true;
            else if (t.depth == 3 && tag_is(&t, "source") && !t.closing && !d->has_disk_source)
                d->disk_source = t, d->has_disk_source = true;
            else if (t.depth == 3 && tag_is(&t, "driver") && !t.closing && !d->has_disk_driver)
                d->disk_driver = t, d->has_disk_driver = true;
            continue;
        }
        if (t.depth == 2 && tag_is(&t, "serial") && !t.closing && !d->has_serial && !in_serial) {
            size_t o, l;
            serial_unix =
                tag_attr(xml, &t, "type", &o, &l) && l == 4 && !strncmp(xml + o, "unix", 4);
            in_serial = !t.empty && serial_unix;
            continue;
        }
        if (in_serial) {
            if (t.depth == 2 && t.closing) {
                in_serial = false;
                continue;
            }
            size_t o, l;
            if (t.depth == 3 && tag_is(&t, "source") && !t.closing &&
                tag_attr(xml, &t, "path", &o, &l))
                d->has_serial = true, d->serial_off = o, d->serial_len = l;
            if (t.depth == 3 && tag_is(&t, "log") && !t.closing &&
                tag_attr(xml, &t, "file", &o, &l))
                d->has_log = true, d->log_off = o, d->log_len = l;
        }
    }
    if (!got_root) {
        node__errf(err, "domain XML: no <domain> element");
        return CS_EFORMAT;
    }
    return 0;
}

/* Replaces every attribute value in the XML that equals `value` (a path used by <serial> and
 * by its <console> twin alike). */
static void replace_attr_values(const char *xml, const char *value, size_t vlen, const char *with,
                                edits *ed)
{
    scanner s = {xml, 0, 0};
    tag t;
    while (next_tag(&s, &t)) {
        if (t.closing) continue;
        const char *p = xml + t.start + 1 + t.name_len, *end = xml + t.end, *an, *v;
        size_t anl, vl;
        while (attr_next(&p, end, &an, &anl, &v, &vl))
            if (vl == vlen && !strncmp(v, value, vlen))
                edit_add(ed, (size_t)(v - xml), vlen, xml_escape(with));
    }
}

static bool span_is(const char *xml, size_t off, size_t len, const char *value)
{
    char *esc = xml_escape(value);
    bool same = esc && strlen(esc) == len && !strncmp(xml + off, esc, len);
    free(esc);
    return same;
}

/* Malformed XML (quotes or tags where they do not belong) can make the scanner read the
 * rewritten text differently from the original. The result is scanned again and must show
 * what was written, where it was written. */
static bool rewrite_reads_back(const char *out, const node_vm_xml_edit *e)
{
    domain_scan d;
    char err[NODE_ERRMSG];
    if (scan_domain(out, &d, err) != 0) return false;
    if (e->name && !(d.has_name && span_is(out, d.name_off, d.name_len, e->name))) return false;
    if (e->uuid && !(d.has_uuid && span_is(out, d.uuid_off, d.uuid_len, e->uuid))) return false;
    size_t o, l;
    if (e->disk && !(d.has_disk_source && tag_attr(out, &d.disk_source, "file", &o, &l) &&
                     span_is(out, o, l, e->disk)))
        return false;
    return true;
}

/* The first disk becomes a qcow2 overlay backed by the NBD export on socket: its driver type
 * qcow2, its <backingStore> (none, or an empty one) the export. */
static int backed_by_nbd(const char *xml, const domain_scan *d, const char *socket, edits *ed,
                         char err[NODE_ERRMSG])
{
    if (d->has_disk_backing && !d->disk_backing.empty) {
        node__errf(err, "domain XML: the first disk has a backing chain already");
        return CS_EFORMAT;
    }
    if (d->disk.empty || !d->disk_close) {
        node__errf(err, "domain XML: the first disk has no end tag");
        return CS_EFORMAT;
    }
    char *esc = xml_escape(socket), *backing = NULL, *at_close = NULL;
    if (!esc || asprintf(&backing,
                         "<backingStore type='network'><format type='raw'/><source protocol='nbd' "
                         "name='%s'><host transport='unix' socket='%s'/></source><backingStore/>"
                         "</backingStore>",
                         NODE_NBD_EXPORT, esc) < 0)
        backing = NULL;
    free(esc);
    if (!backing) return -ENOMEM;
    size_t o, l;
    bool driver_typed = d->has_disk_driver && tag_attr(xml, &d->disk_driver, "type", &o, &l);
    if (driver_typed)
        edit_add(ed, o, l, strdup("qcow2"));
    else if (d->has_disk_driver)
        edit_add(ed, d->disk_driver.start + 1 + d->disk_driver.name_len, 0, strdup(" type='qcow2'"));
    /* What goes before </disk>: a driver when there was none, the backing when it had none. */
    const char *driver = d->has_disk_driver ? "" : "<driver name='qemu' type='qcow2'/>";
    if (d->has_disk_backing) {
        edit_add(ed, d->disk_backing.start, d->disk_backing.end - d->disk_backing.start, backing);
        backing = NULL;
    }
    if (asprintf(&at_close, "%s%s", driver, backing ? backing : "") < 0) at_close = NULL;
    free(backing);
    if (!at_close) return -ENOMEM;
    if (at_close[0])
        edit_add(ed, d->disk_close, 0, at_close);
    else
        free(at_close);
    return 0;
}

int node_vm_xml_rewrite(const char *xml, const node_vm_xml_edit *e, char **out,
                        char err[NODE_ERRMSG])
{
    *out = NULL;
    domain_scan d;
    int rc = scan_domain(xml, &d, err);
    if (rc) return rc;
    edits ed = {0};
    if (e->accel != NODE_ACCEL_AUTO) {
        const char *type = e->accel == NODE_ACCEL_KVM ? "kvm" : "qemu";
        size_t o, l;
        if (tag_attr(xml, &d.root, "type", &o, &l))
            edit_add(&ed, o, l, strdup(type));
        else {
            char *a;
            if (asprintf(&a, " type='%s'", type) < 0) a = NULL;
            edit_add(&ed, d.root.start + 1 + d.root.name_len, 0, a);
        }
    }
    if (e->name) {
        if (!d.has_name) {
            node__errf(err, "domain XML has no <name>");
            rc = CS_EFORMAT;
            goto fail;
        }
        edit_add(&ed, d.name_off, d.name_len, xml_escape(e->name));
    }
    if (e->uuid) {
        if (d.has_uuid)
            edit_add(&ed, d.uuid_off, d.uuid_len, xml_escape(e->uuid));
        else if (d.has_name) {
            char *u, *esc = xml_escape(e->uuid);
            if (!esc || asprintf(&u, "<uuid>%s</uuid>", esc) < 0) u = NULL;
            free(esc);
            /* right after </name> */
            const char *close = strstr(xml + d.name_off + d.name_len, ">");
            edit_add(&ed, close ? (size_t)(close - xml) + 1 : d.name_off + d.name_len, 0, u);
        } else {
            node__errf(err, "domain XML has neither <name> nor <uuid>");
            rc = CS_EFORMAT;
            goto fail;
        }
    }
    if (e->disk) {
        size_t o, l;
        if (!d.has_disk || !d.has_disk_source) {
            node__errf(err, "domain XML has no <disk device='disk'> with a <source>");
            rc = CS_EFORMAT;
            goto fail;
        }
        if (tag_attr(xml, &d.disk, "type", &o, &l) && !(l == 4 && !strncmp(xml + o, "file", 4))) {
            node__errf(err, "domain XML: the first disk is type '%.*s', not 'file'", (int)l,
                       xml + o);
            rc = CS_EFORMAT;
            goto fail;
        }
        if (!tag_attr(xml, &d.disk_source, "file", &o, &l)) {
            node__errf(err, "domain XML: the first disk's <source> has no file attribute");
            rc = CS_EFORMAT;
            goto fail;
        }
        edit_add(&ed, o, l, xml_escape(e->disk));
        if (e->disk_nbd && (rc = backed_by_nbd(xml, &d, e->disk_nbd, &ed, err))) goto fail;
    }
    if (e->serial_sock && d.has_serial)
        replace_attr_values(xml, xml + d.serial_off, d.serial_len, e->serial_sock, &ed);
    if (e->serial_log && d.has_log)
        replace_attr_values(xml, xml + d.log_off, d.log_len, e->serial_log, &ed);
    if (ed.nomem) {
        rc = -ENOMEM;
        goto fail;
    }
    if (!edits_sort(&ed)) {
        node__errf(err, "domain XML is malformed: the elements to rewrite overlap");
        rc = CS_EFORMAT;
        goto fail;
    }
    *out = edits_apply(xml, &ed);
    rc = *out ? 0 : -ENOMEM;
    if (rc == 0 && !rewrite_reads_back(*out, e)) {
        node__errf(err, "domain XML is malformed: its rewritten form does not read back");
        free(*out), *out = NULL;
        rc = CS_EFORMAT;
    }
fail:
    edits_free(&ed);
    return rc;
}

int node_vm_xml_first_disk(const char *xml, char **file, char **format, char err[NODE_ERRMSG])
{
    if (file) *file = NULL;
    if (format) *format = NULL;
    domain_scan d;
    int rc = scan_domain(xml, &d, err);
    if (rc) return rc;
    size_t o, l;
    if (!d.has_disk) {
        node__errf(err, "domain XML has no <disk device='disk'>");
        return CS_EFORMAT;
    }
    if (file && d.has_disk_source && tag_attr(xml, &d.disk_source, "file", &o, &l))
        if (!(*file = xml_unescape(xml + o, l))) return -ENOMEM;
    if (format && d.has_disk_driver && tag_attr(xml, &d.disk_driver, "type", &o, &l))
        if (!(*format = xml_unescape(xml + o, l))) return -ENOMEM;
    return 0;
}

/* ---- capture --------------------------------------------------------------------------------- */

static virDomainPtr lookup_domain(virConnectPtr c, const char *domain)
{
    virDomainPtr d = virDomainLookupByName(c, domain);
    if (!d) d = virDomainLookupByUUIDString(c, domain);
    return d;
}

int node_vm_capture(cs_store *st, const char *uri, const char *domain, const char *tmpdir,
                    const node_vm_import_opts *o, cs_id *id, node_import_report *report,
                    cs_progress_fn progress, void *arg, char err[NODE_ERRMSG])
{
    memset(report, 0, sizeof *report);
    err[0] = '\0';
    virConnectPtr c = connect_uri(uri, err);
    if (!c) return -EIO;
    int rc = 0;
    char *xml = NULL, *disk = NULL, *format = NULL, *dir = NULL, *save = NULL;
    virDomainPtr d = lookup_domain(c, domain);
    if (!d) {
        node__errf(err, "no domain %s: %s", domain, virt_msg());
        rc = CS_ENOTFOUND;
        goto out;
    }
    int active = virDomainIsActive(d);
    if (active != 1) {
        node__errf(err, "domain %s is not running (only a running domain has memory to save)",
                   domain);
        rc = -EINVAL;
        goto out;
    }
    if (!(xml = virDomainGetXMLDesc(d, 0))) {
        node__errf(err, "domain %s: %s", domain, virt_msg());
        rc = -EIO;
        goto out;
    }
    if ((rc = node_vm_xml_first_disk(xml, &disk, &format, err))) goto out;
    if (!disk) {
        node__errf(err, "domain %s: its first disk is not a file", domain);
        rc = -EINVAL;
        goto out;
    }
    if (!format || strcmp(format, "raw") != 0) {
        node__errf(err, "domain %s: its first disk %s is %s, not raw", domain, disk,
                   format ? format : "of unknown format");
        rc = -EINVAL;
        goto out;
    }
    /* libvirtd writes the save file as root; the directory is ours and private. */
    if (asprintf(&dir, "%s/capture.XXXXXX", tmpdir && tmpdir[0] ? tmpdir : "/var/tmp") < 0) {
        dir = NULL, rc = -ENOMEM;
        goto out;
    }
    if (!mkdtemp(dir)) {
        rc = -errno;
        node__errf(err, "cannot create a directory like %s: %s", dir, strerror(errno));
        free(dir), dir = NULL;
        goto out;
    }
    if (asprintf(&save, "%s/memory.save", dir) < 0) {
        save = NULL, rc = -ENOMEM;
        goto out;
    }
    if (virDomainSave(d, save) != 0) {
        node__errf(err, "saving domain %s: %s", domain, virt_msg());
        rc = -EIO;
        goto out;
    }
    node_vm_import_opts io = *o;
    io.disk = disk, io.memory = save;
    rc = node_vm_import(st, &io, id, report, progress, arg, err);
    if (rc) {
        /* The domain is stopped and its memory is only in the save file: resume it rather
         * than lose it, or keep the file and say where it is. */
        char why[NODE_ERRMSG];
        snprintf(why, sizeof why, "%s", err[0] ? err : node_strerror(rc));
        if (virDomainRestore(c, save) == 0) {
            node__errf(err, "%s (domain %s was resumed)", why, domain);
        } else {
            node__errf(err, "%s; domain %s stays saved in %s (virsh restore)", why, domain, save);
            free(save), save = NULL, free(dir), dir = NULL;
        }
    }
out:
    if (save) unlink(save);
    if (dir) rmdir(dir);
    free(save), free(dir), free(xml), free(disk), free(format);
    if (d) virDomainFree(d);
    virConnectClose(c);
    return rc;
}

/* ---- launch ---------------------------------------------------------------------------------- */

static void uuid_random(char out[37])
{
    uint8_t b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n > 0) got += (size_t)n;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40), b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* Removes a launch directory this launch created, with everything in it (flat). */
static void remove_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    if (dp) {
        struct dirent *de;
        while ((de = readdir(dp)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                unlinkat(dirfd(dp), de->d_name, 0);
        closedir(dp);
    }
    rmdir(dir);
}

static char *path_in(const char *dir, const char *name)
{
    char *p;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static int write_all(int fd, const char *s)
{
    for (size_t len = strlen(s), off = 0; off < len;) {
        ssize_t w = write(fd, s + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -errno;
        off += (size_t)w;
    }
    return 0;
}

struct fifo_writer {
    cs_store *st;
    const cs_manifest *m;
    const char *xml, *path;
    cs_progress_fn progress;
    void *arg;
    volatile int stop; /* set when the restore returned: stop waiting for a reader */
    bool opened;       /* a reader opened the FIFO */
    int rc;
    double seconds;
    uint64_t bytes;
    char err[NODE_ERRMSG];
};

static void *fifo_write(void *arg)
{
    struct fifo_writer *w = arg;
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);
    double t0 = node__now_s(), end = t0 + 120;
    int fd;
    /* Non-blocking open fails with ENXIO until the restore opens the FIFO for reading. */
    while ((fd = open(w->path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0) {
        if ((errno != ENXIO && errno != EINTR) || __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) ||
            node__now_s() > end) {
            w->rc = errno == ENXIO ? -ETIMEDOUT : -errno;
            node__errf(w->err, "nobody read the memory FIFO %s", w->path);
            return NULL;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    t0 = node__now_s();
    w->opened = true;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    /* A larger pipe buffer means fewer hand-overs between this writer and QEMU's reader (the
     * default 64 KiB is 16 pages); failure only costs speed. */
    fcntl(fd, F_SETPIPE_SZ, 1 << 20);
    w->rc = node_savefile_write(w->st, w->m, w->xml, fd, w->progress, w->arg, w->err);
    close(fd);
    w->seconds = node__now_s() - t0;
    return NULL;
}

void node_domain_name(const char *base, const cs_id *id, char *out, size_t cap)
{
    char hex[CS_ID_HEX + 1];
    cs_id_to_hex(id, hex);
    bool is_id = !base || !base[0] ||
                 (strlen(base) == CS_ID_HEX && strspn(base, "0123456789abcdefABCDEF") == CS_ID_HEX);
    unsigned char rnd[3] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, 0, sizeof rnd);
    snprintf(out, cap, "%s%.*s-%02x%02x%02x", is_id ? "vm-" : base, is_id ? 12 : 0, hex, rnd[0],
             rnd[1], rnd[2]);
}

/* Accelerator detection (about a second when /dev/kvm is a slow shim) runs while the disk is
 * written. */
struct detect_job {
    const char *uri;
    node_accel accel;
};

static void *detect_run(void *arg)
{
    struct detect_job *j = arg;
    j->accel = node_accel_detect(j->uri);
    return NULL;
}

static uint64_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* The guest's addresses that libvirt knows from its DHCP leases (a domain on a libvirt
 * network), space-separated into out; "" when it knows none (no interface, or not on such a
 * network). */
static void domain_addresses(virDomainPtr dom, char *out, size_t cap)
{
    out[0] = '\0';
    virDomainInterfacePtr *ifs = NULL;
    int n = virDomainInterfaceAddresses(dom, &ifs, VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0);
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        for (unsigned k = 0; k < ifs[i]->naddrs; k++) {
            int w = snprintf(out + used, cap - used, "%s%s", used ? " " : "",
                             ifs[i]->addrs[k].addr);
            if (w > 0 && (size_t)w < cap - used) used += (size_t)w;
        }
        virDomainInterfaceFree(ifs[i]);
    }
    free(ifs);
    if (n < 0) virResetLastError(); /* no interface or no lease: not an error of the launch */
}

static uint64_t memory_bytes(const cs_manifest *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->nimages; i++)
        if (m->images[i].kind == CS_IMAGE_RAM || m->images[i].kind == CS_IMAGE_STATE)
            n += m->images[i].length;
    return n;
}

/* disk.raw: the whole disk image written before the restore. */
static int write_raw_disk(cs_store *st, const cs_image *dimg, const char *path,
                          cs_progress_fn progress, void *arg, char err[NODE_ERRMSG])
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = -errno;
        node__errf(err, "cannot create %s: %s", path, strerror(errno));
        return rc;
    }
    err[0] = '\0';
    int rc = node__export_disk(st, dimg, fd, progress, arg, err);
    if (close(fd) != 0 && rc == 0) rc = -errno;
    if (rc && !err[0]) node__errf(err, "writing %s: %s", path, node_strerror(rc));
    return rc;
}

/* Runs argv (a program on PATH) and waits for it; its output (the first bytes of it) goes
 * into err when it fails. */
static int run_program(char *const argv[], char err[NODE_ERRMSG])
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    if (rc) {
        close(out[0]);
        node__errf(err, "cannot run %s: %s", argv[0], strerror(rc));
        return -rc;
    }
    char msg[NODE_ERRMSG / 2];
    size_t got = 0;
    for (ssize_t r; (r = read(out[0], msg + got, sizeof msg - 1 - got)) != 0;) {
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) break;
        got += (size_t)r;
        if (got == sizeof msg - 1) { /* keep draining so the child never blocks */
            char sink[4096];
            while (read(out[0], sink, sizeof sink) > 0) {}
            break;
        }
    }
    close(out[0]);
    msg[got] = '\0';
    while (got && (msg[got - 1] == '\n' || msg[got - 1] == ' ')) msg[--got] = '\0';
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {}
    if (w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    node__errf(err, "%s failed: %s", argv[0], got ? msg : "no message");
    return -EIO;
}

/* Whether an executable named name is on PATH. */
static bool on_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, ":");
        char full[1024];
        if (n && snprintf(full, sizeof full, "%.*s/%s", (int)n, p, name) < (int)sizeof full &&
            access(full, X_OK) == 0)
            return true;
        p += n + (p[n] == ':');
    }
    return false;
}

/* The user and group QEMU runs as, from libvirt's DAC security model in its capabilities
 * (`<baselabel type='qemu'>+64055:+64055</baselabel>`): who alone may connect to the disk's
 * NBD socket. False when libvirt does not say. */
static bool qemu_owner(virConnectPtr c, node_accel accel, node_nbd_owner *out)
{
    char *caps = virConnectGetCapabilities(c);
    if (!caps) {
        virResetLastError();
        return false;
    }
    const char *type = accel == NODE_ACCEL_KVM ? "kvm" : "qemu";
    bool found = false;
    for (const char *p = caps; !found && (p = strstr(p, "<baselabel type=")) != NULL; p++) {
        char q = p[16];
        unsigned long uid, gid;
        if ((q != '\'' && q != '"') || strncmp(p + 17, type, strlen(type)) != 0 ||
            p[17 + strlen(type)] != q)
            continue;
        if (sscanf(p + 18 + strlen(type), ">+%lu:+%lu<", &uid, &gid) == 2)
            out->uid = (uid_t)uid, out->gid = (gid_t)gid, found = true;
    }
    free(caps);
    return found;
}

/* s with what a URI's query may not hold as such percent-encoded, into a new string. */
static char *uri_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    if (!out) return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("/-._~", *p))
            *o++ = (char)*p;
        else
            *o++ = '%', *o++ = hex[*p >> 4], *o++ = hex[*p & 15];
    }
    *o = '\0';
    return out;
}

/* disk.qcow2 for early start: an empty overlay of the image's size whose backing file is the
 * NBD export on sock (libvirt is told the same in the domain XML). */
static int make_overlay(const char *path, const char *sock, uint64_t size, char err[NODE_ERRMSG])
{
    char *backing = NULL, bytes[32], *esc = uri_escape(sock);
    if (!esc || asprintf(&backing, "nbd+unix:///%s?socket=%s", NODE_NBD_EXPORT, esc) < 0) {
        free(esc);
        return -ENOMEM;
    }
    free(esc);
    snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)size);
    char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", backing,
                    (char *)path, bytes, NULL};
    int rc = run_program(argv, err);
    free(backing);
    return rc;
}

/* Early start's end: waits until the store holds every chunk of the disk (they arrive while
 * the VM runs), then has libvirt pull the NBD backing into the overlay, so the domain no
 * longer needs this process. */
static int complete_disk(cs_store *st, const cs_image *dimg, virDomainPtr dom, const char *overlay,
                         const node_launch_opts *o, char err[NODE_ERRMSG])
{
    size_t bad = 0;
    int rc = cs_get_arriving(st, dimg->chunks, (size_t)dimg->nchunks, NULL, &bad, o->cancelled,
                             o->arg);
    if (rc == -ECANCELED) {
        node__errf(err, "the launch was cancelled while its disk arrived");
        return rc;
    }
    if (rc) {
        node__disk_chunk_errf(err, dimg, bad,
                              rc == CS_ENOTFOUND ? "the fetch ended without it" : cs_strerror(rc));
        return rc;
    }
    if (virDomainBlockPull(dom, overlay, 0, 0) != 0) {
        node__errf(err, "pulling the disk into %s: %s", overlay, virt_msg());
        return -EIO;
    }
    for (;;) {
        virDomainBlockJobInfo info;
        int j = virDomainGetBlockJobInfo(dom, overlay, &info, 0);
        if (j < 0) {
            node__errf(err, "following the pull into %s: %s", overlay, virt_msg());
            return -EIO;
        }
        if (j == 0) break; /* the job is over */
        if (o->cancelled && o->cancelled(o->arg)) {
            virDomainBlockJobAbort(dom, overlay, 0);
            node__errf(err, "the launch was cancelled while its disk was pulled into %s", overlay);
            return -ECANCELED;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* A job that failed ends too: the domain's first disk must have lost its backing. */
    char *xml = virDomainGetXMLDesc(dom, 0), scan_err[NODE_ERRMSG];
    domain_scan d;
    bool backed = !xml || scan_domain(xml, &d, scan_err) != 0 ||
                  (d.has_disk_backing && !d.disk_backing.empty);
    free(xml);
    if (backed) {
        node__errf(err, "the pull into %s ended but the disk is still backed by the store", overlay);
        return -EIO;
    }
    return 0;
}

int node_vm_launch_local(cs_store *st, const cs_id *id, const node_launch_opts *o,
                         node_launch_report *r, cs_progress_fn progress, void *arg,
                         char err[NODE_ERRMSG])
{
    memset(r, 0, sizeof *r);
    err[0] = '\0';
    double t0 = node__now_s();
    char hex[CS_ID_HEX + 1];
    cs_id_to_hex(id, hex);
    if (!o->name || !o->name[0] || !o->dir || !o->dir[0]) {
        node__errf(err, "a launch needs a domain name and a directory");
        return -EINVAL;
    }
    cs_manifest *m = NULL;
    virConnectPtr c = NULL;
    virDomainPtr dom = NULL;
    char *disk = NULL, *xml = NULL, *sock = NULL, *log = NULL, *xml_path = NULL, *mem = NULL,
         *nbd_sock = NULL;
    node_nbd *nbd = NULL;
    bool made_dir = false, detecting = false;
    pthread_t detect_th;
    struct detect_job dj = {o->uri, o->accel};
    int rc = cs_manifest_get(st, id, &m);
    if (rc) {
        node__errf(err, "manifest %s: %s", hex,
                   rc == CS_ENOTFOUND ? "not in this store" : cs_strerror(rc));
        goto fail;
    }
    r->resolve_s = node__now_s() - t0;
    const cs_image *dimg = cs_manifest_find_image(m, "disk");
    if (!dimg) {
        node__errf(err, "manifest %s has no disk image", hex);
        rc = CS_EFORMAT;
        goto fail;
    }
    if (!m->xml[0]) {
        node__errf(err, "manifest %s has no domain XML: nothing says how to run it", hex);
        rc = CS_EFORMAT;
        goto fail;
    }
    bool has_mem = node_vm_has_memory(m);
    /* Early start needs qemu-img for the overlay and a socket path a Unix socket can have
     * (108 bytes): without them the disk is written first. */
    bool early = has_mem && o->early && on_path("qemu-img") &&
                 strlen(o->dir) + sizeof "/disk.sock" <= sizeof((struct sockaddr_un *)0)->sun_path;
    r->booted = !has_mem;

    /* Everything that can be checked before writing anything: libvirt answers, no domain has
     * the name yet, the XML rewrites. */
    if (!(c = connect_uri(o->uri, err))) {
        rc = -EIO;
        goto fail;
    }
    if ((dom = virDomainLookupByName(c, o->name))) {
        virDomainFree(dom), dom = NULL;
        node__errf(err, "a domain named %s exists already", o->name);
        rc = -EEXIST;
        goto fail;
    }
    uuid_random(r->uuid);
    if (!(disk = path_in(o->dir, early ? "disk.qcow2" : "disk.raw")) ||
        (early && !(nbd_sock = path_in(o->dir, "disk.sock"))) ||
        !(sock = path_in(o->dir, "console.sock")) ||
        !(log = path_in(o->dir, "console.log")) || !(xml_path = path_in(o->dir, "domain.xml")) ||
        !(mem = path_in(o->dir, o->fifo ? "memory.fifo" : "memory.save"))) {
        rc = -ENOMEM;
        goto fail;
    }
    /* Rewritten once now to refuse a bad XML before writing anything, and again with the
     * accelerator once it is known. */
    node_vm_xml_edit e = {.name = o->name,
                          .uuid = r->uuid,
                          .disk = disk,
                          .disk_nbd = nbd_sock,
                          .accel = o->accel,
                          .serial_sock = sock,
                          .serial_log = log};
    if ((rc = node_vm_xml_rewrite(m->xml, &e, &xml, err))) goto fail;
    if (o->accel == NODE_ACCEL_AUTO) {
        if (pthread_create(&detect_th, NULL, detect_run, &dj) == 0)
            detecting = true;
        else
            dj.accel = node_accel_detect(o->uri);
    }

    /* QEMU runs as another user (libvirt-qemu): the directory must be traversable. */
    if (mkdir(o->dir, 0711) != 0) {
        rc = -errno;
        node__errf(err,
                   errno == EEXIST ? "launch directory %s exists already" : "cannot create %s: %s",
                   o->dir, strerror(errno));
        goto fail;
    }
    made_dir = true;
    chmod(o->dir, 0711);

    double t1 = node__now_s();
    if (early) {
        node_nbd_owner owner;
        bool owned = qemu_owner(c, o->accel, &owner); /* (the same user for kvm and qemu) */
        node_nbd_opts nopts = {.owner = owned ? &owner : NULL, .want = o->want, .arg = o->arg};
        if ((rc = node_nbd_start(st, dimg, nbd_sock, &nopts, &nbd, err)) ||
            (rc = make_overlay(disk, nbd_sock, dimg->length, err)))
            goto fail;
    } else if ((rc = write_raw_disk(st, dimg, disk, progress, arg, err))) {
        goto fail;
    }
    r->disk_s = node__now_s() - t1;
    r->disk_bytes = dimg->length;

    if (detecting) pthread_join(detect_th, NULL), detecting = false;
    r->accel = dj.accel;
    e.accel = dj.accel;
    free(xml), xml = NULL;
    if ((rc = node_vm_xml_rewrite(m->xml, &e, &xml, err))) goto fail;
    int fd = open(xml_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || (rc = write_all(fd, xml)) != 0 || close(fd) != 0) {
        rc = rc ? rc : -errno;
        node__errf(err, "writing %s: %s", xml_path, strerror(-rc));
        goto fail;
    }

    if (!has_mem) {
        double t2 = node__now_s();
        if (!(dom = virDomainCreateXML(c, xml, 0))) {
            node__errf(err, "booting domain %s: %s", o->name, virt_msg());
            rc = -EIO;
            goto fail;
        }
        r->restore_s = node__now_s() - t2;
    } else if (!o->fifo) {
        double t2 = node__now_s();
        fd = open(mem, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            rc = -errno;
            node__errf(err, "cannot create %s: %s", mem, strerror(errno));
            goto fail;
        }
        rc = node_savefile_write(st, m, xml, fd, progress, arg, err);
        if (close(fd) != 0 && rc == 0) rc = -errno;
        if (rc) {
            if (!err[0]) node__errf(err, "writing %s: %s", mem, node_strerror(rc));
            goto fail;
        }
        r->memory_s = node__now_s() - t2;
        r->memory_bytes = memory_bytes(m);
        r->save_bytes = file_size(mem);
        double t3 = node__now_s();
        if (virDomainRestoreFlags(c, mem, NULL, VIR_DOMAIN_SAVE_RUNNING) != 0) {
            node__errf(err, "restoring domain %s: %s", o->name, virt_msg());
            rc = -EIO;
            goto fail;
        }
        r->restore_s = node__now_s() - t3;
        unlink(mem); /* QEMU has read it whole; the running domain no longer needs it */
    } else {
        if (mkfifo(mem, 0600) != 0) {
            rc = -errno;
            node__errf(err, "cannot create FIFO %s: %s", mem, strerror(errno));
            goto fail;
        }
        struct fifo_writer w = {
            .st = st, .m = m, .xml = xml, .path = mem, .progress = progress, .arg = arg};
        pthread_t th;
        if ((rc = -pthread_create(&th, NULL, fifo_write, &w))) {
            node__errf(err, "cannot start the FIFO writer: %s", strerror(-rc));
            goto fail;
        }
        double t2 = node__now_s();
        int vr = virDomainRestoreFlags(c, mem, NULL, VIR_DOMAIN_SAVE_RUNNING);
        char verr[NODE_ERRMSG] = "";
        if (vr != 0) snprintf(verr, sizeof verr, "%s", virt_msg());
        r->restore_s = node__now_s() - t2;
        __atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
        pthread_join(th, NULL);
        unlink(mem);
        r->memory_s = w.seconds;
        r->memory_bytes = memory_bytes(m);
        /* The writer's failure explains a restore that failed on a cut stream; a restore that
         * failed before reading explains the writer's. */
        if (w.rc && (w.opened || vr == 0)) {
            node__errf(err, "%s", w.err[0] ? w.err : node_strerror(w.rc));
            rc = w.rc;
            if (vr == 0) dom = virDomainLookupByName(c, o->name);
            goto fail;
        }
        if (vr != 0) {
            node__errf(err, "restoring domain %s: %s", o->name, verr);
            rc = -EIO;
            goto fail;
        }
    }
    if (!dom && !(dom = virDomainLookupByName(c, o->name))) {
        node__errf(err, "domain %s vanished right after it started: %s", o->name, virt_msg());
        rc = -EIO;
        goto fail;
    }
    r->resumed_s = node__now_s() - t0;
    if (early) {
        if (o->resumed) o->resumed(o->arg);
        double t4 = node__now_s();
        if ((rc = complete_disk(st, dimg, dom, disk, o, err))) goto fail;
        node_nbd_stats ns;
        node_nbd_stats_get(nbd, &ns);
        node_log(NODE_LOG_INFO,
                 "%s: disk served over NBD until it was whole: %llu connections, %llu requests, "
                 "%llu bytes read, %llu reads waited for a chunk",
                 o->name, (unsigned long long)ns.connections, (unsigned long long)ns.requests,
                 (unsigned long long)ns.read_bytes, (unsigned long long)ns.waits);
        node_nbd_stop(nbd), nbd = NULL;
        r->complete_s = node__now_s() - t4;
    }
    if (o->cancelled && o->cancelled(o->arg)) {
        node__errf(err, "the launch was cancelled");
        rc = -ECANCELED;
        goto fail;
    }
    r->total_s = node__now_s() - t0;
    domain_addresses(dom, r->address, sizeof r->address);
    virDomainFree(dom);
    virConnectClose(c);
    cs_manifest_free(m);
    free(disk), free(xml), free(sock), free(log), free(xml_path), free(mem), free(nbd_sock);
    return 0;

fail:
    if (detecting) pthread_join(detect_th, NULL);
    if (c) {
        /* A domain of this launch may exist even when a call said no (a restore that failed
         * after QEMU started): look it up by its fresh UUID, never by name alone. */
        if (!dom && r->uuid[0]) dom = virDomainLookupByUUIDString(c, r->uuid);
        if (dom) {
            virDomainDestroy(dom);
            if (virDomainIsPersistent(dom) == 1) virDomainUndefine(dom);
            virDomainFree(dom);
        }
        virConnectClose(c);
    }
    node_nbd_stop(nbd); /* after the domain: QEMU is its client */
    if (made_dir) remove_dir(o->dir);
    cs_manifest_free(m);
    free(disk), free(xml), free(sock), free(log), free(xml_path), free(mem), free(nbd_sock);
    return rc;
}
