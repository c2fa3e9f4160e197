/*
 * node_control.c — the control socket the `cloudlet` command talks to (docs/control.md).
 *
 * Design notes: a Unix stream socket, mode 0600, so only the node's user can drive it. A
 * client sends one request line (at most 4 KiB) and gets one JSON line back; the daemon then
 * closes the connection. Requests that read the store run on the worker pool; the loop only
 * parses the line and writes the answer. A client that never finishes its line costs one
 * small buffer until it goes away or overflows the limit.
 * Long work (a pull) answers in the streaming form: one JSON line per progress report and a
 * last line, then the close. The work belongs to its client: when the client goes away first,
 * the work is stopped (node__pull_detach), so nothing reports to a freed client.
 */
#define _GNU_SOURCE
#include "node_daemon.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REQUEST 4096
#define MAX_CLIENTS 64

typedef struct client {
    uv_pipe_t pipe;
    node_daemon *d;
    char buf[MAX_REQUEST];
    size_t len;
    bool answered, working, closed;
    bool draining; /* answered an oversized request: read the rest away before closing, so the
                      client is not reset before it reads the answer */
    bool streaming;  /* answering with progress lines (a pull) */
    bool stream_end; /* the last line is queued: close once it is written */
    unsigned writes; /* streamed lines not yet written */
    uv_work_t work;
    char *reply; /* malloc'd JSON line */
    uv_write_t wr;
    uv_shutdown_t shut;
} client;

static void client_free(client *c)
{
    if (c->streaming && !c->stream_end) {
        node__pull_detach(c->d, c);
        node__replication_detach(c->d, c);
    }
    c->d->control_clients--;
    free(c->reply);
    free(c);
}

/* A client whose request is on the worker pool is freed when the work comes back. */
static void on_closed(uv_handle_t *h)
{
    client *c = h->data;
    c->closed = true;
    if (!c->working) client_free(c);
}

static void close_client(client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->pipe)) uv_close((uv_handle_t *)&c->pipe, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void on_shutdown(uv_shutdown_t *r, int status)
{
    (void)r, (void)status; /* the read side closes the client on EOF or error */
}

/* After an answer to an oversized request: half-close, so the client sees the end of the
 * answer, and read away what it still sends until it closes. */
static void on_written(uv_write_t *w, int status)
{
    client *c = w->data;
    uv_stream_t *s = (uv_stream_t *)&c->pipe;
    if (status == 0 && c->draining && uv_shutdown(&c->shut, s, on_shutdown) == 0 &&
        uv_read_start(s, on_alloc, on_read) == 0)
        return;
    close_client(c);
}

static void send_reply(client *c)
{
    if (!c->reply) c->reply = strdup("{\"error\": \"out of memory\"}\n");
    uv_buf_t b = uv_buf_init(c->reply, (unsigned)strlen(c->reply));
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->pipe, &b, 1, on_written) != 0) close_client(c);
}

static char *jsonf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *jsonf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

/* JSON string escaping for paths (quotes and backslashes; control bytes dropped). */
static void json_escape(const char *in, char *out, size_t cap)
{
    size_t k = 0;
    for (; *in && k + 3 < cap; in++) {
        if (*in == '"' || *in == '\\') out[k++] = '\\';
        if ((unsigned char)*in >= 0x20) out[k++] = *in;
    }
    out[k] = '\0';
}

static void status_work(uv_work_t *w)
{
    client *c = w->data;
    node_daemon *d = c->d;
    cs_stats s;
    int rc = cs_stats_get(d->st, &s);
    char home[1024];
    json_escape(d->home, home, sizeof home);
    if (rc) {
        c->reply = jsonf("{\"error\": \"store: %s\"}\n", cs_strerror(rc));
        return;
    }
    char pk[NODE_KEY_TEXT];
    node_key_encode(NODE_KEY_NODE_PUBLIC, d->keys.node_pk, pk);
    c->reply = jsonf("{\"version\": \"%s\", \"pid\": %ld, \"home\": \"%s\", \"uptime_s\": %llu, "
                     "\"listen\": \"%s:%u\", \"discovery\": %s, "
                     "\"node_key\": \"%s\", \"fleet\": %s, "
                     "\"store\": {\"chunks\": %llu, \"logical_bytes\": %llu, \"stored_bytes\": %llu, "
                     "\"disk_bytes\": %llu, \"manifests\": %llu, \"pinned\": %llu}}\n",
                     CLOUDLET_VERSION, (long)getpid(), home,
                     (unsigned long long)((uv_now(&d->loop) - d->started_ms) / 1000),
                     d->cfg.listen.host, d->cfg.listen.port, d->cfg.discovery ? "true" : "false",
                     pk, d->keys.has_fleet ? "true" : "false",
                     (unsigned long long)s.chunks, (unsigned long long)s.logical_bytes,
                     (unsigned long long)s.stored_bytes, (unsigned long long)s.disk_bytes,
                     (unsigned long long)s.manifests, (unsigned long long)s.pinned);
}

static void work_done(uv_work_t *w, int status)
{
    client *c = w->data;
    c->working = false;
    if (c->closed) {
        client_free(c);
        return;
    }
    if (status == UV_ECANCELED && !c->reply) c->reply = strdup("{\"error\": \"shutting down\"}\n");
    send_reply(c);
}

typedef struct stream_write {
    uv_write_t wr;
    client *c;
    char line[];
} stream_write;

static void on_stream_written(uv_write_t *w, int status)
{
    stream_write *sw = w->data;
    client *c = sw->c;
    free(sw);
    c->writes--;
    if (status < 0 || (c->stream_end && c->writes == 0)) close_client(c);
}

/* A pull's report: one line to the client, as it is (the client reads as fast as it likes; the
 * pull reports a few lines per second). */
static void stream_line(const char *line, bool last, void *arg)
{
    client *c = arg;
    if (last) c->stream_end = true;
    if (c->closed || uv_is_closing((uv_handle_t *)&c->pipe)) return;
    size_t n = strlen(line);
    stream_write *sw = malloc(sizeof *sw + n + 1);
    if (!sw) {
        close_client(c);
        return;
    }
    memcpy(sw->line, line, n + 1);
    sw->c = c;
    sw->wr.data = sw;
    uv_buf_t b = uv_buf_init(sw->line, (unsigned)n);
    if (uv_write(&sw->wr, (uv_stream_t *)&c->pipe, &b, 1, on_stream_written) != 0) {
        free(sw);
        close_client(c);
        return;
    }
    c->writes++;
}

/* After starting work that answers in the streaming form (rc from its start): on success the
 * client's connection is read on, to learn when it goes away; on failure it gets one error line. */
static bool streaming(client *c, int rc, const char *err)
{
    if (rc) {
        c->streaming = false;
        char msg[2 * NODE_ERRMSG];
        json_escape(err[0] ? err : node_strerror(rc), msg, sizeof msg);
        c->reply = jsonf("{\"error\": \"%s\"}\n", msg);
        return false;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    return true;
}

/* "pull <manifest id> [peer]": answered in the streaming form. */
static bool start_pull(client *c, char *args)
{
    char *id_hex = strtok(args, " "), *peer = strtok(NULL, " "), *extra = strtok(NULL, " ");
    cs_id id;
    if (!id_hex || extra || cs_id_from_hex(id_hex, &id) != 0) {
        c->reply = strdup("{\"error\": \"usage: pull <manifest id: 64 hex digits> [peer]\"}\n");
        return false;
    }
    char err[NODE_ERRMSG] = "";
    c->streaming = true;
    return streaming(c, node__pull_start(c->d, &id, peer, stream_line, c, err), err);
}

/* "replication [manifest id] [k]" and "replicate <manifest id> <k>": the streaming form
 * (docs/replication.md). */
static bool start_replication(client *c, char *args, bool replicate)
{
    cs_id id;
    bool have_id = false, bad = false;
    unsigned long k = 2;
    int nk = 0;
    for (char *t = strtok(args, " "); t; t = strtok(NULL, " ")) {
        char *end;
        if (!have_id && cs_id_from_hex(t, &id) == 0) {
            have_id = true;
        } else if (nk == 0 && (k = strtoul(t, &end, 10), *end == '\0' && end != t)) {
            nk = 1;
        } else {
            bad = true;
        }
    }
    if (bad || k < 1 || k > 64 || (replicate && (!have_id || !nk))) {
        c->reply = strdup(replicate
                              ? "{\"error\": \"usage: replicate <manifest id: 64 hex digits> <copies: 1..64>\"}\n"
                              : "{\"error\": \"usage: replication [manifest id: 64 hex digits] [k: 1..64]\"}\n");
        return false;
    }
    char err[NODE_ERRMSG] = "";
    c->streaming = true;
    return streaming(c,
                     node__replication_start(c->d, have_id ? &id : NULL, (unsigned)k, replicate,
                                             stream_line, c, err),
                     err);
}

static void dispatch(client *c, char *line)
{
    c->answered = true;
    uv_read_stop((uv_stream_t *)&c->pipe);
    char *end = line + strlen(line);
    while (end > line && (end[-1] == ' ' || end[-1] == '\r')) *--end = '\0';
    if (!strcmp(line, "status")) {
        c->work.data = c;
        if (uv_queue_work(&c->d->loop, &c->work, status_work, work_done) == 0) {
            c->working = true;
            return;
        }
        c->reply = strdup("{\"error\": \"cannot queue the request\"}\n");
    } else if (!strncmp(line, "pull ", 5)) {
        if (start_pull(c, line + 5)) return;
    } else if (!strcmp(line, "replication") || !strncmp(line, "replication ", 12)) {
        if (start_replication(c, line + 11, false)) return;
    } else if (!strncmp(line, "replicate ", 10)) {
        if (start_replication(c, line + 10, true)) return;
    } else if (!strcmp(line, "peers")) {
        c->reply = node__peers_json(c->d); /* the table lives on the loop: answered here */
    } else {
        char req[64];
        json_escape(line, req, sizeof req);
        c->reply = jsonf("{\"error\": \"unknown request '%s'\"}\n", req);
    }
    send_reply(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    client *c = h->data;
    if (c->draining || c->streaming) c->len = 0;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(MAX_REQUEST - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    client *c = s->data;
    if (n < 0) {
        close_client(c);
        return;
    }
    if (c->draining || c->streaming) return;
    c->len += (size_t)n;
    char *nl = memchr(c->buf, '\n', c->len);
    if (nl) {
        *nl = '\0';
        dispatch(c, c->buf);
    } else if (c->len == MAX_REQUEST) {
        c->answered = c->draining = true;
        uv_read_stop(s);
        c->reply = strdup("{\"error\": \"request longer than 4096 bytes\"}\n");
        send_reply(c);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    node_daemon *d = server->data;
    if (status < 0) return;
    client *c = calloc(1, sizeof *c);
    if (!c) return;
    c->d = d;
    uv_pipe_init(&d->loop, &c->pipe, 0);
    c->pipe.data = c;
    d->control_clients++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0 || d->control_clients > MAX_CLIENTS) {
        close_client(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

int node__control_listen(node_daemon *d, char err[NODE_ERRMSG])
{
    uv_pipe_init(&d->loop, &d->control, 0);
    d->control.data = d;
    d->control_open = true;
    /* We hold the home's lock: a socket file left here is a dead daemon's. */
    unlink(d->control_path);
    mode_t old = umask(0177); /* the socket is created 0600 */
    int rc = uv_pipe_bind(&d->control, d->control_path);
    umask(old);
    if (rc == 0) rc = chmod(d->control_path, 0600) == 0 ? 0 : -errno;
    if (rc == 0) rc = uv_listen((uv_stream_t *)&d->control, 16, on_connection);
    if (rc) snprintf(err, NODE_ERRMSG, "control socket %s: %s", d->control_path, uv_strerror(rc));
    return rc;
}

static void close_if_client(uv_handle_t *h, void *arg)
{
    node_daemon *d = arg;
    if (h->type == UV_NAMED_PIPE && h != (uv_handle_t *)&d->control && !uv_is_closing(h))
        close_client(h->data);
}

void node__control_close(node_daemon *d)
{
    if (d->control_open && !uv_is_closing((uv_handle_t *)&d->control))
        uv_close((uv_handle_t *)&d->control, NULL);
    uv_walk(&d->loop, close_if_client, d);
}
