/* Fuzz target: the segment decoder on arbitrary bytes (segments are read back from disk,
 * where they may be damaged). */
#include "cs_internal.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ZSTD_DCtx *dctx;
    static uint8_t *out;
    if (!dctx) dctx = ZSTD_createDCtx();
    if (!out) out = malloc(CS__SEG_SLOTS * CS_CHUNK_SIZE);
    unsigned n = 0;
    if (cs__seg_decode(dctx, data, size, out, &n) == 0 && (n == 0 || n > CS__SEG_SLOTS)) abort();
    return 0;
}
