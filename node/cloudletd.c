/*
 * cloudletd.c — the cloudlet node daemon: one libuv loop, the store, the control socket.
 *
 * Design notes:
 * - Everything that blocks (LMDB, hashing, file I/O) runs in uv_queue_work; the loop thread
 *   only moves bytes and timers.
 * - One daemon per home: an exclusive flock on <home>/cloudletd.lock, held for the process's
 *   life, so a second start fails clearly instead of sharing the control socket.
 * - Shutdown (SIGTERM, SIGINT) closes the listeners first, lets queued work finish (uv_run
 *   returns only when no request is pending), and closes the store last: every write already
 *   committed is durable, and no write is cut half-way.
 * - Without --foreground it forks, and the parent exits only once the child is serving (or
 *   reports why it could not), so `cloudletd && cloudlet status` works in scripts.
 */
#define _GNU_SOURCE
#include "node.h"
#include "node_daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: cloudletd [--home DIR] [--config FILE] [--foreground] [--log-level LEVEL]\n\n"
    "The cloudlet node daemon. It serves the node's chunk store to the `cloudlet` command over\n"
    "a Unix control socket (mode 0600). Stop it with SIGTERM or SIGINT.\n\n"
    "  --home DIR         the node home (default: $CLOUDLET_HOME, else /var/lib/cloudlet for\n"
    "                     root, else ~/.local/share/cloudlet); create it with `cloudlet init`\n"
    "  --config FILE      configuration (default: <home>/cloudlet.conf if present; see\n"
    "                     docs/config.md)\n"
    "  --foreground       stay in the foreground and log to standard error (default: detach\n"
    "                     and log to syslog)\n"
    "  --log-level LEVEL  error, warn, info or debug (overrides the configuration)\n"
    "  --version          print the version\n";

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cloudletd: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int main(int argc, char **argv)
{
    enum { OPT_HOME = 0x100, OPT_CONFIG, OPT_FG, OPT_LEVEL, OPT_VERSION };
    static const struct option opts[] = {
        {"home", required_argument, NULL, OPT_HOME},   {"config", required_argument, NULL, OPT_CONFIG},
        {"foreground", no_argument, NULL, OPT_FG},     {"log-level", required_argument, NULL, OPT_LEVEL},
        {"version", no_argument, NULL, OPT_VERSION},   {"help", no_argument, NULL, 'h'},
        {0}};
    const char *home_arg = NULL, *config = NULL, *level = NULL;
    bool foreground = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_HOME: home_arg = optarg; break;
        case OPT_CONFIG: config = optarg; break;
        case OPT_FG: foreground = true; break;
        case OPT_LEVEL: level = optarg; break;
        case OPT_VERSION: printf("cloudletd %s\n", CLOUDLET_VERSION); return 0;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cloudletd: unexpected argument %s\n\n%s", argv[optind], usage);
        return 2;
    }

    node_daemon d;
    char err[NODE_ERRMSG] = "";
    node_daemon_opts o = {.home = home_arg, .config = config, .log_level = level};
    int rc = node_daemon_prepare(&d, &o, err);
    if (rc) return fail("%s", err);

    int ready[2] = {-1, -1};
    if (!foreground) {
        if (pipe(ready) != 0) return fail("pipe: %s", strerror(errno));
        pid_t pid = fork();
        if (pid < 0) return fail("fork: %s", strerror(errno));
        if (pid > 0) { /* the parent reports the child's start-up and exits */
            close(ready[1]);
            char msg[NODE_ERRMSG + 1] = "";
            ssize_t n = read(ready[0], msg, NODE_ERRMSG);
            node_daemon_free_parent(&d);
            if (n > 0 && msg[0] == '+') return 0;
            return fail("%s", n > 1 ? msg + 1 : "the daemon exited during start-up");
        }
        close(ready[0]);
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDIN_FILENO), dup2(null, STDOUT_FILENO), dup2(null, STDERR_FILENO);
            if (null > 2) close(null);
        }
        node_log_to_syslog("cloudletd");
    }
    rc = node_daemon_start(&d, err);
    if (ready[1] >= 0) {
        char msg[NODE_ERRMSG + 1];
        int n = snprintf(msg, sizeof msg, "%c%s", rc ? '-' : '+', rc ? err : "");
        if (write(ready[1], msg, (size_t)n) < 0) { /* the parent is gone: nothing to tell */
        }
        close(ready[1]);
    }
    if (rc) {
        node_daemon_free(&d);
        return foreground ? fail("%s", err) : 1;
    }
    rc = node_daemon_run(&d);
    node_daemon_free(&d);
    return rc ? 1 : 0;
}
