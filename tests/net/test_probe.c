/* Probes: how an app finds a node with only the client key (docs/discovery.md, "Apps"). */
#include "net.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

static void keys(uint8_t key[NET_KEY_BYTES], uint8_t seed)
{
    uint8_t client[NET_KEY_BYTES];
    memset(client, seed, sizeof client);
    net_probe_key(client, key);
}

static const net_probe_answer sample = {
    .node_pk = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32},
    .tcp_port = 65535,
    .chunks = UINT64_MAX,
    .manifests = 0x0102030405060708ull,
};

static void probe_round_trips(void)
{
    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES], back[NET_PROBE_TOKEN_BYTES];
    uint8_t nonce[24], wire[NET_PROBE_MAX_BYTES];
    keys(key, 1);
    tl_fill_random(token, sizeof token, 2);
    tl_fill_random(nonce, sizeof nonce, 3);
    size_t len;
    net_probe_seal(key, token, UINT64_MAX - 1, nonce, wire, &len);
    CHECK(len <= NET_PROBE_MAX_BYTES);
    CHECK_MEM(wire, "CLPR", 4);
    CHECK_EQ(wire[4], 1);
    CHECK_MEM(wire + 5, nonce, 24);
    uint64_t t;
    CHECK_OK(net_probe_open(key, wire, len, back, &t));
    CHECK_MEM(back, token, sizeof token);
    CHECK(t == UINT64_MAX - 1);
}

static void answer_round_trips(void)
{
    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES], nonce[24];
    uint8_t wire[NET_PROBE_MAX_BYTES];
    keys(key, 1);
    tl_fill_random(token, sizeof token, 4);
    tl_fill_random(nonce, sizeof nonce, 5);
    size_t len;
    net_probe_answer_seal(key, token, &sample, nonce, wire, &len);
    CHECK(len <= NET_PROBE_MAX_BYTES);
    CHECK_MEM(wire, "CLPA", 4);
    net_probe_answer a;
    CHECK_OK(net_probe_answer_open(key, wire, len, token, &a));
    CHECK_MEM(a.node_pk, sample.node_pk, NET_KEY_BYTES);
    CHECK_EQ(a.tcp_port, 65535);
    CHECK(a.chunks == UINT64_MAX);
    CHECK(a.manifests == sample.manifests);
    /* The node key is not in the clear. */
    for (size_t i = 0; i + NET_KEY_BYTES <= len; i++)
        CHECK(memcmp(wire + i, sample.node_pk, NET_KEY_BYTES) != 0);
}

static void an_answer_is_never_larger_than_its_probe(void)
{
    uint8_t key[NET_KEY_BYTES] = {0}, token[NET_PROBE_TOKEN_BYTES] = {0}, nonce[24] = {0};
    uint8_t probe[NET_PROBE_MAX_BYTES], answer[NET_PROBE_MAX_BYTES];
    size_t plen, alen;
    net_probe_seal(key, token, 0, nonce, probe, &plen);
    net_probe_answer_seal(key, token, &sample, nonce, answer, &alen);
    CHECK(alen <= plen);
}

static void another_clients_key_does_not_open_them(void)
{
    uint8_t key[NET_KEY_BYTES], other[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES] = {7};
    uint8_t nonce[24] = {9}, wire[NET_PROBE_MAX_BYTES], back[NET_PROBE_TOKEN_BYTES];
    keys(key, 1);
    keys(other, 2);
    size_t len;
    uint64_t t = 5;
    net_probe_seal(key, token, 1000, nonce, wire, &len);
    CHECK_EQ(net_probe_open(other, wire, len, back, &t), NET_EAUTH);
    CHECK_EQ(t, 0);
    net_probe_answer a;
    net_probe_answer_seal(key, token, &sample, nonce, wire, &len);
    CHECK_EQ(net_probe_answer_open(other, wire, len, token, &a), NET_EAUTH);
    /* The probe key is not the client key itself. */
    uint8_t client[NET_KEY_BYTES];
    memset(client, 1, sizeof client);
    net_probe_answer_seal(client, token, &sample, nonce, wire, &len);
    CHECK_EQ(net_probe_answer_open(key, wire, len, token, &a), NET_EAUTH);
}

static void every_flipped_bit_is_refused(void)
{
    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES] = {1}, nonce[24] = {2};
    uint8_t wire[NET_PROBE_MAX_BYTES], back[NET_PROBE_TOKEN_BYTES];
    keys(key, 1);
    size_t len;
    uint64_t t;
    net_probe_seal(key, token, 1000, nonce, wire, &len);
    for (size_t bit = 0; bit < len * 8; bit++) {
        wire[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        int rc = net_probe_open(key, wire, len, back, &t);
        CHECK(rc == NET_EFORMAT || rc == NET_EAUTH);
        wire[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    CHECK_OK(net_probe_open(key, wire, len, back, &t));
    net_probe_answer a;
    net_probe_answer_seal(key, token, &sample, nonce, wire, &len);
    for (size_t bit = 0; bit < len * 8; bit++) {
        wire[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        int rc = net_probe_answer_open(key, wire, len, token, &a);
        CHECK(rc == NET_EFORMAT || rc == NET_EAUTH);
        wire[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}

static void an_answer_to_another_probe_is_refused(void)
{
    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES] = {1}, nonce[24] = {2};
    uint8_t mine[NET_PROBE_TOKEN_BYTES] = {1}, wire[NET_PROBE_MAX_BYTES];
    keys(key, 1);
    mine[15] = 1;
    size_t len;
    net_probe_answer_seal(key, token, &sample, nonce, wire, &len);
    net_probe_answer a;
    CHECK_EQ(net_probe_answer_open(key, wire, len, mine, &a), NET_EAUTH);
    CHECK_EQ(a.tcp_port, 0);
    CHECK_OK(net_probe_answer_open(key, wire, len, token, &a));
}

static void sizes_magics_and_versions_are_checked(void)
{
    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES] = {1}, nonce[24] = {2};
    uint8_t wire[NET_PROBE_MAX_BYTES + 1] = {0}, back[NET_PROBE_TOKEN_BYTES];
    keys(key, 1);
    size_t len;
    uint64_t t;
    net_probe_answer a;
    net_probe_seal(key, token, 1000, nonce, wire, &len);
    CHECK_EQ(net_probe_open(key, wire, len - 1, back, &t), NET_EFORMAT);
    CHECK_EQ(net_probe_open(key, wire, len + 1, back, &t), NET_EFORMAT);
    /* A probe is not an answer, nor the other way round. */
    CHECK_EQ(net_probe_answer_open(key, wire, len, token, &a), NET_EFORMAT);
    wire[4] = 2;
    CHECK_EQ(net_probe_open(key, wire, len, back, &t), NET_EFORMAT);
    net_probe_answer_seal(key, token, &sample, nonce, wire, &len);
    CHECK_EQ(net_probe_open(key, wire, len, back, &t), NET_EFORMAT);
    CHECK_EQ(net_probe_answer_open(key, wire, len - 1, token, &a), NET_EFORMAT);
}

/* The padding that keeps answers no larger than probes is zero: a probe sealed with other
 * padding authenticates but is refused (one encoding per probe). */
static void probe_padding_must_be_zero(void)
{
    uint8_t key[NET_KEY_BYTES], token[NET_PROBE_TOKEN_BYTES] = {1}, nonce[24] = {2};
    uint8_t wire[NET_PROBE_MAX_BYTES], back[NET_PROBE_TOKEN_BYTES];
    keys(key, 1);
    size_t len;
    uint64_t t;
    net_probe_seal(key, token, 1000, nonce, wire, &len);
    size_t body = len - 29 - crypto_aead_xchacha20poly1305_ietf_ABYTES;
    uint8_t plain[NET_PROBE_MAX_BYTES];
    CHECK_EQ(crypto_aead_xchacha20poly1305_ietf_decrypt(plain, NULL, NULL, wire + 29, len - 29,
                                                        wire, 29, nonce, key),
             0);
    CHECK(body > NET_PROBE_TOKEN_BYTES + 8);
    plain[body - 1] = 1;
    crypto_aead_xchacha20poly1305_ietf_encrypt(wire + 29, NULL, plain, body, wire, 29, NULL, nonce,
                                               key);
    CHECK_EQ(net_probe_open(key, wire, len, back, &t), NET_EFORMAT);
}

/* A node stand-in on 127.0.0.1: answers the first probe it can open, by unicast, and stops (a
 * mute one only counts them). shutdown() on its socket stops it too. */
typedef struct fake_node {
    int fd;
    uint16_t port;
    uint8_t key[NET_KEY_BYTES];
    bool mute;
    int probes;
} fake_node;

static void *fake_node_run(void *arg)
{
    fake_node *n = arg;
    for (;;) {
        struct pollfd pfd = {.fd = n->fd, .events = POLLIN};
        if (poll(&pfd, 1, 3000) <= 0) return NULL;
        uint8_t buf[512], token[NET_PROBE_TOKEN_BYTES], wire[NET_PROBE_MAX_BYTES], nonce[24];
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        ssize_t r = recvfrom(n->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
        uint64_t t;
        if (r <= 0) return NULL; /* shut down */
        if (net_probe_open(n->key, buf, (size_t)r, token, &t) != 0) continue;
        n->probes++;
        if (n->mute) continue;
        size_t len;
        randombytes_buf(nonce, sizeof nonce);
        net_probe_answer_seal(n->key, token, &sample, nonce, wire, &len);
        CHECK(len <= (size_t)r);
        CHECK_EQ(sendto(n->fd, wire, len, 0, (struct sockaddr *)&from, flen), (ssize_t)len);
        return NULL;
    }
}

static void fake_node_start(fake_node *n, pthread_t *th, uint8_t key_seed, bool mute)
{
    memset(n, 0, sizeof *n);
    keys(n->key, key_seed);
    n->mute = mute;
    n->fd = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(n->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_OK(bind(n->fd, (struct sockaddr *)&sa, sizeof sa));
    socklen_t slen = sizeof sa;
    CHECK_OK(getsockname(n->fd, (struct sockaddr *)&sa, &slen));
    n->port = ntohs(sa.sin_port);
    CHECK_OK(pthread_create(th, NULL, fake_node_run, n));
}

static void find_by_unicast_returns_the_first_answer(void)
{
    fake_node n;
    pthread_t th;
    fake_node_start(&n, &th, 1, false);
    uint8_t client[NET_KEY_BYTES];
    memset(client, 1, sizeof client);
    net_found_node found[4];
    CHECK_EQ(net_probe_find(client, "127.0.0.1", n.port, 5000, found, 4), 1);
    CHECK_STR(found[0].host, "127.0.0.1");
    CHECK_MEM(found[0].a.node_pk, sample.node_pk, NET_KEY_BYTES);
    CHECK_EQ(found[0].a.tcp_port, sample.tcp_port);
    pthread_join(th, NULL);
    close(n.fd);
}

/* A node of another fleet cannot open the probe; nothing is found, after wait_ms. The probe is
 * sent three times within it. */
static void find_with_another_key_finds_nothing(void)
{
    fake_node n;
    pthread_t th;
    fake_node_start(&n, &th, 2, false);
    uint8_t client[NET_KEY_BYTES];
    memset(client, 1, sizeof client);
    net_found_node found[4];
    CHECK_EQ(net_probe_find(client, "localhost", n.port, 300, found, 4), 0);
    shutdown(n.fd, SHUT_RDWR);
    pthread_join(th, NULL);
    CHECK_EQ(n.probes, 0);
    close(n.fd);
}

static void find_sends_the_probe_three_times_within_the_wait(void)
{
    fake_node n;
    pthread_t th;
    fake_node_start(&n, &th, 1, true);
    uint8_t client[NET_KEY_BYTES];
    memset(client, 1, sizeof client);
    net_found_node found[1];
    CHECK_EQ(net_probe_find(client, "127.0.0.1", n.port, 300, found, 1), 0);
    shutdown(n.fd, SHUT_RDWR);
    pthread_join(th, NULL);
    CHECK_EQ(n.probes, 3);
    close(n.fd);
}

TL_MAIN(TL_CASE(probe_round_trips), TL_CASE(answer_round_trips),
        TL_CASE(an_answer_is_never_larger_than_its_probe),
        TL_CASE(another_clients_key_does_not_open_them), TL_CASE(every_flipped_bit_is_refused),
        TL_CASE(an_answer_to_another_probe_is_refused),
        TL_CASE(sizes_magics_and_versions_are_checked), TL_CASE(probe_padding_must_be_zero),
        TL_CASE(find_by_unicast_returns_the_first_answer),
        TL_CASE(find_with_another_key_finds_nothing),
        TL_CASE(find_sends_the_probe_three_times_within_the_wait))
