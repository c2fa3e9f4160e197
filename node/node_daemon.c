/* node_daemon.c — the daemon's life: prepare, start, run, stop. */
#define _GNU_SOURCE
#include "node_daemon.h"
#include "node_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse_level(const char *s, node_log_level *out)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *out = (node_log_level)i;
            return 0;
        }
    return CS_EFORMAT;
}

int node_daemon_prepare(node_daemon *d, const node_daemon_opts *o, char err[NODE_ERRMSG])
{
    memset(d, 0, sizeof *d);
    d->lock_fd = -1;
    node_config_defaults(&d->cfg);
    if (!(d->home = node_home(o->home))) return -ENOMEM;
    struct stat sb;
    char *store = node_home_path(d->home, "store");
    bool initialised = store && stat(store, &sb) == 0;
    free(store);
    if (!initialised) {
        node__errf(err, "no node home at %s (create it with `cloudlet init --home %s`)", d->home, d->home);
        return CS_ENOTFOUND;
    }
    char *conf = o->config ? strdup(o->config) : node_home_path(d->home, "cloudlet.conf");
    if (!conf) return -ENOMEM;
    int rc = node_config_load(conf, &d->cfg, err);
    if (rc == CS_ENOTFOUND && !o->config) rc = 0; /* no file: the defaults */
    free(conf);
    if (rc) return rc;
    if (o->log_level && parse_level(o->log_level, &d->cfg.log_level)) {
        node__errf(err, "unknown log level %s (error, warn, info or debug)", o->log_level);
        return CS_EFORMAT;
    }
    node_log_set_level(d->cfg.log_level);
    if ((rc = node_keys_load(d->home, &d->keys, err))) return rc;

    char *lock = node_home_path(d->home, "cloudletd.lock");
    d->lock_fd = lock ? open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
    free(lock);
    if (d->lock_fd < 0) {
        node__errf(err, "cannot open the lock file in %s: %s", d->home, strerror(errno));
        return -errno;
    }
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(d->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        node__errf(err, "another cloudletd is running on %s%s%s", d->home, pid[0] ? " as pid " : "", pid);
        return CS_EBUSY;
    }

    d->control_path = d->cfg.control_socket[0] ? strdup(d->cfg.control_socket)
                                               : node_home_path(d->home, "control.sock");
    return d->control_path ? 0 : -ENOMEM;
}

static void on_signal(uv_signal_t *h, int signum)
{
    node_daemon *d = h->data;
    node_log(NODE_LOG_INFO, "%s: shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    node_daemon_stop(d);
}

int node_daemon_start(node_daemon *d, char err[NODE_ERRMSG])
{
    /* The store is opened here, after any fork: an LMDB environment must stay in the process
     * that opened it. */
    char *store = node_home_path(d->home, "store");
    int src = store ? cs_open(store, 0, &d->st) : -ENOMEM;
    if (src) node__errf(err, "cannot open the store at %s: %s", store ? store : d->home, cs_strerror(src));
    free(store);
    if (src) return src;

    /* The lock's fd was inherited across a fork: the pid is the serving process's. It is only
     * informational (for the error a second daemon prints); the lock is what counts. */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(d->lock_fd, 0) != 0 || pwrite(d->lock_fd, pid, (size_t)n, 0) != n)
        node_log(NODE_LOG_WARN, "cannot write the pid into the lock file");

    int rc = uv_loop_init(&d->loop);
    if (rc) {
        node__errf(err, "event loop: %s", uv_strerror(rc));
        return rc;
    }
    d->loop.data = d;
    d->started_ms = uv_now(&d->loop);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sigterm);
    d->sigint.data = d->sigterm.data = d;
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    if ((rc = node__control_listen(d, err))) {
        node_daemon_stop(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        return rc;
    }
    node_log(NODE_LOG_INFO, "cloudletd %s serving %s (control socket %s)", CLOUDLET_VERSION,
             d->home, d->control_path);
    char pk[NODE_KEY_TEXT];
    node_log(NODE_LOG_INFO, "node key %s",
             node_key_encode(NODE_KEY_NODE_PUBLIC, d->keys.node_pk, pk));
    if (!d->keys.has_fleet)
        node_log(NODE_LOG_WARN, "no fleet key: this node runs alone, with no peers and no apps "
                                "(join a fleet with `cloudlet init --fleet-key FILE`)");
    /* Before discovery: the beacons carry the port the exchange bound. */
    if ((rc = node__exchange_start(d, err))) {
        node_daemon_stop(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        return rc;
    }
    if ((rc = node__discovery_start(d, err))) {
        node_daemon_stop(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        return rc;
    }
    return 0;
}

void node_daemon_stop(node_daemon *d)
{
    if (d->stopping) return;
    d->stopping = true;
    node__control_close(d);
    node__replication_stop(d);
    node__launch_stop(d);
    node__exchange_stop(d);
    node__discovery_stop(d);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
}

int node_daemon_run(node_daemon *d)
{
    uv_run(&d->loop, UV_RUN_DEFAULT);
    node_log(NODE_LOG_INFO, "stopped");
    return 0;
}

void node_daemon_free_parent(node_daemon *d)
{
    if (d->lock_fd >= 0) close(d->lock_fd); /* the child holds the lock through its own fd */
    node_keys_wipe(&d->keys);
    free(d->control_path);
    free(d->home);
    memset(d, 0, sizeof *d);
}

void node_daemon_free(node_daemon *d)
{
    if (d->loop.data) {
        int rc = uv_loop_close(&d->loop);
        if (rc) node_log(NODE_LOG_WARN, "event loop closed with live handles: %s", uv_strerror(rc));
    }
    node__exchange_free(d);
    node__discovery_free(d);
    cs_close(d->st);
    if (d->control_path) unlink(d->control_path);
    if (d->lock_fd >= 0) close(d->lock_fd);
    node_keys_wipe(&d->keys);
    free(d->control_path);
    free(d->home);
    memset(d, 0, sizeof *d);
}
