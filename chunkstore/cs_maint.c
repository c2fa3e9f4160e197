/*
 * cs_maint.c — statistics, verification and garbage collection.
 *
 * Design notes:
 * - None of these holds a read transaction for long: they copy what they need out of a short
 *   one (index entries sorted by location) and then work segment by segment, each in its own
 *   short transaction, so a writer in another process keeps reusing freed pages meanwhile.
 * - GC runs in three phases, each made of transactions that re-check what they change:
 *   (1) remove manifests that are neither pinned nor a parent of a kept manifest, dropping
 *   their chunk references; (2) delete index entries with no references; (3) delete segments
 *   with no live slot and rewrite those under half live. The exclusive flock on gc.lock keeps
 *   ingests (chunks stored ahead of their manifest) out while it runs.
 * - Pages a commit frees can be reused only two commits later (LMDB keeps the snapshot of the
 *   previous meta page intact). GC therefore ends with one more small commit, so that the very
 *   next write can use all the room GC freed: on a full disk, the write GC was run for.
 */
#define _GNU_SOURCE
#include "cs_internal.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- index snapshot -------------------------------------------------------------------------- */

struct entry {
    uint64_t loc;
    cs_id id;
};

static int cmp_entry(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    return (x->loc > y->loc) - (x->loc < y->loc);
}

/* Copies every held chunk's (loc, id), sorted by location. *missing counts placeholders. */
static int snapshot_index(cs_store *st, struct entry **out, size_t *n, uint64_t *missing)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_cursor *cur;
    if ((rc = cs__lmdb_err(mdb_cursor_open(txn, st->idx, &cur)))) {
        cs__txn_abort(st, txn);
        return rc;
    }
    MDB_stat ms;
    mdb_stat(txn, st->idx, &ms);
    struct entry *e = malloc((ms.ms_entries ? ms.ms_entries : 1) * sizeof *e);
    size_t k = 0;
    uint64_t miss = 0;
    MDB_val key, val;
    int r = e ? mdb_cursor_get(cur, &key, &val, MDB_FIRST) : ENOMEM;
    for (; r == 0 && k < ms.ms_entries; r = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        cs__idx_val iv;
        if (key.mv_size != CS_ID_BYTES || val.mv_size != sizeof iv) continue;
        memcpy(&iv, val.mv_data, sizeof iv);
        if (iv.loc == 0) {
            miss++;
            continue;
        }
        e[k].loc = iv.loc;
        memcpy(e[k].id.b, key.mv_data, CS_ID_BYTES);
        k++;
    }
    mdb_cursor_close(cur);
    cs__txn_abort(st, txn);
    if (r != MDB_NOTFOUND && r != 0) {
        free(e);
        return cs__lmdb_err(r);
    }
    qsort(e, k, sizeof *e, cmp_entry);
    *out = e, *n = k;
    if (missing) *missing = miss;
    return 0;
}

/* ---- stats ----------------------------------------------------------------------------------- */

static uint64_t file_blocks(const char *dir, const char *name)
{
    char *p;
    struct stat sb;
    if (asprintf(&p, "%s/%s", dir, name) < 0) return 0;
    uint64_t b = stat(p, &sb) == 0 ? (uint64_t)sb.st_blocks * 512u : 0;
    free(p);
    return b;
}

int cs_stats_get(cs_store *st, cs_stats *out)
{
    memset(out, 0, sizeof *out);
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    int r = mdb_cursor_open(txn, st->idx, &cur);
    for (r = r ? r : mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cs__idx_val iv;
        if (v.mv_size != sizeof iv) continue;
        memcpy(&iv, v.mv_data, sizeof iv);
        if (iv.loc) out->chunks++;
        else if (iv.refs) out->referenced_missing++;
    }
    mdb_cursor_close(cur);
    /* Value sizes sit in the leaf nodes: this walk does not touch the segments' pages. */
    if (r == MDB_NOTFOUND) r = mdb_cursor_open(txn, st->segs, &cur);
    for (r = r ? r : mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        out->segments++;
        out->stored_bytes += v.mv_size;
    }
    mdb_cursor_close(cur);
    MDB_stat ms;
    if (r == MDB_NOTFOUND) r = mdb_stat(txn, st->manifests, &ms);
    out->manifests = ms.ms_entries;
    if (r == 0) r = mdb_stat(txn, st->pins, &ms);
    out->pinned = ms.ms_entries;
    cs__txn_abort(st, txn);
    if (r) return cs__lmdb_err(r);
    out->logical_bytes = out->chunks * CS_CHUNK_SIZE;
    out->disk_bytes = file_blocks(st->dir, "data.mdb") + file_blocks(st->dir, "lock.mdb");
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    out->map_bytes = info.me_mapsize;
    return 0;
}

/* ---- verify ---------------------------------------------------------------------------------- */

#define BATCH_SEGS 32

static bool still_at(MDB_txn *txn, cs_store *st, const struct entry *e)
{
    MDB_val k = {CS_ID_BYTES, (void *)e->id.b}, v;
    cs__idx_val iv;
    if (mdb_get(txn, st->idx, &k, &v) != 0 || v.mv_size != sizeof iv) return false;
    memcpy(&iv, v.mv_data, sizeof iv);
    return iv.loc == e->loc;
}

static int verify_manifests(cs_store *st, void (*on_bad)(const cs_id *, const char *, void *),
                            void *arg, cs_verify_report *rep)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_cursor *cur;
    MDB_val k, v;
    int r = mdb_cursor_open(txn, st->manifests, &cur);
    for (r = r ? r : mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cs_id key = {{0}}, got;
        memcpy(key.b, k.mv_data, k.mv_size < CS_ID_BYTES ? k.mv_size : CS_ID_BYTES);
        cs_manifest_id(v.mv_data, v.mv_size, &got);
        cs_manifest *m = NULL;
        if (k.mv_size != CS_ID_BYTES || !cs_id_equal(&key, &got) ||
            cs_manifest_decode(v.mv_data, v.mv_size, &m) != 0) {
            rep->bad_manifests++;
            if (on_bad) on_bad(&key, "manifest", arg);
        }
        cs_manifest_free(m);
    }
    mdb_cursor_close(cur);
    cs__txn_abort(st, txn);
    return r == MDB_NOTFOUND ? 0 : cs__lmdb_err(r);
}

int cs_verify(cs_store *st, void (*on_bad)(const cs_id *id, const char *what, void *arg),
              void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg,
              cs_verify_report *report)
{
    memset(report, 0, sizeof *report);
    struct entry *e;
    size_t n;
    int rc = snapshot_index(st, &e, &n, NULL);
    if (rc) return rc;
    uint8_t *buf = malloc(CS__SEG_SLOTS * CS_CHUNK_SIZE);
    ZSTD_DCtx *dctx = cs__dctx_get(st);
    if (!buf || !dctx) rc = -ENOMEM;
    for (size_t j = 0; j < n && rc == 0;) {
        MDB_txn *txn;
        if ((rc = cs__txn_begin(st, false, &txn))) break;
        for (unsigned segs = 0; j < n && segs < BATCH_SEGS; segs++) {
            size_t seg = (size_t)CS__LOC_SEG(e[j].loc);
            MDB_val k = {sizeof seg, &seg}, v;
            unsigned nslots = 0;
            int r = mdb_get(txn, st->segs, &k, &v);
            int drc = r == 0 ? cs__seg_decode(dctx, v.mv_data, v.mv_size, buf, &nslots) : r;
            for (; j < n && CS__LOC_SEG(e[j].loc) == seg; j++) {
                if (!still_at(txn, st, &e[j])) continue; /* moved or freed since the snapshot */
                report->chunks_checked++;
                unsigned slot = CS__LOC_SLOT(e[j].loc);
                cs_id got;
                if (drc == 0 && slot < nslots)
                    cs_chunk_id(buf + (size_t)slot * CS_CHUNK_SIZE, &got);
                if (r == MDB_NOTFOUND || (drc == 0 && slot >= nslots)) {
                    report->bad_index++;
                    if (on_bad) on_bad(&e[j].id, "index", arg);
                } else if (drc != 0 || !cs_id_equal(&got, &e[j].id)) {
                    report->bad_chunks++;
                    if (on_bad) on_bad(&e[j].id, NULL, arg);
                }
            }
        }
        cs__txn_abort(st, txn);
        if (progress) progress(j, n, arg);
    }
    if (rc == 0) rc = verify_manifests(st, on_bad, arg, report);
    if (dctx) cs__dctx_put(st, dctx);
    free(buf);
    free(e);
    return rc;
}

/* ---- gc: phase 1, manifests ------------------------------------------------------------------ */

struct mrec {
    cs_id id;
    bool has_parent, keep;
    cs_id parent;
    uint64_t pins;
};

static int collect_manifest(const cs_manifest_info *in, void *arg)
{
    struct {
        struct mrec *v;
        size_t n, cap;
    } *list = arg;
    if (list->n == list->cap) {
        list->cap = list->cap ? list->cap * 2 : 64;
        struct mrec *p = realloc(list->v, list->cap * sizeof *p);
        if (!p) return -ENOMEM;
        list->v = p;
    }
    list->v[list->n++] = (struct mrec){in->id, in->has_parent, false, in->parent, in->pins};
    return 0;
}

struct mdel {
    const cs_id *id;
    bool removed;
};

/* Removes one manifest if it is still unpinned and no stored manifest names it as parent. */
static int mdel_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct mdel *j = arg;
    j->removed = false;
    MDB_val k = {CS_ID_BYTES, (void *)j->id->b}, v;
    int rc = mdb_get(txn, st->pins, &k, &v);
    if (rc == 0) return 0; /* pinned again meanwhile */
    if (rc != MDB_NOTFOUND) return cs__body_err(rc);
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, st->manifests, &cur))) return cs__body_err(rc);
    MDB_val ck, cv;
    int r;
    for (r = mdb_cursor_get(cur, &ck, &cv, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &ck, &cv, MDB_NEXT)) {
        cs_id parent;
        if (cs__manifest_peek_parent(cv.mv_data, cv.mv_size, &parent) &&
            cs_id_equal(&parent, j->id))
            break;
    }
    mdb_cursor_close(cur);
    if (r == 0) return 0; /* a child still needs it */
    if (r != MDB_NOTFOUND) return cs__body_err(r);
    if ((rc = mdb_get(txn, st->manifests, &k, &v))) return rc == MDB_NOTFOUND ? 0 : cs__body_err(rc);
    cs_manifest *m;
    if ((rc = cs_manifest_decode(v.mv_data, v.mv_size, &m))) return rc;
    rc = cs__manifest_refs(st, txn, m, -1);
    cs_manifest_free(m);
    if (rc) return rc;
    if ((rc = mdb_del(txn, st->manifests, &k, NULL))) return cs__body_err(rc);
    if ((rc = mdb_del(txn, st->notes, &k, NULL)) && rc != MDB_NOTFOUND) return cs__body_err(rc);
    /* Names that pointed at it go with it. */
    if ((rc = mdb_cursor_open(txn, st->names, &cur))) return cs__body_err(rc);
    for (r = mdb_cursor_get(cur, &ck, &cv, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &ck, &cv, MDB_NEXT)) {
        if (cv.mv_size == CS_ID_BYTES && memcmp(cv.mv_data, j->id->b, CS_ID_BYTES) == 0 &&
            (r = mdb_cursor_del(cur, 0)))
            break;
    }
    mdb_cursor_close(cur);
    if (r != MDB_NOTFOUND) return cs__body_err(r);
    j->removed = true;
    return 0;
}

static int gc_manifests(cs_store *st, cs_gc_report *rep)
{
    struct {
        struct mrec *v;
        size_t n, cap;
    } list = {0};
    int rc = cs_manifest_list(st, collect_manifest, &list);
    /* keep = pinned, and every ancestor of a kept manifest (a fixpoint over the few manifests). */
    for (size_t i = 0; i < list.n; i++) list.v[i].keep = list.v[i].pins > 0;
    for (bool changed = true; changed && rc == 0;) {
        changed = false;
        for (size_t i = 0; i < list.n; i++) {
            if (!list.v[i].keep || !list.v[i].has_parent) continue;
            for (size_t p = 0; p < list.n; p++)
                if (!list.v[p].keep && cs_id_equal(&list.v[p].id, &list.v[i].parent))
                    list.v[p].keep = changed = true;
        }
    }
    /* Remove children before parents: repeat while something goes. */
    for (bool progress = true; progress && rc == 0;) {
        progress = false;
        for (size_t i = 0; i < list.n && rc == 0; i++) {
            if (list.v[i].keep) continue;
            struct mdel j = {&list.v[i].id, false};
            rc = cs__write(st, mdel_body, &j);
            if (j.removed) {
                list.v[i].keep = true; /* done with it */
                rep->manifests_removed++;
                progress = true;
            }
        }
    }
    free(list.v);
    return rc;
}

/* ---- gc: phase 2, unreferenced chunks -------------------------------------------------------- */

struct sweep {
    uint8_t resume[CS_ID_BYTES];
    bool started, done;
    uint64_t removed;
};

#define SWEEP_BATCH 65536

static int sweep_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct sweep *s = arg;
    uint64_t removed = 0;
    MDB_cursor *cur;
    int r = mdb_cursor_open(txn, st->idx, &cur);
    if (r) return cs__body_err(r);
    MDB_val k = {CS_ID_BYTES, s->resume}, v;
    r = mdb_cursor_get(cur, &k, &v, s->started ? MDB_SET_RANGE : MDB_FIRST);
    unsigned seen = 0;
    for (; r == 0 && seen < SWEEP_BATCH; r = mdb_cursor_get(cur, &k, &v, MDB_NEXT), seen++) {
        cs__idx_val iv;
        if (v.mv_size != sizeof iv) continue;
        memcpy(&iv, v.mv_data, sizeof iv);
        if (iv.refs == 0) {
            if ((r = mdb_cursor_del(cur, 0))) break;
            removed++;
        }
    }
    if (r == 0) {
        memcpy(s->resume, k.mv_data, CS_ID_BYTES); /* the first key of the next batch */
        s->started = true;
    }
    mdb_cursor_close(cur);
    if (r != 0 && r != MDB_NOTFOUND) return cs__body_err(r);
    s->done = r == MDB_NOTFOUND;
    s->removed = removed;
    return 0;
}

/* ---- gc: phase 3, segments ------------------------------------------------------------------- */

struct compact {
    const struct entry *e; /* live entries of the segments to rewrite, sorted by loc */
    size_t n;
    const size_t *dead;    /* segments with no live slot */
    size_t ndead;
    uint8_t *buf;
    uint8_t **segbuf;
    size_t *seglen;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    uint64_t rewritten, removed, reclaimed;
};

static int compact_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct compact *c = arg;
    c->rewritten = c->removed = c->reclaimed = 0;
    uint8_t *staging = c->buf + CS__SEG_SLOTS * CS_CHUNK_SIZE;
    size_t nsegs = 0, nstaged = 0;
    int rc = 0;
    /* Which chunks move: entries still at their snapshot location whose bytes check out. */
    cs_id *moved = malloc((c->n ? c->n : 1) * sizeof *moved);
    size_t nmoved = 0;
    size_t *oldsegs = malloc((c->n + c->ndead + 1) * sizeof *oldsegs);
    size_t nold = 0;
    if (!moved || !oldsegs) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t j = 0; j < c->n;) {
        size_t seg = (size_t)CS__LOC_SEG(c->e[j].loc);
        MDB_val k = {sizeof seg, &seg}, v;
        unsigned nslots = 0;
        int r = mdb_get(txn, st->segs, &k, &v);
        bool ok = r == 0 && cs__seg_decode(c->dctx, v.mv_data, v.mv_size, c->buf, &nslots) == 0;
        size_t seglen = r == 0 ? v.mv_size : 0;
        bool all_moved = ok;
        for (; j < c->n && CS__LOC_SEG(c->e[j].loc) == seg; j++) {
            unsigned slot = CS__LOC_SLOT(c->e[j].loc);
            cs_id got;
            if (!still_at(txn, st, &c->e[j])) continue;
            if (!ok || slot >= nslots) {
                all_moved = false;
                continue;
            }
            cs_chunk_id(c->buf + (size_t)slot * CS_CHUNK_SIZE, &got);
            if (!cs_id_equal(&got, &c->e[j].id)) { /* damaged: leave it for verify to report */
                all_moved = false;
                continue;
            }
            memcpy(staging + nstaged * CS_CHUNK_SIZE, c->buf + (size_t)slot * CS_CHUNK_SIZE,
                   CS_CHUNK_SIZE);
            moved[nmoved++] = c->e[j].id;
            if (++nstaged == CS__SEG_SLOTS) {
                if ((rc = cs__seg_encode(c->cctx, staging, CS__SEG_SLOTS, c->segbuf[nsegs],
                                         &c->seglen[nsegs])))
                    goto out;
                nsegs++, nstaged = 0;
            }
        }
        if (all_moved) {
            oldsegs[nold++] = seg;
            c->reclaimed += seglen;
        }
    }
    if (nstaged && (rc = cs__seg_encode(c->cctx, staging, (unsigned)nstaged, c->segbuf[nsegs],
                                         &c->seglen[nsegs])))
        goto out;
    nsegs += nstaged != 0;
    uint64_t first = 0;
    if (nsegs && (rc = cs__seg_store(st, txn, (const uint8_t *const *)c->segbuf, c->seglen, nsegs,
                                     &first)))
        goto out;
    for (size_t m = 0; m < nmoved; m++) {
        MDB_val k = {CS_ID_BYTES, moved[m].b}, v;
        cs__idx_val iv;
        if ((rc = cs__body_err(mdb_get(txn, st->idx, &k, &v)))) goto out;
        memcpy(&iv, v.mv_data, sizeof iv);
        iv.loc = CS__LOC(first + m / CS__SEG_SLOTS, m % CS__SEG_SLOTS);
        v.mv_data = &iv, v.mv_size = sizeof iv;
        if ((rc = cs__body_err(mdb_put(txn, st->idx, &k, &v, 0)))) goto out;
    }
    c->rewritten = nold;
    for (size_t m = 0; m < nsegs; m++) c->reclaimed -= c->seglen[m];
    for (size_t m = 0; m < c->ndead; m++) oldsegs[nold++] = c->dead[m];
    for (size_t m = 0; m < nold; m++) {
        size_t seg = oldsegs[m];
        MDB_val k = {sizeof seg, &seg}, v;
        if (m >= c->rewritten && mdb_get(txn, st->segs, &k, &v) == 0) c->reclaimed += v.mv_size;
        int r = mdb_del(txn, st->segs, &k, NULL);
        if (r && r != MDB_NOTFOUND) {
            rc = cs__body_err(r);
            goto out;
        }
        if (r == 0) c->removed++;
    }
out:
    free(moved);
    free(oldsegs);
    return rc;
}

struct seginfo {
    size_t seg;
    unsigned nslots, live;
};

static int gc_segments(cs_store *st, cs_gc_report *rep)
{
    struct entry *e;
    size_t n;
    int rc = snapshot_index(st, &e, &n, NULL);
    if (rc) return rc;
    /* Every segment's slot count, from its header. */
    MDB_txn *txn;
    struct seginfo *si = NULL;
    size_t nsi = 0, cap = 0;
    if ((rc = cs__txn_begin(st, false, &txn))) goto out;
    MDB_cursor *cur;
    MDB_val k, v;
    int r = mdb_cursor_open(txn, st->segs, &cur);
    for (r = r ? r : mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (nsi == cap) {
            cap = cap ? cap * 2 : 256;
            struct seginfo *p = realloc(si, cap * sizeof *p);
            if (!p) {
                r = ENOMEM;
                break;
            }
            si = p;
        }
        unsigned ns = 0;
        size_t seg;
        memcpy(&seg, k.mv_data, sizeof seg);
        /* An unreadable header counts as full: GC leaves damaged segments to verify. */
        if (cs__seg_peek(v.mv_data, v.mv_size, &ns) != 0) ns = 0;
        si[nsi++] = (struct seginfo){seg, ns, 0};
    }
    mdb_cursor_close(cur);
    cs__txn_abort(st, txn);
    if (r != MDB_NOTFOUND) {
        rc = cs__lmdb_err(r);
        goto out;
    }
    /* Live counts: both lists are sorted by segment. */
    for (size_t j = 0, s = 0; j < n; j++) {
        size_t seg = (size_t)CS__LOC_SEG(e[j].loc);
        while (s < nsi && si[s].seg < seg) s++;
        if (s < nsi && si[s].seg == seg) si[s].live++;
    }

    struct compact c = {0};
    c.buf = malloc(2 * CS__SEG_SLOTS * CS_CHUNK_SIZE);
    c.segbuf = calloc(BATCH_SEGS, sizeof *c.segbuf);
    c.seglen = calloc(BATCH_SEGS, sizeof *c.seglen);
    c.cctx = cs__cctx_get(st);
    c.dctx = cs__dctx_get(st);
    rc = (!c.buf || !c.segbuf || !c.seglen || !c.cctx || !c.dctx) ? -ENOMEM : 0;
    for (unsigned b = 0; b < BATCH_SEGS && rc == 0; b++)
        if (!(c.segbuf[b] = malloc(CS__SEG_MAX))) rc = -ENOMEM;
    struct entry *live = malloc((n ? n : 1) * sizeof *live);
    size_t *dead = malloc((nsi ? nsi : 1) * sizeof *dead);
    if (!live || !dead) rc = -ENOMEM;
    /* Batches: at most BATCH_SEGS segments rewritten (so at most that many written) each. */
    size_t s = 0, j = 0;
    while (rc == 0 && s < nsi) {
        size_t nlive = 0, ndead = 0;
        unsigned picked = 0;
        for (; s < nsi && picked < BATCH_SEGS && ndead < 4096; s++) {
            bool is_dead = si[s].nslots && si[s].live == 0;
            bool sparse = si[s].nslots && si[s].live && si[s].live * 2 < si[s].nslots;
            while (j < n && CS__LOC_SEG(e[j].loc) < si[s].seg) j++;
            if (is_dead) dead[ndead++] = si[s].seg;
            if (!sparse) continue;
            for (; j < n && CS__LOC_SEG(e[j].loc) == si[s].seg; j++) live[nlive++] = e[j];
            picked++;
        }
        if (nlive == 0 && ndead == 0) continue;
        c.e = live, c.n = nlive, c.dead = dead, c.ndead = ndead;
        rc = cs__write(st, compact_body, &c);
        rep->segments_rewritten += c.rewritten;
        rep->segments_removed += c.removed;
        rep->bytes_reclaimed += c.reclaimed;
    }
    free(live);
    free(dead);
    if (c.segbuf)
        for (unsigned b = 0; b < BATCH_SEGS; b++) free(c.segbuf[b]);
    free(c.segbuf);
    free(c.seglen);
    free(c.buf);
    if (c.cctx) cs__cctx_put(st, c.cctx);
    if (c.dctx) cs__dctx_put(st, c.dctx);
out:
    free(si);
    free(e);
    return rc;
}

/* Counts GC runs in meta "gc_runs": a small change, committed after GC's last real commit. */
static int settle_body(cs_store *st, MDB_txn *txn, void *arg)
{
    (void)arg;
    uint64_t runs = 0;
    int rc = cs__meta_get(txn, st, "gc_runs", &runs);
    return rc ? rc : cs__meta_set(txn, st, "gc_runs", runs + 1);
}

int cs_gc(cs_store *st, bool nowait, cs_gc_report *report)
{
    memset(report, 0, sizeof *report);
    if (st->readonly) return -EROFS;
    char *path;
    if (asprintf(&path, "%s/gc.lock", st->dir) < 0) return -ENOMEM;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (fd < 0) return -errno;
    while (flock(fd, LOCK_EX | (nowait ? LOCK_NB : 0)) != 0) {
        if (errno == EINTR) continue;
        int err = errno == EWOULDBLOCK ? CS_EBUSY : -errno;
        close(fd);
        return err;
    }
    int rc = gc_manifests(st, report);
    struct sweep sw = {.started = false};
    while (rc == 0 && !sw.done) {
        rc = cs__write(st, sweep_body, &sw);
        report->chunks_removed += sw.removed;
    }
    if (rc == 0) rc = gc_segments(st, report);
    /* Best effort: should it fail, the room GC freed becomes usable after any later commit. */
    if (rc == 0) (void)cs__write(st, settle_body, NULL);
    close(fd);
    return rc;
}
