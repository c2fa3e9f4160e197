/* Fuzz target: the key line decoder (node_key_decode) on arbitrary bytes, for every kind. A
 * line it accepts must encode back to a line that decodes to the same key. */
#include "node.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int kind = NODE_KEY_NODE_SECRET; kind <= NODE_KEY_CLIENT; kind++) {
        uint8_t key[NODE_KEY_BYTES], back[NODE_KEY_BYTES];
        char err[NODE_ERRMSG], text[NODE_KEY_TEXT];
        if (node_key_decode((const char *)data, size, (node_key_kind)kind, key, err) != 0) {
            if (!memchr(err, '\0', sizeof err)) abort();
            continue;
        }
        node_key_encode((node_key_kind)kind, key, text);
        if (node_key_decode(text, strlen(text), (node_key_kind)kind, back, err) != 0 ||
            memcmp(key, back, sizeof key) != 0)
            abort();
    }
    return 0;
}
