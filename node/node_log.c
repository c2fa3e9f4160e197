/* node_log.c — leveled logging to standard error or syslog. */
#define _GNU_SOURCE
#include "node_internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

static atomic_int level = NODE_LOG_INFO;
static atomic_bool use_syslog;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

void node_log_set_level(node_log_level l)
{
    atomic_store(&level, (int)l);
}

void node_log_to_syslog(const char *ident)
{
    openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    atomic_store(&use_syslog, true);
}

void node_log(node_log_level l, const char *fmt, ...)
{
    if ((int)l > atomic_load(&level)) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    va_list ap;
    va_start(ap, fmt);
    if (atomic_load(&use_syslog)) {
        vsyslog(prio[l], fmt, ap);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        pthread_mutex_lock(&mu);
        fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                names[l]);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        pthread_mutex_unlock(&mu);
    }
    va_end(ap);
}

double node__now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
