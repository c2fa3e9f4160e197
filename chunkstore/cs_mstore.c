/*
 * cs_mstore.c — manifests in the store: put, get, pins, names, listing.
 *
 * Design notes: a stored manifest holds one reference on its chunk id for every explicit
 * non-zero position it names, taken in the same transaction that stores it and dropped in the
 * one that removes it (cs_gc), so index reference counts always equal what the stored manifests
 * name. An id may be referenced before its chunk arrives (an index entry with loc 0): that is
 * how a pull records what it still needs.
 */
#include "cs_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64 /* parent chains longer than this are refused */

static int ref_one(MDB_txn *txn, cs_store *st, const cs_id *id, int delta)
{
    MDB_val k = {CS_ID_BYTES, (void *)id->b}, v;
    cs__idx_val val = {0, 0};
    int rc = mdb_get(txn, st->idx, &k, &v);
    if (rc == 0) {
        if (v.mv_size != sizeof val) return CS_ECORRUPT;
        memcpy(&val, v.mv_data, sizeof val);
    } else if (rc != MDB_NOTFOUND) {
        return cs__body_err(rc);
    }
    if (delta < 0 && val.refs == 0) return 0; /* never below zero */
    val.refs += (uint64_t)(int64_t)delta;
    v.mv_size = sizeof val, v.mv_data = &val;
    return cs__body_err(mdb_put(txn, st->idx, &k, &v, 0));
}

struct ref_ctx {
    MDB_txn *txn;
    cs_store *st;
    int delta;
};

static int ref_cb(const cs_id *id, void *arg)
{
    struct ref_ctx *c = arg;
    return ref_one(c->txn, c->st, id, c->delta);
}

int cs__manifest_refs(cs_store *st, MDB_txn *txn, const cs_manifest *m, int delta)
{
    struct ref_ctx c = {txn, st, delta};
    return cs__manifest_each_explicit(m, ref_cb, &c);
}

static int pins_get(MDB_txn *txn, cs_store *st, const cs_id *id, uint64_t *pins)
{
    MDB_val k = {CS_ID_BYTES, (void *)id->b}, v;
    int rc = mdb_get(txn, st->pins, &k, &v);
    *pins = 0;
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return cs__lmdb_err(rc);
    if (v.mv_size != sizeof *pins) return CS_ECORRUPT;
    memcpy(pins, v.mv_data, sizeof *pins);
    return 0;
}

static int pins_add(MDB_txn *txn, cs_store *st, const cs_id *id, int delta)
{
    uint64_t pins;
    int rc = pins_get(txn, st, id, &pins);
    if (rc) return rc;
    if (delta < 0 && pins == 0) return 0;
    pins += (uint64_t)(int64_t)delta;
    MDB_val k = {CS_ID_BYTES, (void *)id->b}, v = {sizeof pins, &pins};
    if (pins == 0) {
        rc = mdb_del(txn, st->pins, &k, NULL);
        return rc == MDB_NOTFOUND ? 0 : cs__body_err(rc);
    }
    return cs__body_err(mdb_put(txn, st->pins, &k, &v, 0));
}

struct mput {
    const uint8_t *buf;
    size_t len;
    const cs_manifest *m;
    cs_id id;
    bool pin;
};

static int mput_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct mput *j = arg;
    MDB_val k = {CS_ID_BYTES, j->id.b}, v;
    int rc = mdb_get(txn, st->manifests, &k, &v);
    if (rc != 0 && rc != MDB_NOTFOUND) return cs__body_err(rc);
    if (rc == MDB_NOTFOUND) {
        if (j->m->has_parent) {
            MDB_val pk = {CS_ID_BYTES, (void *)j->m->parent.b};
            rc = mdb_get(txn, st->manifests, &pk, &v);
            if (rc == MDB_NOTFOUND) return CS_EMISSING;
            if (rc) return cs__body_err(rc);
        }
        v.mv_size = j->len, v.mv_data = (void *)j->buf;
        if ((rc = mdb_put(txn, st->manifests, &k, &v, 0))) return cs__body_err(rc);
        if ((rc = cs__manifest_refs(st, txn, j->m, +1))) return rc;
    }
    uint64_t pins = 0;
    if (j->pin && (rc = pins_get(txn, st, &j->id, &pins))) return rc;
    return j->pin && pins == 0 ? pins_add(txn, st, &j->id, +1) : 0;
}

int cs_manifest_put(cs_store *st, const uint8_t *buf, size_t len, bool pin, cs_id *id)
{
    struct mput j = {buf, len, NULL, {{0}}, pin};
    cs_manifest *m;
    int rc = cs_manifest_decode(buf, len, &m);
    if (rc) return rc;
    j.m = m;
    cs_manifest_id(buf, len, &j.id);
    rc = cs__write(st, mput_body, &j);
    cs_manifest_free(m);
    if (rc == 0 && id) *id = j.id;
    return rc;
}

int cs_manifest_get_raw(cs_store *st, const cs_id *id, uint8_t **buf, size_t *len)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_val k = {CS_ID_BYTES, (void *)id->b}, v;
    rc = cs__lmdb_err(mdb_get(txn, st->manifests, &k, &v));
    if (rc == 0) {
        *buf = malloc(v.mv_size ? v.mv_size : 1);
        if (*buf) {
            memcpy(*buf, v.mv_data, v.mv_size);
            *len = v.mv_size;
        } else {
            rc = -ENOMEM;
        }
    }
    cs__txn_abort(st, txn);
    return rc;
}

static int get_depth(cs_store *st, const cs_id *id, int depth, cs_manifest **out)
{
    if (depth > MAX_DEPTH) return CS_EFORMAT;
    uint8_t *buf;
    size_t len;
    int rc = cs_manifest_get_raw(st, id, &buf, &len);
    if (rc) return rc;
    cs_id check;
    cs_manifest_id(buf, len, &check);
    cs_manifest *m = NULL;
    rc = cs_id_equal(&check, id) ? cs_manifest_decode(buf, len, &m) : CS_ECORRUPT;
    free(buf);
    if (rc) return rc == CS_EFORMAT ? CS_ECORRUPT : rc;
    if (m->has_parent) {
        cs_manifest *parent;
        rc = get_depth(st, &m->parent, depth + 1, &parent);
        if (rc == CS_ENOTFOUND) rc = CS_EMISSING;
        if (rc == 0) {
            rc = cs_manifest_resolve(m, parent);
            cs_manifest_free(parent);
        }
        if (rc) {
            cs_manifest_free(m);
            return rc;
        }
    }
    *out = m;
    return 0;
}

int cs_manifest_get(cs_store *st, const cs_id *id, cs_manifest **out)
{
    return get_depth(st, id, 0, out);
}

struct pin_job {
    const cs_id *id;
    int delta;
};

static int pin_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct pin_job *j = arg;
    MDB_val k = {CS_ID_BYTES, (void *)j->id->b}, v;
    int rc = mdb_get(txn, st->manifests, &k, &v);
    if (rc) return rc == MDB_NOTFOUND ? CS_ENOTFOUND : cs__body_err(rc);
    return pins_add(txn, st, j->id, j->delta);
}

int cs_manifest_pin(cs_store *st, const cs_id *id)
{
    struct pin_job j = {id, +1};
    return cs__write(st, pin_body, &j);
}

int cs_manifest_unpin(cs_store *st, const cs_id *id)
{
    struct pin_job j = {id, -1};
    return cs__write(st, pin_body, &j);
}

/* The parent field sits at a fixed offset: magic(4) version(1) flags(1) parent(32). */
bool cs__manifest_peek_parent(const uint8_t *buf, size_t len, cs_id *parent)
{
    if (len < 6 + CS_ID_BYTES || !(buf[5] & 1u)) return false;
    memcpy(parent->b, buf + 6, CS_ID_BYTES);
    return true;
}

int cs_manifest_list(cs_store *st, int (*fn)(const cs_manifest_info *info, void *arg), void *arg)
{
    /* Copy the list out first: fn may take its time, and no read transaction is held for it. */
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_cursor *cur;
    if ((rc = cs__lmdb_err(mdb_cursor_open(txn, st->manifests, &cur)))) {
        cs__txn_abort(st, txn);
        return rc;
    }
    cs_manifest_info *infos = NULL;
    size_t n = 0, cap = 0;
    MDB_val k, v;
    int r;
    for (r = mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != CS_ID_BYTES) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            cs_manifest_info *p = realloc(infos, cap * sizeof *p);
            if (!p) {
                r = ENOMEM;
                break;
            }
            infos = p;
        }
        cs_manifest_info *in = &infos[n++];
        memset(in, 0, sizeof *in);
        memcpy(in->id.b, k.mv_data, CS_ID_BYTES);
        in->has_parent = cs__manifest_peek_parent(v.mv_data, v.mv_size, &in->parent);
        in->encoded_len = v.mv_size;
        if (pins_get(txn, st, &in->id, &in->pins)) in->pins = 0;
    }
    mdb_cursor_close(cur);
    cs__txn_abort(st, txn);
    rc = r == MDB_NOTFOUND ? 0 : cs__lmdb_err(r);
    for (size_t i = 0; i < n && rc == 0; i++) rc = fn(&infos[i], arg);
    free(infos);
    return rc;
}

/* ---- notes ---------------------------------------------------------------------------------- */

struct note_job {
    const cs_id *id;
    const void *buf;
    size_t len;
};

static int note_set_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct note_job *j = arg;
    MDB_val k = {CS_ID_BYTES, (void *)j->id->b}, v;
    int rc = mdb_get(txn, st->manifests, &k, &v);
    if (rc) return rc == MDB_NOTFOUND ? CS_ENOTFOUND : cs__body_err(rc);
    v.mv_size = j->len, v.mv_data = (void *)j->buf;
    return cs__body_err(mdb_put(txn, st->notes, &k, &v, 0));
}

int cs_manifest_note_set(cs_store *st, const cs_id *id, const void *buf, size_t len)
{
    if (len > (1u << 20)) return CS_EFORMAT;
    struct note_job j = {id, buf, len};
    return cs__write(st, note_set_body, &j);
}

int cs_manifest_note_get(cs_store *st, const cs_id *id, uint8_t **buf, size_t *len)
{
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_val k = {CS_ID_BYTES, (void *)id->b}, v;
    rc = cs__lmdb_err(mdb_get(txn, st->notes, &k, &v));
    if (rc == 0) {
        *buf = malloc(v.mv_size ? v.mv_size : 1);
        if (*buf) memcpy(*buf, v.mv_data, *len = v.mv_size);
        else rc = -ENOMEM;
    }
    cs__txn_abort(st, txn);
    return rc;
}

/* ---- names ----------------------------------------------------------------------------------- */

struct name_job {
    const char *name;
    const cs_id *id;
};

static bool name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n >= 1 && n <= 255;
}

static int name_set_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct name_job *j = arg;
    MDB_val k = {strlen(j->name), (void *)j->name}, v = {CS_ID_BYTES, (void *)j->id->b};
    return cs__body_err(mdb_put(txn, st->names, &k, &v, 0));
}

static int name_del_body(cs_store *st, MDB_txn *txn, void *arg)
{
    struct name_job *j = arg;
    MDB_val k = {strlen(j->name), (void *)j->name};
    return cs__body_err(mdb_del(txn, st->names, &k, NULL));
}

int cs_name_set(cs_store *st, const char *name, const cs_id *id)
{
    if (!name_ok(name)) return CS_EFORMAT;
    struct name_job j = {name, id};
    return cs__write(st, name_set_body, &j);
}

int cs_name_del(cs_store *st, const char *name)
{
    if (!name_ok(name)) return CS_EFORMAT;
    struct name_job j = {name, NULL};
    return cs__write(st, name_del_body, &j);
}

int cs_name_list(cs_store *st, int (*fn)(const char *name, const cs_id *id, void *arg), void *arg)
{
    /* Names are few; copy them out so fn runs with no transaction open. */
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_cursor *cur;
    if ((rc = cs__lmdb_err(mdb_cursor_open(txn, st->names, &cur)))) {
        cs__txn_abort(st, txn);
        return rc;
    }
    struct named {
        char name[256];
        cs_id id;
    } *v = NULL;
    size_t n = 0, cap = 0;
    MDB_val k, val;
    int r;
    for (r = mdb_cursor_get(cur, &k, &val, MDB_FIRST); r == 0;
         r = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        if (k.mv_size == 0 || k.mv_size > 255 || val.mv_size != CS_ID_BYTES) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            struct named *p = realloc(v, cap * sizeof *p);
            if (!p) {
                r = ENOMEM;
                break;
            }
            v = p;
        }
        memcpy(v[n].name, k.mv_data, k.mv_size);
        v[n].name[k.mv_size] = '\0';
        memcpy(v[n].id.b, val.mv_data, CS_ID_BYTES);
        n++;
    }
    mdb_cursor_close(cur);
    cs__txn_abort(st, txn);
    rc = r == MDB_NOTFOUND ? 0 : cs__lmdb_err(r);
    for (size_t i = 0; i < n && rc == 0; i++) rc = fn(v[i].name, &v[i].id, arg);
    free(v);
    return rc;
}

int cs_name_get(cs_store *st, const char *name, cs_id *id)
{
    if (!name_ok(name)) return CS_EFORMAT;
    MDB_txn *txn;
    int rc = cs__txn_begin(st, false, &txn);
    if (rc) return rc;
    MDB_val k = {strlen(name), (void *)name}, v;
    rc = cs__lmdb_err(mdb_get(txn, st->names, &k, &v));
    if (rc == 0 && v.mv_size != CS_ID_BYTES) rc = CS_ECORRUPT;
    if (rc == 0) memcpy(id->b, v.mv_data, CS_ID_BYTES);
    cs__txn_abort(st, txn);
    return rc;
}
