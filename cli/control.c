/* control.c — talking to the local cloudletd over its control socket (docs/control.md). */
#define _GNU_SOURCE
#include "cli.h"
#include "node.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_REPLY (16u << 20)

static char *socket_path(const char *cmd, const cli_common *co)
{
    char *home = cli_home(co), *conf = node_home_path(home, "cloudlet.conf");
    node_config cfg;
    node_config_defaults(&cfg);
    char err[NODE_ERRMSG];
    int rc = conf ? node_config_load(conf, &cfg, err) : -ENOMEM;
    char *path = NULL;
    if (rc && rc != CS_ENOTFOUND)
        cli_error(cmd, "%s", err);
    else
        path = cfg.control_socket[0] ? strdup(cfg.control_socket)
                                     : node_home_path(home, "control.sock");
    free(conf);
    free(home);
    return path;
}

int cli_control_connect(const char *cmd, const cli_common *co)
{
    char *path = socket_path(cmd, co);
    if (!path) return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        cli_error(cmd, "control socket path too long: %s", path);
        free(path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        if (e == ENOENT || e == ECONNREFUSED)
            cli_error(cmd, "cloudletd is not running (no daemon at %s); start it with `cloudletd`",
                      path);
        else
            cli_error(cmd, "cannot reach cloudletd at %s: %s", path, strerror(e));
        if (fd >= 0) close(fd);
        free(path);
        return -1;
    }
    free(path);
    return fd;
}

char *cli_control_request(const char *cmd, const cli_common *co, const char *request,
                          int timeout_ms)
{
    int fd = cli_control_connect(cmd, co);
    if (fd < 0) return NULL;
    size_t rlen = strlen(request);
    char *line = malloc(rlen + 2);
    memcpy(line, request, rlen);
    line[rlen] = '\n';
    ssize_t w = write(fd, line, rlen + 1);
    free(line);
    char *reply = NULL;
    size_t len = 0, cap = 0;
    while (w == (ssize_t)rlen + 1) {
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, timeout_ms);
        if (pr == 0) {
            cli_error(cmd, "cloudletd did not answer within %d s", timeout_ms / 1000);
            free(reply);
            reply = NULL;
            break;
        }
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *p2 = cap <= MAX_REPLY ? realloc(reply, cap + 1) : NULL;
            if (!p2) break;
            reply = p2;
        }
        ssize_t r = read(fd, reply + len, cap - len);
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (!reply || len == 0) {
        if (w == (ssize_t)rlen + 1 && reply)
            cli_error(cmd, "cloudletd closed the connection without an answer");
        free(reply);
        return NULL;
    }
    reply[len] = '\0';
    return reply;
}

#define STREAM_LINE_MAX (4u << 20)
#define STREAM_IDLE_MS  60000 /* streaming answers report at least every few seconds */

int cli_stream_request(const char *cmd, const cli_common *co, const char *request,
                       int (*on_line)(const char *line, void *arg), void *arg)
{
    int fd = cli_control_connect(cmd, co);
    if (fd < 0) return -1;
    size_t rl = strlen(request);
    if (write(fd, request, rl) != (ssize_t)rl || write(fd, "\n", 1) != 1) {
        cli_error(cmd, "cannot send the request to cloudletd: %s", strerror(errno));
        close(fd);
        return -1;
    }
    char *buf = malloc(STREAM_LINE_MAX + 1);
    size_t len = 0;
    int result = -1;
    bool ended = false;
    while (buf && !ended) {
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, STREAM_IDLE_MS);
        if (pr == 0) {
            cli_error(cmd, "cloudletd said nothing for %d s", STREAM_IDLE_MS / 1000);
            break;
        }
        if (pr < 0 && errno == EINTR) break; /* interrupted: the caller decides */
        ssize_t r = pr < 0 ? -1 : read(fd, buf + len, STREAM_LINE_MAX - len);
        if (r <= 0) {
            cli_error(cmd, "cloudletd closed the connection before answering");
            break;
        }
        len += (size_t)r;
        buf[len] = '\0';
        char *nl;
        while (!ended && (nl = memchr(buf, '\n', len)) != NULL) {
            *nl = '\0';
            int lr = on_line(buf, arg);
            if (lr >= 0) {
                result = lr;
                ended = true;
            }
            size_t used = (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len - used);
            len -= used;
        }
        if (len == STREAM_LINE_MAX) {
            cli_error(cmd, "cloudletd sent a line longer than %u bytes", STREAM_LINE_MAX);
            break;
        }
    }
    free(buf);
    close(fd);
    return result;
}
