/* Fuzz target: the domain XML scanner (node_vm_xml_rewrite, node_vm_xml_first_disk) on arbitrary
 * bytes. A manifest's XML comes from other nodes, so the scanner reads untrusted text. */
#include "node.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *xml = malloc(size + 1);
    if (!xml) return 0;
    memcpy(xml, data, size);
    xml[size] = '\0';
    char err[NODE_ERRMSG], *out = NULL, *file = NULL, *format = NULL;
    node_vm_xml_edit e = {.name = "n<&'\"",
                          .uuid = "11111111-2222-4333-8444-555555555555",
                          .disk = "/l/disk.raw",
                          .accel = NODE_ACCEL_TCG,
                          .serial_sock = "/l/console.sock",
                          .serial_log = "/l/console.log"};
    if (node_vm_xml_rewrite(xml, &e, &out, err) == 0) {
        /* What was rewritten must read back: its first disk is the new one. */
        if (node_vm_xml_first_disk(out, &file, NULL, err) != 0 || !file ||
            strcmp(file, "/l/disk.raw") != 0)
            abort();
        free(file), file = NULL;
    }
    free(out);
    if (node_vm_xml_first_disk(xml, &file, &format, err) == 0) free(file), free(format);
    free(xml);
    return 0;
}
