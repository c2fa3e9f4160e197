#!/usr/bin/env bash
# `cloudlet replication` and `cloudlet replicate` through the real binaries:
#   replication_test.sh CLOUDLET CLOUDLETD CASE
#
# Three daemons of one fleet on 127.0.0.1, each at a port the system picks (read back with
# `cloudlet status --json`), discovery off. a holds a file; b knows a; c knows a and b (static
# peers with their node keys) and is the node asked. Nothing leaves the machine.
set -euo pipefail
CLOUDLET=$1 CLOUDLETD=$2 CASE=$3
NODES_TAG=repl
# shellcheck source=../lib/nodes.sh
. "$(dirname "$0")/../lib/nodes.sh"

# A file of SIZE bytes on a only; b knows a; c knows a and b.
setup() {
    local size=$1
    home a; home b; home c
    head -c "$size" /dev/urandom >"$T/file"
    FILE_ID=$(cl store add --home "$T/a" "$T/file" | tail -1)
    NCHUNKS=$((size / 4096))
    start a
    peer_of a >>"$T/b/cloudlet.conf"
    start b
    { peer_of a; peer_of b; } >>"$T/c/cloudlet.conf"
    start c
}

# view OUT [ARGS...]: `cloudlet replication --json` on c.
view() {
    local out=$1; shift
    cl replication --home "$T/c" --json "$@" >"$T/$out" 2>"$T/$out.err" || fail "replication: $(cat "$T/$out.err")"
}

# check VIEW.JSON EXPR...: python assertions with d (the answer), m (the first manifest) and
# share(name), node(name) for the nodes a, b, c.
check() {
    local f=$1; shift
    python3 - "$T/$f" "$(key_of a)" "$(key_of b)" "$(key_of c)" "$@" <<'PY' || fail "$f: $(cat "$T/$f")"
import json, sys
d = json.load(open(sys.argv[1]))
keys = dict(zip("abc", sys.argv[2:5]))
m = d["manifests"][0] if d.get("manifests") else None
def node(n):
    return [x for x in m["nodes"] if x["key"] == keys[n]][0]
def share(n):
    return node(n)["share"]
for expr in sys.argv[5:]:
    assert eval(expr), expr
PY
}

a_file_on_one_node_shows_there_only_then_where_it_was_pulled() {
    setup $((1 << 20))
    view v1.json "$FILE_ID"
    check v1.json 'len(d["manifests"]) == 1' 'm["manifest"] == "'"$FILE_ID"'"' \
        "m['unique_chunks'] == $NCHUNKS" 'share("a") == 1.0' 'share("b") == 0' 'share("c") == 0' \
        "node('b')['missing_bytes'] == $NCHUNKS * 4096" 'node("c")["self"] is True' \
        "m['histogram'] == [0, $NCHUNKS, 0, 0]" "m['under_k'] == $NCHUNKS" 'm["k"] == 2' \
        'm["lan_complete"] is True' 'len(m["under_k_ids"]) == 8' \
        'all(n["reachable"] for n in d["nodes"]) and len(d["nodes"]) == 3'
    # Every manifest of the store when none is named: c holds none.
    view all.json
    check all.json 'd["manifests"] == [] and d["manifest_count"] == 0'
    # The readable table.
    cl replication --home "$T/c" "$FILE_ID" >"$T/table" || fail "table"
    grep -q "100.0%" "$T/table" && grep -q "LAN can synthesize: yes" "$T/table" &&
        grep -q "under-replicated (on fewer than 2 nodes): $NCHUNKS chunks" "$T/table" &&
        grep -q "held by: 0 nodes: 0, 1 node: $NCHUNKS, 2 nodes: 0, 3 nodes: 0" "$T/table" ||
        fail "table: $(cat "$T/table")"
    # b pulls it: a and b hold it all.
    cl pull --home "$T/b" "$FILE_ID" >/dev/null 2>"$T/pull.err" || fail "pull: $(cat "$T/pull.err")"
    view v2.json "$FILE_ID"
    check v2.json 'share("a") == 1.0 and share("b") == 1.0 and share("c") == 0' \
        "m['histogram'] == [0, 0, $NCHUNKS, 0]" 'm["under_k"] == 0' 'm["lan_complete"] is True'
    view v3.json "$FILE_ID" --k 3
    check v3.json "m['under_k'] == $NCHUNKS" 'm["k"] == 3'
}

a_stopped_node_is_listed_unreachable_and_the_view_still_answers() {
    setup $((256 << 10))
    kill -TERM "$PID_b"; wait "$PID_b" || true
    view v.json "$FILE_ID"
    check v.json 'node("b")["reachable"] is False and node("b")["chunks"] is None' \
        'share("a") == 1.0' "m['histogram'] == [0, $NCHUNKS, 0]" 'm["lan_complete"] is True' \
        '[n for n in d["nodes"] if n["key"] == keys["b"]][0]["error"]'
    cl replication --home "$T/c" "$FILE_ID" >"$T/table" || fail "table"
    grep -q "unreachable" "$T/table" || fail "table: $(cat "$T/table")"
}

replicate_places_every_chunk_on_k_nodes() {
    setup $((1 << 20))
    cl replicate --home "$T/c" "$FILE_ID" --copies 3 >"$T/rep.out" 2>"$T/rep.err" ||
        fail "replicate: $(cat "$T/rep.out" "$T/rep.err")"
    grep -q "replicated $FILE_ID: every chunk ($NCHUNKS) is on at least 3 of 3 nodes, after 2 pulls" "$T/rep.out" ||
        fail "report: $(cat "$T/rep.out")"
    grep -q "this node .* pulls" "$T/rep.out" && grep -q "asking .* to pull" "$T/rep.out" ||
        fail "progress: $(cat "$T/rep.out")"
    view v.json "$FILE_ID" --k 3
    check v.json 'share("a") == share("b") == share("c") == 1.0' \
        "m['histogram'] == [0, 0, 0, $NCHUNKS]" 'm["under_k"] == 0'
    for n in a b c; do
        cl store verify --home "$T/$n" >"$T/verify.$n" || fail "verify on $n: $(cat "$T/verify.$n")"
    done
    cl store cat --home "$T/b" "$FILE_ID" -o "$T/back"
    cmp "$T/file" "$T/back" || fail "b's copy differs"
    # Nothing left to do: no pull.
    cl replicate --home "$T/c" "$FILE_ID" --copies 2 --json >"$T/rep.json" || fail "again"
    [ "$(tail -1 "$T/rep.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pulls"])')" = 0 ] ||
        fail "$(cat "$T/rep.json")"
}

more_copies_than_nodes_is_a_clear_error() {
    setup $((256 << 10))
    set +e; cl replicate --home "$T/c" "$FILE_ID" --copies 4 >"$T/out" 2>"$T/err"; local rc=$?; set -e
    [ "$rc" = 1 ] || fail "exit $rc: $(cat "$T/out" "$T/err")"
    grep -q "cannot place 4 copies: only 3 nodes of the fleet are reachable" "$T/err" || fail "$(cat "$T/err")"
    set +e; cl replicate --home "$T/c" "$FILE_ID" >/dev/null 2>&1; rc=$?; set -e
    [ "$rc" = 2 ] || fail "no --copies exited $rc"
}

a_manifest_no_reachable_node_holds_whole_is_not_lan_complete() {
    setup $((4 << 20))
    # c pulls slowly and is interrupted: it keeps the manifest and part of the chunks.
    kill -TERM "$PID_c"; wait "$PID_c" || true
    printf 'rate_total = 1M\n' >>"$T/c/cloudlet.conf"
    rm -f "$T/c/control.sock"
    start c
    "$CLOUDLET" pull --home "$T/c" "$FILE_ID" >/dev/null 2>&1 &
    local cli=$!
    for _ in $(seq 100); do
        [ "$(cl store stats --home "$T/c" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')" -ge 100 ] && break
        sleep 0.05
    done
    kill -TERM "$cli"; wait "$cli" || true
    kill -TERM "$PID_a"; wait "$PID_a" || true          # the only full copy goes away
    view v.json "$FILE_ID"
    check v.json 'node("a")["reachable"] is False' '0 < share("c") < 1' 'share("b") == 0' \
        'm["lan_complete"] is False' 'm["histogram"][0] > 0'
    cl replication --home "$T/c" "$FILE_ID" >"$T/table"
    grep -q "LAN can synthesize: no" "$T/table" || fail "table: $(cat "$T/table")"
    set +e; cl replicate --home "$T/c" "$FILE_ID" --copies 2 >/dev/null 2>"$T/err"; local rc=$?; set -e
    [ "$rc" = 1 ] && grep -q "held by no reachable node" "$T/err" || fail "replicate: $rc $(cat "$T/err")"
}

chunks_of() { cl store stats --home "$T/$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])'; }

interrupting_replicate_stops_the_pulls_it_asked_for() {
    home a; home b; home c
    head -c $((4 << 20)) /dev/urandom >"$T/file"
    FILE_ID=$(cl store add --home "$T/a" "$T/file" | tail -1)
    start a
    { peer_of a; echo "rate_total = 1M"; } >>"$T/b/cloudlet.conf"     # about 4 s each
    start b
    { peer_of a; peer_of b; echo "rate_total = 1M"; } >>"$T/c/cloudlet.conf"
    start c
    "$CLOUDLET" replicate --home "$T/c" "$FILE_ID" --copies 3 >"$T/rep.out" 2>&1 &
    local cli=$!
    for _ in $(seq 100); do [ "$(chunks_of b)" -ge 100 ] && break; sleep 0.05; done
    kill -TERM "$cli"; wait "$cli" && fail "replicate succeeded"
    for n in b c; do
        for _ in $(seq 100); do grep -q "cancelled: the requester went away" "$T/$n.log" && break; sleep 0.05; done
        grep -q "cancelled: the requester went away" "$T/$n.log" || fail "$n pulled on"
    done
    local held
    held=$(chunks_of b)
    sleep 0.5
    [ "$(chunks_of b)" = "$held" ] && [ "$held" -lt 1024 ] || fail "b went on: $held"
    # Asked again, the fleet finishes the job.
    cl replicate --home "$T/c" "$FILE_ID" --copies 3 >"$T/rep2.out" 2>&1 || fail "$(cat "$T/rep2.out")"
    for n in a b c; do cl store verify --home "$T/$n" >/dev/null || fail "verify on $n"; done
}

watch_redraws_until_interrupted() {
    setup $((64 << 10))
    "$CLOUDLET" replication --home "$T/c" --watch 0.2 "$FILE_ID" >"$T/watch" 2>&1 &
    local w=$!
    for _ in $(seq 100); do [ "$(grep -c "LAN can synthesize" "$T/watch")" -ge 2 ] && break; sleep 0.05; done
    kill -INT "$w"
    wait "$w" || fail "watch exited $?"
    [ "$(grep -c "LAN can synthesize" "$T/watch")" -ge 2 ] || fail "watch: $(cat "$T/watch")"
}

"$CASE"
