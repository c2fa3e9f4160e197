#!/usr/bin/env bash
# `cloudlet launch --discover` and `--node HOST` (a unicast probe) from an app in a network
# namespace of its own, to real daemons in theirs on one bridge (tests/lib/netns.sh), with
# discovery on and the default ports. The VM is a plain file, which no node can launch: the
# case checks that the app found the node, passed its handshake and had the launch answered by
# that node (its reason, `… has no disk image`), not libvirt. Exits 77 (skipped) when namespaces
# cannot be made here.
# Usage: client_netns_test.sh CLOUDLET CLOUDLETD CASE
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 CASE=$3
NODES_TAG=clnetns LAN=clc$$
# shellcheck source=../lib/lan_nodes.sh
. "$(dirname "$0")/../lib/lan_nodes.sh"

# Two nodes of a fleet (a, b) and an app holding the fleet's client key and a file.
lan() {
    lan_up
    "$CLOUDLET" init --home "$T/a" --new-fleet >/dev/null
    "$CLOUDLET" fleet-key --home "$T/a" >"$T/fleet.txt"
    "$CLOUDLET" init --home "$T/b" --fleet-key "$T/fleet.txt" >/dev/null
    "$CLOUDLET" fleet-key --home "$T/a" --client >"$T/client.txt"
    "$CLOUDLET" init --home "$T/app" --client-key "$T/client.txt" >/dev/null
    head -c 200000 /dev/urandom >"$T/file"
    ID=$("$CLOUDLET" store add --home "$T/app" "$T/file" | tail -1)
    lan_node a 198.18.0.1
    lan_node b 198.18.0.2
    lan_node app 198.18.0.9
    start a
    start b
}

# app_launch ARGS...: `cloudlet launch ID ARGS... --wait --json` in the app's namespace; the
# file cannot be launched, so it exits 1. Its output is in $T/out, its stderr in $T/err.
app_launch() {
    local rc=0
    ip netns exec "$LAN-app" "$CLOUDLET" launch --home "$T/app" "$ID" "$@" --wait --json \
        >"$T/out" 2>"$T/err" || rc=$?
    [ "$rc" = 1 ] || fail "launch $* exited $rc: $(cat "$T/err")"
    [ "$(json_get "$T/out" '["done"]')" = True ] || fail "the node did not answer: $(cat "$T/out")"
    grep -q 'has no disk image' "$T/err" || fail "not the node's reason: $(cat "$T/err")"
}

an_app_finds_the_fleets_nodes_by_discovery_and_launches_on_one() {
    lan
    app_launch --discover
    local got want
    got=$(json_get "$T/out" '["node"]["key"]')
    [ "$got" = "$(key_of a)" ] || [ "$got" = "$(key_of b)" ] || fail "launched on [$got]"
    got=$(python3 -c 'import json,sys; print(" ".join(sorted(n["key"] for n in json.load(open(sys.argv[1]))["nodes"])))' "$T/out")
    want=$(printf '%s\n%s\n' "$(key_of a)" "$(key_of b)" | sort | tr '\n' ' ' | sed 's/ $//')
    [ "$got" = "$want" ] || fail "discovery found [$got], expected [$want]"
    [ "$(json_get "$T/out" '["node"]["port"]')" = 7420 ] || fail "$(cat "$T/out")"
}

an_app_probes_the_node_it_names_and_launches_there() {
    lan
    app_launch --node 198.18.0.2
    [ "$(json_get "$T/out" '["node"]["key"]')" = "$(key_of b)" ] || fail "$(cat "$T/out")"
    [ "$(json_get "$T/out" '["node"]["host"]')" = 198.18.0.2 ] || fail "$(cat "$T/out")"
    grep -q "an app asks to launch $ID" "$T/b.log" || fail "b never heard the launch"
    ! grep -q "an app asks to launch" "$T/a.log" || fail "a heard a launch meant for b"
}

"$CASE"
