#!/usr/bin/env bash
# The mission end to end (docs/launch.md): three nodes and an app, each in its own network
# namespace on a bridge, real daemons with discovery on, real QEMU under libvirt, the test
# guest. Every node holds the base VM; only the app holds the custom VM.
#   1. The app launches the custom VM on node 1 by its id: node 1 takes the overlay from the
#      app, and the guest resumes and answers on its console.
#   2. The app launches it on node 2: node 2 takes it all from node 1, nothing from the app.
#   3. The replication view shows both nodes holding it.
#   4. Node 1 is killed during a launch on node 3: the launch completes from node 2 and the
#      app, and the guest resumes.
# Usage: fleet_launch_test.sh CLOUDLET CLOUDLETD CASE (the case is fleet_launch_by_id_end_to_end)
# Needs the fixtures vm and vmstore of vm_test.sh (sourced with its no-op case `true`).
set -euo pipefail
CLOUDLETD=$(readlink -f "$2")
FLEET_CASE=$3
# shellcheck source-path=SCRIPTDIR source=vm_test.sh
source "$(cd "$(dirname "$0")" && pwd)/vm_test.sh" "$1" true
[ -f "$W/guest" ] || skip "no test guest: the fixture vm (vm_test.sh setup) did not run here"
[ -f "$W/tick-before-save" ] || skip "no custom VM: the fixture vmstore did not run here"

scratch
LAN=clf$$
# shellcheck source=../lib/netns.sh
. "$HERE/../lib/netns.sh"
DPIDS=()
fleet_cleanup() {
    stop_pids "${DPIDS[@]}"
    lan_down
    case_cleanup
}
trap fleet_cleanup EXIT

in_ns() { local ns=$LAN-$1; shift; ip netns exec "$ns" "$@"; }
log() { echo "$(date +%T) $*"; }

# app_launch NODE-ADDRESS NAME OUT: the app (in its namespace) launches the custom VM there.
app_launch() {
    CASE_DOMAINS+=("$2")
    in_ns app "$CLOUDLET" launch --home "$H" custom --node "$1" --name "$2" --wait --json \
        >"$T/$3" 2>"$T/$3.err" || fail "launch on $1: $(cat "$T/$3.err")"
}

fleet_launch_by_id_end_to_end() {
    lan_up
    local i
    for i in 1 2 3; do lan_node n$i 198.18.0.$i; done
    lan_node app 198.18.0.10
    # The base's package, made once per fixture (app_launch_test.sh makes the same file).
    [ -f "$W/base.pkg" ] || cl overlay export --home "$H" --level 3 base "$W/base.pkg" >/dev/null
    for i in 1 2 3; do
        local n=$T/n$i
        # The fleet of the other app cases (app_launch_test.sh) when they ran: the app's home
        # is in one fleet.
        if [ -f "$W/fleet" ]; then
            cl init --home "$n" --fleet-key "$W/fleet" >/dev/null
        else
            cl init --home "$n" --new-fleet >/dev/null
            (umask 077 && cl fleet-key --home "$n" >"$W/fleet")
        fi
        printf 'launch_dir = %s\nbeacon_interval = 2\n' "$CLOUDLET_LAUNCH_DIR" >"$n/cloudlet.conf"
        # Node 3 takes at most 256 KiB/s: its launch lasts long enough to lose node 1 during it.
        [ "$i" != 3 ] || echo "rate_total = 256K" >>"$n/cloudlet.conf"
        cl overlay import --home "$n" "$W/base.pkg" >/dev/null
        # exec: the pid is the daemon's own (ip netns exec execs it too).
        (exec ip netns exec "$LAN-n$i" "$CLOUDLETD" --home "$n" --foreground --log-level debug \
            2>>"$n.log") &
        DPIDS+=($!)
        eval "PID_n$i=$!"
    done
    if [ ! -f "$H/client.key" ]; then
        cl fleet-key --home "$T/n1" --client >"$T/client.key"
        cl init --home "$H" --client-key "$T/client.key" >/dev/null
    fi
    log "three nodes up; waiting for each to hear the two others"
    # Every node knows the two others.
    local deadline=$((SECONDS + 20))
    for i in 1 2 3; do
        until cl peers --home "$T/n$i" --json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)["peers"]) == 2 else 1)'; do
            [ $SECONDS -lt $deadline ] || fail "node $i does not see its two neighbours"
            sleep 0.2
        done
    done
    local id
    id=$(cl manifest show --home "$H" custom --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

    log "launch on node 1"
    # 1. Node 1: the overlay from the app, nothing from the neighbours (they hold only the base).
    app_launch 198.18.0.1 "$P-f1" l1.json
    resumed "$P-f1"
    local o1 n1b
    o1=$(src_bytes "$T/l1.json" origin)
    n1b=$(src_bytes "$T/l1.json" neighbour)
    [ "$o1" -gt 0 ] && [ "$n1b" = 0 ] || fail "node 1 took $o1 bytes from the app, $n1b from neighbours"
    cl overlay export --home "$H" custom "$T/custom.pkg" >/dev/null
    local pkg
    pkg=$(stat -c %s "$T/custom.pkg")
    echo "node 1: $o1 bytes from the app (the overlay package is $pkg bytes)"
    [ "$o1" -le $((pkg * 6 / 5)) ] || fail "node 1 took $o1 bytes from the app for an overlay of $pkg"
    destroy_domain "$P-f1"

    log "launch on node 2"
    # 2. Node 2: everything from node 1, nothing from the app.
    app_launch 198.18.0.2 "$P-f2" l2.json
    resumed "$P-f2"
    local o2 n2b
    o2=$(src_bytes "$T/l2.json" origin)
    n2b=$(src_bytes "$T/l2.json" neighbour)
    [ "$o2" = 0 ] && [ "$n2b" -gt 0 ] || fail "node 2 took $o2 bytes from the app, $n2b from neighbours"
    echo "node 2: $n2b bytes from its neighbours, none from the app"
    destroy_domain "$P-f2"

    # 3. The replication view: nodes 1 and 2 hold all of it, node 3 only the base's share.
    cl replication --home "$T/n3" "$id" --json >"$T/repl.json" || fail "replication"
    python3 - "$T/repl.json" "$(tr -d '\n' <"$T/n1/node.pub")" "$(tr -d '\n' <"$T/n2/node.pub")" \
        "$(tr -d '\n' <"$T/n3/node.pub")" <<'PY' || fail "replication view: $(cat "$T/repl.json")"
import json, sys
d = json.load(open(sys.argv[1]))
m = d["manifests"][0]
share = {n["key"]: n["share"] for n in m["nodes"]}
assert share[sys.argv[2]] == 1.0 and share[sys.argv[3]] == 1.0, share
assert share[sys.argv[4]] < 1.0, share
assert m["lan_complete"] is True, m
print("replication: node 1 and node 2 hold 100 %, node 3", round(100 * share[sys.argv[4]], 1), "%")
PY

    log "launch on node 3, node 1 killed during it"
    # 4. Node 1 dies during a launch on node 3: node 2 (and the app) give the rest.
    CASE_DOMAINS+=("$P-f3")
    (exec ip netns exec "$LAN-app" "$CLOUDLET" launch --home "$H" custom --node 198.18.0.3 \
        --name "$P-f3" --wait --json >"$T/l3.json" 2>"$T/l3.err") &
    local app=$!
    for _ in $(seq 100); do grep -q "pull $id from" "$T/n3.log" 2>/dev/null && break; sleep 0.05; done
    sleep 1
    kill -9 "$PID_n1"
    wait "$PID_n1" 2>/dev/null || true
    ! kill -0 "$PID_n1" 2>/dev/null || fail "node 1 still runs"
    wait "$app" || fail "launch on node 3 after node 1 died: $(cat "$T/l3.err")"
    grep -q "pull: peer .* gone" "$T/n3.log" || fail "node 3 did not lose node 1 during its pull"
    local n2key
    n2key=$(tr -d '\n' <"$T/n2/node.pub" | sed 's/.*://' | cut -c1-12)
    [ "$(src_bytes "$T/l3.json" neighbour "$n2key")" -gt 0 ] || fail "node 2 gave nothing"
    resumed "$P-f3"
    echo "node 3: $(src_bytes "$T/l3.json" neighbour) bytes from neighbours, $(src_bytes "$T/l3.json" origin) from the app, node 1 killed during it"
}

"$FLEET_CASE"
