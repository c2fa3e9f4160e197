# procs.sh — stopping the daemons a test started, for its EXIT trap.
# shellcheck shell=bash

# stop_pids PID...: SIGTERM to each, up to 5 s for each to exit (a clean shutdown), then
# SIGKILL; reaps them.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
