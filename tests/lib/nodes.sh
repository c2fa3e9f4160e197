# nodes.sh — daemons of one fleet on 127.0.0.1 for tests through the real binaries. Source it
# after setting CLOUDLET, CLOUDLETD and NODES_TAG (names the temporary directory). Every daemon
# listens on 127.0.0.1 at a port the system picks (read back with `cloudlet status --json`),
# with discovery off, so nothing leaves the machine; the EXIT trap stops them all.
# shellcheck shell=bash
# shellcheck source=procs.sh
. "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
T=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-${NODES_TAG}-XXXXXX")
PIDS=()
cleanup() {
    stop_pids "${PIDS[@]}"
    [ -n "${KEEP:-}" ] && echo "kept $T" >&2 || rm -rf "$T"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for l in "$T"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -25 "$l" >&2; }; done
    exit 1
}
cl() { "$CLOUDLET" "$@"; }
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval("d"+sys.argv[2]))' "$1" "$2"; }
key_of() { tr -d '\n' <"$T/$1/node.pub"; }

# home NAME: a node home of the test's fleet, discovery off, listening on 127.0.0.1:any.
home() {
    local name=$1
    if [ ! -f "$T/fleet" ]; then
        cl init --home "$T/$name" --new-fleet >/dev/null
        cl fleet-key --home "$T/$name" >"$T/fleet"
    else
        cl init --home "$T/$name" --fleet-key "$T/fleet" >/dev/null
    fi
    printf 'discovery = off\nlisten = 127.0.0.1:0\n' >"$T/$name/cloudlet.conf"
}

# start NAME: its daemon; returns once it serves, with its port in PORT_NAME.
start() {
    local name=$1
    "$CLOUDLETD" --home "$T/$name" --foreground --log-level debug 2>>"$T/$name.log" &
    PIDS+=($!)
    eval "PID_$name=$!"
    for _ in $(seq 200); do [ -S "$T/$name/control.sock" ] && break; sleep 0.05; done
    [ -S "$T/$name/control.sock" ] || fail "cloudletd $name never served"
    cl status --home "$T/$name" --json >"$T/$name.status"
    local port
    port=$(json_get "$T/$name.status" '["listen"]' | sed 's/.*://')
    [ "$port" -gt 0 ] || fail "$name reports listen port $port"
    eval "PORT_$name=$port"
}

# peer_of NAME: the static peer line naming NAME's daemon.
peer_of() { local p="PORT_$1"; echo "peer = 127.0.0.1:${!p} $(key_of "$1")"; }
