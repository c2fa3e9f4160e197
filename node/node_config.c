/*
 * node_config.c — the daemon's configuration file: `key = value` lines, `#` comments.
 *
 * Design notes: the parser is a pure function of the bytes (the fuzz target drives it) and
 * never leaves cfg half-changed on error: it parses into a copy and assigns on success. A key
 * it does not know is an error, not a silent no-op: a typo in a cap or an address must not
 * pass unnoticed.
 */
#define _GNU_SOURCE
#include "node_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 1024

void node_config_defaults(node_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->listen.host, sizeof cfg->listen.host, "0.0.0.0");
    cfg->listen.port = 7420;
    snprintf(cfg->multicast.host, sizeof cfg->multicast.host, "239.255.67.76");
    cfg->multicast.port = 7421;
    cfg->discovery = true;
    cfg->max_peers = 64;
    cfg->max_inflight_per_peer = 4096;
    cfg->beacon_interval_s = 30;
    cfg->peer_timeout_s = 95;
    cfg->log_level = NODE_LOG_INFO;
    snprintf(cfg->libvirt_uri, sizeof cfg->libvirt_uri, "qemu:///system");
    snprintf(cfg->launch_dir, sizeof cfg->launch_dir, "/var/tmp/cloudlet-launch");
    cfg->max_launches = 8;
    cfg->early_start = true;
}

/* "host:port", "[v6]:port"; port 0 only where any_port (the listen address: the system picks
 * one and the daemon reports it). */
static bool parse_addr_port(const char *v, node_addr *a, bool any_port)
{
    const char *colon;
    size_t hlen;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close || close[1] != ':') return false;
        hlen = (size_t)(close - v - 1);
        v++;
        colon = close + 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon) return false;
        hlen = (size_t)(colon - v);
    }
    if (hlen == 0 || hlen >= sizeof a->host) return false;
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || *end || colon[1] == '\0' || (port == 0 && !any_port) || port > 65535) return false;
    memcpy(a->host, v, hlen);
    a->host[hlen] = '\0';
    for (size_t i = 0; i < hlen; i++)
        if (isspace((unsigned char)a->host[i])) return false;
    a->port = (uint16_t)port;
    return true;
}

static bool parse_addr(const char *v, node_addr *a)
{
    return parse_addr_port(v, a, false);
}

/* A static peer: "host:port", optionally followed by the peer's node key
 * ("cloudlet-node-key:<64 hex digits>"), which lets the node connect to it without a beacon. */
static bool parse_peer(const char *v, node_addr *a)
{
    char addr[MAX_LINE + 1];
    size_t n = strcspn(v, " \t");
    memcpy(addr, v, n);
    addr[n] = '\0';
    node_addr out = {0};
    if (!parse_addr(addr, &out)) return false;
    const char *k = v + n;
    while (*k == ' ' || *k == '\t') k++;
    if (*k) {
        if (node_key_decode(k, strlen(k), NODE_KEY_NODE_PUBLIC, out.key, NULL) != 0) return false;
        out.has_key = true;
    }
    *a = out;
    return true;
}

static bool parse_uint(const char *v, uint64_t max, uint64_t *out)
{
    if (!isdigit((unsigned char)v[0])) return false;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno) return false;
    /* Sizes and rates may carry a binary suffix: 10M = 10 MiB. */
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10, end++;
    else if (*end == 'M' || *end == 'm') shift = 20, end++;
    else if (*end == 'G' || *end == 'g') shift = 30, end++;
    if (*end) return false;
    if (shift && n > (max >> shift)) return false;
    n <<= shift;
    if (n > max) return false;
    *out = n;
    return true;
}

static bool parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "1")) *out = true;
    else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "0")) *out = false;
    else return false;
    return true;
}

static int set_key(node_config *c, const char *k, const char *v, unsigned line, char err[NODE_ERRMSG])
{
    uint64_t n;
    bool ok = true;
    if (!strcmp(k, "listen")) ok = parse_addr_port(v, &c->listen, true);
    else if (!strcmp(k, "multicast")) ok = parse_addr(v, &c->multicast);
    else if (!strcmp(k, "discovery")) ok = parse_bool(v, &c->discovery);
    else if (!strcmp(k, "early_start")) ok = parse_bool(v, &c->early_start);
    else if (!strcmp(k, "peer")) {
        if (c->npeers == NODE_MAX_STATIC_PEERS) {
            node__errf(err, "line %u: more than %d static peers", line, NODE_MAX_STATIC_PEERS);
            return CS_EFORMAT;
        }
        ok = parse_peer(v, &c->peers[c->npeers]);
        if (ok) c->npeers++;
    } else if (!strcmp(k, "max_peers")) {
        if ((ok = parse_uint(v, 4096, &n) && n >= 1)) c->max_peers = (unsigned)n;
    } else if (!strcmp(k, "max_inflight_per_peer")) {
        if ((ok = parse_uint(v, 1u << 20, &n) && n >= 1)) c->max_inflight_per_peer = (unsigned)n;
    } else if (!strcmp(k, "rate_total")) {
        if ((ok = parse_uint(v, UINT64_MAX >> 1, &n))) c->rate_total = n;
    } else if (!strcmp(k, "rate_per_peer")) {
        if ((ok = parse_uint(v, UINT64_MAX >> 1, &n))) c->rate_per_peer = n;
    } else if (!strcmp(k, "beacon_interval")) {
        if ((ok = parse_uint(v, 3600, &n) && n >= 1)) c->beacon_interval_s = (unsigned)n;
    } else if (!strcmp(k, "peer_timeout")) {
        if ((ok = parse_uint(v, 86400, &n) && n >= 1)) c->peer_timeout_s = (unsigned)n;
    } else if (!strcmp(k, "log_level")) {
        static const char *names[] = {"error", "warn", "info", "debug"};
        ok = false;
        for (unsigned i = 0; i < 4; i++)
            if (!strcmp(v, names[i])) c->log_level = (node_log_level)i, ok = true;
    } else if (!strcmp(k, "control_socket")) {
        ok = v[0] == '/' && strlen(v) < sizeof c->control_socket;
        if (ok) snprintf(c->control_socket, sizeof c->control_socket, "%s", v);
    } else if (!strcmp(k, "libvirt_uri")) {
        ok = v[0] && strlen(v) < sizeof c->libvirt_uri && strstr(v, "://");
        if (ok) snprintf(c->libvirt_uri, sizeof c->libvirt_uri, "%s", v);
    } else if (!strcmp(k, "max_launches")) {
        if ((ok = parse_uint(v, 1024, &n) && n >= 1)) c->max_launches = (unsigned)n;
    } else if (!strcmp(k, "launch_dir")) {
        ok = v[0] == '/' && strlen(v) < sizeof c->launch_dir - 80; /* room for a domain name */
        if (ok) snprintf(c->launch_dir, sizeof c->launch_dir, "%s", v);
    } else {
        node__errf(err, "line %u: unknown key '%s'", line, k);
        return CS_EFORMAT;
    }
    if (!ok) {
        node__errf(err, "line %u: bad value for %s: '%s'", line, k, v);
        return CS_EFORMAT;
    }
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}

int node_config_parse(const char *text, size_t len, node_config *cfg, char err[NODE_ERRMSG])
{
    node_config c = *cfg;
    c.npeers = 0; /* the file's peers replace the defaults' (none) */
    char buf[MAX_LINE + 1];
    unsigned line = 0;
    for (size_t off = 0; off < len;) {
        line++;
        const char *nl = memchr(text + off, '\n', len - off);
        size_t n = nl ? (size_t)(nl - (text + off)) : len - off;
        if (n > MAX_LINE) {
            node__errf(err, "line %u: longer than %d bytes", line, MAX_LINE);
            return CS_EFORMAT;
        }
        memcpy(buf, text + off, n);
        buf[n] = '\0';
        off += n + (nl != NULL);
        if (memchr(buf, '\0', n)) {
            node__errf(err, "line %u: contains a NUL byte", line);
            return CS_EFORMAT;
        }
        char *hash = strchr(buf, '#');
        if (hash) *hash = '\0';
        char *s = trim(buf);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            node__errf(err, "line %u: expected 'key = value'", line);
            return CS_EFORMAT;
        }
        *eq = '\0';
        char *k = trim(s), *v = trim(eq + 1);
        if (!*k || !*v) {
            node__errf(err, "line %u: expected 'key = value'", line);
            return CS_EFORMAT;
        }
        int rc = set_key(&c, k, v, line, err);
        if (rc) return rc;
    }
    *cfg = c;
    return 0;
}

int node_config_load(const char *path, node_config *cfg, char err[NODE_ERRMSG])
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        node__errf(err, "%s: %s", path, strerror(e));
        return e == ENOENT ? CS_ENOTFOUND : -e;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (1u << 20)) {
                node__errf(err, "%s: larger than 1 MiB", path);
                rc = CS_EFORMAT;
                break;
            }
            char *p = realloc(text, cap);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            text = p;
        }
        size_t r = fread(text + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    if (rc == 0 && ferror(f)) rc = -EIO;
    fclose(f);
    if (rc == 0) {
        rc = node_config_parse(text, len, cfg, err);
        if (rc && err) {
            char tmp[NODE_ERRMSG];
            snprintf(tmp, sizeof tmp, "%s: %s", path, err);
            memcpy(err, tmp, NODE_ERRMSG);
        }
    }
    free(text);
    return rc;
}
