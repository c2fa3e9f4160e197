/*
 * The client library's serving side against a test double of a node, written with net/: it
 * listens on 127.0.0.1 port 0 in a thread of its own, accepts the app (role client), and once
 * the LAUNCH arrives plays a script — MANIFEST_GET, GET, GET_DELTA, LAUNCH_PROGRESS,
 * LAUNCH_DONE, or hanging up — checking every answer against the bytes it must carry: a
 * manifest's parts must hash to its id, a chunk (whole, or rebuilt from a delta against the
 * base the double holds) to its id. cl_launch runs in the test's main thread, as an app runs it.
 *
 * The app's home: a base file (256 chunks), a file derived from it (64 chunks changed by a few
 * bytes, 16 replaced by fresh ones) and an unrelated file (64 chunks) that no launch names.
 */
#define _GNU_SOURCE
#include "chunkstore.h"
#include "cloudlet_client.h"
#include "net.h"
#include "node.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <unistd.h>

#define NB       256 /* chunks of the base file */
#define NCHANGED 64  /* derived: chunks 0..63 differ from the base by a few bytes */
#define NFRESH   16  /* derived: chunks 64..79 are new random bytes */
#define NOTHER   64

/* ---- the app's home ------------------------------------------------------------------------ */

static char *home;
static uint8_t fleet[NET_KEY_BYTES];
static uint8_t base_data[NB * 4096], der_data[NB * 4096], other_data[NOTHER * 4096];
static cs_id base_ids[NB], der_ids[NB], other_ids[NOTHER];
static cs_id base_mid, der_mid, other_mid;

static void put_file(cs_store *st, const uint8_t *data, size_t n, cs_id *ids, const cs_id *parent,
                     cs_id *mid)
{
    CHECK_OK(cs_put(st, data, n, NULL, ids, NULL, NULL));
    cs_manifest *m = cs_manifest_new(), *pm = NULL;
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "file", (uint64_t)n * 4096);
    CHECK(im != NULL);
    memcpy(im->chunks, ids, n * sizeof *ids);
    if (parent) {
        m->has_parent = true;
        m->parent = *parent;
        CHECK_OK(cs_manifest_get(st, parent, &pm));
    }
    uint8_t *buf;
    size_t len;
    CHECK_OK(cs_manifest_encode(m, pm, &buf, &len, NULL));
    CHECK_OK(cs_manifest_put(st, buf, len, true, mid));
    free(buf);
    cs_manifest_free(m);
    cs_manifest_free(pm);
}

/* A home as `cloudlet init --client-key` leaves it, holding the three files. extra (may be
 * NULL) adds more to the store before it is closed. */
static void make_home(void (*extra)(cs_store *st))
{
    home = tl_tmpdir();
    char err[NODE_ERRMSG], *path;
    memset(fleet, 0x5a, sizeof fleet);
    uint8_t client[NET_KEY_BYTES], sk[NET_KEY_BYTES];
    node_client_key(fleet, client);
    tl_fill_random(sk, sizeof sk, 99);
    CHECK(asprintf(&path, "%s/%s", home, CL_CLIENT_KEY_FILE) > 0);
    CHECK_OK(node_key_write(path, NODE_KEY_CLIENT, client, false, err));
    free(path);
    CHECK(asprintf(&path, "%s/%s", home, NODE_KEY_FILE) > 0);
    CHECK_OK(node_key_write(path, NODE_KEY_NODE_SECRET, sk, false, err));
    free(path);

    tl_fill_random(base_data, sizeof base_data, 1);
    memcpy(der_data, base_data, sizeof der_data);
    for (int i = 0; i < NCHANGED; i++) der_data[i * 4096 + 100 + i] ^= 0xff;
    tl_fill_random(der_data + NCHANGED * 4096, NFRESH * 4096, 2);
    tl_fill_random(other_data, sizeof other_data, 3);
    cs_store *st;
    CHECK(asprintf(&path, "%s/store", home) > 0);
    CHECK_OK(cs_open(path, CS_OPEN_CREATE, &st));
    free(path);
    put_file(st, base_data, NB, base_ids, NULL, &base_mid);
    put_file(st, der_data, NB, der_ids, &base_mid, &der_mid);
    put_file(st, other_data, NOTHER, other_ids, NULL, &other_mid);
    if (extra) extra(st);
    cs_close(st);
}

/* The bytes of a chunk of the fixture, the double's own store for delta bases. */
static const uint8_t *chunk_of(const cs_id *id)
{
    for (int i = 0; i < NB; i++) {
        if (cs_id_equal(id, &base_ids[i])) return base_data + (size_t)i * 4096;
        if (cs_id_equal(id, &der_ids[i])) return der_data + (size_t)i * 4096;
    }
    for (int i = 0; i < NOTHER; i++)
        if (cs_id_equal(id, &other_ids[i])) return other_data + (size_t)i * 4096;
    return NULL;
}

/* ---- the test double of a node ------------------------------------------------------------- */

enum { S_MANIFEST, S_GET, S_GET_DELTA, S_PROGRESS, S_DONE, S_HANGUP, S_END };

/* One step of the double's script, and what it observed. */
typedef struct step {
    int kind;
    cs_id mid;  /* S_MANIFEST */
    uint32_t n; /* S_GET, S_GET_DELTA: ids (batches of NET_GET_MAX, sent at once) */
    const cs_id *ids, *bases;
    uint8_t stage;     /* S_PROGRESS */
    bool ok;           /* S_DONE */
    const char *error; /* S_DONE when !ok */
    /* observed */
    char *outcome; /* per id: 'w' whole, 'd' delta, 'x' don't have, 'B' bad bytes */
    uint32_t left;
    bool found;
    uint8_t *mbytes;
    size_t mlen;
    unsigned parts;
} step;

typedef struct dnode {
    net_keypair kp;
    net_keys keys;
    step *steps;
    size_t at;
    unsigned pause_ms; /* the double's loop sleeps this long after its first requests */
    uv_loop_t loop;
    uv_async_t stop; /* d_stop: ends the double from another thread */
    net_endpoint *ep;
    net_conn *c;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
    pthread_t thread;
    net_launch_req launch;
    int launches;
    uint8_t app_pk[NET_KEY_BYTES]; /* the key the app proved in its handshake */
    bool closed;
    int close_status;
    uint64_t protocol_errors; /* answers that match no request */
    net_zstream *zdec;        /* the app's stream of whole chunks (ZCHUNKS) */
} dnode;

static void dsend(dnode *d, uint8_t type, uint8_t *buf, size_t len)
{
    int rc = net_conn_send(d->c, type, buf, len);
    if (rc) TL_FAIL("the double's send: %s", net_strerror(rc));
    free(buf);
}

static void run_step(dnode *d);

static void next_step(dnode *d)
{
    d->at++;
    run_step(d);
}

static void run_step(dnode *d)
{
    step *s = &d->steps[d->at];
    uint8_t *buf;
    size_t len;
    switch (s->kind) {
    case S_MANIFEST:
        CHECK_OK(net_msg_encode_manifest_get(s->mid.b, 0, &buf, &len));
        dsend(d, NET_MSG_MANIFEST_GET, buf, len);
        return;
    case S_GET:
    case S_GET_DELTA:
        s->outcome = calloc(s->n + 1, 1);
        s->left = s->n;
        for (uint32_t at = 0; at < s->n; at += NET_GET_MAX) {
            uint32_t k = s->n - at < NET_GET_MAX ? s->n - at : NET_GET_MAX;
            uint32_t req = (uint32_t)(d->at * 1000 + at / NET_GET_MAX);
            if (s->kind == S_GET)
                CHECK_OK(net_msg_encode_ids(NET_MSG_GET, req, s->ids[at].b, k, &buf, &len));
            else
                CHECK_OK(
                    net_msg_encode_get_delta(req, s->ids[at].b, s->bases[at].b, k, &buf, &len));
            dsend(d, s->kind == S_GET ? NET_MSG_GET : NET_MSG_GET_DELTA, buf, len);
        }
        if (d->pause_ms) {
            /* Hold the loop: the app's answers pile up behind a full socket. */
            usleep(d->pause_ms * 1000u);
            d->pause_ms = 0;
        }
        return;
    case S_PROGRESS: {
        net_launch_progress p = {.req = 1,
                                 .stage = s->stage,
                                 .elapsed_ms = 1500 * s->stage,
                                 .fetch_total = 80 * 4096,
                                 .fetch_done = 20 * 4096 * (s->stage < 4 ? s->stage : 4u),
                                 .vm_total = NB * 4096,
                                 .vm_done = 100,
                                 .nsources = 2};
        p.src[0] = (net_launch_source){NET_SOURCE_LOCAL, 176 * 4096, "local"};
        p.src[1] = (net_launch_source){NET_SOURCE_ORIGIN, 80 * 4096, "origin"};
        CHECK_OK(net_launch_encode_progress(&p, &buf, &len));
        dsend(d, NET_MSG_LAUNCH_PROGRESS, buf, len);
        next_step(d);
        return;
    }
    case S_DONE: {
        net_launch_done r = {.req = 1,
                             .ok = s->ok,
                             .resolve_ms = 5,
                             .transfer_ms = 700,
                             .apply_ms = 30,
                             .restore_ms = 400,
                             .total_ms = 1135,
                             .nsources = 2};
        r.src[0] = (net_launch_source){NET_SOURCE_LOCAL, 176 * 4096, "local"};
        r.src[1] = (net_launch_source){NET_SOURCE_ORIGIN, 80 * 4096, "origin"};
        if (s->ok) {
            strcpy(r.domain, "vm-test-1");
            strcpy(r.uuid, "6f1c1a52-3d2e-4c55-9a0e-2b4e5d6f7a8b");
            strcpy(r.accel, "tcg");
            strcpy(r.console, "/var/tmp/cloudlet-launch/vm-test-1/console.sock");
            strcpy(r.address, "10.0.0.7");
        } else {
            strcpy(r.error, s->error);
        }
        CHECK_OK(net_launch_encode_done(&r, &buf, &len));
        dsend(d, NET_MSG_LAUNCH_DONE, buf, len);
        return; /* the app closes */
    }
    case S_HANGUP: net_conn_abort(d->c, NET_ECLOSED); return;
    case S_END: return;
    }
}

/* Records the outcome of id in the batch req names; false when it names no such id. */
static bool settle(dnode *d, uint32_t req, const uint8_t *id, char what)
{
    size_t si = req / 1000, batch = req % 1000;
    if (si != d->at) return false;
    step *s = &d->steps[si];
    if (s->kind != S_GET && s->kind != S_GET_DELTA) return false;
    for (uint32_t i = (uint32_t)batch * NET_GET_MAX; i < s->n && i < (batch + 1) * NET_GET_MAX; i++)
        if (!memcmp(s->ids[i].b, id, 32) && !s->outcome[i]) {
            s->outcome[i] = what;
            s->left--;
            return true;
        }
    return false;
}

static void d_message(net_conn *c, uint8_t type, const uint8_t *p, size_t len)
{
    dnode *d = net_conn_data(c);
    if (type == NET_MSG_LAUNCH) {
        CHECK_OK(net_launch_decode_req(p, len, &d->launch));
        d->launches++;
        run_step(d);
        return;
    }
    net_msg m;
    CHECK_OK(net_msg_decode(type, p, len, &m));
    step *s = &d->steps[d->at];
    if (type == NET_MSG_MANIFEST) {
        if (s->kind != S_MANIFEST || memcmp(m.id, s->mid.b, 32)) {
            d->protocol_errors++;
            return;
        }
        s->found = m.found;
        if (m.found) {
            if (!s->mbytes) s->mbytes = malloc(m.total), s->mlen = m.total;
            CHECK(m.total == s->mlen && m.offset + m.part_len <= s->mlen);
            memcpy(s->mbytes + m.offset, m.part, m.part_len);
            s->parts++;
            if (m.offset + m.part_len < m.total) {
                uint8_t *buf;
                size_t blen;
                CHECK_OK(net_msg_encode_manifest_get(s->mid.b, m.offset + m.part_len, &buf, &blen));
                dsend(d, NET_MSG_MANIFEST_GET, buf, blen);
                return;
            }
        }
        next_step(d);
        return;
    }
    uint8_t *data = NULL;
    switch (type) {
    case NET_MSG_ZCHUNKS:
        data = malloc((size_t)m.n * 4096);
        if (!d->zdec) CHECK((d->zdec = net_zstream_decoder()) != NULL);
        CHECK_OK(net_msg_zchunks(&m, d->zdec, data));
        for (uint32_t i = 0; i < m.n; i++) {
            cs_id got;
            cs_chunk_id(data + (size_t)i * 4096, &got);
            bool good = !memcmp(got.b, m.ids + (size_t)i * 32, 32);
            if (!settle(d, m.req, m.ids + (size_t)i * 32, good ? 'w' : 'B')) d->protocol_errors++;
        }
        break;
    case NET_MSG_DELTAS:
        for (uint32_t i = 0; i < m.n; i++) {
            const uint8_t *id = m.ids + (size_t)i * 32, *frame;
            size_t flen;
            net_msg_delta_frame(&m, i, &frame, &flen);
            /* The base asked for with this id. */
            const cs_id *base = NULL;
            for (uint32_t k = 0; k < s->n && s->bases; k++)
                if (!memcmp(s->ids[k].b, id, 32)) base = &s->bases[k];
            const uint8_t *bb = base ? chunk_of(base) : NULL;
            uint8_t out[4096];
            cs_id got;
            bool good = bb && net_delta_decode(frame, flen, bb, out) == 0;
            if (good) cs_chunk_id(out, &got);
            good = good && !memcmp(got.b, id, 32);
            if (!settle(d, m.req, id, good ? 'd' : 'B')) d->protocol_errors++;
        }
        break;
    case NET_MSG_DONT_HAVE:
        for (uint32_t i = 0; i < m.n; i++)
            if (!settle(d, m.req, m.ids + (size_t)i * 32, 'x')) d->protocol_errors++;
        break;
    default: d->protocol_errors++; return;
    }
    free(data);
    if ((s->kind == S_GET || s->kind == S_GET_DELTA) && s->left == 0) next_step(d);
}

/* The double serves one app: once it is gone, its loop ends. */
static void d_shutdown(dnode *d)
{
    if (d->ep) net_endpoint_close(d->ep, NULL);
    d->ep = NULL;
    if (!uv_is_closing((uv_handle_t *)&d->stop)) uv_close((uv_handle_t *)&d->stop, NULL);
}

static void d_close(net_conn *c, int status)
{
    dnode *d = net_conn_data(c);
    d->closed = true;
    d->close_status = status;
    d->c = NULL;
    d_shutdown(d);
}

static void d_on_stop(uv_async_t *a)
{
    d_shutdown(a->data);
}

static const net_conn_cbs d_cbs = {NULL, d_message, NULL, d_close};

static void d_accept(net_endpoint *ep, net_conn *c)
{
    dnode *d = net_endpoint_data(ep);
    CHECK_EQ(net_conn_role(c), NET_ROLE_CLIENT);
    CHECK(d->c == NULL);
    d->c = c;
    memcpy(d->app_pk, net_conn_peer_key(c), NET_KEY_BYTES);
    net_conn_set_cbs(c, &d_cbs, d);
}

static void *d_thread(void *arg)
{
    dnode *d = arg;
    CHECK_OK(uv_loop_init(&d->loop));
    CHECK_OK(uv_async_init(&d->loop, &d->stop, d_on_stop));
    d->stop.data = d;
    CHECK_OK(net_endpoint_new(&d->loop, &d->kp, &d->keys, NULL, &d->ep));
    net_endpoint_set_data(d->ep, d);
    CHECK_OK(net_endpoint_listen(d->ep, "127.0.0.1", 0, d_accept));
    pthread_mutex_lock(&d->mu);
    d->port = net_endpoint_port(d->ep);
    d->ready = true;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    CHECK_OK(uv_loop_close(&d->loop));
    net_zstream_free(d->zdec);
    d->zdec = NULL;
    return NULL;
}

/* Starts a double of the test's fleet (fleet_seed 0x5a) or of another. */
static void d_start(dnode *d, step *steps, uint8_t fleet_seed)
{
    memset(d, 0, sizeof *d);
    d->steps = steps;
    uint8_t f[NET_KEY_BYTES], sk[NET_KEY_BYTES];
    memset(f, fleet_seed, sizeof f);
    tl_fill_random(sk, sizeof sk, 7);
    CHECK_OK(net_keypair_from_secret(&d->kp, sk));
    net_fleet_keys(&d->keys, f);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    CHECK_OK(pthread_create(&d->thread, NULL, d_thread, d));
    pthread_mutex_lock(&d->mu);
    while (!d->ready) pthread_cond_wait(&d->cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

static void d_join(dnode *d)
{
    CHECK_OK(pthread_join(d->thread, NULL));
    CHECK_EQ(d->protocol_errors, 0);
}

static void node_of(const dnode *d, cl_node *n)
{
    CHECK_OK(cl_node_parse("127.0.0.1", n));
    n->port = (uint16_t)d->port;
    n->has_key = true;
    memcpy(n->key, d->kp.pk, 32);
}

/* ---- progress ------------------------------------------------------------------------------ */

typedef struct seen {
    int calls;
    int stages[8];
    cl_progress last;
} seen;

static void on_progress(const cl_progress *p, void *arg)
{
    seen *s = arg;
    if (s->calls < 8) s->stages[s->calls] = p->stage;
    s->calls++;
    s->last = *p;
}

/* Opens the home, launches id on the double with opts, returns cl_launch's code. */
static int launch_on(dnode *d, const cs_id *id, const cl_launch_opts *o, cl_result *r)
{
    char err[CL_ERRMSG];
    cl_client *c;
    CHECK_OK(cl_client_open(home, &c, err));
    cl_node n;
    node_of(d, &n);
    int rc = cl_launch(c, &n, id->b, o, r);
    uint8_t pk[NET_KEY_BYTES];
    memcpy(pk, cl_client_key(c), sizeof pk);
    cl_client_close(c);
    d_join(d);
    if (d->launches) CHECK_MEM(d->app_pk, pk, sizeof pk); /* the home's node.key */
    return rc;
}

static size_t count(const step *s, char what)
{
    size_t k = 0;
    for (uint32_t i = 0; i < s->n; i++) k += s->outcome[i] == what;
    return k;
}

/* ---- cases --------------------------------------------------------------------------------- */

static void manifests_of_the_launched_chain_are_served_and_no_others(void)
{
    make_home(NULL);
    cs_id unknown;
    tl_fill_random(unknown.b, 32, 5);
    step steps[] = {{.kind = S_MANIFEST, .mid = der_mid},
                    {.kind = S_MANIFEST, .mid = base_mid},
                    {.kind = S_MANIFEST, .mid = other_mid},
                    {.kind = S_MANIFEST, .mid = unknown},
                    {.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true, .name = "vm-test-1"};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    CHECK_EQ(d.launches, 1);
    CHECK_MEM(d.launch.id, der_mid.b, 32);
    CHECK_STR(d.launch.name, "vm-test-1");
    for (int i = 0; i < 2; i++) {
        CHECK(steps[i].found);
        cs_id got;
        cs_manifest_id(steps[i].mbytes, steps[i].mlen, &got);
        CHECK(cs_id_equal(&got, &steps[i].mid));
        free(steps[i].mbytes);
    }
    CHECK(!steps[2].found); /* held by the app, but not of the launched chain */
    CHECK(!steps[3].found);
    CHECK_EQ(r.last.served_manifests, 2);
    CHECK(d.closed);
    CHECK_EQ(d.close_status, 0); /* the app closed cleanly after LAUNCH_DONE */
    tl_rmtree(home);
}

static cs_id big_mid;

static void add_big(cs_store *st)
{
    /* 40,000 positions of ids the store does not hold: an encoded manifest of about 1.3 MB,
     * longer than one MANIFEST message. */
    cs_manifest *m = cs_manifest_new();
    cs_image *im = cs_manifest_add_image(m, CS_IMAGE_FILE, "big", 40000ull * 4096);
    CHECK(im != NULL);
    tl_fill_random(im->chunks, 40000 * sizeof(cs_id), 11);
    uint8_t *buf;
    size_t len;
    CHECK_OK(cs_manifest_encode(m, NULL, &buf, &len, NULL));
    CHECK(len > NET_MANIFEST_PART_MAX);
    CHECK_OK(cs_manifest_put(st, buf, len, true, &big_mid));
    free(buf);
    cs_manifest_free(m);
}

static void a_manifest_longer_than_one_message_is_served_in_parts(void)
{
    make_home(add_big);
    step steps[] = {{.kind = S_MANIFEST}, {.kind = S_DONE, .ok = true}};
    steps[0].mid = big_mid;
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_OK(launch_on(&d, &big_mid, &o, &r));
    CHECK(steps[0].found);
    CHECK_EQ(steps[0].parts, 2);
    cs_id got;
    cs_manifest_id(steps[0].mbytes, steps[0].mlen, &got);
    CHECK(cs_id_equal(&got, &big_mid));
    free(steps[0].mbytes);
    tl_rmtree(home);
}

static void chunks_of_the_chain_are_served_whole_and_match_their_ids(void)
{
    make_home(NULL);
    /* The derived file's 128 first chunks (changed and fresh ones, then the base's), and the
     * base's chunks the derived file replaced. */
    cs_id ids[NET_GET_MAX + NCHANGED];
    memcpy(ids, der_ids, NET_GET_MAX * sizeof *ids);
    memcpy(ids + NET_GET_MAX, base_ids, NCHANGED * sizeof *ids);
    step steps[] = {{.kind = S_GET, .ids = ids, .n = NET_GET_MAX + NCHANGED},
                    {.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    CHECK_EQ(count(&steps[0], 'w'), NET_GET_MAX + NCHANGED);
    CHECK_EQ(r.last.served_chunks, NET_GET_MAX + NCHANGED);
    CHECK_EQ(r.last.refused, 0);
    free(steps[0].outcome);
    tl_rmtree(home);
}

static void chunks_outside_the_launched_chain_are_refused(void)
{
    make_home(NULL);
    /* Held by the app but of another file; of the chain; and held by nobody. */
    cs_id ids[16];
    memcpy(ids, other_ids, 8 * sizeof *ids);
    memcpy(ids + 8, der_ids + 70, 4 * sizeof *ids);
    tl_fill_random(ids + 12, 4 * sizeof *ids, 12);
    step steps[] = {{.kind = S_GET, .ids = ids, .n = 16}, {.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    for (int i = 0; i < 16; i++) CHECK_EQ(steps[0].outcome[i], i >= 8 && i < 12 ? 'w' : 'x');
    CHECK_EQ(r.last.refused, 12);
    /* The same chunks with a launch of the other file: now they are its own. */
    free(steps[0].outcome);
    step steps2[] = {{.kind = S_GET, .ids = other_ids, .n = NOTHER}, {.kind = S_DONE, .ok = true}};
    d_start(&d, steps2, 0x5a);
    CHECK_OK(launch_on(&d, &other_mid, &o, &r));
    CHECK_EQ(count(&steps2[0], 'w'), NOTHER);
    free(steps2[0].outcome);
    tl_rmtree(home);
}

static void deltas_against_held_bases_rebuild_the_chunks(void)
{
    make_home(NULL);
    /* The changed chunks against the base's chunk at the same place: deltas. The fresh ones
     * against theirs: no gain, sent whole. Chunks of the chain against a base the app lacks,
     * or holds outside the chain: whole. A chunk of another file: refused even with a base. */
    enum { N = NCHANGED + NFRESH + 4 + 2 + 2 };
    cs_id ids[N], bases[N];
    memcpy(ids, der_ids, (NCHANGED + NFRESH) * sizeof *ids);
    memcpy(bases, base_ids, (NCHANGED + NFRESH) * sizeof *ids);
    memcpy(ids + NCHANGED + NFRESH, der_ids + NCHANGED + NFRESH, 6 * sizeof *ids);
    tl_fill_random(bases + NCHANGED + NFRESH, 4 * sizeof *bases, 13);
    memcpy(bases + NCHANGED + NFRESH + 4, other_ids + 4, 2 * sizeof *bases);
    memcpy(ids + N - 2, other_ids, 2 * sizeof *ids);
    memcpy(bases + N - 2, other_ids + 2, 2 * sizeof *ids);
    step steps[] = {{.kind = S_GET_DELTA, .ids = ids, .bases = bases, .n = N},
                    {.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    const char *out = steps[0].outcome;
    for (int i = 0; i < NCHANGED; i++) CHECK_EQ(out[i], 'd');
    for (int i = NCHANGED; i < NCHANGED + NFRESH + 6; i++) CHECK_EQ(out[i], 'w');
    CHECK_EQ(out[N - 2], 'x');
    CHECK_EQ(out[N - 1], 'x');
    CHECK_EQ(r.last.served_deltas, NCHANGED);
    CHECK_EQ(r.last.served_chunks, NFRESH + 6);
    CHECK_EQ(r.last.refused, 2);
    /* A chunk changed by one byte travels in far less than its 4096 bytes. */
    CHECK(r.last.sent_bytes < (NFRESH + 6 + 8) * 4096u);
    free(steps[0].outcome);
    tl_rmtree(home);
}

static void progress_is_reported_and_the_result_returned(void)
{
    make_home(NULL);
    step steps[] = {{.kind = S_PROGRESS, .stage = NET_LAUNCH_RESOLVE},
                    {.kind = S_GET, .ids = der_ids + NCHANGED, .n = NFRESH},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_TRANSFER},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_APPLY},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_RESTORE},
                    {.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    seen sn = {0};
    cl_launch_opts o = {.wait = true, .progress = on_progress, .arg = &sn};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    CHECK_EQ(sn.calls, 4);
    for (int i = 0; i < 4; i++) CHECK_EQ(sn.stages[i], i + 1);
    CHECK_EQ(sn.last.fetch_total, 80 * 4096);
    CHECK_EQ(sn.last.nsources, 2);
    CHECK_STR(sn.last.src[1].label, "origin");
    CHECK_EQ(sn.last.src[1].kind, CL_SOURCE_ORIGIN);
    CHECK_EQ(sn.last.served_chunks, NFRESH); /* the app's own counters ride along */
    CHECK(r.done && r.ok);
    CHECK_STR(r.domain, "vm-test-1");
    CHECK_STR(r.uuid, "6f1c1a52-3d2e-4c55-9a0e-2b4e5d6f7a8b");
    CHECK_STR(r.accel, "tcg");
    CHECK_STR(r.console, "/var/tmp/cloudlet-launch/vm-test-1/console.sock");
    CHECK_STR(r.address, "10.0.0.7");
    CHECK_EQ(r.transfer_ms, 700);
    CHECK_EQ(r.total_ms, 1135);
    CHECK_EQ(r.nsources, 2);
    CHECK_EQ(r.src[0].bytes, 176 * 4096);
    CHECK_STR(r.error, "");
    free(steps[1].outcome);
    tl_rmtree(home);
}

/* Stage running (early start: the VM runs while chunks still arrive) does not end a launch
 * without wait: the node still asks this app for chunks. */
static void without_wait_the_app_leaves_once_the_node_needs_nothing_more(void)
{
    make_home(NULL);
    step steps[] = {{.kind = S_GET, .ids = der_ids + NCHANGED, .n = NFRESH / 2},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_TRANSFER},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_RUNNING},
                    {.kind = S_GET, .ids = der_ids + NCHANGED + NFRESH / 2, .n = NFRESH - NFRESH / 2},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_APPLY},
                    {.kind = S_END}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = false};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    CHECK(!r.done);
    CHECK_EQ(r.last.stage, CL_STAGE_APPLY);
    CHECK_EQ(r.last.served_chunks, NFRESH);
    CHECK(r.running_ms > 0);
    CHECK(d.closed);
    CHECK_EQ(d.close_status, 0); /* a clean close: the node may tell it from a crash */
    free(steps[0].outcome), free(steps[3].outcome);
    tl_rmtree(home);
}

static void a_failed_launch_returns_the_nodes_reason(void)
{
    make_home(NULL);
    step steps[] = {{.kind = S_PROGRESS, .stage = NET_LAUNCH_RESOLVE},
                    {.kind = S_DONE, .ok = false, .error = "libvirt refused the domain XML"}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_EQ(launch_on(&d, &der_mid, &o, &r), CL_ELAUNCH);
    CHECK(r.done && !r.ok);
    CHECK_STR(r.error, "libvirt refused the domain XML");
    tl_rmtree(home);
}

static void a_node_closing_mid_launch_is_a_clear_error(void)
{
    make_home(NULL);
    step steps[] = {{.kind = S_GET, .ids = der_ids, .n = 8},
                    {.kind = S_PROGRESS, .stage = NET_LAUNCH_TRANSFER},
                    {.kind = S_HANGUP}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_EQ(launch_on(&d, &der_mid, &o, &r), CL_EGONE);
    CHECK(!r.done);
    CHECK(strstr(r.error, "the node went away") != NULL);
    CHECK_EQ(r.last.stage, CL_STAGE_TRANSFER);
    free(steps[0].outcome);
    tl_rmtree(home);
}

static void a_silent_node_is_taken_as_gone(void)
{
    make_home(NULL);
    step steps[] = {{.kind = S_PROGRESS, .stage = NET_LAUNCH_RESOLVE}, {.kind = S_END}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true, .silence_ms = 300};
    cl_result r;
    CHECK_EQ(launch_on(&d, &der_mid, &o, &r), CL_EGONE);
    CHECK_STR(r.error, "the node went away: it said nothing for 0.3 s");
    CHECK_EQ(r.last.stage, CL_STAGE_RESOLVE);
    CHECK(d.closed); /* the app hung up */
    tl_rmtree(home);
}

static void a_node_of_another_fleet_fails_the_handshake(void)
{
    make_home(NULL);
    step steps[] = {{.kind = S_END}};
    dnode d;
    d_start(&d, steps, 0x11);
    char err[CL_ERRMSG];
    cl_client *c;
    CHECK_OK(cl_client_open(home, &c, err));
    cl_node n;
    node_of(&d, &n);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_EQ(cl_launch(c, &n, der_mid.b, &o, &r), CL_EFLEET);
    CHECK(strstr(r.error, "not of this fleet") != NULL);
    cl_client_close(c);
    /* Nothing was accepted: the double still listens, and is stopped from its own loop. */
    uv_async_send(&d.stop);
    d_join(&d);
    CHECK_EQ(d.launches, 0);
    CHECK(!d.closed);
    tl_rmtree(home);
}

static void a_node_that_is_not_listening_is_a_clear_error(void)
{
    make_home(NULL);
    char err[CL_ERRMSG];
    cl_client *c;
    CHECK_OK(cl_client_open(home, &c, err));
    /* A port nobody listens on: bind one, read it, close it. */
    uv_loop_t loop;
    uv_tcp_t t;
    struct sockaddr_in sa;
    CHECK_OK(uv_loop_init(&loop));
    uv_tcp_init(&loop, &t);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    CHECK_OK(uv_tcp_bind(&t, (struct sockaddr *)&sa, 0));
    int len = sizeof sa;
    CHECK_OK(uv_tcp_getsockname(&t, (struct sockaddr *)&sa, &len));
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_OK(uv_loop_close(&loop));
    cl_node n;
    CHECK_OK(cl_node_parse("127.0.0.1", &n));
    n.port = ntohs(sa.sin_port);
    n.has_key = true;
    cl_result r;
    CHECK_EQ(cl_launch(c, &n, der_mid.b, NULL, &r), -ECONNREFUSED);
    CHECK(strstr(r.error, "cannot connect to 127.0.0.1") != NULL);
    cl_client_close(c);
    tl_rmtree(home);
}

#define NMANY 8192
static uint8_t *many_data;
static cs_id *many_ids;
static cs_id many_mid;

static void add_many(cs_store *st)
{
    many_data = malloc((size_t)NMANY * 4096);
    many_ids = malloc(NMANY * sizeof *many_ids);
    tl_fill_random(many_data, (size_t)NMANY * 4096, 21);
    put_file(st, many_data, NMANY, many_ids, NULL, &many_mid);
}

static void answers_wait_for_a_full_send_queue_and_all_arrive(void)
{
    /* 32 MiB of incompressible chunks asked for at once while the node's loop sleeps: the
     * app's send queue fills past its mark (NET_EAGAIN) and the rest goes out from on_drain. */
    make_home(add_many);
    step steps[] = {{.kind = S_GET, .ids = many_ids, .n = NMANY}, {.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    d.pause_ms = 1500;
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_OK(launch_on(&d, &many_mid, &o, &r));
    CHECK_EQ(count(&steps[0], 'w'), NMANY);
    CHECK_EQ(r.last.served_chunks, NMANY);
    free(steps[0].outcome);
    free(many_data), free(many_ids);
    tl_rmtree(home);
}

static void addresses_and_keys_parse(void)
{
    cl_node n;
    CHECK_OK(cl_node_parse("node1.lan", &n));
    CHECK_STR(n.host, "node1.lan");
    CHECK_EQ(n.port, CL_PORT);
    CHECK(!n.has_key);
    CHECK_OK(cl_node_parse("10.1.2.3:9000", &n));
    CHECK_STR(n.host, "10.1.2.3");
    CHECK_EQ(n.port, 9000);
    CHECK_OK(cl_node_parse("[fe80::1]:7", &n));
    CHECK_STR(n.host, "fe80::1");
    CHECK_EQ(n.port, 7);
    CHECK_OK(cl_node_parse("fe80::1", &n));
    CHECK_STR(n.host, "fe80::1");
    CHECK_EQ(n.port, CL_PORT);
    const char *bad[] = {"", ":7420", "h:", "h:0", "h:65536", "h:12x", "[::1", "[::1]x", "h:-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ(cl_node_parse(bad[i], &n), CL_EADDRESS);
    uint8_t key[32], want[32];
    char err[CL_ERRMSG], text[NODE_KEY_TEXT];
    tl_fill_random(want, 32, 4);
    node_key_encode(NODE_KEY_NODE_PUBLIC, want, text);
    CHECK_OK(cl_node_key_parse(text, key, err));
    CHECK_MEM(key, want, 32);
    node_key_encode(NODE_KEY_CLIENT, want, text);
    CHECK_EQ(cl_node_key_parse(text, key, err), CL_EADDRESS);
    CHECK(strstr(err, "client key") != NULL);
}

static void a_home_without_client_key_says_how_to_get_one(void)
{
    make_home(NULL);
    char *path, err[CL_ERRMSG];
    CHECK(asprintf(&path, "%s/%s", home, CL_CLIENT_KEY_FILE) > 0);
    CHECK_OK(unlink(path));
    free(path);
    cl_client *c = NULL;
    CHECK_EQ(cl_client_open(home, &c, err), CL_ENOKEY);
    CHECK(c == NULL);
    CHECK(strstr(err, "cloudlet init --client-key") != NULL);
    tl_rmtree(home);
}

static void a_nodes_home_launches_with_the_client_key_of_its_fleet(void)
{
    make_home(NULL);
    char *path, err[NODE_ERRMSG];
    CHECK(asprintf(&path, "%s/%s", home, CL_CLIENT_KEY_FILE) > 0);
    CHECK_OK(unlink(path));
    free(path);
    CHECK(asprintf(&path, "%s/%s", home, NODE_FLEET_FILE) > 0);
    CHECK_OK(node_key_write(path, NODE_KEY_FLEET, fleet, false, err));
    free(path);
    step steps[] = {{.kind = S_DONE, .ok = true}};
    dnode d;
    d_start(&d, steps, 0x5a);
    cl_launch_opts o = {.wait = true};
    cl_result r;
    CHECK_OK(launch_on(&d, &der_mid, &o, &r));
    CHECK(r.done && r.ok);
    tl_rmtree(home);
}

TL_MAIN(TL_CASE(manifests_of_the_launched_chain_are_served_and_no_others),
        TL_CASE(a_manifest_longer_than_one_message_is_served_in_parts),
        TL_CASE(chunks_of_the_chain_are_served_whole_and_match_their_ids),
        TL_CASE(chunks_outside_the_launched_chain_are_refused),
        TL_CASE(deltas_against_held_bases_rebuild_the_chunks),
        TL_CASE(progress_is_reported_and_the_result_returned),
        TL_CASE(without_wait_the_app_leaves_once_the_node_needs_nothing_more),
        TL_CASE(a_failed_launch_returns_the_nodes_reason),
        TL_CASE(a_node_closing_mid_launch_is_a_clear_error),
        TL_CASE(a_silent_node_is_taken_as_gone),
        TL_CASE(a_node_of_another_fleet_fails_the_handshake),
        TL_CASE(a_node_that_is_not_listening_is_a_clear_error),
        TL_CASE(answers_wait_for_a_full_send_queue_and_all_arrive),
        TL_CASE(addresses_and_keys_parse), TL_CASE(a_home_without_client_key_says_how_to_get_one),
        TL_CASE(a_nodes_home_launches_with_the_client_key_of_its_fleet))
