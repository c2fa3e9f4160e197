#!/usr/bin/env bash
# `cloudlet pull` between nodes that found each other by LAN discovery, no static peers:
#   pull_netns_test.sh CLOUDLET CLOUDLETD CASE
#
# Three network namespaces on a bridge held in a fourth, with 198.18.0.0/15 addresses (reserved
# for network tests); nothing is created in the caller's namespace and everything is removed on
# exit. Exits 77 (skipped) when namespaces cannot be made here.
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 CASE=$3
ID=$$
NODES_TAG=pullns LAN=clp$ID
# shellcheck source=../lib/lan_nodes.sh
. "$(dirname "$0")/../lib/lan_nodes.sh"

lan_up

# node NAME N: namespace clpID-NAME holding 198.18.1.N on the bridge, and home $T/NAME.
node() {
    local name=$1 n=$2
    lan_node "$name" "198.18.1.$n"
    if [ ! -f "$T/fleet" ]; then
        cl init --home "$T/$name" --new-fleet >/dev/null
        (umask 077 && cl fleet-key --home "$T/$name" >"$T/fleet")
    else
        cl init --home "$T/$name" --fleet-key "$T/fleet" >/dev/null
    fi
    printf 'beacon_interval = 1\n' >"$T/$name/cloudlet.conf"
}

nodes_found_on_the_lan_are_the_sources() {
    node a 1; node b 2; node c 3
    head -c $((4 << 20)) /dev/urandom >"$T/file"
    local id
    id=$(cl store add --home "$T/a" "$T/file" | tail -1)
    cl store add --home "$T/b" "$T/file" >/dev/null
    start a; start b; start c
    # Until c has heard both.
    for _ in $(seq 100); do
        cl peers --home "$T/c" --json >"$T/peers.json"
        [ "$(python3 -c 'import json,sys; print(sum(p["heard"] for p in json.load(open(sys.argv[1]))["peers"]))' "$T/peers.json")" = 2 ] && break
        sleep 0.05
    done
    cl pull --home "$T/c" "$id" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    python3 - "$T/pull.json" <<'PY' || fail "report: $(cat "$T/pull.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["done"] == "pulled" and d["chunks_fetched"] == 1024, d
addrs = sorted(s["address"] for s in d["sources"])
assert addrs == ["198.18.1.1:7420", "198.18.1.2:7420"], addrs
assert all(s["chunks"] > 0 for s in d["sources"]), d["sources"]
PY
    cl store cat --home "$T/c" "$id" -o "$T/back"
    cmp "$T/file" "$T/back" || fail "the pulled file differs"
    # By node key, one source only.
    cl store rm --home "$T/c" "$id" >/dev/null
    kill -TERM "${PIDS[2]}"; wait "${PIDS[2]}" || true
    cl store gc --home "$T/c" >/dev/null
    start c
    for _ in $(seq 100); do
        cl peers --home "$T/c" --json >"$T/peers.json"
        [ "$(python3 -c 'import json,sys; print(sum(p["heard"] for p in json.load(open(sys.argv[1]))["peers"]))' "$T/peers.json")" = 2 ] && break
        sleep 0.05
    done
    cl pull --home "$T/c" "$id" --peer "$(tr -d '\n' <"$T/b/node.pub")" --json >"$T/pull.json" 2>"$T/pull.err" ||
        fail "pull: $(cat "$T/pull.err")"
    python3 - "$T/pull.json" <<'PY' || fail "report: $(cat "$T/pull.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert [s["address"] for s in d["sources"]] == ["198.18.1.2:7420"], d["sources"]
assert d["chunks_fetched"] == 1024, d
PY
}

"$CASE"
