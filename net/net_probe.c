/*
 * net_probe.c — how an app finds the nodes of its fleet (docs/discovery.md, "Apps: finding a
 * node"): the PROBE and ANSWER datagrams, and a blocking net_probe_find over plain POSIX UDP.
 *
 * Design notes:
 * - An app holds only the client key, so it cannot read beacons; it asks instead. Both datagrams
 *   are a clear header (magic, version, a random 24-byte nonce) and an XChaCha20-Poly1305 box
 *   keyed by the probe key (derived from the client key) with the header as associated data.
 *   Integers in the box are big-endian.
 * - No amplification: a probe is padded with zero bytes (checked by the receiver) to the size of
 *   an answer, so a node never sends more bytes to a forged source address than it received
 *   from it. The padding is inside the box, so it costs an outsider a valid key to use it.
 * - An answer carries the probe's random token inside its box: an answer recorded from an
 *   earlier probe, or sent by anyone without the key, is not believed.
 * - A probe carries the app's clock; nodes drop probes too far from theirs, which bounds how long
 *   a recorded probe can make nodes answer.
 */
#include "net.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define VERSION      1
#define HEADER_BYTES (4 + 1 + 24) /* magic, version, nonce */
#define ANSWER_BODY  (NET_PROBE_TOKEN_BYTES + NET_KEY_BYTES + 2 + 8 + 8)
#define PROBE_USED   (NET_PROBE_TOKEN_BYTES + 8)
#define PROBE_BODY   ANSWER_BODY /* token, time, then zero padding up to an answer's size */
#define DATAGRAM(b)  (HEADER_BYTES + (b) + crypto_aead_xchacha20poly1305_ietf_ABYTES)
#define PROBE_BYTES  DATAGRAM(PROBE_BODY)
#define ANSWER_BYTES DATAGRAM(ANSWER_BODY)
#define SENDS        3 /* probes sent within wait_ms, against loss */

static const uint8_t probe_magic[4] = {'C', 'L', 'P', 'R'};
static const uint8_t answer_magic[4] = {'C', 'L', 'P', 'A'};

_Static_assert(PROBE_BYTES >= ANSWER_BYTES, "an answer is never larger than its probe");
_Static_assert(PROBE_BODY >= PROBE_USED, "the probe's fields fit its body");
_Static_assert(PROBE_BYTES <= NET_PROBE_MAX_BYTES && ANSWER_BYTES <= NET_PROBE_MAX_BYTES,
               "NET_PROBE_MAX_BYTES bounds both datagrams");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == 24, "XChaCha20 nonce");

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

void net_probe_key(const uint8_t client_key[NET_KEY_BYTES], uint8_t out[NET_KEY_BYTES])
{
    crypto_kdf_derive_from_key(out, NET_KEY_BYTES, 1, "clprobe_", client_key);
}

static void seal(const uint8_t key[NET_KEY_BYTES], const uint8_t magic[4], const uint8_t *body,
                 size_t body_len, const uint8_t nonce[24], uint8_t *out, size_t *len)
{
    memcpy(out, magic, 4);
    out[4] = VERSION;
    memcpy(out + 5, nonce, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + HEADER_BYTES, NULL, body, body_len, out,
                                               HEADER_BYTES, NULL, nonce, key);
    *len = DATAGRAM(body_len);
}

/* 0 with the body in out (body_len bytes), NET_EFORMAT or NET_EAUTH. */
static int open_box(const uint8_t key[NET_KEY_BYTES], const uint8_t magic[4], const uint8_t *buf,
                    size_t len, uint8_t *out, size_t body_len)
{
    if (len != DATAGRAM(body_len) || memcmp(buf, magic, 4) != 0 || buf[4] != VERSION)
        return NET_EFORMAT;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, NULL, NULL, buf + HEADER_BYTES,
                                                   len - HEADER_BYTES, buf, HEADER_BYTES, buf + 5,
                                                   key) != 0)
        return NET_EAUTH;
    return 0;
}

void net_probe_seal(const uint8_t key[NET_KEY_BYTES], const uint8_t token[NET_PROBE_TOKEN_BYTES],
                    uint64_t time_ms, const uint8_t nonce[24], uint8_t *out, size_t *len)
{
    uint8_t body[PROBE_BODY] = {0};
    memcpy(body, token, NET_PROBE_TOKEN_BYTES);
    put64(body + NET_PROBE_TOKEN_BYTES, time_ms);
    seal(key, probe_magic, body, sizeof body, nonce, out, len);
}

int net_probe_open(const uint8_t key[NET_KEY_BYTES], const uint8_t *buf, size_t len,
                   uint8_t token[NET_PROBE_TOKEN_BYTES], uint64_t *time_ms)
{
    uint8_t body[PROBE_BODY];
    memset(token, 0, NET_PROBE_TOKEN_BYTES);
    *time_ms = 0;
    int rc = open_box(key, probe_magic, buf, len, body, sizeof body);
    if (rc) return rc;
    for (size_t i = PROBE_USED; i < sizeof body; i++)
        if (body[i]) return NET_EFORMAT; /* one encoding: the padding is zero */
    memcpy(token, body, NET_PROBE_TOKEN_BYTES);
    *time_ms = get64(body + NET_PROBE_TOKEN_BYTES);
    return 0;
}

void net_probe_answer_seal(const uint8_t key[NET_KEY_BYTES],
                           const uint8_t token[NET_PROBE_TOKEN_BYTES], const net_probe_answer *a,
                           const uint8_t nonce[24], uint8_t *out, size_t *len)
{
    uint8_t body[ANSWER_BODY];
    uint8_t *p = body;
    memcpy(p, token, NET_PROBE_TOKEN_BYTES);
    p += NET_PROBE_TOKEN_BYTES;
    memcpy(p, a->node_pk, NET_KEY_BYTES);
    p += NET_KEY_BYTES;
    p[0] = (uint8_t)(a->tcp_port >> 8);
    p[1] = (uint8_t)a->tcp_port;
    put64(p + 2, a->chunks);
    put64(p + 10, a->manifests);
    seal(key, answer_magic, body, sizeof body, nonce, out, len);
}

int net_probe_answer_open(const uint8_t key[NET_KEY_BYTES], const uint8_t *buf, size_t len,
                          const uint8_t token[NET_PROBE_TOKEN_BYTES], net_probe_answer *out)
{
    uint8_t body[ANSWER_BODY];
    memset(out, 0, sizeof *out);
    int rc = open_box(key, answer_magic, buf, len, body, sizeof body);
    if (rc) return rc;
    if (sodium_memcmp(body, token, NET_PROBE_TOKEN_BYTES) != 0) return NET_EAUTH;
    const uint8_t *p = body + NET_PROBE_TOKEN_BYTES;
    memcpy(out->node_pk, p, NET_KEY_BYTES);
    p += NET_KEY_BYTES;
    out->tcp_port = (uint16_t)(p[0] << 8 | p[1]);
    out->chunks = get64(p + 2);
    out->manifests = get64(p + 10);
    return 0;
}

/* ---- net_probe_find ------------------------------------------------------------------------- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int send_probe(int fd, const uint8_t key[NET_KEY_BYTES],
                      const uint8_t token[NET_PROBE_TOKEN_BYTES], const struct sockaddr_in *to)
{
    uint8_t nonce[24], wire[NET_PROBE_MAX_BYTES];
    size_t len;
    randombytes_buf(nonce, sizeof nonce);
    net_probe_seal(key, token, wall_ms(), nonce, wire, &len);
    ssize_t n = sendto(fd, wire, len, 0, (const struct sockaddr *)to, sizeof *to);
    return n == (ssize_t)len ? 0 : -errno;
}

/* Adds an answer unless its node is already in out; returns the new count. */
static size_t add_found(net_found_node *out, size_t n, const net_probe_answer *a,
                        const struct sockaddr_in *from)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(out[i].a.node_pk, a->node_pk, NET_KEY_BYTES) == 0) return n;
    memset(&out[n], 0, sizeof out[n]);
    inet_ntop(AF_INET, &from->sin_addr, out[n].host, sizeof out[n].host);
    out[n].a = *a;
    return n + 1;
}

int net_probe_find(const uint8_t client_key[NET_KEY_BYTES], const char *host, uint16_t port,
                   unsigned wait_ms, net_found_node *out, size_t max)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) return -EHOSTUNREACH;
    struct sockaddr_in to;
    memcpy(&to, res->ai_addr, sizeof to);
    freeaddrinfo(res);
    to.sin_port = htons(port);
    bool multicast = (ntohl(to.sin_addr.s_addr) & 0xf0000000u) == 0xe0000000u; /* 224/4 */

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (multicast) {
        /* Nodes on this host hear the probe too; it never leaves the LAN. */
        unsigned char loop = 1, ttl = 1;
        if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0 ||
            setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0) {
            int err = -errno;
            close(fd);
            return err;
        }
    }

    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES];
    net_probe_key(client_key, key);
    randombytes_buf(token, sizeof token);
    uint64_t start = mono_ms(), end = start + wait_ms;
    unsigned sent = 0;
    size_t found = 0;
    int rc = 0, send_err = 0;
    unsigned delivered = 0;
    for (;;) {
        uint64_t now = mono_ms();
        if (found == max || (!multicast && found > 0)) break;
        /* The probes go out at 0, 1/3 and 2/3 of wait_ms. */
        while (sent < SENDS && now >= start + (uint64_t)wait_ms * sent / SENDS) {
            int e = send_probe(fd, key, token, &to);
            if (e)
                send_err = e;
            else
                delivered++;
            sent++;
        }
        if (now >= end) break;
        uint64_t next = end;
        if (sent < SENDS && start + (uint64_t)wait_ms * sent / SENDS < next)
            next = start + (uint64_t)wait_ms * sent / SENDS;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, next - now > INT_MAX ? INT_MAX : (int)(next - now));
        if (pr < 0) {
            if (errno == EINTR) continue;
            rc = -errno;
            break;
        }
        if (pr == 0) continue;
        uint8_t buf[NET_PROBE_MAX_BYTES + 1];
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
        if (n < 0) continue; /* e.g. ICMP port unreachable from a unicast host: keep waiting */
        net_probe_answer a;
        if (net_probe_answer_open(key, buf, (size_t)n, token, &a) == 0)
            found = add_found(out, found, &a, &from);
    }
    sodium_memzero(key, sizeof key);
    close(fd);
    if (rc) return rc;
    /* Not one probe left this host: say why rather than "none found". */
    if (found == 0 && delivered == 0) return send_err;
    return (int)found;
}
