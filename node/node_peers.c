/*
 * node_peers.c — LAN discovery and the daemon's peer table (docs/discovery.md).
 *
 * Design notes:
 * - One UDP socket, bound to the beacon port on every address and joined to the multicast group
 *   when discovery is on. It sends beacons to the group and, by unicast, to every static peer
 *   (at the beacon port of the peer's host), and hears beacons from both. With discovery off it
 *   exists only when static peers are configured, and never joins the group.
 * - Who counts as a peer is decided by two checks, in this order: the beacon opens with the
 *   fleet's beacon key (net_beacon_open), and the replay/staleness filter believes it
 *   (net_beacon_filter). Nothing else in a datagram, least of all its source address, is
 *   trusted. The table takes the source address only as where the peer was heard.
 * - Timing: a burst of BURST beacons BURST_GAP_MS apart at start, then one per
 *   beacon_interval with ±10 % jitter so that nodes started together do not stay in step. A node
 *   that hears a peer it did not know (or one that restarted) answers it by unicast within a
 *   few hundred milliseconds, at most once a second, so a node that starts late learns the
 *   others in well under a second instead of waiting for their next periodic beacon.
 * - Everything runs on the loop except the store's counts for the beacon's summary, which are
 *   read on the worker pool before each periodic beacon. The table is bounded by max_peers;
 *   a newcomer is refused while it is full, and silent peers expire after peer_timeout.
 * - Handles live in the discovery state, freed only after the loop has ended (every close
 *   callback has run by then).
 * - Apps, which hold only the client key, find nodes with probes (docs/discovery.md, "Apps:
 *   finding a node") sent to the same socket. A probe that opens with the probe key and whose
 *   time is within NET_BEACON_MAX_SKEW_MS of this node's clock gets one answer, by unicast to
 *   its source, unless that source has used up its answers (a small token bucket per source
 *   address, in a fixed table). An answer is never larger than the probe, so a forged source
 *   address gets no more bytes than the forger sent.
 */
#define _GNU_SOURCE
#include "node_daemon.h"
#include "node_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BURST          3
#define BURST_GAP_MS   300
#define PROMPT_MAX     16   /* peers answered in one prompt */
#define PROMPT_GAP_MS  1000 /* at most one prompt per second */
#define EXPIRE_TICK_MS 250  /* ms between expiry checks (bounds how late a peer expires) */
#define PROBE_SLOTS    256  /* sources whose probe answers are counted */
#define PROBE_BURST    6    /* answers a source may get at once (an app probes 3 times) */
#define PROBE_GAP_MS   500  /* then one more per this many ms */

/* Answers left for one source address (the table slot is chosen by a keyed hash of it). */
typedef struct probe_bucket {
    uint8_t addr[16];
    uint8_t addr_len;
    uint8_t tokens;
    uint64_t last_ms;
} probe_bucket;

typedef struct static_peer {
    const node_addr *cfg;
    struct sockaddr_storage sa; /* the host at the beacon port, once resolved */
    bool resolved, resolving, warned;
    uv_getaddrinfo_t req;
    struct node__discovery *disc;
} static_peer;

struct node__discovery {
    node_daemon *d;
    uint8_t key[NET_KEY_BYTES]; /* the fleet's beacon key */
    net_beacon_filter *filter;
    node__peer_table table;
    uint64_t (*wall_ms)(void); /* the clock beacons carry and are judged by */

    uv_udp_t udp;
    uv_timer_t beacon_timer, expire_timer, prompt_timer;
    bool udp_open, timers_open, joined, stopping;
    int family;
    struct sockaddr_storage group;
    uint8_t rx[2048];

    uint64_t instance, seq;
    unsigned burst_left;
    uint64_t chunks, manifests; /* the summary the beacons carry */
    uv_work_t stats_work;
    bool stats_busy;
    int stats_rc;
    cs_stats stats;

    struct sockaddr_storage prompt_to[PROMPT_MAX];
    unsigned nprompt;
    uint64_t last_prompt_ms;

    static_peer statics[NODE_MAX_STATIC_PEERS];
    unsigned nstatic;

    node__discovery_counters count;

    uint8_t probe_key[NET_KEY_BYTES]; /* from the fleet's client key: net_probe_key */
    uint8_t probe_hash_key[crypto_shorthash_KEYBYTES];
    probe_bucket probe_rate[PROBE_SLOTS];
    uint64_t probes_answered, probes_dropped; /* for the `peers` answer's counters */
};

static uint64_t system_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the peer table (pure: time is the caller's) -------------------------------------------- */

int node__peer_table_init(node__peer_table *t, unsigned max)
{
    memset(t, 0, sizeof *t);
    t->max = max ? max : 1;
    t->p = calloc(t->max, sizeof *t->p);
    return t->p ? 0 : -ENOMEM;
}

void node__peer_table_free(node__peer_table *t)
{
    if (!t) return;
    free(t->p);
    memset(t, 0, sizeof *t);
}

node__peer *node__peer_find(node__peer_table *t, const uint8_t pk[NET_KEY_BYTES])
{
    for (unsigned i = 0; i < t->n; i++)
        if (memcmp(t->p[i].pk, pk, NET_KEY_BYTES) == 0) return &t->p[i];
    return NULL;
}

int node__peer_heard(node__peer_table *t, const net_beacon *b, const char *ip, int static_idx,
                     uint64_t now_ms)
{
    node__peer *p = node__peer_find(t, b->node_pk);
    int added = 0;
    if (!p) {
        if (t->n == t->max) return -ENOSPC;
        p = &t->p[t->n++];
        memset(p, 0, sizeof *p);
        memcpy(p->pk, b->node_pk, NET_KEY_BYTES);
        p->first_ms = now_ms;
        added = 1;
    }
    snprintf(p->ip, sizeof p->ip, "%s", ip);
    p->port = b->tcp_port;
    p->instance = b->instance;
    p->seq = b->seq;
    p->chunks = b->chunks;
    p->manifests = b->manifests;
    p->last_ms = now_ms;
    if (static_idx >= 0 || added) p->static_idx = static_idx;
    return added;
}

unsigned node__peer_expire(node__peer_table *t, uint64_t now_ms, uint64_t timeout_ms,
                           void (*gone)(const node__peer *p, void *arg), void *arg)
{
    unsigned n = 0;
    for (unsigned i = 0; i < t->n;) {
        if (now_ms - t->p[i].last_ms > timeout_ms) {
            if (gone) gone(&t->p[i], arg);
            t->p[i] = t->p[--t->n];
            n++;
        } else {
            i++;
        }
    }
    return n;
}

/* ---- sending -------------------------------------------------------------------------------- */

static void send_to(node__discovery *s, const uint8_t *wire, const struct sockaddr *to)
{
    uv_buf_t b = uv_buf_init((char *)wire, NET_BEACON_BYTES);
    int rc = uv_udp_try_send(&s->udp, &b, 1, to);
    if (rc < 0) {
        s->count.send_failed++;
        node_log(NODE_LOG_DEBUG, "beacon not sent: %s", uv_strerror(rc));
    } else {
        s->count.sent++;
    }
}

static void seal_next(node__discovery *s, uint8_t wire[NET_BEACON_BYTES])
{
    net_beacon b = {0};
    memcpy(b.node_pk, s->d->keys.node_pk, NET_KEY_BYTES);
    b.instance = s->instance;
    b.seq = ++s->seq;
    b.time_ms = s->wall_ms();
    b.tcp_port = s->d->cfg.listen.port;
    b.chunks = s->chunks;
    b.manifests = s->manifests;
    uint8_t nonce[NET_BEACON_NONCE_BYTES];
    randombytes_buf(nonce, sizeof nonce);
    net_beacon_seal(s->key, &b, nonce, wire);
}

static void try_join(node__discovery *s)
{
    if (s->joined || !s->d->cfg.discovery) return;
    int rc = uv_udp_set_membership(&s->udp, s->d->cfg.multicast.host, NULL, UV_JOIN_GROUP);
    if (rc == 0) {
        s->joined = true;
        node_log(NODE_LOG_INFO, "discovery: joined %s, beacon port %u", s->d->cfg.multicast.host,
                 s->d->cfg.multicast.port);
    } else if (s->count.join_failed++ == 0) {
        node_log(NODE_LOG_WARN,
                 "discovery: cannot join multicast group %s: %s (a default route or a route "
                 "for 224.0.0.0/4 is needed; retrying with every beacon)",
                 s->d->cfg.multicast.host, uv_strerror(rc));
    }
}

static void resolve_statics(node__discovery *s);

static void send_round(node__discovery *s)
{
    uint8_t wire[NET_BEACON_BYTES];
    seal_next(s, wire);
    try_join(s);
    if (s->d->cfg.discovery) send_to(s, wire, (const struct sockaddr *)&s->group);
    for (unsigned i = 0; i < s->nstatic; i++)
        if (s->statics[i].resolved) send_to(s, wire, (const struct sockaddr *)&s->statics[i].sa);
    resolve_statics(s); /* those not resolved yet try again */
}

static void on_beacon_timer(uv_timer_t *h);

static void arm_beacon_timer(node__discovery *s)
{
    uint64_t ms;
    if (s->burst_left > 0) {
        ms = BURST_GAP_MS;
    } else {
        uint64_t base = (uint64_t)s->d->cfg.beacon_interval_s * 1000u;
        ms = base - base / 10 + randombytes_uniform((uint32_t)(base / 5 + 1));
    }
    uv_timer_start(&s->beacon_timer, on_beacon_timer, ms, 0);
}

/* The summary: the store's counts, read on the worker pool. */
static void stats_work(uv_work_t *w)
{
    node__discovery *s = w->data;
    s->stats_rc = cs_stats_get(s->d->st, &s->stats);
}

static void stats_done(uv_work_t *w, int status)
{
    node__discovery *s = w->data;
    s->stats_busy = false;
    if (s->stopping) return;
    if (status == 0 && s->stats_rc == 0) {
        s->chunks = s->stats.chunks;
        s->manifests = s->stats.manifests;
    }
    send_round(s);
    arm_beacon_timer(s);
}

static void on_beacon_timer(uv_timer_t *h)
{
    node__discovery *s = h->data;
    if (s->burst_left > 0) s->burst_left--;
    if (s->stats_busy) return; /* the pending refresh sends and re-arms */
    s->stats_work.data = s;
    if (s->d->st && uv_queue_work(&s->d->loop, &s->stats_work, stats_work, stats_done) == 0) {
        s->stats_busy = true;
        return;
    }
    send_round(s);
    arm_beacon_timer(s);
}

/* Answers peers newly heard with a beacon of their own, by unicast. */
static void on_prompt_timer(uv_timer_t *h)
{
    node__discovery *s = h->data;
    if (s->nprompt == 0) return;
    uint8_t wire[NET_BEACON_BYTES];
    seal_next(s, wire);
    for (unsigned i = 0; i < s->nprompt; i++)
        send_to(s, wire, (const struct sockaddr *)&s->prompt_to[i]);
    s->count.prompts++;
    s->nprompt = 0;
    s->last_prompt_ms = uv_now(&s->d->loop);
}

static void prompt(node__discovery *s, const struct sockaddr *from)
{
    size_t len =
        from->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    for (unsigned i = 0; i < s->nprompt; i++)
        if (memcmp(&s->prompt_to[i], from, len) == 0) return;
    if (s->nprompt == PROMPT_MAX) return; /* the periodic beacons will do */
    memset(&s->prompt_to[s->nprompt], 0, sizeof s->prompt_to[0]);
    memcpy(&s->prompt_to[s->nprompt++], from, len);
    if (uv_is_active((uv_handle_t *)&s->prompt_timer)) return;
    uint64_t now = uv_now(&s->d->loop), at = now + 50 + randombytes_uniform(200);
    if (s->last_prompt_ms && at < s->last_prompt_ms + PROMPT_GAP_MS)
        at = s->last_prompt_ms + PROMPT_GAP_MS;
    uv_timer_start(&s->prompt_timer, on_prompt_timer, at - now, 0);
}

/* ---- receiving ------------------------------------------------------------------------------ */

static bool same_host(const struct sockaddr *a, const struct sockaddr_storage *b)
{
    if (a->sa_family != b->ss_family) return false;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    node__discovery *s = h->data;
    *b = uv_buf_init((char *)s->rx, sizeof s->rx); /* consumed before the next read */
}

/* Takes one answer from the source's bucket: true if it may be answered now. */
static bool probe_rate_take(node__discovery *s, const struct sockaddr *from, uint64_t now_ms)
{
    const uint8_t *a;
    size_t alen;
    if (from->sa_family == AF_INET6) {
        a = (const uint8_t *)&((const struct sockaddr_in6 *)from)->sin6_addr;
        alen = 16;
    } else {
        a = (const uint8_t *)&((const struct sockaddr_in *)from)->sin_addr;
        alen = 4;
    }
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, a, alen, s->probe_hash_key);
    probe_bucket *b = &s->probe_rate[h[0] % PROBE_SLOTS];
    if (b->addr_len != alen || memcmp(b->addr, a, alen) != 0) {
        /* A source not seen recently takes the slot with a full bucket. */
        memcpy(b->addr, a, alen);
        b->addr_len = (uint8_t)alen;
        b->tokens = PROBE_BURST;
        b->last_ms = now_ms;
    }
    uint64_t refill = (now_ms - b->last_ms) / PROBE_GAP_MS;
    if (refill) {
        b->tokens = (uint8_t)(b->tokens + refill > PROBE_BURST ? PROBE_BURST : b->tokens + refill);
        b->last_ms += refill * PROBE_GAP_MS;
    }
    if (b->tokens == 0) return false;
    b->tokens--;
    return true;
}

static void answer_probe(node__discovery *s, const uint8_t *buf, size_t len,
                         const struct sockaddr *from)
{
    char ip[64] = "";
    if (from->sa_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)from, ip, sizeof ip);
    else
        uv_ip4_name((const struct sockaddr_in *)from, ip, sizeof ip);
    uint8_t token[NET_PROBE_TOKEN_BYTES];
    uint64_t t;
    int rc = net_probe_open(s->probe_key, buf, len, token, &t);
    if (rc) {
        s->probes_dropped++;
        node_log(NODE_LOG_DEBUG, "discovery: probe from %s dropped: %s", ip, net_strerror(rc));
        return;
    }
    uint64_t now = s->wall_ms();
    if ((t > now ? t - now : now - t) > NET_BEACON_MAX_SKEW_MS) {
        s->probes_dropped++;
        node_log(NODE_LOG_DEBUG, "discovery: probe from %s dropped: %+.0f s off this node's clock",
                 ip, ((double)t - (double)now) / 1000.0);
        return;
    }
    if (!probe_rate_take(s, from, uv_now(&s->d->loop))) {
        s->probes_dropped++;
        node_log(NODE_LOG_DEBUG, "discovery: probe from %s not answered: rate limit", ip);
        return;
    }
    net_probe_answer a = {0};
    memcpy(a.node_pk, s->d->keys.node_pk, NET_KEY_BYTES);
    a.tcp_port = s->d->cfg.listen.port;
    a.chunks = s->chunks;
    a.manifests = s->manifests;
    uint8_t nonce[24], wire[NET_PROBE_MAX_BYTES];
    size_t wlen;
    randombytes_buf(nonce, sizeof nonce);
    net_probe_answer_seal(s->probe_key, token, &a, nonce, wire, &wlen);
    uv_buf_t b = uv_buf_init((char *)wire, (unsigned)wlen);
    rc = uv_udp_try_send(&s->udp, &b, 1, from);
    if (rc < 0) {
        node_log(NODE_LOG_DEBUG, "discovery: answer to the probe from %s not sent: %s", ip,
                 uv_strerror(rc));
        return;
    }
    s->probes_answered++;
    node_log(NODE_LOG_DEBUG, "discovery: answered a probe from %s", ip);
}

static void on_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags)
{
    node__discovery *s = h->data;
    if (n <= 0 || !from || s->stopping) return;
    s->count.received++;
    if (n >= 4 && memcmp(buf->base, "CLPR", 4) == 0 && !(flags & UV_UDP_PARTIAL)) {
        answer_probe(s, (const uint8_t *)buf->base, (size_t)n, from);
        return;
    }
    net_beacon b;
    int rc = (flags & UV_UDP_PARTIAL)
                 ? NET_EFORMAT
                 : net_beacon_open(s->key, (const uint8_t *)buf->base, (size_t)n, &b);
    if (rc) {
        s->count.foreign++;
        return;
    }
    net_beacon_verdict v = net_beacon_filter_check(s->filter, &b, s->wall_ms());
    char ip[64] = "", k[13];
    if (from->sa_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)from, ip, sizeof ip);
    else
        uv_ip4_name((const struct sockaddr_in *)from, ip, sizeof ip);
    switch (v) {
    case NET_BEACON_OWN: s->count.own++; return;
    case NET_BEACON_REPLAY:
        s->count.replayed++;
        node_log(NODE_LOG_DEBUG, "discovery: beacon %llu of %s from %s dropped: %s",
                 (unsigned long long)b.seq, node__short_hex(b.node_pk, k), ip,
                 net_beacon_verdict_name(v));
        return;
    case NET_BEACON_STALE:
        if (s->count.stale++ == 0)
            node_log(NODE_LOG_WARN,
                     "discovery: beacon of %s from %s is %+.0f s off this node's clock; "
                     "beacons more than %u s off are dropped (are the clocks set?)",
                     node__short_hex(b.node_pk, k), ip,
                     ((double)b.time_ms - (double)s->wall_ms()) / 1000.0,
                     NET_BEACON_MAX_SKEW_MS / 1000u);
        return;
    default: break;
    }
    /* The static peer this beacon is from: same host, and the same node key when the
     * configuration names one, else the same TCP port (several nodes may share a host). */
    int static_idx = -1;
    for (unsigned i = 0; i < s->nstatic && static_idx < 0; i++) {
        const node_addr *a = s->statics[i].cfg;
        if (s->statics[i].resolved && same_host(from, &s->statics[i].sa) &&
            (a->has_key ? !memcmp(a->key, b.node_pk, NET_KEY_BYTES) : a->port == b.tcp_port))
            static_idx = (int)i;
    }
    rc = node__peer_heard(&s->table, &b, ip, static_idx, uv_now(&s->d->loop));
    if (rc == -ENOSPC) {
        if (s->count.table_full++ == 0)
            node_log(NODE_LOG_WARN,
                     "discovery: peer table full (max_peers = %u); %s at %s not kept", s->table.max,
                     node__short_hex(b.node_pk, k), ip);
        return;
    }
    s->count.accepted++;
    if (rc == 1 || v == NET_BEACON_RESTART) {
        node_log(NODE_LOG_INFO, "peer %s at %s:%u %s (%s)", node__short_hex(b.node_pk, k), ip, b.tcp_port,
                 rc == 1 ? "found" : "restarted", static_idx >= 0 ? "static" : "lan");
        if (s->burst_left == 0) prompt(s, from);
    }
}

static void on_expired(const node__peer *p, void *arg)
{
    node__discovery *s = arg;
    char k[13];
    s->count.expired++;
    node_log(NODE_LOG_INFO, "peer %s at %s:%u expired (silent for %u s)", node__short_hex(p->pk, k),
             p->ip, p->port, s->d->cfg.peer_timeout_s);
}

static void on_expire_timer(uv_timer_t *h)
{
    node__discovery *s = h->data;
    node__peer_expire(&s->table, uv_now(&s->d->loop), (uint64_t)s->d->cfg.peer_timeout_s * 1000u,
                      on_expired, s);
}

/* ---- static peers ---------------------------------------------------------------------------- */

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    static_peer *sp = req->data;
    sp->resolving = false;
    if (status == 0 && res && !sp->disc->stopping) {
        memset(&sp->sa, 0, sizeof sp->sa);
        memcpy(&sp->sa, res->ai_addr, res->ai_addrlen);
        uint16_t port = htons(sp->disc->d->cfg.multicast.port);
        if (sp->sa.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&sp->sa)->sin6_port = port;
        else
            ((struct sockaddr_in *)&sp->sa)->sin_port = port;
        sp->resolved = true;
    } else if (status != UV_EAI_CANCELED && status != UV_ECANCELED && !sp->warned) {
        sp->warned = true; /* it is tried again with every beacon, quietly */
        node_log(NODE_LOG_WARN, "static peer %s: %s (beacons go to %s addresses only)",
                 sp->cfg->host, uv_strerror(status), sp->disc->family == AF_INET ? "IPv4" : "IPv6");
    }
    uv_freeaddrinfo(res);
}

/* Numeric addresses at once; host names on the worker pool (getaddrinfo blocks). Only the
 * family of the beacon socket is usable. */
static void resolve_statics(node__discovery *s)
{
    for (unsigned i = 0; i < s->nstatic; i++) {
        static_peer *sp = &s->statics[i];
        if (sp->resolved || sp->resolving) continue;
        int port = s->d->cfg.multicast.port;
        if (s->family == AF_INET &&
            uv_ip4_addr(sp->cfg->host, port, (struct sockaddr_in *)&sp->sa) == 0) {
            sp->resolved = true;
            continue;
        }
        if (s->family == AF_INET6 &&
            uv_ip6_addr(sp->cfg->host, port, (struct sockaddr_in6 *)&sp->sa) == 0) {
            sp->resolved = true;
            continue;
        }
        struct addrinfo hints = {.ai_family = s->family, .ai_socktype = SOCK_DGRAM};
        sp->req.data = sp;
        if (uv_getaddrinfo(&s->d->loop, &sp->req, on_resolved, sp->cfg->host, NULL, &hints) == 0)
            sp->resolving = true;
    }
}

/* ---- the daemon's side ---------------------------------------------------------------------- */

int node__discovery_start(node_daemon *d, char err[NODE_ERRMSG])
{
    const node_config *cfg = &d->cfg;
    if (!d->keys.has_fleet || (!cfg->discovery && cfg->npeers == 0)) return 0;
    node__discovery *s = calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    d->disc = s;
    s->d = d;
    s->wall_ms = system_wall_ms;
    net_fleet_derive(d->keys.fleet, NET_SUBKEY_BEACON, s->key);
    uint8_t client[NET_KEY_BYTES];
    net_fleet_derive(d->keys.fleet, NET_SUBKEY_CLIENT, client);
    net_probe_key(client, s->probe_key);
    sodium_memzero(client, sizeof client);
    crypto_shorthash_keygen(s->probe_hash_key);
    randombytes_buf(&s->instance, sizeof s->instance);
    s->burst_left = BURST;
    s->filter = net_beacon_filter_new(d->keys.node_pk, (size_t)cfg->max_peers * 2 + 16,
                                      NET_BEACON_MAX_SKEW_MS);
    if (!s->filter || node__peer_table_init(&s->table, cfg->max_peers)) return -ENOMEM;

    /* The group's family is the socket's; the group address doubles as the send target. */
    int rc = uv_ip4_addr(cfg->multicast.host, cfg->multicast.port, (struct sockaddr_in *)&s->group);
    s->family = AF_INET;
    if (rc) {
        rc =
            uv_ip6_addr(cfg->multicast.host, cfg->multicast.port, (struct sockaddr_in6 *)&s->group);
        s->family = AF_INET6;
    }
    if (rc) {
        node__errf(err, "multicast %s is not a numeric IPv4 or IPv6 address", cfg->multicast.host);
        return CS_EFORMAT;
    }
    struct sockaddr_storage any;
    memset(&any, 0, sizeof any);
    if (s->family == AF_INET)
        uv_ip4_addr("0.0.0.0", cfg->multicast.port, (struct sockaddr_in *)&any);
    else
        uv_ip6_addr("::", cfg->multicast.port, (struct sockaddr_in6 *)&any);

    uv_udp_init(&d->loop, &s->udp);
    s->udp.data = s;
    s->udp_open = true;
    /* Several daemons on one host share the beacon port (each hears the group). */
    rc = uv_udp_bind(&s->udp, (const struct sockaddr *)&any, UV_UDP_REUSEADDR);
    if (rc) {
        node__errf(err, "discovery: cannot bind UDP port %u: %s", cfg->multicast.port,
                   uv_strerror(rc));
        return rc;
    }
    uv_udp_set_multicast_ttl(&s->udp, 1); /* beacons stay on the LAN */
    uv_udp_set_multicast_loop(&s->udp, 1);
    if ((rc = uv_udp_recv_start(&s->udp, on_alloc, on_recv))) {
        node__errf(err, "discovery: %s", uv_strerror(rc));
        return rc;
    }
    uv_timer_init(&d->loop, &s->beacon_timer);
    uv_timer_init(&d->loop, &s->expire_timer);
    uv_timer_init(&d->loop, &s->prompt_timer);
    s->beacon_timer.data = s->expire_timer.data = s->prompt_timer.data = s;
    s->timers_open = true;

    for (unsigned i = 0; i < cfg->npeers; i++) {
        s->statics[i].cfg = &cfg->peers[i];
        s->statics[i].disc = s;
    }
    s->nstatic = cfg->npeers;
    resolve_statics(s);
    try_join(s);
    uv_timer_start(&s->beacon_timer, on_beacon_timer, 0, 0);
    uv_timer_start(&s->expire_timer, on_expire_timer, EXPIRE_TICK_MS, EXPIRE_TICK_MS);
    node_log(NODE_LOG_INFO, "discovery: beacons every %u s to %s and %u static peer%s",
             cfg->beacon_interval_s,
             cfg->discovery ? cfg->multicast.host : "no group (discovery off)", cfg->npeers,
             cfg->npeers == 1 ? "" : "s");
    return 0;
}

void node__discovery_stop(node_daemon *d)
{
    node__discovery *s = d->disc;
    if (!s || s->stopping) return;
    s->stopping = true;
    if (s->udp_open) uv_close((uv_handle_t *)&s->udp, NULL);
    if (s->timers_open) {
        uv_close((uv_handle_t *)&s->beacon_timer, NULL);
        uv_close((uv_handle_t *)&s->expire_timer, NULL);
        uv_close((uv_handle_t *)&s->prompt_timer, NULL);
    }
    for (unsigned i = 0; i < s->nstatic; i++)
        if (s->statics[i].resolving) uv_cancel((uv_req_t *)&s->statics[i].req);
}

void node__discovery_free(node_daemon *d)
{
    node__discovery *s = d->disc;
    if (!s) return;
    net_beacon_filter_free(s->filter);
    node__peer_table_free(&s->table);
    sodium_memzero(s->key, sizeof s->key);
    sodium_memzero(s->probe_key, sizeof s->probe_key);
    free(s);
    d->disc = NULL;
}

const node__peer_table *node__discovery_table(node_daemon *d)
{
    return d->disc ? &d->disc->table : NULL;
}

/* ---- the `peers` answer --------------------------------------------------------------------- */

static void json_peer(FILE *f, const node__discovery *s, const node__peer *p, uint64_t now)
{
    char key[NODE_KEY_TEXT];
    fprintf(f, "{\"key\": \"%s\", \"address\": ",
            node_key_encode(NODE_KEY_NODE_PUBLIC, p->pk, key));
    node__json_str(f, p->ip);
    fprintf(f,
            ", \"port\": %u, \"source\": \"%s\", \"heard\": true, \"age_ms\": %llu, "
            "\"known_ms\": %llu, \"instance\": \"%016llx\", \"seq\": %llu, \"chunks\": %llu, "
            "\"manifests\": %llu",
            p->port, p->static_idx >= 0 ? "static" : "lan", (unsigned long long)(now - p->last_ms),
            (unsigned long long)(now - p->first_ms), (unsigned long long)p->instance,
            (unsigned long long)p->seq, (unsigned long long)p->chunks,
            (unsigned long long)p->manifests);
    if (p->static_idx >= 0) {
        fputs(", \"static_peer\": ", f);
        node__json_str(f, s->statics[p->static_idx].cfg->host);
    }
    fputc('}', f);
}

char *node__peers_json(node_daemon *d)
{
    node__discovery *s = d->disc;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    char pk[2 * NET_KEY_BYTES + 1];
    sodium_bin2hex(pk, sizeof pk, d->keys.node_pk, NET_KEY_BYTES);
    fprintf(f, "{\"node_key\": \"%s\", \"fleet\": %s, \"discovery\": %s, \"multicast\": ", pk,
            d->keys.has_fleet ? "true" : "false", s && d->cfg.discovery ? "true" : "false");
    char group[300];
    snprintf(group, sizeof group, "%s:%u", d->cfg.multicast.host, d->cfg.multicast.port);
    node__json_str(f, group);
    fprintf(f, ", \"joined\": %s, \"peers\": [", s && s->joined ? "true" : "false");
    uint64_t now = uv_now(&d->loop);
    bool first = true;
    for (unsigned i = 0; s && i < s->table.n; i++) {
        fputs(first ? "" : ", ", f);
        first = false;
        json_peer(f, s, &s->table.p[i], now);
    }
    /* Static peers not heard (yet, or any more) are listed with what the configuration says. */
    for (unsigned i = 0; i < d->cfg.npeers; i++) {
        bool heard = false;
        for (unsigned j = 0; s && j < s->table.n; j++)
            if (s->table.p[j].static_idx == (int)i) heard = true;
        if (heard) continue;
        fputs(first ? "" : ", ", f);
        first = false;
        fputs("{\"key\": null, \"address\": ", f);
        node__json_str(f, d->cfg.peers[i].host);
        fprintf(f, ", \"port\": %u, \"source\": \"static\", \"heard\": false, \"static_peer\": ",
                d->cfg.peers[i].port);
        node__json_str(f, d->cfg.peers[i].host);
        fputc('}', f);
    }
    node__discovery_counters c = {0};
    if (s) c = s->count;
    fprintf(f,
            "], \"counters\": {\"received\": %llu, \"accepted\": %llu, \"foreign\": %llu, "
            "\"replayed\": %llu, \"stale\": %llu, \"own\": %llu, \"table_full\": %llu, "
            "\"expired\": %llu, \"sent\": %llu, \"send_failed\": %llu, \"prompts\": %llu, "
            "\"probes_answered\": %llu, \"probes_dropped\": %llu}}\n",
            (unsigned long long)c.received, (unsigned long long)c.accepted,
            (unsigned long long)c.foreign, (unsigned long long)c.replayed,
            (unsigned long long)c.stale, (unsigned long long)c.own,
            (unsigned long long)c.table_full, (unsigned long long)c.expired,
            (unsigned long long)c.sent, (unsigned long long)c.send_failed,
            (unsigned long long)c.prompts, (unsigned long long)(s ? s->probes_answered : 0),
            (unsigned long long)(s ? s->probes_dropped : 0));
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
