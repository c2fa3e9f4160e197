/*
 * node_launch.c — launching a VM for an app (docs/launch.md "From an app", docs/protocol.md §10).
 *
 * Design notes:
 * - An app sends LAUNCH on its connection. The launch pulls the manifest and every chunk this
 *   node lacks (node__pull_start_origin: neighbours first, the app for the rest) and, once the
 *   missing set is known, starts a thread that writes and resumes the VM (node_vm_launch_local)
 *   while the chunks still arrive: the store's readers wait for chunks on their way
 *   (cs_arrivals_begin), so writing the VM follows the transfer instead of waiting for its end.
 * - Two launches of one manifest share its fetch: while another pull of it runs, a launch waits
 *   and shows that pull's progress, then pulls what is still missing (usually nothing).
 * - The app is needed until the transfer ends (it is the origin). If it goes before, the pull
 *   stops (what was stored stays for the next try), the thread's readers fail, and
 *   node_vm_launch_local leaves nothing behind: no domain, no directory. After the transfer the
 *   launch runs to its end without the app.
 * - Everything here runs on the loop, except the thread, which shares only the fields marked
 *   below and signals its end with uv_async. A launch is freed once its handles are closed and
 *   its thread joined.
 */
#define _GNU_SOURCE
#include "node_daemon.h"
#include "node_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TICK_MS 100
#define PROGRESS_MS 250
#define WANT_MAX 1024

struct node__launch {
    node_daemon *d;
    node__launch *next;
    void *conn; /* the app's connection; NULL once gone */
    uint32_t req;
    cs_id id;
    char name[NET_LAUNCH_NAME_MAX + 1];
    char dir[600];
    bool waiting;       /* another pull of the manifest runs: this one waits for it */
    bool pulling;       /* this launch's pull runs (its report may still come) */
    bool pulled;        /* it ended well */
    bool thread_started, thread_joined, ended;
    uint64_t t0, t_planned, t_pulled, last_progress;
    char why[NODE_ERRMSG]; /* the first failure */
    node__pull_progress_t pp; /* the pull's last state */
    uv_timer_t timer;
    uv_async_t async;
    unsigned open_handles;
    uv_thread_t thread;
    /* Written by the thread; read on the loop after it signalled its end (thread_done), except
     * the progress counters, which are atomic. */
    atomic_bool thread_done;
    atomic_bool vm_running; /* early start: the VM runs while chunks still arrive */
    atomic_bool cancel;     /* the launch failed: the thread stops waiting and undoes its work */
    bool app_knows_running; /* the app's LAUNCH said it understands stage RUNNING */
    /* Chunks the running VM's reads wait for (NBD's threads add, the loop takes them to the
     * pull); more than fit are dropped: it is a hint. */
    uv_mutex_t want_mu;
    cs_id want[WANT_MAX];
    size_t nwant;
    uint64_t t_running;     /* when the loop first saw vm_running */
    atomic_uint_fast64_t vm_done, vm_total;
    uint64_t cur_total, cur_base, cur_done;
    node_launch_opts opts;
    node_launch_report rep;
    int rc;
    char err[NODE_ERRMSG];
    uint64_t t_thread_end;
};

static void launch_pump(node__launch *l);

static void free_if_closed(node__launch *l)
{
    if (l->open_handles || (l->thread_started && !l->thread_joined)) return;
    node_daemon *d = l->d;
    for (node__launch **pp = &d->launches; *pp; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    uv_mutex_destroy(&l->want_mu);
    free(l);
}

static void handle_closed(uv_handle_t *h)
{
    node__launch *l = h->data;
    l->open_handles--;
    free_if_closed(l);
}

static void fail(node__launch *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(node__launch *l, const char *fmt, ...)
{
    atomic_store(&l->cancel, true);
    if (l->why[0]) return; /* the first cause is the one to tell */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->why, sizeof l->why, fmt, ap);
    va_end(ap);
}

/* ---- what the app is told -------------------------------------------------------------------- */

static uint32_t ms_between(uint64_t a, uint64_t b)
{
    return b > a ? (uint32_t)(b - a) : 0;
}

/* Bytes by source: what was here already, then each source of the pull. */
static uint32_t fill_sources(const node__launch *l, net_launch_source *out)
{
    const node__pull_progress_t *pp = &l->pp;
    uint32_t n = 0;
    out[n].kind = NET_SOURCE_LOCAL;
    out[n].bytes = pp->held_before * CS_CHUNK_SIZE;
    snprintf(out[n++].label, sizeof out[0].label, "local");
    for (unsigned i = 0; i < pp->nsrc && n < NET_LAUNCH_SOURCES_MAX; i++, n++) {
        out[n].kind = pp->src[i].origin ? NET_SOURCE_ORIGIN : NET_SOURCE_NEIGHBOUR;
        out[n].bytes = pp->src[i].data_bytes;
        if (pp->src[i].origin)
            snprintf(out[n].label, sizeof out[n].label, "origin");
        else
            node__short_hex(pp->src[i].pk, out[n].label);
    }
    return n;
}

static void send_progress(node__launch *l, uint64_t now)
{
    if (!l->conn) return;
    net_launch_progress pr;
    memset(&pr, 0, sizeof pr);
    pr.req = l->req;
    uint64_t vm_done = atomic_load(&l->vm_done), vm_total = atomic_load(&l->vm_total);
    if (!l->pp.planned && !l->thread_started)
        pr.stage = NET_LAUNCH_RESOLVE;
    else if (!l->pulled)
        pr.stage = atomic_load(&l->vm_running) && l->app_knows_running ? NET_LAUNCH_RUNNING
                                                                       : NET_LAUNCH_TRANSFER;
    else if (vm_total == 0 || vm_done < vm_total) /* (0: not known yet) */
        pr.stage = NET_LAUNCH_APPLY;
    else
        pr.stage = NET_LAUNCH_RESTORE;
    pr.elapsed_ms = ms_between(l->t0, now);
    pr.fetch_total = l->pp.missing * CS_CHUNK_SIZE;
    pr.fetch_done = l->pp.bytes_done < pr.fetch_total ? l->pp.bytes_done : pr.fetch_total;
    pr.vm_total = vm_total;
    pr.vm_done = vm_done < vm_total ? vm_done : vm_total;
    pr.nsources = fill_sources(l, pr.src);
    uint8_t *buf;
    size_t len;
    if (net_launch_encode_progress(&pr, &buf, &len) == 0)
        node__conn_send(l->conn, NET_MSG_LAUNCH_PROGRESS, buf, len);
    l->last_progress = now;
}

/* The end: LAUNCH_DONE to the app (when it is still there), a log line, the handles closed. */
static void finish(node__launch *l)
{
    if (l->ended) return;
    l->ended = true;
    node_daemon *d = l->d;
    uint64_t now = uv_now(&d->loop);
    bool ok = !l->why[0] && l->rc == 0;
    net_launch_done *r = calloc(1, sizeof *r);
    char hex[CS_ID_HEX + 1];
    cs_id_to_hex(&l->id, hex);
    if (r) {
        r->req = l->req;
        r->ok = ok;
        uint64_t planned = l->t_planned ? l->t_planned : now;
        uint64_t pulled = l->t_pulled ? l->t_pulled : now;
        uint32_t restore = (uint32_t)(l->rep.restore_s * 1000);
        r->resolve_ms = ms_between(l->t0, planned);
        r->transfer_ms = ms_between(planned, pulled);
        uint64_t end = l->t_thread_end ? l->t_thread_end : now;
        /* Early start restored before the transfer ended: what follows it is the disk's pull
         * into the overlay, and the restore is not part of it. */
        bool early = l->t_running && l->t_running <= pulled;
        r->apply_ms = ms_between(pulled, early || end <= restore ? end : end - restore);
        r->restore_ms = ok ? restore : 0;
        r->total_ms = ms_between(l->t0, now);
        r->nsources = fill_sources(l, r->src);
        if (ok) {
            snprintf(r->domain, sizeof r->domain, "%s", l->name);
            snprintf(r->uuid, sizeof r->uuid, "%s", l->rep.uuid);
            snprintf(r->accel, sizeof r->accel, "%s", node_accel_name(l->rep.accel));
            snprintf(r->console, sizeof r->console, "%s/console.sock", l->dir);
            snprintf(r->address, sizeof r->address, "%s", l->rep.address);
        } else {
            snprintf(r->error, sizeof r->error, "%s", l->why[0] ? l->why : l->err);
            for (char *c = r->error; *c; c++) /* printable ASCII only on the wire */
                if (*c < 0x20 || *c > 0x7e) *c = '?';
        }
        uint8_t *buf;
        size_t len;
        if (l->conn && net_launch_encode_done(r, &buf, &len) == 0)
            node__conn_send(l->conn, NET_MSG_LAUNCH_DONE, buf, len);
        if (ok)
            node_log(NODE_LOG_INFO,
                     "launched %.12s as %s: resolve %u ms, transfer %u ms, apply %u ms, restore "
                     "%u ms, total %u ms",
                     hex, l->name, r->resolve_ms, r->transfer_ms, r->apply_ms, r->restore_ms,
                     r->total_ms);
        else
            node_log(NODE_LOG_WARN, "launch of %.12s failed: %s", hex, r->error);
        free(r);
    }
    if (l->conn) node__conn_end(l->conn);
    l->conn = NULL;
    uv_close((uv_handle_t *)&l->timer, handle_closed);
    uv_close((uv_handle_t *)&l->async, handle_closed);
}

/* ---- the thread: write the VM and resume it -------------------------------------------------- */

/* node_vm_launch_local reports the disk's bytes, then the memory's: each phase starts again
 * from zero with its own total. */
static void on_vm_progress(uint64_t done, uint64_t total, void *arg)
{
    node__launch *l = arg;
    if (total != l->cur_total || done < l->cur_done) {
        l->cur_base += l->cur_total;
        l->cur_total = total;
    }
    l->cur_done = done;
    atomic_store(&l->vm_done, l->cur_base + done);
}

static uint64_t vm_size(node__launch *l);

/* From the NBD server's threads: a read of the running VM waits for these chunks. */
static void on_want(const cs_id *ids, size_t n, void *arg)
{
    node__launch *l = arg;
    uv_mutex_lock(&l->want_mu);
    for (size_t i = 0; i < n && l->nwant < WANT_MAX; i++) l->want[l->nwant++] = ids[i];
    uv_mutex_unlock(&l->want_mu);
    uv_async_send(&l->async);
}

/* On the loop: what the VM waits for goes to the head of the pull's queues. */
static void pass_wants(node__launch *l)
{
    cs_id ids[WANT_MAX];
    uv_mutex_lock(&l->want_mu);
    size_t n = l->nwant;
    memcpy(ids, l->want, n * sizeof *ids);
    l->nwant = 0;
    uv_mutex_unlock(&l->want_mu);
    if (n && !l->why[0]) node__pull_urgent(l->d, &l->id, ids, n);
}

static bool cancelled(void *arg)
{
    node__launch *l = arg;
    return atomic_load(&l->cancel);
}

static void on_resumed(void *arg)
{
    node__launch *l = arg;
    atomic_store(&l->vm_running, true);
    uv_async_send(&l->async); /* the app hears of it at once */
}

static void run(void *arg)
{
    node__launch *l = arg;
    atomic_store(&l->vm_total, vm_size(l));
    l->rc = node_vm_launch_local(l->d->st, &l->id, &l->opts, &l->rep, on_vm_progress, l, l->err);
    atomic_store(&l->thread_done, true);
    uv_async_send(&l->async);
}

static void on_thread_done(uv_async_t *h)
{
    node__launch *l = h->data;
    bool resumed_now = atomic_load(&l->vm_running) && !l->t_running;
    if (resumed_now) l->t_running = uv_now(&l->d->loop);
    pass_wants(l);
    if (!atomic_load(&l->thread_done) || l->thread_joined) {
        if (resumed_now && !l->ended) send_progress(l, l->t_running); /* the app hears at once */
        return;
    }
    uv_thread_join(&l->thread);
    l->thread_joined = true;
    l->t_thread_end = uv_now(&l->d->loop);
    if (l->rc == 0 && !l->d->accel) l->d->accel = (int)l->rep.accel; /* detect once */
    if (l->rc == 0)
        atomic_store(&l->vm_done, atomic_load(&l->vm_total));
    else
        fail(l, "%s", l->err[0] ? l->err : node_strerror(l->rc)); /* stops the pull too */
    launch_pump(l);
}

/* The VM's size, for progress: every image of the resolved manifest (on the thread: it reads
 * the store). */
static uint64_t vm_size(node__launch *l)
{
    cs_manifest *m = NULL;
    if (cs_manifest_get(l->d->st, &l->id, &m)) return 0;
    uint64_t n = 0;
    for (size_t i = 0; i < m->nimages; i++) n += m->images[i].length;
    cs_manifest_free(m);
    return n;
}

static void start_thread(node__launch *l)
{
    l->opts = (node_launch_opts){.uri = l->d->cfg.libvirt_uri,
                                 .name = l->name,
                                 .dir = l->dir,
                                 .accel = (node_accel)l->d->accel,
                                 .early = l->d->cfg.early_start,
                                 .resumed = on_resumed,
                                 .cancelled = cancelled,
                                 .want = on_want,
                                 .arg = l};
    if (uv_thread_create(&l->thread, run, l) != 0) {
        fail(l, "cannot start the launch thread");
        return;
    }
    l->thread_started = true;
}

/* ---- the pull -------------------------------------------------------------------------------- */

static void on_pull_report(const char *line, bool last, void *arg)
{
    node__launch *l = arg;
    node__pull_progress(l->d, &l->id, l, &l->pp);
    if (!l->t_planned && l->pp.planned) l->t_planned = uv_now(&l->d->loop);
    if (!last) return;
    l->pulling = false;
    if (l->pp.failed) {
        fail(l, "%s", l->pp.err[0] ? l->pp.err : "the fetch failed");
    } else {
        l->pulled = true;
        l->t_pulled = uv_now(&l->d->loop);
        if (!l->t_planned) l->t_planned = l->t_pulled;
    }
    launch_pump(l);
}

static void try_pull(node__launch *l)
{
    char err[NODE_ERRMSG] = "";
    int rc = node__pull_start_origin(l->d, &l->id, l->conn, on_pull_report, l, err);
    if (rc == CS_EBUSY) { /* another launch (or pull) fetches it: share that fetch */
        l->waiting = true;
        return;
    }
    l->waiting = false;
    if (rc) {
        fail(l, "%s", err[0] ? err : node_strerror(rc));
        return;
    }
    l->pulling = true;
}

/* Moves the launch on: called on every tick and every event. */
static void launch_pump(node__launch *l)
{
    if (l->ended) return;
    node_daemon *d = l->d;
    uint64_t now = uv_now(&d->loop);
    if (l->why[0]) {
        /* A failure: stop fetching; the thread (its readers fail once the pull ended) is
         * waited for, so that it leaves nothing behind before the app is told. */
        if (l->pulling) {
            l->pulling = false;
            node__pull_detach(d, l);
        }
        if (!l->thread_started || l->thread_joined) finish(l);
        return;
    }
    if (l->waiting) {
        node__pull_progress(d, &l->id, NULL, &l->pp); /* the other's pull, shown meanwhile */
        if (!l->conn) {
            fail(l, "the app went away");
            launch_pump(l);
            return;
        }
        try_pull(l);
    }
    if (l->pulling) node__pull_progress(d, &l->id, l, &l->pp);
    if (!l->t_planned && l->pp.planned && (l->pulling || l->pulled)) l->t_planned = now;
    if (!l->thread_started && (l->pulled || (l->pulling && l->pp.planned))) start_thread(l);
    if (l->thread_joined && !l->pulling) { /* the VM runs and every chunk is stored */
        finish(l);
        return;
    }
    if (l->why[0]) {
        launch_pump(l);
        return;
    }
    if (now - l->last_progress >= PROGRESS_MS) send_progress(l, now);
}

static void on_tick(uv_timer_t *h)
{
    launch_pump(h->data);
}

/* ---- from the exchange ----------------------------------------------------------------------- */


void node__launch_asked(node_daemon *d, void *conn, const uint8_t *payload, size_t len)
{
    net_launch_req req;
    node__launch *l = calloc(1, sizeof *l);
    if (!l || net_launch_decode_req(payload, len, &req) != 0) {
        free(l);
        node__conn_end(conn); /* malformed: nothing to answer */
        return;
    }
    if (uv_mutex_init(&l->want_mu) != 0) {
        free(l);
        node__conn_end(conn);
        return;
    }
    l->d = d;
    l->conn = conn;
    l->req = req.req;
    memcpy(l->id.b, req.id, CS_ID_BYTES);
    l->app_knows_running = req.flags & NET_LAUNCH_F_RUNNING;
    if (req.name[0]) /* else vm-<12 hex digits of the id>-<6 random hex digits> */
        snprintf(l->name, sizeof l->name, "%s", req.name);
    else
        node_domain_name(NULL, &l->id, l->name, sizeof l->name);
    unsigned running = 0;
    for (node__launch *o = d->launches; o; o = o->next) running++;
    if (running >= d->cfg.max_launches)
        fail(l, "this node is busy: %u launches are under way (max_launches)", running);
    snprintf(l->dir, sizeof l->dir, "%s/%s", d->cfg.launch_dir, l->name);
    l->t0 = uv_now(&d->loop);
    l->next = d->launches;
    d->launches = l;
    uv_timer_init(&d->loop, &l->timer);
    uv_async_init(&d->loop, &l->async, on_thread_done);
    l->timer.data = l->async.data = l;
    l->open_handles = 2;
    uv_timer_start(&l->timer, on_tick, TICK_MS, TICK_MS);
    char hex[CS_ID_HEX + 1];
    node_log(NODE_LOG_INFO, "an app asks to launch %s as %s", cs_id_to_hex(&l->id, hex), l->name);
    if (!l->why[0]) {
        if (mkdir(d->cfg.launch_dir, 0711) != 0 && errno != EEXIST)
            fail(l, "cannot create the launch directory %s: %s", d->cfg.launch_dir,
                 strerror(errno));
        else
            try_pull(l);
    }
    send_progress(l, l->t0);
    launch_pump(l);
}

void node__launch_conn_gone(node_daemon *d, void *conn)
{
    for (node__launch *l = d->launches; l; l = l->next) {
        if (l->conn != conn) continue;
        l->conn = NULL;
        /* Before the transfer ends the app is the origin: without it the launch stops. */
        if (!l->pulled) fail(l, "the app went away");
        launch_pump(l);
        return;
    }
}

void node__launch_stop(node_daemon *d)
{
    for (node__launch *l = d->launches; l; l = l->next) {
        fail(l, "the node is shutting down");
        launch_pump(l);
    }
}
