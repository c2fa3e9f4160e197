#!/usr/bin/env bash
# Node keys and fleet keys through the real binaries: keys_test.sh CLOUDLET CLOUDLETD CASE
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 CASE=$3
T=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-keys-XXXXXX")
H=$T/home
cleanup() {
    for lock in "$T"/*/cloudletd.lock; do
        [ -f "$lock" ] && pid=$(head -1 "$lock") && [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap cleanup EXIT
cl() { "$CLOUDLET" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_status() { # expect_status N cmd...
    local want=$1; shift
    set +e; "$@" >"$T/out" 2>"$T/err"; local got=$?; set -e
    [ "$got" = "$want" ] || { cat "$T/out" "$T/err" >&2; fail "$* exited $got, expected $want"; }
}
mode() { stat -c %a "$1"; }
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d[sys.argv[2]]))' "$@"; }
KEY_RE='^cloudlet-node-key:[0-9a-f]{64}$'

init_makes_the_node_keys_private_and_prints_the_public_key() {
    cl init --home "$H" >"$T/out"
    [ "$(mode "$H/node.key")" = 600 ] || fail "node.key mode $(mode "$H/node.key")"
    [ "$(mode "$H/node.pub")" = 644 ] || fail "node.pub mode $(mode "$H/node.pub")"
    tail -1 "$T/out" | grep -Eq "$KEY_RE" || fail "last line is not the node key: $(tail -1 "$T/out")"
    [ "$(tail -1 "$T/out")" = "$(cat "$H/node.pub")" ] || fail "printed key is not node.pub"
    grep -q '^cloudlet-node-secret-key:[0-9a-f]\{64\}$' "$H/node.key" || fail "node.key: $(wc -c <"$H/node.key") bytes"
    ! grep -q secret "$T/out" || fail "init printed the secret key"
    grep -q "no fleet key" "$T/out" || fail "init does not say the node is alone"
}

init_never_replaces_the_node_keys() {
    (umask 0; cl init --home "$H" >/dev/null)
    [ "$(mode "$H/node.key")" = 600 ] || fail "node.key mode $(mode "$H/node.key") under umask 0"
    cp "$H/node.key" "$T/key.before"
    cl init --home "$H" >"$T/out"
    grep -q "already initialised" "$T/out" || fail "$(cat "$T/out")"
    ! grep -q "made the node's key pair" "$T/out" || fail "keys made again"
    cmp -s "$H/node.key" "$T/key.before" || fail "node.key replaced"
    [ "$(tail -1 "$T/out")" = "$(cat "$H/node.pub")" ] || fail "second init printed another key"
    ls "$H" | grep -q tmp && fail "temporary files left: $(ls "$H")"
    true
}

new_fleet_then_fleet_key_joins_a_second_home_to_it() {
    cl init --home "$T/a" --new-fleet >"$T/out"
    grep -q "made a new fleet key" "$T/out" || fail "$(cat "$T/out")"
    [ "$(mode "$T/a/fleet.key")" = 600 ] || fail "fleet.key mode $(mode "$T/a/fleet.key")"
    cl fleet-key --home "$T/a" >"$T/f"
    grep -Eq '^cloudlet-fleet-key:[0-9a-f]{64}$' "$T/f" || fail "fleet-key printed $(cat "$T/f")"
    cl init --home "$T/b" --fleet-key "$T/f" >"$T/out" 2>"$T/err"
    grep -q "joined the fleet" "$T/out" || fail "$(cat "$T/out" "$T/err")"
    [ "$(cl fleet-key --home "$T/b")" = "$(cat "$T/f")" ] || fail "b has another fleet key"
    [ "$(mode "$T/b/fleet.key")" = 600 ] || fail "b's fleet.key mode $(mode "$T/b/fleet.key")"
    [ "$(cat "$T/a/node.pub")" != "$(cat "$T/b/node.pub")" ] || fail "two nodes with one node key"
    # from standard input too, and joining again is a no-op
    cl fleet-key --home "$T/a" | cl init --home "$T/c" --fleet-key - >/dev/null
    [ "$(cl fleet-key --home "$T/c")" = "$(cat "$T/f")" ] || fail "c has another fleet key"
    cl init --home "$T/b" --fleet-key "$T/f" 2>/dev/null | grep -q "already in this fleet" || fail "rejoining"
}

a_copy_of_the_fleet_key_others_can_read_is_taken_with_a_warning() {
    cl init --home "$T/a" --new-fleet >/dev/null
    cl fleet-key --home "$T/a" >"$T/f"
    chmod 644 "$T/f"
    cl init --home "$T/b" --fleet-key "$T/f" >/dev/null 2>"$T/err"
    grep -q "warning: $T/f can be read by others" "$T/err" || fail "no warning: $(cat "$T/err")"
}

the_client_key_differs_from_the_fleet_key_and_is_stable() {
    cl init --home "$T/a" --new-fleet >/dev/null
    cl fleet-key --home "$T/a" >"$T/f"
    cl init --home "$T/b" --fleet-key "$T/f" >/dev/null 2>&1
    c1=$(cl fleet-key --home "$T/a" --client)
    [[ $c1 =~ ^cloudlet-client-key:[0-9a-f]{64}$ ]] || fail "client key $c1"
    [ "${c1#*:}" != "$(cut -d: -f2 "$T/f")" ] || fail "the client key is the fleet key"
    [ "$(cl fleet-key --home "$T/a" --client)" = "$c1" ] || fail "client key not stable"
    [ "$(cl fleet-key --home "$T/b" --client)" = "$c1" ] || fail "another node of the fleet gives another client key"
    cl fleet-key --home "$T/a" --client --json >"$T/j"
    [ "$(json_get "$T/j" client_key)" = "\"$c1\"" ] || fail "json $(cat "$T/j")"
    cl fleet-key --home "$T/a" --json >"$T/j"
    [ "$(json_get "$T/j" fleet_key)" = "\"$(cat "$T/f")\"" ] || fail "json $(cat "$T/j")"
}

a_client_key_is_refused_where_a_fleet_key_belongs() {
    cl init --home "$T/a" --new-fleet >/dev/null
    cl fleet-key --home "$T/a" --client >"$T/c"
    expect_status 1 cl init --home "$T/b" --fleet-key "$T/c"
    grep -q "client key" "$T/err" && grep -q "not a fleet key" "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$T/b" ] || fail "a refused key still made a home"
    printf 'cloudlet-fleet-key:1234\n' >"$T/short"
    expect_status 1 cl init --home "$T/b" --fleet-key "$T/short"
    grep -q "4 hex digits, expected 64" "$T/err" || fail "$(cat "$T/err")"
    expect_status 1 cl init --home "$T/b" --fleet-key "$T/nothing-here"
    grep -q "$T/nothing-here" "$T/err" || fail "$(cat "$T/err")"
}

a_home_in_a_fleet_refuses_a_new_or_another_fleet() {
    cl init --home "$T/a" --new-fleet >/dev/null
    cl init --home "$T/b" --new-fleet >/dev/null
    cl fleet-key --home "$T/a" >"$T/fa"
    cp "$T/a/fleet.key" "$T/before"
    expect_status 1 cl init --home "$T/a" --new-fleet
    grep -q "is in a fleet already" "$T/err" || fail "$(cat "$T/err")"
    cl fleet-key --home "$T/b" >"$T/fb"
    expect_status 1 cl init --home "$T/a" --fleet-key "$T/fb"
    grep -q "in another fleet already" "$T/err" || fail "$(cat "$T/err")"
    cmp -s "$T/a/fleet.key" "$T/before" || fail "fleet key changed"
    expect_status 2 cl init --home "$T/c" --new-fleet --fleet-key "$T/fa"
    grep -q "exclude each other" "$T/err" || fail "$(cat "$T/err")"
}

fleet_key_without_a_fleet_says_how_to_make_or_join_one() {
    cl init --home "$H" >/dev/null
    expect_status 1 cl fleet-key --home "$H"
    grep -q "cloudlet init --new-fleet" "$T/err" && grep -q "cloudlet init --fleet-key FILE" "$T/err" ||
        fail "$(cat "$T/err")"
    expect_status 1 cl fleet-key --home "$T/nowhere"
    grep -q "no node home at $T/nowhere" "$T/err" || fail "$(cat "$T/err")"
    expect_status 2 cl fleet-key --home "$H" extra
    cl fleet-key --help | grep -q "^usage: cloudlet fleet-key" || fail "no help"
    cl init --help | grep -q -- "--new-fleet" || fail "init --help does not name --new-fleet"
}

fleet_key_refuses_a_fleet_key_file_others_can_read() {
    cl init --home "$H" --new-fleet >/dev/null
    chmod 640 "$H/fleet.key"
    expect_status 1 cl fleet-key --home "$H"
    grep -q "$H/fleet.key can be read by group or others" "$T/err" && grep -q "chmod 600 $H/fleet.key" "$T/err" ||
        fail "$(cat "$T/err")"
}

daemon_refuses_key_files_others_can_read_naming_them() {
    cl init --home "$H" --new-fleet >/dev/null
    chmod 644 "$H/node.key"
    expect_status 1 "$CLOUDLETD" --home "$H" --foreground
    grep -q "$H/node.key can be read by group or others (mode 0644)" "$T/err" || fail "$(cat "$T/err")"
    grep -q "chmod 600 $H/node.key" "$T/err" || fail "$(cat "$T/err")"
    chmod 600 "$H/node.key"
    chmod 604 "$H/fleet.key"
    expect_status 1 "$CLOUDLETD" --home "$H"   # detached: the refusal still reaches the caller
    grep -q "$H/fleet.key can be read by group or others" "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$H/control.sock" ] || fail "a daemon started anyway"
}

daemon_without_a_node_key_says_how_to_make_it() {
    cl init --home "$H" >/dev/null
    rm "$H/node.key"
    expect_status 1 "$CLOUDLETD" --home "$H" --foreground
    grep -q "has no node key" "$T/err" && grep -q "cloudlet init --home $H" "$T/err" || fail "$(cat "$T/err")"
}

status_shows_the_node_key_and_whether_the_node_is_in_a_fleet() {
    cl init --home "$H" >/dev/null
    "$CLOUDLETD" --home "$H" --foreground 2>"$T/log" &
    pid=$!
    for _ in $(seq 100); do cl status --home "$H" --json >"$T/s.json" 2>/dev/null && break; sleep 0.05; done
    [ "$(json_get "$T/s.json" node_key)" = "\"$(cat "$H/node.pub")\"" ] || fail "status: $(cat "$T/s.json")"
    [ "$(json_get "$T/s.json" fleet)" = false ] || fail "status: $(cat "$T/s.json")"
    cl status --home "$H" >"$T/s.txt"
    grep -q "^fleet  *none: this node runs alone" "$T/s.txt" || fail "status: $(cat "$T/s.txt")"
    grep -q "^node key  *$(cat "$H/node.pub")$" "$T/s.txt" || fail "status: $(cat "$T/s.txt")"
    grep -q "no fleet key: this node runs alone" "$T/log" || fail "log: $(cat "$T/log")"
    grep -q "node key $(cat "$H/node.pub")" "$T/log" || fail "log: $(cat "$T/log")"
    kill -TERM "$pid"
    wait "$pid" || fail "cloudletd exited $?"

    cl init --home "$H" --new-fleet >/dev/null
    # A node in a fleet sends discovery beacons; this one runs on the host's own network.
    printf 'discovery = off\nlisten = 127.0.0.1:0\n' >"$H/cloudlet.conf"
    "$CLOUDLETD" --home "$H"
    cl status --home "$H" --json >"$T/s.json"
    [ "$(json_get "$T/s.json" fleet)" = true ] || fail "status: $(cat "$T/s.json")"
    cl status --home "$H" >"$T/s.txt"
    grep -q "^fleet  *yes: peers on 127.0.0.1:[1-9][0-9]* (discovery off)$" "$T/s.txt" ||
        fail "status: $(cat "$T/s.txt")"
    [ "$(json_get "$T/s.json" node_key)" = "\"$(cat "$H/node.pub")\"" ] || fail "status: $(cat "$T/s.json")"
}

"$CASE"
echo "ok: $CASE"
