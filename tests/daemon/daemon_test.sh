#!/usr/bin/env bash
# cloudletd through its real binary: daemon_test.sh CLOUDLET CLOUDLETD CASE
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 CASE=$3
T=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-daemon-XXXXXX")
H=$T/home
cleanup() {
    [ -f "$H/cloudletd.lock" ] && pid=$(head -1 "$H/cloudletd.lock") && [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_status() {
    local want=$1; shift
    set +e; "$@" >"$T/out" 2>"$T/err"; local got=$?; set -e
    [ "$got" = "$want" ] || { cat "$T/out" "$T/err" >&2; fail "$* exited $got, expected $want"; }
}
wait_for() { for _ in $(seq 100); do [ -e "$1" ] && return 0; sleep 0.05; done; fail "$1 never appeared"; }
ask() { python3 - "$H/control.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode()); data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
print(data.decode(), end="")
PY
}

status_without_a_daemon_is_a_clear_error() {
    "$CLOUDLET" init --home "$H" >/dev/null
    expect_status 1 "$CLOUDLET" status --home "$H"
    grep -q "cloudletd is not running" "$T/err" || fail "$(cat "$T/err")"
}

serves_status_and_stops_cleanly_on_sigterm() {
    "$CLOUDLET" init --home "$H" >/dev/null
    "$CLOUDLETD" --home "$H" --foreground 2>"$T/log" &
    pid=$!
    wait_for "$H/control.sock"
    [ "$(stat -c %a "$H/control.sock")" = 600 ] || fail "control socket mode $(stat -c %a "$H/control.sock")"
    "$CLOUDLET" status --home "$H" --json >"$T/s.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["pid"] == int(sys.argv[2]), d' "$T/s.json" "$pid"
    kill -TERM "$pid"
    wait "$pid" || fail "cloudletd exited $? on SIGTERM"
    [ ! -e "$H/control.sock" ] || fail "control socket left behind"
    grep -q "SIGTERM: shutting down" "$T/log" || fail "no shutdown log: $(cat "$T/log")"
}

detaches_and_is_ready_when_it_returns() {
    "$CLOUDLET" init --home "$H" >/dev/null
    "$CLOUDLETD" --home "$H"
    "$CLOUDLET" status --home "$H" | grep -q "^cloudletd .* running as pid"
}

a_fleet_node_that_cannot_listen_is_refused_naming_the_address() {
    "$CLOUDLET" init --home "$H" --new-fleet >/dev/null
    # Something else holds a port on 127.0.0.1; the node is configured to listen on it.
    python3 -c 'import socket,sys,time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True); time.sleep(30)' >"$T/port" &
    holder=$!
    for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.05; done
    port=$(cat "$T/port")
    printf 'discovery = off\nlisten = 127.0.0.1:%s\n' "$port" >"$H/cloudlet.conf"
    expect_status 1 "$CLOUDLETD" --home "$H"
    kill "$holder" 2>/dev/null || true
    grep -q "cannot listen for peers on 127.0.0.1:$port" "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$H/control.sock" ] || fail "a daemon started anyway"
}

a_second_daemon_on_one_home_is_refused() {
    "$CLOUDLET" init --home "$H" >/dev/null
    "$CLOUDLETD" --home "$H"
    pid=$(head -1 "$H/cloudletd.lock")
    expect_status 1 "$CLOUDLETD" --home "$H" --foreground
    grep -q "another cloudletd is running on $H as pid $pid" "$T/err" || fail "$(cat "$T/err")"
    "$CLOUDLET" status --home "$H" >/dev/null || fail "the first daemon was disturbed"
}

missing_home_and_bad_config_are_clear_errors() {
    expect_status 1 "$CLOUDLETD" --home "$T/nowhere" --foreground
    grep -q "no node home at $T/nowhere" "$T/err" || fail "$(cat "$T/err")"
    "$CLOUDLET" init --home "$H" >/dev/null
    printf 'listen = 0.0.0.0:7420\nbeacon_intervall = 5\n' >"$H/cloudlet.conf"
    expect_status 1 "$CLOUDLETD" --home "$H" --foreground
    grep -q "cloudlet.conf: line 2: unknown key 'beacon_intervall'" "$T/err" || fail "$(cat "$T/err")"
    expect_status 2 "$CLOUDLETD" --bogus
}

junk_on_the_control_socket_gets_an_error_and_service_goes_on() {
    "$CLOUDLET" init --home "$H" >/dev/null
    "$CLOUDLETD" --home "$H"
    ask $'frobnicate\n' | grep -q '"error": "unknown request' || fail "no error for junk"
    head -c 5000 /dev/zero | tr '\0' 'x' >"$T/big"
    ask "$(cat "$T/big")" | grep -q "longer than 4096" || fail "no error for an oversized request"
    for _ in $(seq 20); do ask "partial" >/dev/null & done   # clients that never end their line
    wait
    "$CLOUDLET" status --home "$H" >/dev/null || fail "daemon stopped serving"
}

"$CASE"
echo "ok: $CASE"
