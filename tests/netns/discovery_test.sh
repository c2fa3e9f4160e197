#!/usr/bin/env bash
# LAN discovery between real daemons in network namespaces:
#   discovery_test.sh CLOUDLET CLOUDLETD CASE [PROBE_FIND]
#
# Each case builds its own LAN: a "switch" namespace holding a bridge, and one namespace per
# node joined to it by a veth pair, with addresses from 198.18.0.0/15 (reserved for network
# tests). Nothing is created in the caller's namespace, so the bridge can never reach a real
# interface; names carry this script's pid, so parallel runs cannot collide. Everything is torn
# down on exit, failed or not. Exits 77 (skipped) only when namespaces cannot be made here (or,
# for the lossy case alone, when iptables is missing).
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 CASE=$3 PROBE_FIND=${4:-}
ID=$$
T=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-netns-XXXXXX")
LAN=cl$ID
PIDS=()
# shellcheck source=../lib/netns.sh
. "$(dirname "$0")/../lib/netns.sh"

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$(($(now_ms) + 5000))
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.02; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    lan_down
    [ -n "${KEEP:-}" ] && echo "kept $T" >&2 || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' TERM INT HUP
fail() {
    echo "FAIL: $*" >&2
    for l in "$T"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -20 "$l" >&2; }; done
    exit 1
}
now_ms() { date +%s%3N; }

lan_up

# node_ns NAME N: namespace cl$ID-NAME with 198.18.0.N on the bridge.
node_ns() { lan_node "$1" "198.18.0.$2"; }

# home NAME [init options]: a node home; its config file is $T/NAME/cloudlet.conf.
home() {
    local name=$1; shift
    "$CLOUDLET" init --home "$T/$name" "$@" >/dev/null
}
key_of() { tr -d '\n' <"$T/$1/node.pub"; }
short() { local hex=${1#*:}; echo "${hex:0:12}"; } # the short form tables and logs show

# start NAME: cloudletd for home NAME in namespace cl$ID-NAME; returns once it serves.
start() {
    local name=$1
    ip netns exec "cl$ID-$name" "$CLOUDLETD" --home "$T/$name" --foreground --log-level debug \
        2>"$T/$name.log" &
    PIDS+=($!)
    eval "PID_$name=$!"
    local deadline=$(($(now_ms) + 10000))
    until [ -S "$T/$name/control.sock" ]; do
        [ "$(now_ms)" -lt "$deadline" ] || fail "cloudletd $name never served"
        sleep 0.02
    done
}
stop() {
    local pid
    eval "pid=\$PID_$1"
    kill -TERM "$pid"
    wait "$pid" || fail "cloudletd $1 exited $? on SIGTERM"
    ! grep -q "live handles" "$T/$1.log" || fail "cloudletd $1 left handles open"
}

# peers NAME: the node keys NAME's daemon lists as heard, one per line, sorted.
peers() {
    "$CLOUDLET" peers --home "$T/$1" --json >"$T/$1.peers.json" || fail "cloudlet peers on $1"
    python3 - "$T/$1.peers.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("\n".join(sorted(p["key"] for p in d["peers"] if p["heard"])))
PY
}
expect_set() { printf '%s\n' "$@" | grep -v '^$' | sort; }
# until_listed NAME DEADLINE_MS KEY...: polls until NAME lists exactly these keys.
until_listed() {
    local name=$1 deadline=$2; shift 2
    local want got
    want=$(expect_set "$@")
    while :; do
        got=$(peers "$name")
        [ "$got" = "$want" ] && return 0
        [ "$(now_ms)" -lt "$deadline" ] || fail "$name lists [$got], expected [$want]"
        sleep 0.05
    done
}
counter() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counters"][sys.argv[2]])' \
        "$T/$1.peers.json" "$2"
}

fleet_nodes_find_each_other_within_3s_and_outsiders_never() {
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    for n in b c d; do home "$n" --fleet-key "$T/fleet.key"; done
    home x --new-fleet # another fleet
    head -c 65536 /dev/urandom >"$T/file"
    "$CLOUDLET" store add --home "$T/b" "$T/file" >/dev/null # b's beacons say 16 chunks, 1 manifest
    local i=1
    for n in a b c d x; do node_ns "$n" $i; i=$((i + 1)); done
    local A B C D X
    A=$(key_of a) B=$(key_of b) C=$(key_of c) D=$(key_of d) X=$(key_of x)

    local t0 took
    t0=$(now_ms)
    for n in a b c x; do start "$n"; done
    until_listed a $((t0 + 3000)) "$B" "$C"
    until_listed b $((t0 + 3000)) "$A" "$C"
    until_listed c $((t0 + 3000)) "$A" "$B"
    took=$(($(now_ms) - t0))
    echo "3 nodes started together: each lists both others $took ms after the first start"

    # A node that starts late is heard at once and is answered without waiting for the others'
    # next periodic beacon (30 s away).
    t0=$(now_ms)
    start d
    until_listed d $((t0 + 3000)) "$A" "$B" "$C"
    until_listed a $((t0 + 3000)) "$B" "$C" "$D"
    until_listed b $((t0 + 3000)) "$A" "$C" "$D"
    until_listed c $((t0 + 3000)) "$A" "$B" "$D"
    took=$(($(now_ms) - t0))
    echo "a 4th node started later: it and the others list each other after $took ms"

    # The outsider's whole burst reached the nodes started with it, and was dropped; the
    # fleet's beacons reached the outsider, and were dropped.
    local deadline=$(($(now_ms) + 3000))
    for n in a b c x; do
        until peers "$n" >/dev/null && [ "$(counter "$n" foreign)" -ge 3 ]; do
            [ "$(now_ms)" -lt "$deadline" ] || fail "$n did not hear 3 foreign beacons"
            sleep 0.05
        done
    done
    [ -z "$(peers x)" ] || fail "the outsider lists $(peers x)"
    for n in a b c d; do
        peers "$n" | grep -q "$X" && fail "$n lists the outsider"
    done
    python3 - "$T/a.peers.json" "$B" <<'PY' || fail "b's summary: $(cat "$T/a.peers.json")"
import json, sys
[b] = [p for p in json.load(open(sys.argv[1]))["peers"] if p["key"] == sys.argv[2]]
assert (b["chunks"], b["manifests"], b["address"], b["source"]) == (16, 1, "198.18.0.2", "lan"), b
PY
    "$CLOUDLET" status --home "$T/a" >/dev/null || fail "cloudlet status"
    "$CLOUDLET" peers --home "$T/a" | grep -q "^$(short "$B") .*198\.18\.0\.2 .* lan$" ||
        fail "table: $("$CLOUDLET" peers --home "$T/a")"
}

nodes_find_each_other_when_a_third_of_the_beacons_are_lost() {
    command -v iptables >/dev/null || { echo "SKIP: iptables is not installed"; exit 77; }
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    for n in b c; do home "$n" --fleet-key "$T/fleet.key"; done
    local i=1
    for n in a b c; do
        node_ns "$n" $i
        # Every third datagram arriving at the beacon port is dropped, whoever sent it.
        ip netns exec "cl$ID-$n" iptables -A INPUT -p udp --dport 7421 \
            -m statistic --mode nth --every 3 --packet 0 -j DROP
        printf 'beacon_interval = 1\n' >"$T/$n/cloudlet.conf"
        i=$((i + 1))
    done
    local A B C t0 took
    A=$(key_of a) B=$(key_of b) C=$(key_of c)
    t0=$(now_ms)
    for n in a b c; do start "$n"; done
    until_listed a $((t0 + 3000)) "$B" "$C"
    until_listed b $((t0 + 3000)) "$A" "$C"
    until_listed c $((t0 + 3000)) "$A" "$B"
    took=$(($(now_ms) - t0))
    echo "with a third of the datagrams lost, 3 nodes list each other after $took ms"
    local dropped
    dropped=$(ip netns exec "cl$ID-a" iptables -L INPUT -v -x -n | awk '/DROP/ {print $1}')
    [ "$dropped" -ge 1 ] || fail "nothing was dropped"
}

replayed_and_forged_beacons_are_dropped() {
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    home b --fleet-key "$T/fleet.key"
    node_ns a 1
    node_ns b 2
    node_ns r 3 # an eavesdropper on the LAN, without the fleet key
    # r records the first beacon a sends to the group.
    ip netns exec "cl$ID-r" python3 - "$T/captured" <<'PY' &
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7421))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("239.255.67.76"), socket.inet_aton("0.0.0.0")))
s.settimeout(10)
while True:
    data, (ip, port) = s.recvfrom(2048)
    if ip == "198.18.0.1":
        open(sys.argv[1], "wb").write(data)
        break
PY
    local spy=$! A B t0
    A=$(key_of a) B=$(key_of b)
    t0=$(now_ms)
    until ip -n "cl$ID-r" maddr show dev eth0 | grep -q 239.255.67.76; do
        [ "$(now_ms)" -lt $((t0 + 5000)) ] || fail "r never joined the group"
        sleep 0.02
    done
    t0=$(now_ms)
    start a
    start b
    until_listed b $((t0 + 3000)) "$A"
    wait "$spy" || fail "r captured nothing"
    [ "$(stat -c %s "$T/captured")" = 121 ] || fail "captured $(stat -c %s "$T/captured") bytes"
    peers b >/dev/null
    local replayed0 foreign0
    replayed0=$(counter b replayed) foreign0=$(counter b foreign)
    # r sends the recorded beacon again 5 times, then a copy with one byte flipped and 121 random
    # bytes, by unicast to b from its own address.
    ip netns exec "cl$ID-r" python3 - "$T/captured" <<'PY'
import os, socket, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(data, ("198.18.0.2", 7421))
flipped = bytearray(data); flipped[60] ^= 1
s.sendto(bytes(flipped), ("198.18.0.2", 7421))
s.sendto(os.urandom(121), ("198.18.0.2", 7421))
PY
    local deadline=$(($(now_ms) + 3000))
    until peers b >/dev/null && [ "$(counter b replayed)" -ge $((replayed0 + 5)) ] &&
        [ "$(counter b foreign)" -ge $((foreign0 + 2)) ]; do
        [ "$(now_ms)" -lt "$deadline" ] || fail "b's counters: $(cat "$T/b.peers.json")"
        sleep 0.05
    done
    until_listed b 0 "$A"
    python3 - "$T/b.peers.json" <<'PY' || fail "a's entry moved: $(cat "$T/b.peers.json")"
import json, sys
[a] = json.load(open(sys.argv[1]))["peers"]
assert a["address"] == "198.18.0.1", a
PY
    echo "b dropped 5 replays and 2 forgeries from 198.18.0.3 and still lists a at 198.18.0.1"
}

a_stopped_node_expires_from_the_others() {
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    for n in b c; do home "$n" --fleet-key "$T/fleet.key"; done
    local i=1
    for n in a b c; do
        node_ns "$n" $i
        i=$((i + 1))
        printf 'beacon_interval = 1\npeer_timeout = 3\n' >"$T/$n/cloudlet.conf"
    done
    local A B C t0 took
    A=$(key_of a) B=$(key_of b) C=$(key_of c)
    t0=$(now_ms)
    for n in a b c; do start "$n"; done
    until_listed a $((t0 + 3000)) "$B" "$C"
    until_listed b $((t0 + 3000)) "$A" "$C"
    # Listed for longer than the timeout while it beacons...
    sleep 4
    [ "$(peers a)" = "$(expect_set "$B" "$C")" ] || fail "a lost a live peer: $(peers a)"
    # ... and gone once it has been silent for the timeout (plus the 0.25 s expiry tick and the
    # time polling takes).
    t0=$(now_ms)
    stop c
    until_listed a $((t0 + 6000)) "$B"
    until_listed b $((t0 + 6000)) "$A"
    took=$(($(now_ms) - t0))
    echo "a stopped node expired from the others' tables after $took ms (peer_timeout = 3 s)"
    # Its last beacon left at most one interval (+10 % jitter) before it stopped.
    [ "$took" -ge 1800 ] || fail "expired after $took ms, before the timeout"
    grep -q "expired (silent for 3 s)" "$T/a.log" || fail "no expiry in the log"
}

a_restarted_node_is_heard_again_at_once() {
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    home b --fleet-key "$T/fleet.key"
    node_ns a 1
    node_ns b 2
    local A B t0 before after took
    A=$(key_of a) B=$(key_of b)
    t0=$(now_ms)
    start a
    start b
    until_listed a $((t0 + 3000)) "$B"
    until_listed b $((t0 + 3000)) "$A"
    instance() {
        python3 -c 'import json,sys; print([p["instance"] for p in json.load(open(sys.argv[1]))["peers"]][0])' \
            "$T/a.peers.json"
    }
    before=$(instance)
    stop b
    t0=$(now_ms)
    start b # same key, new instance, sequence from the start: not a replay
    while :; do
        until_listed a 0 "$B"
        after=$(instance)
        [ "$after" != "$before" ] && break
        [ "$(now_ms)" -lt $((t0 + 3000)) ] || fail "a still holds b's old instance $before"
        sleep 0.05
    done
    until_listed b $((t0 + 3000)) "$A"
    took=$(($(now_ms) - t0))
    echo "a restarted node was listed again with its new instance after $took ms"
    grep -q "peer $(short "$B") at 198.18.0.2:7420 restarted" "$T/a.log" || fail "no restart in a's log"
    [ "$(counter a replayed)" = 0 ] || fail "a counted replays: $(cat "$T/a.peers.json")"
}

static_peers_work_with_discovery_off() {
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    for n in b c; do home "$n" --fleet-key "$T/fleet.key"; done
    local i=1
    for n in a b c; do node_ns "$n" $i; i=$((i + 1)); done
    printf 'discovery = off\npeer = 198.18.0.2:7420\n' >"$T/a/cloudlet.conf"
    printf 'discovery = off\npeer = 198.18.0.1:7420\npeer = 198.18.0.9:7420\n' >"$T/b/cloudlet.conf"
    printf 'discovery = off\n' >"$T/c/cloudlet.conf" # no static peers: silent and deaf
    local A B t0
    A=$(key_of a) B=$(key_of b)
    t0=$(now_ms)
    for n in a b c; do start "$n"; done
    until_listed a $((t0 + 3000)) "$B"
    until_listed b $((t0 + 3000)) "$A"
    sleep 1
    until_listed a 0 "$B"
    until_listed b 0 "$A"
    [ -z "$(peers c)" ] || fail "c lists $(peers c)"
    python3 - "$T/a.peers.json" "$T/b.peers.json" <<'PY' || fail "static entries: $(cat "$T"/[ab].peers.json)"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
assert not a["discovery"] and not a["joined"], a
[p] = a["peers"]
assert p["source"] == "static" and p["address"] == "198.18.0.2" and p["port"] == 7420, p
# b's second static peer never answers: listed, not heard.
silent = [p for p in b["peers"] if not p["heard"]]
assert [(p["address"], p["source"], p["key"]) for p in silent] == [("198.18.0.9", "static", None)], b
PY
    "$CLOUDLET" peers --home "$T/b" | grep -q "^? .*198\.18\.0\.9 .*never .*static$" ||
        fail "table: $("$CLOUDLET" peers --home "$T/b")"
}

a_node_without_a_fleet_has_no_peers_and_says_why() {
    home a
    node_ns a 1
    set +e
    "$CLOUDLET" peers --home "$T/a" >"$T/out" 2>"$T/err"
    local rc=$?
    set -e
    [ "$rc" = 1 ] && grep -q "cloudletd is not running" "$T/err" || fail "peers without a daemon: $rc $(cat "$T/err")"
    start a
    [ -z "$(peers a)" ] || fail "a lists $(peers a)"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["fleet"] is False and d["peers"] == [] and d["counters"]["sent"] == 0, d' \
        "$T/a.peers.json" || fail "$(cat "$T/a.peers.json")"
    "$CLOUDLET" peers --home "$T/a" | grep -q "no fleet key" || fail "$("$CLOUDLET" peers --home "$T/a")"
    "$CLOUDLET" peers --help | grep -q "^usage: cloudlet peers" || fail "no usage"
}


# probe NS KEYFILE HOST WAIT_MS: runs probe_find in namespace cl$ID-NS; what it prints, sorted,
# is in $T/found. Fails the case when probe_find fails.
probe() {
    ip netns exec "cl$ID-$1" "$PROBE_FIND" "$2" "$3" 7421 "$4" >"$T/found.raw" 2>"$T/probe.log" ||
        fail "probe_find $3: $(cat "$T/probe.log")"
    sort "$T/found.raw" >"$T/found"
}

# Three nodes of a fleet, an outsider of another fleet, and an app in its own namespace.
probe_lan() {
    home a --new-fleet
    (umask 077 && "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.key")
    (umask 077 && "$CLOUDLET" fleet-key --client --home "$T/a" >"$T/client.key")
    for n in b c; do home "$n" --fleet-key "$T/fleet.key"; done
    home x --new-fleet
    home y --new-fleet # never started: its client key opens no node's probes
    (umask 077 && "$CLOUDLET" fleet-key --client --home "$T/y" >"$T/other-client.key")
    head -c 65536 /dev/urandom >"$T/file"
    "$CLOUDLET" store add --home "$T/b" "$T/file" >/dev/null # b holds 16 chunks, 1 manifest
    local i=1
    for n in a b c x; do node_ns "$n" $i; i=$((i + 1)); done
    node_ns app 9
    for n in a b c x; do start "$n"; done
}

apps_find_every_node_of_the_fleet_by_multicast_within_2s() {
    probe_lan
    local t0 took got want
    t0=$(now_ms)
    probe app "$T/client.key" 239.255.67.76 2000
    took=$(($(now_ms) - t0))
    got=$(cat "$T/found")
    want=$(expect_set "$(key_of a) 198.18.0.1 7420 0 0" "$(key_of b) 198.18.0.2 7420 16 1" \
        "$(key_of c) 198.18.0.3 7420 0 0")
    [ "$got" = "$want" ] || fail "probe found [$got], expected [$want]"
    [ "$took" -lt 2500 ] || fail "probe took $took ms"
    echo "an app found the fleet's 3 nodes (not the outsider) by multicast in $took ms"
    # Each node heard the 3 probes: the fleet's answered them, the outsider dropped them.
    for n in a b c; do
        peers "$n" >/dev/null
        [ "$(counter "$n" probes_answered)" = 3 ] || fail "$n: $(cat "$T/$n.peers.json")"
    done
    peers x >/dev/null
    [ "$(counter x probes_answered)" = 0 ] && [ "$(counter x probes_dropped)" = 3 ] ||
        fail "x: $(cat "$T/x.peers.json")"
    grep -q "answered a probe from 198.18.0.9" "$T/a.log" || fail "no answer in a's log"
}

apps_with_another_fleets_client_key_find_no_node() {
    probe_lan
    local got
    probe app "$T/other-client.key" 239.255.67.76 1000
    got=$(cat "$T/found")
    [ -z "$got" ] || fail "another fleet's client key found [$got]"
    for n in a b c x; do
        peers "$n" >/dev/null
        [ "$(counter "$n" probes_answered)" = 0 ] && [ "$(counter "$n" probes_dropped)" = 3 ] ||
            fail "$n: $(cat "$T/$n.peers.json")"
    done
    echo "an app with another fleet's client key found no node; every node dropped its probes"
}

apps_find_exactly_the_node_they_probe_by_unicast() {
    probe_lan
    local t0 took got
    t0=$(now_ms)
    probe app "$T/client.key" 198.18.0.3 2000
    took=$(($(now_ms) - t0))
    got=$(cat "$T/found")
    [ "$got" = "$(key_of c) 198.18.0.3 7420 0 0" ] || fail "unicast probe to c found [$got]"
    [ "$took" -lt 1000 ] || fail "a unicast probe waited $took ms for its answer"
    for n in a b x; do
        peers "$n" >/dev/null
        [ "$(counter "$n" probes_answered)" = 0 ] || fail "$n answered a probe sent to c"
    done
    echo "a unicast probe to c found c alone in $took ms"

    # One source gets 6 answers at once, then one per 0.5 s: of 20 searches in a row from the
    # app (each of 3 probes within 50 ms), c answers 6 plus one per 0.5 s they took, and drops
    # the probes of the others.
    local found=0 most
    t0=$(now_ms)
    for _ in $(seq 20); do
        probe app "$T/client.key" 198.18.0.3 50
        [ -s "$T/found" ] && found=$((found + 1))
    done
    took=$(($(now_ms) - t0))
    most=$((6 + took / 500 + 1))
    peers c >/dev/null
    [ "$found" -ge 6 ] && [ "$found" -le "$most" ] &&
        [ "$(counter c probes_dropped)" -ge $((3 * (20 - found))) ] ||
        fail "found c $found times of 20 in $took ms: $(cat "$T/c.peers.json")"
    echo "20 searches in a row from one address in $took ms: c answered $found of them"
}

"$CASE"
