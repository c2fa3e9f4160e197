/*
 * node_keys.c — the node's key pair and the fleet key: their files, text format and derivation
 * (docs/keys.md).
 *
 * Design notes:
 * - A key file holds one line, "<kind>:<64 hex digits>". The kind prefix is there so a key
 *   pasted into the wrong place (a client key where a fleet key belongs, a public key where a
 *   secret one does) is refused with a sentence naming both kinds, instead of silently making
 *   a node that can talk to no one.
 * - Key files are written whole or not at all: a temporary file in the same directory (created
 *   0600 by mkstemp), fsync, then rename (replace) or link (never replace: EEXIST if the name is
 *   taken, so two `cloudlet init` at once cannot both make a node key), then fsync of the
 *   directory. A crash leaves the old key or the new one, at worst a stray temporary file.
 * - Reading a secret key refuses a file that group or others may access, as ssh does: such a
 *   key may already be known to another user, and running with it would hide that.
 * - Secrets (keys, their hex text, read buffers) are wiped with sodium_memzero after last use.
 *   Hex goes through libsodium's constant-time sodium_bin2hex/sodium_hex2bin.
 */
#define _GNU_SOURCE
#include "net.h"
#include "node_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEX_LEN  (2 * NODE_KEY_BYTES)
#define MAX_FILE 4096 /* a key file is one short line; anything longer is not one */

_Static_assert(NODE_KEY_BYTES == NET_KEY_BYTES, "node/ and net/ speak of the same keys");
_Static_assert(NODE_KEY_BYTES == crypto_scalarmult_BYTES, "node keys are X25519 keys");

static const struct {
    const char *prefix, *what;
    bool secret;
} kinds[] = {
    [NODE_KEY_NODE_SECRET] = {"cloudlet-node-secret-key", "node secret key", true},
    [NODE_KEY_NODE_PUBLIC] = {"cloudlet-node-key", "node public key", false},
    [NODE_KEY_FLEET] = {"cloudlet-fleet-key", "fleet key", true},
    [NODE_KEY_CLIENT] = {"cloudlet-client-key", "client key", true},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

/* The derivation is net/'s (net_fleet_derive: crypto_kdf, context "cloudlet"), so the key
 * handed to apps is the one the node's channels accept from them. */
void node_client_key(const uint8_t fleet[NODE_KEY_BYTES], uint8_t client[NODE_KEY_BYTES])
{
    net_fleet_derive(fleet, NET_SUBKEY_CLIENT, client);
}

/* ---- the text format ------------------------------------------------------------------------ */

const char *node_key_encode(node_key_kind kind, const uint8_t key[NODE_KEY_BYTES],
                            char out[NODE_KEY_TEXT])
{
    size_t n = strlen(kinds[kind].prefix);
    memcpy(out, kinds[kind].prefix, n);
    out[n] = ':';
    sodium_bin2hex(out + n + 1, HEX_LEN + 1, key, NODE_KEY_BYTES);
    return out;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int node_key_decode(const char *text, size_t len, node_key_kind kind, uint8_t key[NODE_KEY_BYTES],
                    char err[NODE_ERRMSG])
{
    const char *want = kinds[kind].prefix;
    const char *p = text, *end = text + len;
    while (p < end && is_space(*p)) p++;
    const char *tok = p;
    while (p < end && !is_space(*p)) p++;
    const char *tok_end = p;
    while (p < end && is_space(*p)) p++;
    if (tok == tok_end) {
        node__errf(err, "empty: expected a line `%s:<64 hex digits>`", want);
        return CS_EFORMAT;
    }
    if (p != end) {
        node__errf(err, "more than one word: expected a single line `%s:<64 hex digits>`", want);
        return CS_EFORMAT;
    }
    const char *colon = memchr(tok, ':', (size_t)(tok_end - tok));
    if (!colon) {
        node__errf(err, "not a cloudlet key line: expected `%s:<64 hex digits>`", want);
        return CS_EFORMAT;
    }
    size_t plen = (size_t)(colon - tok);
    if (plen != strlen(want) || memcmp(tok, want, plen) != 0) {
        for (size_t k = 0; k < NKINDS; k++)
            if (plen == strlen(kinds[k].prefix) && !memcmp(tok, kinds[k].prefix, plen)) {
                node__errf(err, "this is a %s (%s:…), not a %s (%s:…)", kinds[k].what,
                           kinds[k].prefix, kinds[kind].what, want);
                return CS_EFORMAT;
            }
        node__errf(err, "unknown key kind '%.*s': expected `%s:<64 hex digits>`",
                   (int)(plen < 40 ? plen : 40), tok, want);
        return CS_EFORMAT;
    }
    const char *hex = colon + 1;
    size_t hlen = (size_t)(tok_end - hex);
    if (hlen != HEX_LEN) {
        node__errf(err, "the %s has %zu hex digits, expected %d", kinds[kind].what, hlen, HEX_LEN);
        return CS_EFORMAT;
    }
    size_t got = 0;
    const char *stop = NULL;
    if (sodium_init() < 0 ||
        sodium_hex2bin(key, NODE_KEY_BYTES, hex, hlen, NULL, &got, &stop) != 0 ||
        got != NODE_KEY_BYTES || stop != hex + hlen) {
        sodium_memzero(key, NODE_KEY_BYTES);
        size_t at = 0; /* the first bad digit, for the message (errors only) */
        while (at < hlen && hex[at] && strchr("0123456789abcdefABCDEF", hex[at])) at++;
        node__errf(err, "the %s's digit %zu is not a hex digit", kinds[kind].what, at + 1);
        return CS_EFORMAT;
    }
    return 0;
}

/* ---- files ----------------------------------------------------------------------------------- */

int node_key_read(const char *path, node_key_kind kind, bool check_mode,
                  uint8_t key[NODE_KEY_BYTES], char err[NODE_ERRMSG])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        node__errf(err, "%s: %s", path, strerror(e));
        return e == ENOENT ? CS_ENOTFOUND : -e;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        node__errf(err, "%s: %s", path, strerror(e));
        return -e;
    }
    if (S_ISDIR(sb.st_mode) || (check_mode && !S_ISREG(sb.st_mode))) {
        close(fd);
        node__errf(err, "%s is not a regular file", path);
        return CS_EFORMAT;
    }
    if (check_mode && kinds[kind].secret && (sb.st_mode & 077)) {
        close(fd);
        node__errf(err,
                   "%s can be read by group or others (mode %04o); a secret key must be private: "
                   "run `chmod 600 %s`",
                   path, (unsigned)(sb.st_mode & 07777), path);
        return -EACCES;
    }
    char buf[MAX_FILE];
    size_t len = 0;
    int rc = 0;
    while (len < sizeof buf) {
        ssize_t r = read(fd, buf + len, sizeof buf - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = -errno;
            node__errf(err, "%s: %s", path, strerror(errno));
            break;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (rc == 0 && len == sizeof buf) {
        node__errf(err, "%s: longer than %d bytes: not a key file", path, MAX_FILE - 1);
        rc = CS_EFORMAT;
    }
    if (rc == 0) {
        char why[NODE_ERRMSG] = "";
        rc = node_key_decode(buf, len, kind, key, why);
        if (rc) node__errf(err, "%s: %s", path, why);
    }
    sodium_memzero(buf, sizeof buf);
    return rc;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return -ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0) return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -errno;
        s += w, n -= (size_t)w;
    }
    return 0;
}

int node_key_write(const char *path, node_key_kind kind, const uint8_t key[NODE_KEY_BYTES],
                   bool replace, char err[NODE_ERRMSG])
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0) return -ENOMEM;
    int fd = mkstemp(tmp); /* 0600 */
    if (fd < 0) {
        int e = errno;
        node__errf(err, "cannot create a file beside %s: %s", path, strerror(e));
        free(tmp);
        return -e;
    }
    char line[NODE_KEY_TEXT + 1];
    node_key_encode(kind, key, line);
    strcat(line, "\n");
    int rc = write_all(fd, line, strlen(line));
    sodium_memzero(line, sizeof line);
    if (rc == 0 && !kinds[kind].secret && fchmod(fd, 0644) != 0) rc = -errno;
    if (rc == 0 && fsync(fd) != 0) rc = -errno;
    if (close(fd) != 0 && rc == 0) rc = -errno;
    if (rc) {
        node__errf(err, "cannot write %s: %s", tmp, strerror(-rc));
    } else if (replace) {
        if (rename(tmp, path) != 0) {
            rc = -errno;
            node__errf(err, "cannot rename %s to %s: %s", tmp, path, strerror(-rc));
        }
    } else if (link(tmp, path) != 0) {
        rc = -errno;
        if (rc == -EEXIST)
            node__errf(err, "%s exists already; it is not replaced", path);
        else
            node__errf(err, "cannot create %s: %s", path, strerror(-rc));
    }
    unlink(tmp); /* after rename it no longer exists; after link it is the second name */
    free(tmp);
    if (rc == 0 && (rc = fsync_dir_of(path)) != 0)
        node__errf(err, "cannot sync the directory of %s: %s", path, strerror(-rc));
    return rc;
}

/* ---- the node home's keys -------------------------------------------------------------------- */

static char *home_file(const char *home, const char *name, char err[NODE_ERRMSG])
{
    char *p = node_home_path(home, name);
    if (!p) node__errf(err, "out of memory");
    return p;
}

int node_keypair_init(const char *home, uint8_t pk[NODE_KEY_BYTES], bool *created,
                      char err[NODE_ERRMSG])
{
    char *skpath = home_file(home, NODE_KEY_FILE, err);
    char *pkpath = home_file(home, NODE_PUB_FILE, err);
    uint8_t sk[NODE_KEY_BYTES];
    int rc = skpath && pkpath ? 0 : -ENOMEM;
    if (rc == 0 && sodium_init() < 0) {
        node__errf(err, "libsodium cannot start (no source of randomness?)");
        rc = -EIO;
    }
    *created = false;
    if (rc == 0) {
        rc = node_key_read(skpath, NODE_KEY_NODE_SECRET, true, sk, err);
        if (rc == CS_ENOTFOUND) {
            randombytes_buf(sk, sizeof sk);
            rc = node_key_write(skpath, NODE_KEY_NODE_SECRET, sk, false, err);
            if (rc == -EEXIST) /* made by a concurrent init a moment ago: use that one */
                rc = node_key_read(skpath, NODE_KEY_NODE_SECRET, true, sk, err);
            else if (rc == 0)
                *created = true;
        }
    }
    if (rc == 0 && crypto_scalarmult_base(pk, sk) != 0) {
        node__errf(err, "%s: not a usable X25519 secret key", skpath);
        rc = CS_EFORMAT;
    }
    sodium_memzero(sk, sizeof sk);
    /* node.pub is a copy for people and scripts; node.key is what counts. Repair the copy. */
    uint8_t old[NODE_KEY_BYTES];
    if (rc == 0 && (node_key_read(pkpath, NODE_KEY_NODE_PUBLIC, false, old, NULL) != 0 ||
                    sodium_memcmp(old, pk, NODE_KEY_BYTES) != 0))
        rc = node_key_write(pkpath, NODE_KEY_NODE_PUBLIC, pk, true, err);
    free(skpath);
    free(pkpath);
    return rc;
}

int node_fleet_key_load(const char *home, uint8_t fleet[NODE_KEY_BYTES], char err[NODE_ERRMSG])
{
    char *path = home_file(home, NODE_FLEET_FILE, err);
    if (!path) return -ENOMEM;
    int rc = node_key_read(path, NODE_KEY_FLEET, true, fleet, err);
    if (rc == CS_ENOTFOUND)
        node__errf(err,
                   "node home %s has no fleet key: make a fleet with `cloudlet init --new-fleet`, "
                   "or join one with `cloudlet init --fleet-key FILE`",
                   home);
    free(path);
    return rc;
}

int node_fleet_key_set(const char *home, const uint8_t fleet[NODE_KEY_BYTES], bool *already,
                       char err[NODE_ERRMSG])
{
    char *path = home_file(home, NODE_FLEET_FILE, err);
    if (!path) return -ENOMEM;
    uint8_t cur[NODE_KEY_BYTES];
    *already = false;
    int rc = node_key_write(path, NODE_KEY_FLEET, fleet, false, err);
    if (rc == -EEXIST) {
        rc = node_key_read(path, NODE_KEY_FLEET, true, cur, err);
        if (rc == 0 && sodium_memcmp(cur, fleet, NODE_KEY_BYTES) == 0) {
            *already = true;
        } else if (rc == 0) {
            node__errf(err,
                       "node home %s is in another fleet already (%s); a node leaves it only "
                       "by removing that file by hand",
                       home, path);
            rc = -EEXIST;
        }
    }
    sodium_memzero(cur, sizeof cur);
    free(path);
    return rc;
}

int node_fleet_key_new(const char *home, char err[NODE_ERRMSG])
{
    uint8_t fleet[NODE_KEY_BYTES];
    if (sodium_init() < 0) {
        node__errf(err, "libsodium cannot start (no source of randomness?)");
        return -EIO;
    }
    randombytes_buf(fleet, sizeof fleet);
    bool already;
    int rc = node_fleet_key_set(home, fleet, &already, err);
    sodium_memzero(fleet, sizeof fleet);
    return rc;
}

int node_keys_load(const char *home, node_keys *k, char err[NODE_ERRMSG])
{
    memset(k, 0, sizeof *k);
    char *skpath = home_file(home, NODE_KEY_FILE, err);
    if (!skpath) return -ENOMEM;
    int rc = node_key_read(skpath, NODE_KEY_NODE_SECRET, true, k->node_sk, err);
    if (rc == CS_ENOTFOUND)
        node__errf(err, "node home %s has no node key (%s): make it with `cloudlet init --home %s`",
                   home, skpath, home);
    free(skpath);
    if (rc == 0 && crypto_scalarmult_base(k->node_pk, k->node_sk) != 0) {
        node__errf(err, "%s/%s: not a usable X25519 secret key", home, NODE_KEY_FILE);
        rc = CS_EFORMAT;
    }
    if (rc == 0) {
        rc = node_fleet_key_load(home, k->fleet, err);
        k->has_fleet = rc == 0;
        if (rc == CS_ENOTFOUND) rc = 0; /* a node alone: no peers, no apps */
    }
    if (rc) node_keys_wipe(k);
    return rc;
}

void node_secret_wipe(void *secret, size_t len)
{
    sodium_memzero(secret, len);
}

void node_keys_wipe(node_keys *k)
{
    if (k) sodium_memzero(k, sizeof *k);
}
