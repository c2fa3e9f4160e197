/* node_json.c — the little JSON the node writes. */
#include "node_internal.h"

void node__json_str(FILE *f, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u00%c%c", hex[*p >> 4], hex[*p & 15]);
        else fputc(*p, f);
    }
    fputc('"', f);
}
