/*
 * net.h — cloudlet's network layer: frames, the fleet handshake, the secure channel and
 * connections over libuv. The wire format is specified in docs/protocol.md.
 *
 * Layers, bottom up; each lower layer is pure (bytes in, bytes out, no sockets, no clock, no
 * randomness of its own except the secretstream headers), so it can be fuzzed and tested alone:
 *   frames     4-byte big-endian length + body, bounded (net_frame_*)
 *   handshake  Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b with a cheap MAC pre-check (net_hs_*)
 *   channel    one crypto_secretstream_xchacha20poly1305 per direction, rekeyed in step,
 *              a message type byte per frame, a FINAL-tagged close (net_channel_*)
 *   conn       listeners and connections on a uv_loop_t (net_endpoint_*, net_conn_*)
 * net/ never touches the chunk store.
 *
 * Conventions: functions return 0 on success, a negative errno for OS errors (libuv's UV_E*
 * equal -errno on Linux) or a NET_E* code; net_strerror() names any of them. Secret key
 * arguments are wiped by their owners; every secret net/ derives is wiped right after last use.
 */
#ifndef CLOUDLET_NET_H
#define CLOUDLET_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define NET_WUR __attribute__((warn_unused_result))
#else
#define NET_WUR
#endif

/* Project error codes: a reserved negative range, apart from -errno. */
enum {
    NET_EFORMAT = -31001,    /* malformed frame or message */
    NET_ETOOBIG = -31002,    /* a length prefix over the bound, or a message over NET_MSG_MAX */
    NET_EMAC = -31003,       /* the handshake pre-check (mac1) failed: not of this fleet */
    NET_EAUTH = -31004,      /* a handshake or channel authentication tag did not verify */
    NET_EREPLAY = -31005,    /* a handshake timestamp not newer than the last one seen */
    NET_ETRUNCATED = -31006, /* the stream ended without its FINAL message */
    NET_ECLOSED = -31007,    /* the channel or connection is closed (or closing) */
    NET_ETIMEDOUT = -31008,  /* the handshake or the close did not finish in time */
    NET_ELIMIT = -31009,     /* refused by a limit: half-open connections, handshake rate */
    NET_EAGAIN = -31010,     /* the send queue is over its high-water mark: wait for on_drain */
    NET_EROLE = -31011,      /* the peer's role may not do this (or the key has no such role) */
    NET_EREJECTED = -31012,  /* the application's accept hook refused the peer */
};

/* A string for any code these functions return; never NULL, valid forever. */
const char *net_strerror(int err);

/* ---- keys ---------------------------------------------------------------------------------- */

#define NET_KEY_BYTES 32
/* Subkeys of the 32-byte fleet key, derived with crypto_kdf_derive_from_key(out, 32, id, "cloudlet", fleet). */
enum { NET_SUBKEY_PEER_PSK = 1, NET_SUBKEY_BEACON = 2, NET_SUBKEY_CLIENT = 3, NET_SUBKEY_COOKIE = 4 };
void net_fleet_derive(const uint8_t fleet[NET_KEY_BYTES], uint64_t subkey, uint8_t out[NET_KEY_BYTES]);

/* A node's (or app's) static X25519 key pair: pk = X25519(sk, 9). */
typedef struct net_keypair {
    uint8_t pk[NET_KEY_BYTES];
    uint8_t sk[NET_KEY_BYTES];
} net_keypair;

/* A fresh key pair from libsodium's random source. */
void net_keypair_generate(net_keypair *kp);
/* pk from sk (sk is clamped by X25519 itself). Returns 0 or NET_EFORMAT for a degenerate sk. */
int net_keypair_from_secret(net_keypair *kp, const uint8_t sk[NET_KEY_BYTES]) NET_WUR;

/* The role a handshake authenticates. A peer proves the fleet key; a client (an app) proves only
 * the client key (NET_SUBKEY_CLIENT), and node code restricts what clients may ask. */
typedef enum net_role { NET_ROLE_PEER = 1, NET_ROLE_CLIENT = 2 } net_role;

/* The keys one side needs. A node holds all three (derived from the fleet key by
 * net_fleet_keys); an app holds only the client key (net_client_keys). */
typedef struct net_keys {
    bool has_fleet;                        /* peer_psk and cookie are valid */
    uint8_t peer_psk[NET_KEY_BYTES];       /* NET_SUBKEY_PEER_PSK */
    uint8_t cookie[NET_KEY_BYTES];         /* NET_SUBKEY_COOKIE: keys the peer role's mac1 */
    uint8_t client[NET_KEY_BYTES];         /* NET_SUBKEY_CLIENT: psk and mac1 key of clients */
} net_keys;

void net_fleet_keys(net_keys *k, const uint8_t fleet[NET_KEY_BYTES]);
void net_client_keys(net_keys *k, const uint8_t client[NET_KEY_BYTES]);
void net_keys_wipe(net_keys *k);

/* ---- frames -------------------------------------------------------------------------------- */

/* A frame is a 4-byte big-endian body length L, then L bytes. A channel frame's body is a
 * secretstream message: 1 type byte + payload, plus 17 bytes of tag, so a message (type and
 * payload) is at most NET_MSG_MAX = 1 MiB and a frame on the wire at most
 * 4 + NET_FRAME_MAX_BODY = 1,048,597 bytes. */
#define NET_FRAME_PREFIX 4u
#define NET_MSG_MAX (1024u * 1024u)
#define NET_PAYLOAD_MAX (NET_MSG_MAX - 1u)
#define NET_FRAME_OVERHEAD 17u /* crypto_secretstream_xchacha20poly1305_ABYTES */
#define NET_FRAME_MAX_BODY (NET_MSG_MAX + NET_FRAME_OVERHEAD)

/* Incremental decoder (init / feed / finish). It holds at most one body, allocated only after
 * its length prefix passed the current bound, and never larger than that bound. */
typedef struct net_frame_dec {
    uint8_t prefix[NET_FRAME_PREFIX];
    uint32_t prefix_have;
    uint32_t body_len;  /* valid once prefix_have == 4 */
    uint32_t body_have;
    uint32_t max_body;  /* the current bound */
    uint8_t *buf;       /* owned; capacity buf_cap <= the largest bound ever set */
    uint32_t buf_cap;
    uint64_t allocs;    /* how many times buf was (re)allocated: observable by tests */
} net_frame_dec;

void net_frame_dec_init(net_frame_dec *d, uint32_t max_body);
/* Changes the bound; it applies to the next length prefix to complete. */
void net_frame_dec_set_max(net_frame_dec *d, uint32_t max_body);
/* Consumes input up to the end of at most one frame, setting *used. Returns 1 with *body and
 * *body_len set when a frame is complete (*body is valid until the next feed or free, and may
 * point into data: then only while data is), 0 when every byte was consumed and the frame is
 * not complete yet,
 * NET_ETOOBIG for a prefix over the bound (nothing allocated; the decoder is then unusable),
 * or -ENOMEM. */
int net_frame_dec_feed(net_frame_dec *d, const uint8_t *data, size_t len, size_t *used,
                       const uint8_t **body, size_t *body_len) NET_WUR;
/* End of input: 0 at a frame boundary, NET_ETRUNCATED inside a frame. */
int net_frame_dec_finish(const net_frame_dec *d) NET_WUR;
void net_frame_dec_free(net_frame_dec *d);
/* Writes the 4-byte prefix for a body of len bytes. */
void net_frame_put_prefix(uint8_t out[NET_FRAME_PREFIX], uint32_t len);

/* ---- handshake ----------------------------------------------------------------------------- */

/* Message sizes (bodies of the first frame of each direction); see docs/protocol.md. */
#define NET_HS_INIT_BYTES 128u
#define NET_HS_RESP_BYTES 52u
#define NET_HS_MAC_BYTES 16u
#define NET_HS_TIMESTAMP_BYTES 12u

/* Counters of work done for handshakes, for tests and for status: an outsider must only ever
 * move mac1_checked and mac1_rejected. */
typedef struct net_hs_counters {
    uint64_t mac1_checked;  /* initiations whose mac1 was computed (one BLAKE2b each) */
    uint64_t mac1_rejected; /* ... and did not match */
    uint64_t dh;            /* X25519 operations done by this responder/initiator */
    uint64_t replay_rejected;
    uint64_t replay_inserts; /* per-initiator entries created in the replay table */
    uint64_t accepted;       /* initiations fully verified */
} net_hs_counters;

/* The responder's long-lived state: its key pair and keys, the mac1 keys per role, the newest
 * timestamp seen per initiator static key (a bounded, set-associative table: when a set is full
 * the entry with the oldest timestamp is evicted), and counters. Not thread-safe. */
typedef struct net_hs_responder net_hs_responder;

/* replay_slots is rounded up to a multiple of 4 (0: a default of 16384). */
int net_hs_responder_new(const net_keypair *self, const net_keys *keys, size_t replay_slots,
                         net_hs_responder **out) NET_WUR;
void net_hs_responder_free(net_hs_responder *r);
const net_hs_counters *net_hs_responder_counters(const net_hs_responder *r);

/* Keys both sides hold after a handshake: tx for what this side sends, rx for what it receives. */
typedef struct net_hs_result {
    uint8_t tx[NET_KEY_BYTES];
    uint8_t rx[NET_KEY_BYTES];
    uint8_t peer_pk[NET_KEY_BYTES]; /* the other side's static public key */
    net_role role;                  /* the initiator's role */
} net_hs_result;

/* One initiation in flight (initiator side). Wiped by net_hs_initiator_wipe. */
typedef struct net_hs_initiator {
    uint8_t ck[64], h[64];
    uint8_t e_sk[NET_KEY_BYTES], e_pk[NET_KEY_BYTES];
    uint8_t s_pk[NET_KEY_BYTES], s_sk[NET_KEY_BYTES];
    uint8_t psk[NET_KEY_BYTES];
    uint8_t rs[NET_KEY_BYTES];
    net_role role;
    bool sent;
    net_hs_counters counters;
} net_hs_initiator;

/* Builds the initiation to the responder whose static key is rs, in the given role (the keys
 * must hold that role's keys, else NET_EROLE). The ephemeral secret e_sk (32 random bytes) and
 * the TAI64N timestamp are the caller's (seams: randomness and clock; net_tai64n()). */
int net_hs_initiate(net_hs_initiator *st, const net_keypair *self, const net_keys *keys,
                    net_role role, const uint8_t rs[NET_KEY_BYTES],
                    const uint8_t e_sk[NET_KEY_BYTES],
                    const uint8_t timestamp[NET_HS_TIMESTAMP_BYTES],
                    uint8_t out[NET_HS_INIT_BYTES]) NET_WUR;
/* Processes the response: 0 and *res on success; NET_EFORMAT or NET_EAUTH otherwise. Wipes st
 * in every case. */
int net_hs_initiator_finish(net_hs_initiator *st, const uint8_t *msg, size_t len,
                            net_hs_result *res) NET_WUR;
void net_hs_initiator_wipe(net_hs_initiator *st);

/* Responder: checks the initiation in the order the protocol fixes (size and header, then mac1
 * — one BLAKE2b, nothing stored — then the DH operations and the AEADs, then the replay table)
 * and, on success, writes the response and *res. e_sk is the responder's fresh ephemeral
 * secret. Errors: NET_EFORMAT, NET_EMAC, NET_EAUTH, NET_EREPLAY, NET_EROLE (a role this node
 * holds no key for). Nothing is written to out and the replay table is unchanged on error. */
int net_hs_respond(net_hs_responder *r, const uint8_t *msg, size_t len,
                   const uint8_t e_sk[NET_KEY_BYTES], uint8_t out[NET_HS_RESP_BYTES],
                   net_hs_result *res) NET_WUR;

/* TAI64N label for a time in nanoseconds since the Unix epoch. */
void net_tai64n(uint64_t unix_ns, uint8_t out[NET_HS_TIMESTAMP_BYTES]);

/* ---- channel ------------------------------------------------------------------------------- */

/* Message types: the channel reserves 0x00-0x0f; applications use 0x10-0xff. */
enum {
    NET_MSG_HELLO = 0x00, /* the first message of each direction (key confirmation) */
    NET_MSG_CLOSE = 0x01, /* the last message of each direction, tagged FINAL */
    NET_MSG_APP_MIN = 0x10,
};

/* Both directions rekey (crypto_secretstream_xchacha20poly1305_rekey) after every
 * NET_REKEY_MESSAGES messages or as soon as NET_REKEY_BYTES of message bytes were sealed
 * since the last rekey, whichever comes first; both sides count the same way. */
#define NET_REKEY_MESSAGES 4096u
#define NET_REKEY_BYTES (32u * 1024u * 1024u)
#define NET_STREAM_HEADER_BYTES 24u /* crypto_secretstream_xchacha20poly1305_HEADERBYTES */

typedef struct net_channel {
    crypto_secretstream_xchacha20poly1305_state tx, rx;
    uint64_t tx_msgs, tx_bytes, rx_msgs, rx_bytes; /* since the last rekey */
    uint64_t tx_rekeys, rx_rekeys;
    uint8_t rx_key[NET_KEY_BYTES]; /* kept until the peer's header arrives */
    bool rx_ready, tx_final, rx_final;
} net_channel;

/* Starts the sending stream with keys->tx and writes its header (the first frame this side
 * sends after the handshake); keeps keys->rx for net_channel_accept_header. */
int net_channel_init(net_channel *c, const net_hs_result *keys,
                     uint8_t header[NET_STREAM_HEADER_BYTES]) NET_WUR;
/* Starts the receiving stream from the peer's header frame. */
int net_channel_accept_header(net_channel *c, const uint8_t *body, size_t len) NET_WUR;
/* Seals one message into out (which must hold 1 + len + NET_FRAME_OVERHEAD bytes: the frame
 * body; the caller adds the prefix). NET_MSG_CLOSE is sealed with the FINAL tag and ends the
 * sending stream; after it every seal returns NET_ECLOSED. */
int net_channel_seal(net_channel *c, uint8_t type, const uint8_t *payload, size_t len,
                     uint8_t *out, size_t *out_len) NET_WUR;
/* Opens one frame body into out (which must hold len - NET_FRAME_OVERHEAD bytes). On success
 * out[0] = *type is the message type and the payload is out[1 .. 1 + *payload_len). A CLOSE
 * message is accepted only with the FINAL tag (and FINAL only on CLOSE); after it, NET_ECLOSED.
 * NET_EAUTH for any tampered, replayed, reordered or foreign frame. */
int net_channel_open(net_channel *c, const uint8_t *body, size_t len, uint8_t *type,
                     uint8_t *out, size_t *payload_len) NET_WUR;
void net_channel_wipe(net_channel *c);

/* ---- connections over libuv ---------------------------------------------------------------- */

typedef struct net_endpoint net_endpoint;
typedef struct net_conn net_conn;

/* Callbacks of one connection. on_close runs exactly once for every connection that was
 * announced (by on_accept for incoming ones, by a successful net_connect for outgoing ones),
 * after which the net_conn is freed. status 0 means both sides closed cleanly (FINAL seen);
 * otherwise NET_ETRUNCATED (EOF without the peer's FINAL), NET_EAUTH (a frame failed to open),
 * NET_EFORMAT, NET_ETOOBIG, NET_ETIMEDOUT, NET_ECLOSED (aborted here, the endpoint closed, or
 * the peer hung up during the handshake) or a libuv error. on_message's payload is valid only
 * during the call. */
typedef struct net_conn_cbs {
    void (*on_established)(net_conn *c); /* the peer's HELLO was authenticated */
    void (*on_message)(net_conn *c, uint8_t type, const uint8_t *payload, size_t len);
    void (*on_drain)(net_conn *c); /* the send queue fell under half its high-water mark */
    void (*on_close)(net_conn *c, int status);
} net_conn_cbs;

/* Limits and seams of an endpoint. Zero fields take the defaults given. */
typedef struct net_endpoint_opts {
    uint32_t handshake_timeout_ms;  /* 5000: from accept/connect to the peer's HELLO */
    uint32_t close_timeout_ms;      /* 2000: waiting for the peer's FINAL after ours */
    uint32_t max_half_open;         /* 256: incoming connections not yet established; when
                                       full, the oldest is dropped for the newcomer */
    uint32_t max_half_open_per_source; /* 16: the same per source address; past it, that
                                          source's own oldest is dropped */
    uint32_t rate_per_sec;          /* 20: handshake attempts per source address per second */
    uint32_t rate_burst;            /* 40: bucket depth of that limit */
    uint32_t rate_slots;            /* 4096: source addresses tracked (set-associative) */
    size_t send_queue_max;          /* 8 MiB: bytes queued above which send says NET_EAGAIN */
    size_t replay_slots;            /* see net_hs_responder_new */
    /* Seams: wall clock for handshake timestamps (ns since the Unix epoch), and randomness
     * for ephemeral keys. NULL: the system clock and libsodium's randombytes_buf. */
    uint64_t (*clock_ns)(void *ctx);
    void (*random)(void *ctx, void *buf, size_t len);
    void *seam_ctx;
} net_endpoint_opts;

/* Whole-endpoint counters (observable cost of everything that reached it). */
typedef struct net_endpoint_counters {
    uint64_t accepted;        /* TCP connections accepted */
    uint64_t rate_limited;    /* closed at accept by the per-source rate limit */
    uint64_t half_open_evicted;
    uint64_t handshake_failed; /* incoming connections closed before establishment */
    uint64_t established;
    uint64_t rx_buffers;      /* frame bodies over the handshake bound that were allocated */
    net_hs_counters hs;       /* the responder's counters plus every initiator's */
} net_endpoint_counters;

/* An endpoint owns the identity, the responder state and the limits shared by its listener and
 * its connections. on_accept runs for an incoming connection only once it is established (the
 * peer's key and role are known); it sets the connection's callbacks (net_conn_set_cbs) and may
 * refuse the peer with net_conn_abort(c, NET_EREJECTED). Unauthenticated connections are never
 * shown to the application. */
int net_endpoint_new(uv_loop_t *loop, const net_keypair *self, const net_keys *keys,
                     const net_endpoint_opts *opts, net_endpoint **out) NET_WUR;
/* Listens on ip:port (port 0: any; net_endpoint_port reads it back). Only nodes listen. */
int net_endpoint_listen(net_endpoint *ep, const char *ip, int port,
                        void (*on_accept)(net_endpoint *ep, net_conn *c)) NET_WUR;
int net_endpoint_port(const net_endpoint *ep);
/* Closes the listener and aborts every connection (their on_close run with NET_ECLOSED), then
 * calls on_closed (may be NULL) once every handle is closed; the endpoint is freed after it. */
void net_endpoint_close(net_endpoint *ep, void (*on_closed)(net_endpoint *ep));
/* A snapshot, valid until the next call on this endpoint. */
const net_endpoint_counters *net_endpoint_counters_get(const net_endpoint *ep);
void *net_endpoint_data(const net_endpoint *ep);
void net_endpoint_set_data(net_endpoint *ep, void *data);

/* Opens a connection to ip:port whose static key is peer_pk, as role (NET_ROLE_PEER needs the
 * fleet key). bind_ip, if not NULL, is the local address to connect from. On success *out is
 * the connection and its on_close will run exactly once; on error no callback runs. */
int net_connect(net_endpoint *ep, const char *ip, int port, const uint8_t peer_pk[NET_KEY_BYTES],
                net_role role, const char *bind_ip, const net_conn_cbs *cbs, void *data,
                net_conn **out) NET_WUR;

void net_conn_set_cbs(net_conn *c, const net_conn_cbs *cbs, void *data);
void *net_conn_data(const net_conn *c);
void net_conn_set_data(net_conn *c, void *data);
net_endpoint *net_conn_endpoint(const net_conn *c);
bool net_conn_incoming(const net_conn *c);
/* Valid once established: the peer's static key and role (the initiator's role). */
const uint8_t *net_conn_peer_key(const net_conn *c);
net_role net_conn_role(const net_conn *c);

/* Seals and queues one message (type >= NET_MSG_APP_MIN, else -EINVAL; len <= NET_PAYLOAD_MAX,
 * else NET_ETOOBIG). The payload is copied. Returns NET_EAGAIN (nothing queued) while more than
 * send_queue_max bytes wait to be written — retry from on_drain — and NET_ECLOSED before
 * establishment and once closing. Any other error closes the connection (on_close follows). */
int net_conn_send(net_conn *c, uint8_t type, const void *payload, size_t len) NET_WUR;
size_t net_conn_queued(const net_conn *c);
/* Messages and rekeys of the channel so far (both directions). */
typedef struct net_conn_stats {
    uint64_t tx_msgs, rx_msgs, tx_bytes, rx_bytes, tx_rekeys, rx_rekeys;
} net_conn_stats;
void net_conn_stats_get(const net_conn *c, net_conn_stats *out);
/* An outbox keeps, in order, the messages a full send queue refused (NET_EAGAIN) until on_drain
 * sends them: for senders that must not drop a message (answers to requests). */
typedef struct net_outmsg net_outmsg;
typedef struct net_outbox {
    net_outmsg *head, *tail;
} net_outbox; /* zero-initialised: empty */
/* Sends now when nothing waits and the send queue takes it, else keeps the message behind those
 * waiting. Takes buf (freed once sent or dropped). 0: sent or kept; -ENOMEM: dropped; another
 * error of net_conn_send: dropped (the connection is closing, on_close follows). */
int net_outbox_send(net_outbox *o, net_conn *c, uint8_t type, uint8_t *buf, size_t len);
/* From on_drain: sends what waits while the send queue takes it. true once nothing waits. */
bool net_outbox_flush(net_outbox *o, net_conn *c);
bool net_outbox_empty(const net_outbox *o);
/* Drops (frees) what waits. */
void net_outbox_clear(net_outbox *o);

/* Clean close: sends CLOSE (FINAL), waits for the peer's FINAL (bounded by close_timeout_ms),
 * then closes. on_close follows with 0 if the peer closed cleanly too. */
void net_conn_close(net_conn *c);
/* Immediate close (no FINAL): on_close follows with status. */
void net_conn_abort(net_conn *c, int status);

/* ---- chunk exchange messages (docs/protocol.md, "Chunk exchange") --------------------------- */

/* Application message types of the chunk exchange between nodes. */
enum {
    NET_MSG_MANIFEST_GET = 0x20, /* manifest id, offset: send (part of) this manifest */
    NET_MSG_MANIFEST = 0x21,     /* manifest id, found, total length, offset, bytes */
    NET_MSG_HAVE = 0x22,         /* request id, ids: which of these do you hold? */
    NET_MSG_HAVE_BITMAP = 0x23,  /* request id, bitmap: bit i set = id i held */
    NET_MSG_GET = 0x24,          /* request id, ids: send these chunks */
    NET_MSG_CHUNKS = 0x25,       /* request id, ids, one zstd frame of their bytes */
    NET_MSG_DONT_HAVE = 0x26,    /* request id, ids: of those asked, these are not held */
    NET_MSG_PULL_ASK = 0x27,     /* request id, manifest id, sources: pull this manifest */
    NET_MSG_PULL_DONE = 0x28,    /* request id, ok, chunks fetched, text: how that pull ended */
    NET_MSG_GET_DELTA = 0x29,    /* request id, (id, base id) pairs: send these as deltas */
    NET_MSG_DELTAS = 0x2a,       /* request id, ids, one delta frame per chunk */
    NET_MSG_ZCHUNKS = 0x2b,      /* request id, ids, their bytes as the next part of a stream */
};

#define NET_ID_BYTES 32u             /* a chunk or manifest id (BLAKE2b-256) */
#define NET_CHUNK_BYTES 4096u        /* a chunk */
#define NET_HAVE_MAX 16384u          /* ids in one HAVE (512 KiB of ids) */
#define NET_GET_MAX 128u             /* ids in one GET, CHUNKS or DONT_HAVE */
#define NET_MANIFEST_PART_MAX (NET_PAYLOAD_MAX - 49u) /* manifest bytes in one MANIFEST */
#define NET_MANIFEST_TOTAL_MAX (256u << 20) /* a manifest longer than this is refused */
#define NET_PULL_SOURCES_MAX 16u     /* nodes named in one PULL_ASK */
#define NET_PULL_TEXT_MAX 512u       /* bytes of text in one PULL_DONE */

/* A node a PULL_ASK names to pull from: its static key and where it listens. */
typedef struct net_pull_source {
    uint8_t key[NET_KEY_BYTES];
    char host[256]; /* 1..255 bytes, no NUL */
    uint16_t port;
} net_pull_source;

/* One decoded exchange message. Pointers point into the decoded payload and are valid as long
 * as it is. Which fields are set depends on type (docs/protocol.md). */
typedef struct net_msg {
    uint8_t type;
    uint32_t req;             /* the request id (HAVE .. DONT_HAVE) */
    uint32_t n;               /* ids (HAVE, GET, CHUNKS, DONT_HAVE) or bits (HAVE_BITMAP) */
    const uint8_t *ids;       /* n * NET_ID_BYTES */
    const uint8_t *bitmap;    /* HAVE_BITMAP: (n + 7) / 8 bytes, bits past n zero */
    const uint8_t *z;         /* CHUNKS: one zstd frame whose content is n * 4096 bytes */
    size_t zlen;
    uint8_t id[NET_ID_BYTES]; /* MANIFEST_GET, MANIFEST */
    bool found;               /* MANIFEST */
    uint64_t total, offset;   /* MANIFEST: the manifest's length, where this part starts;
                                 MANIFEST_GET: the offset asked for */
    const uint8_t *part;      /* MANIFEST: bytes [offset, offset + part_len) of the manifest */
    size_t part_len;
    /* PULL_ASK: id is the manifest; nsources sources encoded at src (net_msg_pull_sources) */
    uint32_t nsources;
    const uint8_t *src;
    size_t src_len;
    /* PULL_DONE */
    bool ok;
    uint64_t chunks;
    const uint8_t *text; /* text_len bytes (not NUL-terminated) */
    size_t text_len;
    /* GET_DELTA: n base ids (n * NET_ID_BYTES) beside ids. DELTAS: n frame lengths (u32be
     * each) beside ids, the frames back to back at z (zlen bytes in all): net_msg_delta_frame */
    const uint8_t *bases;
    const uint8_t *zlens;
} net_msg;

/* Decodes the payload of a message of the given type, a pure function of the bytes. 0 and *out,
 * or NET_EFORMAT for anything malformed or over its bound (a CHUNKS frame whose declared content
 * size is not exactly n * 4096 included), -EINVAL for a type that is not of the exchange. The
 * chunks of a CHUNKS message are not decompressed here: see net_msg_chunks. */
int net_msg_decode(uint8_t type, const uint8_t *payload, size_t len, net_msg *out) NET_WUR;
/* Decompresses a decoded CHUNKS message into out (m->n * 4096 bytes). The frame's size was
 * checked by the decoder before any byte is decompressed; NET_EFORMAT if it does not inflate to
 * exactly that. */
int net_msg_chunks(const net_msg *m, void *out) NET_WUR;

/* Encoders: each returns 0 with a malloc'd payload in *out (the caller frees) and its length,
 * -EINVAL for counts over the bounds above, -ENOMEM, or NET_EFORMAT if zstd fails. */
int net_msg_encode_manifest_get(const uint8_t id[NET_ID_BYTES], uint64_t offset, uint8_t **out,
                                size_t *len) NET_WUR;
/* part of manifest bytes starting at offset of total; found false sends total 0, no bytes. */
int net_msg_encode_manifest(const uint8_t id[NET_ID_BYTES], bool found, uint64_t total,
                            uint64_t offset, const uint8_t *part, size_t part_len, uint8_t **out,
                            size_t *len) NET_WUR;
/* HAVE, GET or DONT_HAVE with n ids (n * 32 bytes). */
int net_msg_encode_ids(uint8_t type, uint32_t req, const uint8_t *ids, uint32_t n, uint8_t **out,
                       size_t *len) NET_WUR;
int net_msg_encode_bitmap(uint32_t req, uint32_t nbits, const uint8_t *bitmap, uint8_t **out,
                          size_t *len) NET_WUR;
/* PULL_ASK: the manifest and n (<= NET_PULL_SOURCES_MAX) nodes to pull it from. */
int net_msg_encode_pull_ask(uint32_t req, const uint8_t id[NET_ID_BYTES],
                            const net_pull_source *src, uint32_t n, uint8_t **out,
                            size_t *len) NET_WUR;
/* PULL_DONE: text_len <= NET_PULL_TEXT_MAX. */
int net_msg_encode_pull_done(uint32_t req, bool ok, uint64_t chunks, const char *text,
                             size_t text_len, uint8_t **out, size_t *len) NET_WUR;
/* The sources of a decoded PULL_ASK into out (m->nsources entries). */
void net_msg_pull_sources(const net_msg *m, net_pull_source *out);
/* CHUNKS: n ids and their n * 4096 bytes, compressed together at zstd level. */
int net_msg_encode_chunks(uint32_t req, const uint8_t *ids, uint32_t n, const void *chunks,
                          int level, uint8_t **out, size_t *len) NET_WUR;

/* Deltas (docs/protocol.md §9): a chunk coded as one zstd frame against a base chunk the
 * receiver holds (ZSTD_CCtx_refPrefix with the base's 4096 bytes); the frame declares its
 * content size, exactly 4096. */
#define NET_DELTA_MAX (NET_CHUNK_BYTES + 64u) /* the largest delta frame accepted */
/* GET_DELTA: n (<= NET_GET_MAX) pairs, ids[i] wanted as a delta against bases[i]. Answered
 * like a GET with the same req: at most one DELTAS, one CHUNKS (ids sent whole, e.g. when the
 * sender lacks the base) and one DONT_HAVE, naming every id once between them. */
int net_msg_encode_get_delta(uint32_t req, const uint8_t *ids, const uint8_t *bases, uint32_t n,
                             uint8_t **out, size_t *len) NET_WUR;
/* DELTAS: n (<= NET_GET_MAX) ids and their delta frames (frames[i], lens[i] bytes, each
 * 1..NET_DELTA_MAX). */
int net_msg_encode_deltas(uint32_t req, const uint8_t *ids, uint32_t n,
                          const uint8_t *const *frames, const size_t *lens, uint8_t **out,
                          size_t *len) NET_WUR;
/* Frame i of a decoded DELTAS message (the decoder checked every length, that the frames fill
 * the rest of the payload exactly, and that each is one zstd frame declaring 4096 bytes). */
void net_msg_delta_frame(const net_msg *m, uint32_t i, const uint8_t **frame, size_t *len);
/* Codes chunk against base at zstd level into out (cap bytes, at least NET_DELTA_MAX): 0 and
 * *len, NET_ETOOBIG when the delta would not fit (send the chunk whole then), or -ENOMEM. */
int net_delta_encode(const uint8_t chunk[NET_CHUNK_BYTES], const uint8_t base[NET_CHUNK_BYTES],
                     int level, uint8_t *out, size_t cap, size_t *len) NET_WUR;
/* Rebuilds a chunk from a delta frame and its base: 0, NET_EFORMAT when the frame is not one
 * zstd frame declaring 4096 bytes or does not inflate to exactly that, or -ENOMEM. The result
 * still has to be checked against its id: against another base a frame decodes to other bytes. */
int net_delta_decode(const uint8_t *frame, size_t len, const uint8_t base[NET_CHUNK_BYTES],
                     uint8_t out[NET_CHUNK_BYTES]) NET_WUR;

/* ZCHUNKS (docs/protocol.md §9): whole chunks compressed as the next part of one zstd stream
 * per connection and direction (a long window: a chunk may match bytes sent many messages
 * before), which the receiver decodes in the order the messages come. An app answers GETs with
 * ZCHUNKS: its link is the slow one. A part that does not decode to exactly its n chunks
 * breaks the stream: the receiver closes the connection. */
#define NET_ZSTREAM_WINDOW_LOG 27 /* 128 MiB: the receiver's bound on the stream's window */
typedef struct net_zstream net_zstream;
/* An encoder at zstd level (long-distance matching on) or a decoder; NULL when out of memory. */
net_zstream *net_zstream_encoder(int level);
net_zstream *net_zstream_decoder(void);
void net_zstream_free(net_zstream *z); /* NULL is fine */
/* ZCHUNKS: n (1..NET_GET_MAX) ids and their n * 4096 bytes, compressed as the next part of
 * encoder z's stream. */
int net_msg_encode_zchunks(uint32_t req, const uint8_t *ids, uint32_t n, const void *chunks,
                           net_zstream *z, uint8_t **out, size_t *len) NET_WUR;
/* Decodes a decoded ZCHUNKS message's part with decoder z into out (m->n * 4096 bytes): 0, or
 * NET_EFORMAT when the part does not yield exactly that (the stream is then unusable). */
int net_msg_zchunks(const net_msg *m, net_zstream *z, void *out) NET_WUR;

/* ---- launching a VM for an app (docs/protocol.md §10) ----------------------------------------- */

/* An app (role client) asks a node to launch a manifest; while the node resolves and fetches
 * it, it may send the app MANIFEST_GET, GET and GET_DELTA on the same connection (the app is
 * the origin) and LAUNCH_PROGRESS; it ends with one LAUNCH_DONE. */
enum {
    NET_MSG_LAUNCH = 0x30,          /* client -> node: launch this manifest */
    NET_MSG_LAUNCH_PROGRESS = 0x31, /* node -> client: how the launch goes */
    NET_MSG_LAUNCH_DONE = 0x32,     /* node -> client: how it ended */
};
typedef enum net_launch_stage {
    NET_LAUNCH_RESOLVE = 1,  /* finding the manifest and what is missing */
    NET_LAUNCH_TRANSFER = 2, /* fetching chunks (the VM is written as they arrive) */
    NET_LAUNCH_APPLY = 3,    /* writing what is left of the VM once every chunk is here */
    NET_LAUNCH_RESTORE = 4,  /* libvirt restores (or boots) the domain */
    NET_LAUNCH_RUNNING = 5,  /* the VM runs while chunks still arrive (early start): the
                                origin is still needed */
} net_launch_stage;
typedef enum net_source_kind {
    NET_SOURCE_LOCAL = 0,     /* held by the node before the launch */
    NET_SOURCE_NEIGHBOUR = 1, /* a node of the fleet */
    NET_SOURCE_ORIGIN = 2,    /* the app */
} net_source_kind;
#define NET_LAUNCH_SOURCES_MAX 32u
#define NET_LAUNCH_LABEL_MAX 64u   /* printable ASCII */
#define NET_LAUNCH_NAME_MAX 64u    /* [A-Za-z0-9._-] */
#define NET_LAUNCH_TEXT_MAX 1024u  /* printable ASCII */

typedef struct net_launch_source {
    uint8_t kind; /* net_source_kind */
    uint64_t bytes;
    char label[NET_LAUNCH_LABEL_MAX + 1]; /* e.g. "local", a node key's first 12 hex, "origin" */
} net_launch_source;

/* LAUNCH: name empty lets the node choose the domain's name. */
typedef struct net_launch_req {
    uint32_t req;
    uint8_t id[NET_ID_BYTES];
    char name[NET_LAUNCH_NAME_MAX + 1];
    uint8_t flags; /* NET_LAUNCH_F_*; absent on the wire (apps before it) reads as 0 */
} net_launch_req;
/* The app understands stage RUNNING: without it the node reports TRANSFER while the VM runs. */
#define NET_LAUNCH_F_RUNNING 0x01u

typedef struct net_launch_progress {
    uint32_t req;
    uint8_t stage; /* net_launch_stage */
    uint32_t elapsed_ms;
    uint64_t fetch_total, fetch_done; /* chunk bytes to fetch (uncompressed), fetched so far */
    uint64_t vm_total, vm_done;       /* bytes of VM to write, written so far */
    uint32_t nsources;
    net_launch_source src[NET_LAUNCH_SOURCES_MAX];
} net_launch_progress;

typedef struct net_launch_done {
    uint32_t req;
    bool ok;
    uint32_t resolve_ms, transfer_ms, apply_ms, restore_ms, total_ms;
    uint32_t nsources;
    net_launch_source src[NET_LAUNCH_SOURCES_MAX]; /* bytes by source */
    char domain[NET_LAUNCH_NAME_MAX + 1];   /* ok: the libvirt domain's name */
    char uuid[37];                           /* ok: its UUID */
    char accel[8];                           /* ok: "kvm" or "tcg" */
    char console[NET_LAUNCH_TEXT_MAX + 1];   /* the serial console's socket on the node, or "" */
    char address[NET_LAUNCH_TEXT_MAX + 1];   /* how to reach the VM (addresses, ports), or "" */
    char error[NET_LAUNCH_TEXT_MAX + 1];     /* !ok: why; "" when ok */
} net_launch_done;

/* Encoders: 0 and a malloc'd payload, -EINVAL for a field over its bound or outside its
 * alphabet, -ENOMEM. Decoders: pure functions of untrusted bytes, 0 and *out (strings
 * NUL-terminated), NET_EFORMAT for anything malformed (*out zeroed). */
int net_launch_encode_req(const net_launch_req *r, uint8_t **out, size_t *len) NET_WUR;
int net_launch_decode_req(const uint8_t *p, size_t len, net_launch_req *out) NET_WUR;
int net_launch_encode_progress(const net_launch_progress *r, uint8_t **out, size_t *len) NET_WUR;
int net_launch_decode_progress(const uint8_t *p, size_t len, net_launch_progress *out) NET_WUR;
int net_launch_encode_done(const net_launch_done *r, uint8_t **out, size_t *len) NET_WUR;
int net_launch_decode_done(const uint8_t *p, size_t len, net_launch_done *out) NET_WUR;
const char *net_launch_stage_name(uint8_t stage); /* "resolve", ... ; "?" when unknown */

/* ---- discovery beacons (docs/discovery.md) -------------------------------------------------- */

/* A beacon is one UDP datagram of exactly NET_BEACON_BYTES: magic "CLBN", version, a random
 * nonce, and an XChaCha20-Poly1305 box keyed by the fleet's beacon key (NET_SUBKEY_BEACON). */
#define NET_BEACON_VERSION     1
#define NET_BEACON_NONCE_BYTES 24
#define NET_BEACON_BYTES       121
/* How far a beacon's time may be from the receiver's clock before it is stale. */
#define NET_BEACON_MAX_SKEW_MS 60000u

typedef struct net_beacon {
    uint8_t node_pk[NET_KEY_BYTES]; /* the sender's static public key */
    uint64_t instance;              /* random per daemon start */
    uint64_t seq;                   /* grows by one per beacon within an instance */
    uint64_t time_ms;               /* the sender's clock, ms since the Unix epoch */
    uint16_t tcp_port;              /* where the sender listens for peers */
    uint64_t chunks, manifests;     /* what the sender's store holds */
} net_beacon;

/* Seals b into out with key (the beacon key) and nonce (24 random bytes: the caller's, a seam). */
void net_beacon_seal(const uint8_t key[NET_KEY_BYTES], const net_beacon *b,
                     const uint8_t nonce[NET_BEACON_NONCE_BYTES], uint8_t out[NET_BEACON_BYTES]);
/* Opens a datagram of untrusted bytes: 0 and *out, NET_EFORMAT for anything not a version-1
 * beacon of the right size, NET_EAUTH for one not sealed with key. A pure function of the bytes;
 * *out is zeroed on error. */
int net_beacon_open(const uint8_t key[NET_KEY_BYTES], const uint8_t *buf, size_t len,
                    net_beacon *out) NET_WUR;

/* What the replay/staleness filter says of an authenticated beacon. Only NEW, NEXT and RESTART
 * are to be believed; the filter remembers only those. */
typedef enum net_beacon_verdict {
    NET_BEACON_NEW = 0,     /* the first beacon heard from this node key */
    NET_BEACON_NEXT = 1,    /* a later sequence of the instance heard before */
    NET_BEACON_RESTART = 2, /* a new instance (the daemon restarted) with a newer time */
    NET_BEACON_OWN = 3,     /* sent by this node (multicast loops back) */
    NET_BEACON_REPLAY = 4,  /* a sequence or time not newer than what was accepted */
    NET_BEACON_STALE = 5,   /* its time is more than max_skew from the receiver's clock */
} net_beacon_verdict;

/* Per node key, the newest (instance, seq, time) accepted; at most capacity keys (when full, the
 * key heard from least recently is forgotten). own_pk is this node's key. */
typedef struct net_beacon_filter net_beacon_filter;
net_beacon_filter *net_beacon_filter_new(const uint8_t own_pk[NET_KEY_BYTES], size_t capacity,
                                         uint64_t max_skew_ms);
void net_beacon_filter_free(net_beacon_filter *f); /* NULL is fine */
/* Judges b at the receiver's time now_ms (ms since the Unix epoch: the clock is the caller's). */
net_beacon_verdict net_beacon_filter_check(net_beacon_filter *f, const net_beacon *b,
                                           uint64_t now_ms);
const char *net_beacon_verdict_name(net_beacon_verdict v);

/* ---- finding a node from an app (docs/discovery.md, "Apps") ---------------------------------- */

/* An app holds only the client key, so it cannot read beacons. It sends a PROBE datagram (to the
 * multicast group, or by unicast to a node's host, at the discovery port) sealed with a key
 * derived from the client key; every node of the fleet that hears it answers the sender by
 * unicast with an ANSWER sealed the same way: its node key and TCP port, bound to the probe's
 * random token. */
#define NET_PROBE_TOKEN_BYTES 16
typedef struct net_probe_answer {
    uint8_t node_pk[NET_KEY_BYTES];
    uint16_t tcp_port;
    uint64_t chunks, manifests; /* what the node's store holds */
} net_probe_answer;

/* The probe key: crypto_kdf_derive_from_key(out, 32, 1, "clprobe_", client_key). */
void net_probe_key(const uint8_t client_key[NET_KEY_BYTES], uint8_t out[NET_KEY_BYTES]);
/* Seal a probe / an answer into out (*len bytes, at most NET_PROBE_MAX_BYTES); nonce: 24
 * random bytes (the caller's, a seam). */
#define NET_PROBE_MAX_BYTES 160
void net_probe_seal(const uint8_t key[NET_KEY_BYTES], const uint8_t token[NET_PROBE_TOKEN_BYTES],
                    uint64_t time_ms, const uint8_t nonce[24], uint8_t *out, size_t *len);
void net_probe_answer_seal(const uint8_t key[NET_KEY_BYTES],
                           const uint8_t token[NET_PROBE_TOKEN_BYTES], const net_probe_answer *a,
                           const uint8_t nonce[24], uint8_t *out, size_t *len);
/* Open untrusted datagrams: 0, NET_EFORMAT (not a probe / answer of this version and size),
 * NET_EAUTH (not sealed with key). A probe's time is returned for the caller's staleness check;
 * an answer must carry the token of the probe it answers (NET_EAUTH otherwise). */
int net_probe_open(const uint8_t key[NET_KEY_BYTES], const uint8_t *buf, size_t len,
                   uint8_t token[NET_PROBE_TOKEN_BYTES], uint64_t *time_ms) NET_WUR;
int net_probe_answer_open(const uint8_t key[NET_KEY_BYTES], const uint8_t *buf, size_t len,
                          const uint8_t token[NET_PROBE_TOKEN_BYTES],
                          net_probe_answer *out) NET_WUR;

/* A node found by net_probe_find. */
typedef struct net_found_node {
    char host[64]; /* the numeric address the answer came from */
    net_probe_answer a;
} net_found_node;
/* Blocking, for apps and the CLI: sends a probe to host:port (a multicast group or a node's
 * address; port is the discovery port, 7421 by default), a few times within wait_ms, and
 * collects the distinct answers until wait_ms has passed (or, when host is not a multicast
 * group, the first answer has come). host is a numeric IPv4 address or a name. Returns the
 * number found (0..max), or a negative errno: -EHOSTUNREACH when host does not resolve to an
 * IPv4 address, the socket's error when no probe could be sent at all. */
int net_probe_find(const uint8_t client_key[NET_KEY_BYTES], const char *host, uint16_t port,
                   unsigned wait_ms, net_found_node *out, size_t max) NET_WUR;

#ifdef __cplusplus
}
#endif

#endif
