/* Launch messages: LAUNCH, LAUNCH_PROGRESS and LAUNCH_DONE (docs/protocol.md §10). */
#include "net.h"
#include "testlib.h"

/* A string of n bytes cycling through alphabet, NUL-terminated. */
static void fill_str(char *s, size_t n, const char *alphabet)
{
    size_t a = strlen(alphabet);
    for (size_t i = 0; i < n; i++) s[i] = alphabet[i % a];
    s[n] = '\0';
}

static const char NAME_ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
static const char PRINTABLE[] =
    " !\"#$%&'()*+,-./"
    "0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

static void full_sources(net_launch_source *src, uint32_t *n)
{
    *n = NET_LAUNCH_SOURCES_MAX;
    for (uint32_t i = 0; i < NET_LAUNCH_SOURCES_MAX; i++) {
        src[i].kind = (uint8_t)(i % 3);
        src[i].bytes = UINT64_MAX - i;
        fill_str(src[i].label, i == 0 ? 0 : NET_LAUNCH_LABEL_MAX, PRINTABLE);
    }
}

static void full_done(net_launch_done *d)
{
    memset(d, 0, sizeof *d);
    d->req = UINT32_MAX;
    d->ok = true;
    d->resolve_ms = 1, d->transfer_ms = 2, d->apply_ms = 3, d->restore_ms = 4;
    d->total_ms = UINT32_MAX;
    full_sources(d->src, &d->nsources);
    fill_str(d->domain, NET_LAUNCH_NAME_MAX, NAME_ALPHABET);
    fill_str(d->uuid, 36, "0123456789abcdef-");
    fill_str(d->accel, 7, "kvmtcg");
    fill_str(d->console, NET_LAUNCH_TEXT_MAX, PRINTABLE);
    fill_str(d->address, NET_LAUNCH_TEXT_MAX, PRINTABLE);
}

static void full_progress(net_launch_progress *p)
{
    memset(p, 0, sizeof *p);
    p->req = UINT32_MAX;
    p->stage = NET_LAUNCH_RESTORE;
    p->elapsed_ms = UINT32_MAX;
    p->fetch_total = p->fetch_done = UINT64_MAX;
    p->vm_total = UINT64_MAX;
    p->vm_done = 0;
    full_sources(p->src, &p->nsources);
}

/* Every prefix of the encoding and the encoding plus one byte are malformed. */
static void truncations_and_extension(int (*dec)(const uint8_t *, size_t, void *), uint8_t *buf,
                                      size_t len, void *scratch, size_t scratch_size)
{
    uint8_t *longer = malloc(len + 1);
    CHECK(longer);
    memcpy(longer, buf, len);
    longer[len] = 'a';
    for (size_t l = 0; l < len; l++) {
        memset(scratch, 0xee, scratch_size);
        CHECK_EQ(dec(longer, l, scratch), NET_EFORMAT);
        /* The output is zeroed on error. */
        for (size_t i = 0; i < scratch_size; i++) CHECK_EQ(((uint8_t *)scratch)[i], 0);
    }
    CHECK_EQ(dec(longer, len + 1, scratch), NET_EFORMAT);
    free(longer);
}

static int dec_progress(const uint8_t *p, size_t len, void *out)
{
    return net_launch_decode_progress(p, len, out);
}
static int dec_done(const uint8_t *p, size_t len, void *out)
{
    return net_launch_decode_done(p, len, out);
}

static void launch_round_trips_at_its_bounds(void)
{
    net_launch_req q = {.req = 0x01020304, .flags = NET_LAUNCH_F_RUNNING}, back;
    tl_fill_random(q.id, NET_ID_BYTES, 1);
    const size_t lens[] = {0, 1, NET_LAUNCH_NAME_MAX};
    for (size_t i = 0; i < 3; i++) {
        fill_str(q.name, lens[i], NAME_ALPHABET);
        uint8_t *out;
        size_t len;
        CHECK_OK(net_launch_encode_req(&q, &out, &len));
        CHECK_EQ(len, 4 + NET_ID_BYTES + 1 + lens[i] + 1);
        CHECK_EQ(out[0], 1);
        CHECK_EQ(out[4 + NET_ID_BYTES], lens[i]);
        CHECK_OK(net_launch_decode_req(out, len, &back));
        CHECK_EQ(back.req, q.req);
        CHECK_MEM(back.id, q.id, NET_ID_BYTES);
        CHECK_STR(back.name, q.name);
        CHECK_EQ(back.flags, NET_LAUNCH_F_RUNNING);
        /* Without the flags byte (an app older than it): the same request, flags 0. */
        CHECK_OK(net_launch_decode_req(out, len - 1, &back));
        CHECK_STR(back.name, q.name);
        CHECK_EQ(back.flags, 0);
        if (lens[i] == NET_LAUNCH_NAME_MAX) { /* any shorter, or longer, is malformed */
            uint8_t *longer = malloc(len + 1);
            CHECK(longer);
            memcpy(longer, out, len);
            longer[len] = 0;
            for (size_t l = 0; l < len - 1; l++)
                CHECK_EQ(net_launch_decode_req(longer, l, &back), NET_EFORMAT);
            CHECK_EQ(net_launch_decode_req(longer, len + 1, &back), NET_EFORMAT);
            free(longer);
        }
        free(out);
    }
}

static void progress_round_trips_at_its_bounds(void)
{
    static net_launch_progress p, back;
    full_progress(&p);
    uint8_t *out;
    size_t len;
    CHECK_OK(net_launch_encode_progress(&p, &out, &len));
    CHECK_EQ(len, 4 + 1 + 4 + 32 + 1 + 32 * 10 + 31 * NET_LAUNCH_LABEL_MAX);
    CHECK_OK(net_launch_decode_progress(out, len, &back));
    CHECK_EQ(back.req, p.req);
    CHECK_EQ(back.stage, NET_LAUNCH_RESTORE);
    CHECK_EQ(back.elapsed_ms, UINT32_MAX);
    CHECK(back.fetch_total == UINT64_MAX && back.fetch_done == UINT64_MAX);
    CHECK(back.vm_total == UINT64_MAX && back.vm_done == 0);
    CHECK_EQ(back.nsources, NET_LAUNCH_SOURCES_MAX);
    for (uint32_t i = 0; i < back.nsources; i++) {
        CHECK_EQ(back.src[i].kind, p.src[i].kind);
        CHECK(back.src[i].bytes == p.src[i].bytes);
        CHECK_STR(back.src[i].label, p.src[i].label);
    }
    truncations_and_extension(dec_progress, out, len, &back, sizeof back);
    free(out);
    /* No sources at all, the first stage. */
    memset(&p, 0, sizeof p);
    p.stage = NET_LAUNCH_RESOLVE;
    CHECK_OK(net_launch_encode_progress(&p, &out, &len));
    CHECK_EQ(len, 4 + 1 + 4 + 32 + 1);
    CHECK_OK(net_launch_decode_progress(out, len, &back));
    CHECK_EQ(back.stage, NET_LAUNCH_RESOLVE);
    CHECK_EQ(back.nsources, 0);
    free(out);
}

static void done_round_trips_at_its_bounds(void)
{
    static net_launch_done d, back;
    full_done(&d);
    uint8_t *out;
    size_t len;
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    CHECK_OK(net_launch_decode_done(out, len, &back));
    CHECK(back.ok);
    CHECK_EQ(back.req, UINT32_MAX);
    CHECK_EQ(back.resolve_ms, 1);
    CHECK_EQ(back.transfer_ms, 2);
    CHECK_EQ(back.apply_ms, 3);
    CHECK_EQ(back.restore_ms, 4);
    CHECK_EQ(back.total_ms, UINT32_MAX);
    CHECK_EQ(back.nsources, NET_LAUNCH_SOURCES_MAX);
    CHECK_STR(back.src[31].label, d.src[31].label);
    CHECK(back.src[31].bytes == d.src[31].bytes);
    CHECK_STR(back.domain, d.domain);
    CHECK_STR(back.uuid, d.uuid);
    CHECK_STR(back.accel, d.accel);
    CHECK_STR(back.console, d.console);
    CHECK_STR(back.address, d.address);
    CHECK_STR(back.error, "");
    truncations_and_extension(dec_done, out, len, &back, sizeof back);
    free(out);
    /* A failure: an error at its bound, nothing else. */
    memset(&d, 0, sizeof d);
    fill_str(d.error, NET_LAUNCH_TEXT_MAX, PRINTABLE);
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    CHECK_EQ(len, 4 + 1 + 20 + 1 + 6 * 2 + NET_LAUNCH_TEXT_MAX);
    CHECK_OK(net_launch_decode_done(out, len, &back));
    CHECK(!back.ok);
    CHECK_STR(back.error, d.error);
    CHECK_STR(back.domain, "");
    free(out);
}

static void fields_over_their_bounds_are_refused_by_encoder_and_decoder(void)
{
    uint8_t *out;
    size_t len;
    /* LAUNCH: a 65-byte name (no NUL in the field) and a wire nlen of 65. */
    net_launch_req q = {0}, qb;
    memset(q.name, 'a', sizeof q.name);
    CHECK_EQ(net_launch_encode_req(&q, &out, &len), -EINVAL);
    uint8_t wire[4 + NET_ID_BYTES + 1 + 65] = {0};
    wire[4 + NET_ID_BYTES] = 65;
    memset(wire + 4 + NET_ID_BYTES + 1, 'a', 65);
    CHECK_EQ(net_launch_decode_req(wire, sizeof wire, &qb), NET_EFORMAT);
    wire[4 + NET_ID_BYTES] = 64;
    CHECK_OK(net_launch_decode_req(wire, sizeof wire - 1, &qb));

    /* LAUNCH_PROGRESS: each bound, one at a time. */
    static net_launch_progress p, pb;
    const int cases = 7;
    for (int c = 0; c < cases; c++) {
        full_progress(&p);
        CHECK_OK(net_launch_encode_progress(&p, &out, &len));
        size_t src0 = 4 + 1 + 4 + 32 + 1; /* the first source's kind */
        switch (c) {
        case 0: p.stage = 0, out[4] = 0; break;
        case 1: p.stage = 6, out[4] = 6; break;
        case 2: p.fetch_total--, out[4 + 1 + 4 + 7]--; break; /* fetch_done > fetch_total */
        case 3:
            p.vm_total = 0, p.vm_done = 1;
            memset(out + 4 + 1 + 4 + 16, 0, 8);
            out[4 + 1 + 4 + 31] = 1;
            break;
        case 4: p.nsources = 33, out[src0 - 1] = 33; break;
        case 5: p.src[0].kind = 3, out[src0] = 3; break;
        default: /* the second source's label: a 65th byte where its length says 64 */
            memset(p.src[1].label, 'x', sizeof p.src[1].label);
            out[src0 + 10 + 9] = 65;
            break;
        }
        uint8_t *again;
        size_t alen;
        CHECK_EQ(net_launch_encode_progress(&p, &again, &alen), -EINVAL);
        CHECK_EQ(net_launch_decode_progress(out, len, &pb), NET_EFORMAT);
        free(out);
    }

    /* LAUNCH_DONE: each string one byte over its bound, on the wire and in the struct. */
    static net_launch_done d, db;
    char *fields[] = {d.domain, d.uuid, d.accel, d.console, d.address, d.error};
    const size_t sizes[] = {sizeof d.domain,  sizeof d.uuid,    sizeof d.accel,
                            sizeof d.console, sizeof d.address, sizeof d.error};
    for (int f = 0; f < 6; f++) {
        full_done(&d);
        if (f == 5) d.ok = false;
        fill_str(fields[f], sizes[f] - 1, f == 0 ? "a" : "A");
        CHECK_OK(net_launch_encode_done(&d, &out, &len));
        CHECK_OK(net_launch_decode_done(out, len, &db));
        /* Over the bound in the struct: no NUL in the field. */
        memset(fields[f], 'a', sizes[f]);
        uint8_t *again;
        size_t alen;
        CHECK_EQ(net_launch_encode_done(&d, &again, &alen), -EINVAL);
        free(out);
    }
    /* On the wire: the last string (error) of a failure, one byte longer than allowed. */
    memset(&d, 0, sizeof d);
    fill_str(d.error, NET_LAUNCH_TEXT_MAX, "e");
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, out, len);
    longer[len] = 'e';
    longer[len - NET_LAUNCH_TEXT_MAX - 2] = (NET_LAUNCH_TEXT_MAX + 1) >> 8;
    longer[len - NET_LAUNCH_TEXT_MAX - 1] = (NET_LAUNCH_TEXT_MAX + 1) & 0xff;
    CHECK_EQ(net_launch_decode_done(longer, len + 1, &db), NET_EFORMAT);
    free(longer);
    /* ok must be 0 or 1. */
    out[4] = 2;
    CHECK_EQ(net_launch_decode_done(out, len, &db), NET_EFORMAT);
    free(out);
}

static void bytes_outside_their_alphabet_are_refused_by_encoder_and_decoder(void)
{
    uint8_t *out;
    size_t len;
    net_launch_req q = {0}, qb;
    strcpy(q.name, "vm-1.test_A");
    CHECK_OK(net_launch_encode_req(&q, &out, &len));
    const char bad_name[] = {' ', '/', ':', '\x7f', '\x80', '\n'};
    for (size_t i = 0; i < sizeof bad_name; i++) {
        q.name[3] = bad_name[i];
        uint8_t *again;
        size_t alen;
        CHECK_EQ(net_launch_encode_req(&q, &again, &alen), -EINVAL);
        out[4 + NET_ID_BYTES + 1 + 3] = (uint8_t)bad_name[i];
        CHECK_EQ(net_launch_decode_req(out, len, &qb), NET_EFORMAT);
    }
    out[4 + NET_ID_BYTES + 1 + 3] = 0; /* a NUL inside the name */
    CHECK_EQ(net_launch_decode_req(out, len, &qb), NET_EFORMAT);
    free(out);

    /* A label with a control byte. */
    static net_launch_progress p, pb;
    memset(&p, 0, sizeof p);
    p.stage = NET_LAUNCH_TRANSFER;
    p.nsources = 1;
    strcpy(p.src[0].label, "origin");
    CHECK_OK(net_launch_encode_progress(&p, &out, &len));
    p.src[0].label[2] = '\t';
    uint8_t *again;
    size_t alen;
    CHECK_EQ(net_launch_encode_progress(&p, &again, &alen), -EINVAL);
    out[len - 4] = '\t';
    CHECK_EQ(net_launch_decode_progress(out, len, &pb), NET_EFORMAT);
    free(out);

    /* LAUNCH_DONE: a domain outside the name alphabet, a console line with a newline. */
    static net_launch_done d, db;
    memset(&d, 0, sizeof d);
    d.ok = true;
    strcpy(d.domain, "vm1");
    strcpy(d.console, "/run/c.sock");
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    size_t dom = 4 + 1 + 20 + 1 + 2;
    d.domain[1] = ' ';
    CHECK_EQ(net_launch_encode_done(&d, &again, &alen), -EINVAL);
    out[dom + 1] = ' ';
    CHECK_EQ(net_launch_decode_done(out, len, &db), NET_EFORMAT);
    out[dom + 1] = 'm';
    CHECK_OK(net_launch_decode_done(out, len, &db));
    d.domain[1] = 'm';
    d.console[0] = '\n';
    CHECK_EQ(net_launch_encode_done(&d, &again, &alen), -EINVAL);
    out[dom + 3 + 2 + 2 + 2] = '\n'; /* the console's first byte: past domain, uuid, accel */
    CHECK_EQ(net_launch_decode_done(out, len, &db), NET_EFORMAT);
    free(out);
}

static void ok_and_error_must_agree(void)
{
    static net_launch_done d, db;
    uint8_t *out;
    size_t len;
    memset(&d, 0, sizeof d);
    d.ok = true; /* ok without a domain */
    CHECK_EQ(net_launch_encode_done(&d, &out, &len), -EINVAL);
    strcpy(d.domain, "vm");
    strcpy(d.error, "but failed"); /* ok with an error */
    CHECK_EQ(net_launch_encode_done(&d, &out, &len), -EINVAL);
    d.ok = false;
    d.error[0] = '\0'; /* failed without saying why */
    CHECK_EQ(net_launch_encode_done(&d, &out, &len), -EINVAL);
    /* The decoder refuses the same: an ok flag flipped on a failure, and on a success. */
    strcpy(d.error, "no space");
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    out[4] = 1;
    CHECK_EQ(net_launch_decode_done(out, len, &db), NET_EFORMAT);
    free(out);
    d.ok = true;
    d.error[0] = '\0';
    CHECK_OK(net_launch_encode_done(&d, &out, &len));
    out[4] = 0;
    CHECK_EQ(net_launch_decode_done(out, len, &db), NET_EFORMAT);
    free(out);
}

static void stage_names(void)
{
    CHECK_STR(net_launch_stage_name(NET_LAUNCH_RESOLVE), "resolve");
    CHECK_STR(net_launch_stage_name(NET_LAUNCH_TRANSFER), "transfer");
    CHECK_STR(net_launch_stage_name(NET_LAUNCH_APPLY), "apply");
    CHECK_STR(net_launch_stage_name(NET_LAUNCH_RESTORE), "restore");
    CHECK_STR(net_launch_stage_name(0), "?");
    CHECK_STR(net_launch_stage_name(NET_LAUNCH_RUNNING), "running");
    CHECK_STR(net_launch_stage_name(6), "?");
}

TL_MAIN(TL_CASE(launch_round_trips_at_its_bounds), TL_CASE(progress_round_trips_at_its_bounds),
        TL_CASE(done_round_trips_at_its_bounds),
        TL_CASE(fields_over_their_bounds_are_refused_by_encoder_and_decoder),
        TL_CASE(bytes_outside_their_alphabet_are_refused_by_encoder_and_decoder),
        TL_CASE(ok_and_error_must_agree), TL_CASE(stage_names))
