#!/usr/bin/env bash
# `cloudlet pull` through the real binaries:
#   pull_test.sh CLOUDLET CLOUDLETD LIAR_PEER ASK_PEER CASE
#
# Nodes a and b hold a file, node c pulls it. Every daemon listens on 127.0.0.1 at a port the
# system picks (read back with `cloudlet status --json`), with discovery off; c knows a and b as
# static peers with their node keys. Nothing leaves the machine.
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 LIAR=$3 ASK=$4 CASE=$5
NODES_TAG=pull
# shellcheck source=../lib/nodes.sh
. "$(dirname "$0")/../lib/nodes.sh"

# Two sources with the same file (FILE_ID), and the puller c configured for both.
setup() {
    local size=$1
    home a; home b; home c
    head -c "$size" /dev/urandom >"$T/file"
    FILE_ID=$(cl store add --home "$T/a" "$T/file" | tail -1)
    [ "$(cl store add --home "$T/b" "$T/file" | tail -1)" = "$FILE_ID" ] || fail "ids differ"
    start a; start b
    { peer_of a; peer_of b; } >>"$T/c/cloudlet.conf"
}

check_pulled() {
    cl store verify --home "$T/c" >"$T/verify.out" || fail "verify on c: $(cat "$T/verify.out")"
    cl store cat --home "$T/c" "$FILE_ID" -o "$T/back"
    cmp "$T/file" "$T/back" || fail "the pulled file differs"
}

# source_field JSON INDEX FIELD
source_field() { json_get "$1" "[\"sources\"][$2][\"$3\"]"; }
source_index() { # the index of the source with NAME's key in the report
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); k=sys.argv[2]; print([s["key"] for s in d["sources"]].index(k))' "$1" "$(key_of "$2")"
}

pull_fetches_everything_from_both_sources() {
    setup $((8 << 20))
    start c
    cl pull --home "$T/c" "$FILE_ID" >"$T/pull.out" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    [ "$(tail -1 "$T/pull.out")" = "$FILE_ID" ] || fail "last line is not the id: $(cat "$T/pull.out")"
    grep -q "2048 chunks (8.0 MiB) fetched" "$T/pull.out" || fail "report: $(cat "$T/pull.out")"
    check_pulled
    # Bytes came from both sources.
    cl store rm --home "$T/c" "$FILE_ID" >/dev/null
    cl store gc --home "$T/c" >/dev/null
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    [ "$(json_get "$T/pull.json" '["chunks_fetched"]')" = 2048 ] || fail "$(cat "$T/pull.json")"
    for i in 0 1; do
        [ "$(source_field "$T/pull.json" $i bytes)" -gt 0 ] || fail "source $i gave nothing: $(cat "$T/pull.json")"
    done
    check_pulled
    # --peer by address: that source alone.
    cl store rm --home "$T/c" "$FILE_ID" >/dev/null
    cl store gc --home "$T/c" >/dev/null
    cl pull --home "$T/c" "$FILE_ID" --peer "127.0.0.1:$PORT_a" --json >"$T/pull.json" 2>"$T/pull.err" ||
        fail "pull: $(cat "$T/pull.err")"
    [ "$(json_get "$T/pull.json" '["sources"][0]["address"]')" = "127.0.0.1:$PORT_a" ] || fail "$(cat "$T/pull.json")"
    [ "$(json_get "$T/pull.json" '["sources"].__len__()')" = 1 ] || fail "$(cat "$T/pull.json")"
    check_pulled
    set +e; cl pull --home "$T/c" "$FILE_ID" --peer 127.0.0.9:1 >/dev/null 2>"$T/err"; local rc=$?; set -e
    [ "$rc" = 1 ] && grep -q "no known peer matches 127.0.0.9:1" "$T/err" || fail "unknown peer: $rc $(cat "$T/err")"
}

a_peer_sending_chunks_that_do_not_match_is_counted_and_another_serves() {
    home a; home c; home liar
    head -c $((2 << 20)) /dev/urandom >"$T/file"
    FILE_ID=$(cl store add --home "$T/a" "$T/file" | tail -1)
    start a
    "$LIAR" "$T/liar" >"$T/liar.port" 2>"$T/liar.log" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -s "$T/liar.port" ] && break; sleep 0.05; done
    { peer_of a; echo "peer = 127.0.0.1:$(cat "$T/liar.port") $(key_of liar)"; } >>"$T/c/cloudlet.conf"
    start c
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    i=$(source_index "$T/pull.json" liar); j=$(source_index "$T/pull.json" a)
    [ "$(source_field "$T/pull.json" "$i" chunks)" = 0 ] || fail "chunks from the liar: $(cat "$T/pull.json")"
    [ "$(source_field "$T/pull.json" "$i" failures)" -gt 0 ] || fail "liar not counted: $(cat "$T/pull.json")"
    [ "$(source_field "$T/pull.json" "$j" chunks)" = 512 ] || fail "$(cat "$T/pull.json")"
    grep -q "does not match its id: dropped" "$T/c.log" || fail "no log of the dropped chunks"
    check_pulled
}

chunks_damaged_at_one_source_come_from_the_other() {
    setup $((1 << 20))
    kill -TERM "$PID_a"; wait "$PID_a" || true
    python3 - "$T/a/store/data.mdb" "$T/file" <<'PY'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
f = open(sys.argv[2], 'rb').read()
for off in range(0, len(f), 4096):   # one flipped byte in every chunk (random: stored raw)
    at = data.find(f[off + 100:off + 164])
    assert at >= 0, "chunk bytes not found in the store"
    data[at + 10] ^= 0xff
open(sys.argv[1], 'r+b').write(data)
PY
    start a
    sed -i "/^peer = /d" "$T/c/cloudlet.conf"
    { peer_of a; peer_of b; } >>"$T/c/cloudlet.conf"
    start c
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    i=$(source_index "$T/pull.json" a)
    [ "$(source_field "$T/pull.json" "$i" not_held)" -ge 1 ] || fail "a was never asked? $(cat "$T/pull.json")"
    [ "$(source_field "$T/pull.json" "$i" chunks)" = 0 ] || fail "a sent damaged chunks: $(cat "$T/pull.json")"
    grep -q "is damaged in this store: not sent" "$T/a.log" || fail "a did not notice"
    check_pulled
}

killing_a_source_midway_still_completes() {
    setup $((8 << 20))
    printf 'rate_per_peer = 1M\n' >>"$T/c/cloudlet.conf"   # about 4 s with both sources
    start c
    "$CLOUDLET" pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" &
    local cli=$!
    for _ in $(seq 100); do
        [ "$(cl store stats --home "$T/c" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')" -ge 300 ] && break
        sleep 0.05
    done
    kill -KILL "$PID_b"
    wait "$cli" || fail "pull: $(cat "$T/pull.err")"
    i=$(source_index "$T/pull.json" b); j=$(source_index "$T/pull.json" a)
    [ "$(source_field "$T/pull.json" "$i" state)" = gone ] || fail "$(cat "$T/pull.json")"
    [ "$(source_field "$T/pull.json" "$i" chunks)" -lt 2048 ] || fail "$(cat "$T/pull.json")"
    [ "$(source_field "$T/pull.json" "$j" chunks)" -gt 1024 ] || fail "$(cat "$T/pull.json")"
    check_pulled
}

an_interrupted_pull_fetches_only_the_rest() {
    setup $((8 << 20))
    printf 'rate_total = 2M\n' >>"$T/c/cloudlet.conf"      # about 4 s in all
    start c
    "$CLOUDLET" pull --home "$T/c" "$FILE_ID" >"$T/pull1.out" 2>"$T/pull1.err" &
    local cli=$!
    for _ in $(seq 100); do
        [ "$(cl store stats --home "$T/c" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')" -ge 600 ] && break
        sleep 0.05
    done
    kill -KILL "$PID_c"                                     # the puller dies mid-pull
    wait "$cli" && fail "the first pull succeeded"
    rm -f "$T/c/control.sock"
    start c
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    local got before
    got=$(json_get "$T/pull.json" '["chunks_fetched"]'); before=$(json_get "$T/pull.json" '["held_before"]')
    [ "$before" -ge 600 ] || fail "held before: $before"
    [ $((got + before)) = 2048 ] || fail "fetched $got after $before: $(cat "$T/pull.json")"
    check_pulled
    # The same with the command interrupted instead of the daemon: the daemon stops the pull.
    cl store rm --home "$T/c" "$FILE_ID" >/dev/null
    kill -TERM "$PID_c"; wait "$PID_c" || true
    cl store gc --home "$T/c" >/dev/null
    start c
    "$CLOUDLET" pull --home "$T/c" "$FILE_ID" >"$T/pull2.out" 2>"$T/pull2.err" &
    cli=$!
    for _ in $(seq 100); do
        [ "$(cl store stats --home "$T/c" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')" -ge 600 ] && break
        sleep 0.05
    done
    kill -TERM "$cli"; wait "$cli" || true
    for _ in $(seq 100); do grep -q "cancelled: the requester went away" "$T/c.log" && break; sleep 0.05; done
    grep -q "cancelled: the requester went away" "$T/c.log" || fail "the pull went on without its requester"
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull3.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    got=$(json_get "$T/pull3.json" '["chunks_fetched"]'); before=$(json_get "$T/pull3.json" '["held_before"]')
    [ "$before" -ge 600 ] && [ $((got + before)) = 2048 ] || fail "fetched $got after $before"
    check_pulled
}

# Every progress line of a pull, read from the control socket as they come.
pull_lines() { python3 - "$T/$1/control.sock" "$2" "$T/lines" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1])
s.sendall(("pull %s\n" % sys.argv[2]).encode()); data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
open(sys.argv[3], "wb").write(data)
PY
}

caps_on_rate_and_chunks_in_flight_are_kept() {
    setup $((4 << 20))
    printf 'rate_total = 2M\nmax_inflight_per_peer = 64\n' >>"$T/c/cloudlet.conf"
    start c
    pull_lines c "$FILE_ID"
    python3 - "$T/lines" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
last = lines[-1]
assert last.get("done") == "pulled", last
assert last["chunks_fetched"] == 1024, last
# 4 MiB at 2 MiB/s, less the bucket's fifth of a second: not under 1.6 s.
assert last["ms"] >= 1600, last["ms"]
# Under the total cap the sources share it: striping by bytes in flight.
assert all(s["chunks"] > 256 for s in last["sources"]), last["sources"]
peak = max(s["inflight"] for l in lines for s in l["sources"])
assert 0 < peak <= 64, peak
phases = [l["phase"] for l in lines[:-1]]
assert phases[0] == "connect" and "fetch" in phases, phases
print("ms", last["ms"], "peak in flight", peak, "lines", len(lines))
PY
    check_pulled
    # On a terminal: progress with the rate, the ETA and the bytes of each source.
    cl store rm --home "$T/c" "$FILE_ID" >/dev/null
    kill -TERM "$PID_c"; wait "$PID_c" || true
    cl store gc --home "$T/c" >/dev/null
    start c
    if command -v script >/dev/null; then
        script -qec "$CLOUDLET pull --home $T/c $FILE_ID" /dev/null >"$T/tty.out" || fail "$(cat "$T/tty.out")"
        grep -q "ETA [0-9]*:[0-9][0-9]" "$T/tty.out" || fail "no ETA on a terminal: $(cat "$T/tty.out")"
        grep -q "/s " "$T/tty.out" || fail "no rate on a terminal"
        grep -q "$(key_of a | cut -d: -f2 | cut -c1-8) [0-9.]* [KM]iB" "$T/tty.out" || fail "no bytes by source"
        grep -q "^$FILE_ID" "$T/tty.out" || fail "no id at the end: $(cat "$T/tty.out")"
    fi
}

junk_connections_do_not_stop_a_pull() {
    setup $((16 << 20))
    start c
    # 1,000 connections from ten other local addresses, at most 100 open at once, each sending
    # what an outsider can: bytes of the size of a handshake initiation, or a huge length prefix,
    # or nothing at all. Bounded in count and time.
    python3 - "$PORT_a" >"$T/junk.out" 2>&1 <<'PY' &
import os, socket, sys, time
port, made, connected, open_ = int(sys.argv[1]), 0, 0, []
deadline = time.time() + 60
while made < 1000 and time.time() < deadline:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.bind(("127.0.0.%d" % (5 + made % 10), 0))
        s.connect(("127.0.0.1", port))
        connected += 1
        kind = made % 3
        if kind == 0: s.sendall((128).to_bytes(4, "big") + os.urandom(128))
        elif kind == 1: s.sendall(b"\xff\xff\xff\xff" + os.urandom(64))
    except OSError:
        pass
    made += 1
    if made == 200: print("under way", flush=True)
    open_.append(s)
    if len(open_) >= 100:
        for o in open_: o.close()
        open_ = []
for o in open_: o.close()
print("junk connections made:", made, "connected:", connected)
PY
    local junk=$!
    for _ in $(seq 200); do grep -q "under way" "$T/junk.out" && break; sleep 0.05; done
    cl pull --home "$T/c" "$FILE_ID" --peer "127.0.0.1:$PORT_a" --json >"$T/pull.json" 2>"$T/pull.err" ||
        fail "pull under junk: $(cat "$T/pull.err")"
    wait "$junk"
    grep -Eq "junk connections made: 1000 connected: (9[0-9][0-9]|1000)$" "$T/junk.out" ||
        fail "junk: $(cat "$T/junk.out")"
    [ "$(json_get "$T/pull.json" '["chunks_fetched"]')" = 4096 ] || fail "$(cat "$T/pull.json")"
    check_pulled
    # The source still serves once the junk is over: c pulls it again.
    cl store rm --home "$T/c" "$FILE_ID" >/dev/null
    cl store gc --home "$T/c" >/dev/null
    cl pull --home "$T/c" "$FILE_ID" --peer "127.0.0.1:$PORT_a" >/dev/null 2>"$T/pull.err" ||
        fail "pull after junk: $(cat "$T/pull.err")"
    check_pulled
}

an_unknown_manifest_is_a_clear_error() {
    setup 65536
    start c
    local id
    id=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    set +e; cl pull --home "$T/c" "$id" >"$T/out" 2>"$T/err"; local rc=$?; set -e
    [ "$rc" = 1 ] || fail "pull of an unknown manifest exited $rc"
    grep -q "unknown manifest $id: no peer holds it (2 asked)" "$T/err" || fail "error: $(cat "$T/err")"
    set +e; cl pull --home "$T/c" "not-an-id" >"$T/out" 2>"$T/err"; rc=$?; set -e
    [ "$rc" = 2 ] || fail "a bad id exited $rc"
}

a_derived_manifest_brings_its_parent() {
    home a; home b; home c
    head -c $((2 << 20)) /dev/urandom >"$T/base"
    cp "$T/base" "$T/file"
    dd if=/dev/urandom of="$T/file" bs=4096 seek=100 count=10 conv=notrunc status=none
    for n in a b; do
        base=$(cl store add --home "$T/$n" "$T/base" | tail -1)
        cl store add --home "$T/$n" --parent "$base" "$T/file" | tail -1 >"$T/child.$n"
    done
    FILE_ID=$(cat "$T/child.a")
    start a; start b
    { peer_of a; peer_of b; } >>"$T/c/cloudlet.conf"
    start c
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    [ "$(json_get "$T/pull.json" '["chunks_fetched"]')" = 512 ] || fail "$(cat "$T/pull.json")"
    check_pulled
    cl ls --home "$T/c" --json >"$T/ls.json"
    python3 - "$T/ls.json" "$base" <<'PY' || fail "the parent is not kept: $(cat "$T/ls.json")"
import json, sys
d = json.load(open(sys.argv[1]))
items = d if isinstance(d, list) else d.get("manifests", [])
assert any(sys.argv[2] in json.dumps(m) for m in items)
PY
    cl store gc --home "$T/c" >/dev/null
    check_pulled                                   # gc keeps the pinned child and its parent
}

# 34,816 distinct (compressible) chunks: the manifest is over 1 MiB, so it travels in parts.
a_manifest_longer_than_one_message_arrives_in_parts() {
    home a; home b; home c
    python3 - "$T/file" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    pad = b"cloudlet" * 511
    for i in range(34816):
        f.write(i.to_bytes(8, "little") + pad)
PY
    FILE_ID=$(cl store add --home "$T/a" "$T/file" | tail -1)
    cl store add --home "$T/b" "$T/file" >/dev/null
    start a; start b
    { peer_of a; peer_of b; } >>"$T/c/cloudlet.conf"
    start c
    cl pull --home "$T/c" "$FILE_ID" --json >"$T/pull.json" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    [ "$(json_get "$T/pull.json" '["chunks_fetched"]')" = 34816 ] || fail "$(cat "$T/pull.json")"
    check_pulled
}

a_peer_gets_chunks_and_an_app_is_refused() {
    home a; home c
    head -c 4096 /dev/urandom >"$T/file"
    cl store add --home "$T/a" "$T/file" >/dev/null
    local chunk
    chunk=$(python3 -c 'import hashlib,sys; print(hashlib.blake2b(open(sys.argv[1],"rb").read(), digest_size=32).hexdigest())' "$T/file")
    start a
    "$ASK" "$T/c" peer "$PORT_a" "$(key_of a)" "$chunk" >"$T/ask" || fail "ask: $(cat "$T/ask")"
    grep -qx "chunks 1 verified" "$T/ask" || fail "peer got: $(cat "$T/ask")"
    "$ASK" "$T/c" peer "$PORT_a" "$(key_of a)" "$(printf '%064d' 7)" >"$T/ask" || fail "ask: $(cat "$T/ask")"
    grep -qx "dont_have 1" "$T/ask" || fail "peer got: $(cat "$T/ask")"
    "$ASK" "$T/c" client "$PORT_a" "$(key_of a)" "$chunk" >"$T/ask" || fail "ask: $(cat "$T/ask")"
    grep -qx "closed stream truncated (no FINAL message)" "$T/ask" || fail "an app got: $(cat "$T/ask")"
    grep -q "an app (.*) asked for chunks or manifests: cut off" "$T/a.log" || fail "no log of the refusal"
}

# Not a ctest case: the figure in docs/fetch.md. MiB of random data (default 256) pulled from
# two sources, timed from the command's start to its end.
bench_pull() {
    local mb=${CLOUDLET_PULL_BENCH_MB:-256}
    setup $((mb << 20))
    start c
    local t0 t1
    t0=$(date +%s%N)
    cl pull --home "$T/c" "$FILE_ID" >"$T/pull.out" 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    t1=$(date +%s%N)
    check_pulled
    cat "$T/pull.out"
    python3 -c 'import sys; mb, ns = int(sys.argv[1]), int(sys.argv[2]); print("%d MiB in %.2f s: %.0f MiB/s" % (mb, ns / 1e9, mb / (ns / 1e9)))' "$mb" $((t1 - t0))
}

"$CASE"
