/* cli.h — shared by the `cloudlet` subcommands (private to cli/). */
#ifndef CLOUDLET_CLI_H
#define CLOUDLET_CLI_H

#include "chunkstore.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Exit statuses: 0 success, 1 failure (or a check that found problems), 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* A subcommand: argv[0] is its name ("store add"); options may stand anywhere after it. */
typedef int (*cli_cmd_fn)(int argc, char **argv);

/* Options every command takes; add CLI_COMMON_OPTIONS to each long-option table. */
enum { CLI_OPT_HOME = 0x100, CLI_OPT_JSON, CLI_OPT_HELP = 'h' };
#define CLI_COMMON_OPTIONS                                                                         \
    {"home", required_argument, NULL, CLI_OPT_HOME}, {"help", no_argument, NULL, CLI_OPT_HELP}

typedef struct cli_common {
    const char *home; /* from --home; resolved by cli_home() */
    bool json;
} cli_common;

/*
 * getopt_long over argv with permutation (options anywhere). Handles --home and --help itself
 * (printing usage and exiting 0); returns the next command-specific option, -1 at the end, or
 * '?' after printing the error and usage to stderr (the caller returns CLI_USAGE).
 */
int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
               const char *usage, cli_common *common);
/* For commands whose only options are the common ones (and --json when json is true): parses
 * them and checks that between nmin and nmax (-1: any number) arguments follow, which start
 * at optind. Returns CLI_OK, or CLI_USAGE after printing the error and the usage. */
int cli_parse_common(int argc, char **argv, const char *usage, bool json, int nmin, int nmax,
                     cli_common *common);
/* Prints "cloudlet CMD: <message>" to stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints usage to stderr after an error line, returns CLI_USAGE. */
int cli_usage_error(const char *usage, const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The node home: --home, else $CLOUDLET_HOME, else /var/lib/cloudlet for root, else
 * $XDG_DATA_HOME/cloudlet or ~/.local/share/cloudlet. Returns a malloc'd path. */
char *cli_home(const cli_common *common);
/* Opens the store of an initialised home, printing a clear error on failure (NULL then). */
cs_store *cli_open_store(const char *cmd, const cli_common *common, bool write);
/* Resolves a manifest id in hex or a name. Prints an error and returns false when neither. */
bool cli_resolve_id(const char *cmd, cs_store *st, const char *arg, cs_id *id);

/* Connects to the local cloudletd's control socket: the fd, or -1 after printing why (daemon
 * not running, socket unreachable). */
int cli_control_connect(const char *cmd, const cli_common *common);
/* Sends one request line to the local cloudletd and returns its answer line (malloc'd), or
 * prints why not (daemon not running, no answer within timeout_ms) and returns NULL. */
char *cli_control_request(const char *cmd, const cli_common *common, const char *request,
                          int timeout_ms);

/* The value of "key" in the daemon's JSON within [obj, end) (end NULL: to obj's NUL), copied
 * into out (cap bytes, NUL-terminated, backslash escapes undone): a number, a string's text,
 * true/false/null; "" when absent. The daemon's objects are flat where this is used, so the
 * first match is the field. Returns out. */
const char *cli_json_field(const char *obj, const char *end, const char *key, char *out,
                           size_t cap);

/* Sends one request line to the local cloudletd and reads its answer in the streaming form
 * (docs/control.md), calling on_line for each line (without its newline) until on_line returns
 * a value >= 0, which is returned. Returns -1 after printing why when the daemon cannot be
 * reached, stays silent for a minute, or closes first (or on SIGINT). */
int cli_stream_request(const char *cmd, const cli_common *common, const char *request,
                       int (*on_line)(const char *line, void *arg), void *arg);

/* The short form of a node key as the daemon writes it ("cloudlet-node-key:<hex>"): its first
 * `digits` hex digits, in out (digits + 1 bytes). Returns out. */
const char *cli_key_short(const char *key, size_t digits, char *out);

/* The end of `cloudlet vm import` and `vm capture`: the report then the id, or with --json the
 * report as one JSON object holding the id. */
struct node_import_report;
void cli_print_import(const cli_common *co, const struct node_import_report *r, const cs_id *id,
                      const char *name);

/* Columns of the terminal on standard error (80 when unknown). */
int cli_term_width(void);

/* "1.5 GiB" style; buf of 32 bytes. */
const char *cli_bytes(uint64_t n, char buf[32]);
/* Prints s as a JSON string (quotes included). */
void cli_json_str(FILE *f, const char *s);

/* Progress on a terminal (stderr): bytes, rate, ETA; silent when stderr is not a tty. */
typedef struct cli_progress {
    bool enabled, shown;
    const char *label;
    double start, last;
} cli_progress;
void cli_progress_init(cli_progress *p, const char *label);
void cli_progress_update(uint64_t done, uint64_t total, void *p); /* a cs_progress_fn */
void cli_progress_end(cli_progress *p);

/* The subcommands. */
int cmd_init(int argc, char **argv);
int cmd_fleet_key(int argc, char **argv);
int cmd_store_add(int argc, char **argv);
int cmd_store_cat(int argc, char **argv);
int cmd_store_stats(int argc, char **argv);
int cmd_store_verify(int argc, char **argv);
int cmd_store_gc(int argc, char **argv);
int cmd_store_rm(int argc, char **argv);
int cmd_overlay_export(int argc, char **argv);
int cmd_overlay_import(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_peers(int argc, char **argv);
int cmd_pull(int argc, char **argv);
int cmd_replication(int argc, char **argv);
int cmd_replicate(int argc, char **argv);
int cmd_vm_import(int argc, char **argv);
int cmd_ls(int argc, char **argv);
int cmd_manifest_show(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_launch(int argc, char **argv);
int cmd_vm_capture(int argc, char **argv);

#endif
