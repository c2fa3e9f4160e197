/* common.c — what every `cloudlet` subcommand shares: options, the home, errors, output. */
#define _GNU_SOURCE
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cloudlet %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_usage_error(const char *usage, const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cloudlet %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n\n%s", usage);
    va_end(ap);
    return CLI_USAGE;
}

int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
               const char *usage, cli_common *common)
{
    opterr = 0;
    for (;;) {
        int prev = optind;
        int c = getopt_long(argc, argv, shortopts, longopts, NULL);
        switch (c) {
        case CLI_OPT_HOME: common->home = optarg; continue;
        case CLI_OPT_JSON: common->json = true; continue;
        case CLI_OPT_HELP:
            fputs(usage, stdout);
            exit(CLI_OK);
        case '?': {
            const char *bad = prev < argc ? argv[prev] : "?";
            if (optopt && strchr(shortopts, optopt))
                cli_usage_error(usage, argv[0], "option -%c needs a value", optopt);
            else if (optopt)
                cli_usage_error(usage, argv[0], "unknown option -%c", optopt);
            else
                cli_usage_error(usage, argv[0], "unknown option or missing value: %s", bad);
            return '?';
        }
        default: return c;
        }
    }
}

int cli_parse_common(int argc, char **argv, const char *usage, bool json, int nmin, int nmax,
                     cli_common *common)
{
    static const struct option with_json[] = {CLI_COMMON_OPTIONS,
                                               {"json", no_argument, NULL, CLI_OPT_JSON}, {0}};
    static const struct option plain[] = {CLI_COMMON_OPTIONS, {0}};
    int c;
    while ((c = cli_getopt(argc, argv, "h", json ? with_json : plain, usage, common)) != -1)
        if (c == '?') return CLI_USAGE;
    int n = argc - optind;
    if (n < nmin)
        return cli_usage_error(usage, argv[0], nmin == 1 && nmax == 1 ? "expected one argument" : "missing arguments");
    if (nmax >= 0 && n > nmax) return cli_usage_error(usage, argv[0], "unexpected argument %s", argv[optind + nmax]);
    return CLI_OK;
}

char *cli_home(const cli_common *common)
{
    char *home = node_home(common->home);
    if (!home) {
        perror("cloudlet");
        exit(CLI_FAIL);
    }
    return home;
}

cs_store *cli_open_store(const char *cmd, const cli_common *common, bool write)
{
    char *home = cli_home(common), *path = NULL;
    if (asprintf(&path, "%s/store", home) < 0) {
        perror("cloudlet");
        exit(CLI_FAIL);
    }
    cs_store *st = NULL;
    int rc = cs_open(path, write ? 0 : CS_OPEN_READONLY, &st);
    if (rc == CS_ENOTFOUND)
        cli_error(cmd, "no node home at %s (create it with `cloudlet init --home %s`)", home, home);
    else if (rc)
        cli_error(cmd, "cannot open the store at %s: %s", path, cs_strerror(rc));
    free(path);
    free(home);
    return st;
}

bool cli_resolve_id(const char *cmd, cs_store *st, const char *arg, cs_id *id)
{
    if (cs_id_from_hex(arg, id) == 0) return true;
    int rc = cs_name_get(st, arg, id);
    if (rc == 0) return true;
    if (rc == CS_ENOTFOUND || rc == CS_EFORMAT)
        cli_error(cmd, "%s is neither a 64-digit id nor a known name", arg);
    else
        cli_error(cmd, "cannot look up %s: %s", arg, cs_strerror(rc));
    return false;
}

const char *cli_bytes(uint64_t n, char buf[32])
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)n;
    unsigned u = 0;
    while (v >= 1024 && u < 5) v /= 1024, u++;
    if (u == 0) snprintf(buf, 32, "%llu B", (unsigned long long)n);
    else snprintf(buf, 32, "%.1f %s", v, units[u]);
    return buf;
}

void cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

/* ---- progress -------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cli_progress_init(cli_progress *p, const char *label)
{
    p->enabled = isatty(STDERR_FILENO);
    p->shown = false;
    p->label = label;
    p->start = p->last = now_s();
}

void cli_progress_update(uint64_t done, uint64_t total, void *arg)
{
    cli_progress *p = arg;
    if (!p->enabled) return;
    double t = now_s();
    if (t - p->last < 0.1 && done < total) return;
    p->last = t;
    double rate = t > p->start ? (double)done / (t - p->start) : 0;
    char d[32], tt[32], r[32], eta[32] = "--:--";
    if (rate > 0 && total >= done) {
        unsigned long s = (unsigned long)((double)(total - done) / rate);
        snprintf(eta, sizeof eta, "%lu:%02lu", s / 60, s % 60);
    }
    fprintf(stderr, "\r\033[K%s %s / %s  %s/s  ETA %s", p->label, cli_bytes(done, d),
            cli_bytes(total, tt), cli_bytes((uint64_t)rate, r), eta);
    p->shown = true;
}

void cli_progress_end(cli_progress *p)
{
    if (p->shown) fputs("\r\033[K", stderr);
    p->shown = false;
}

const char *cli_json_field(const char *obj, const char *end, const char *key, char *out,
                           size_t cap)
{
    if (!end) end = obj + strlen(obj);
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    out[0] = '\0';
    const char *p = strstr(obj, pat);
    if (!p || p >= end) return out;
    p += strlen(pat);
    if (*p == '"') p++;
    size_t k = 0;
    while (p < end && *p && *p != '"' && *p != ',' && *p != '}' && k + 1 < cap) {
        if (*p == '\\' && p + 1 < end) p++;
        out[k++] = *p++;
    }
    out[k] = '\0';
    return out;
}

const char *cli_key_short(const char *key, size_t digits, char *out)
{
    const char *colon = strchr(key, ':');
    const char *hex = colon ? colon + 1 : key;
    size_t n = strlen(hex) < digits ? strlen(hex) : digits;
    memcpy(out, hex, n);
    out[n] = '\0';
    return out;
}

int cli_term_width(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}
