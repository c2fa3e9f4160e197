#include "cs_internal.h"

#include <sodium.h>
#include <string.h>

const cs_id cs_zero_id = {{0}};

static bool all_zero(const uint8_t *p, size_t n)
{
    /* Word-wise; chunks are at least byte-aligned, memcpy keeps it defined. */
    uint64_t acc = 0;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc |= w;
        if ((i & 511) == 504 && acc) return false;
    }
    return acc == 0;
}

void cs_chunk_id(const void *chunk, cs_id *out)
{
    if (all_zero(chunk, CS_CHUNK_SIZE)) {
        *out = cs_zero_id;
        return;
    }
    crypto_generichash(out->b, CS_ID_BYTES, chunk, CS_CHUNK_SIZE, NULL, 0);
}

bool cs_id_is_zero(const cs_id *id)
{
    return all_zero(id->b, CS_ID_BYTES);
}

bool cs_id_equal(const cs_id *a, const cs_id *b)
{
    return memcmp(a->b, b->b, CS_ID_BYTES) == 0;
}

char *cs_id_to_hex(const cs_id *id, char out[CS_ID_HEX + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < CS_ID_BYTES; i++) {
        out[2 * i] = digits[id->b[i] >> 4];
        out[2 * i + 1] = digits[id->b[i] & 15];
    }
    out[CS_ID_HEX] = '\0';
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int cs_id_from_hex(const char *hex, cs_id *out)
{
    if (!hex || strlen(hex) != CS_ID_HEX) return CS_EFORMAT;
    for (unsigned i = 0; i < CS_ID_BYTES; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return CS_EFORMAT;
        out->b[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
