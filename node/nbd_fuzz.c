/* Fuzz target: the NBD server's protocol (vm_nbd.c) from the first byte of the handshake, the
 * input being everything the client sends. Anyone who reaches the export's socket speaks it.
 * Simple and structured replies, the meta context options and BLOCK_STATUS are all reached
 * (node__nbd_session knows of no hole: reads and extents are all data). */
#include "vm_nbd.h"

#include <errno.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Big enough for reads of many chunks, small enough that every read stays fast. */
#define FUZZ_EXPORT_SIZE ((1u << 20) + 1000u)

struct stream {
    const uint8_t *p;
    size_t left;
};

static int fuzz_recv(void *arg, void *buf, size_t n)
{
    struct stream *s = arg;
    if (n > s->left) return -ECONNRESET;
    memcpy(buf, s->p, n);
    s->p += n, s->left -= n;
    return 0;
}

static int fuzz_send(void *arg, const void *buf, size_t n)
{
    return 0;
}

static int fuzz_read_at(void *arg, uint64_t off, size_t len, uint8_t *out)
{
    if (off + len > FUZZ_EXPORT_SIZE) __builtin_trap(); /* the session checks the bounds */
    if (off % 7 == 3) return -EIO; /* some reads fail, as a missing chunk would */
    for (size_t i = 0; i < len; i++) out[i] = (uint8_t)((off + i) * 131u >> 3);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct stream s = {data, size};
    node__nbd_io io = {fuzz_recv, fuzz_send, fuzz_read_at, &s, FUZZ_EXPORT_SIZE};
    node_nbd_stats stats = {0};
    node__nbd_session(&io, &stats);
    return 0;
}
