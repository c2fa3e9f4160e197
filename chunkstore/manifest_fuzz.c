/* Fuzz target: the manifest decoder on untrusted bytes, then re-encoding what it accepted,
 * which must reproduce the input exactly (one encoding per manifest). */
#include "cs_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cs_manifest *m;
    if (cs__manifest_decode(data, size, 1u << 16, &m) != 0) return 0;
    if (!m->has_parent) {
        uint8_t *buf;
        size_t len;
        if (cs_manifest_encode(m, NULL, &buf, &len, NULL) != 0) abort();
        if (len != size || memcmp(buf, data, size) != 0) abort();
        free(buf);
    }
    cs_manifest_free(m);
    return 0;
}
