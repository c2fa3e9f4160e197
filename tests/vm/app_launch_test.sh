#!/usr/bin/env bash
# Launch by manifest id from an app (docs/launch.md, docs/client.md), with real daemons, real
# QEMU under libvirt and the test guest. Usage: app_launch_test.sh CLOUDLET CLOUDLETD CASE
#
# The app is the node home of the fixture vmstore (vm_test.sh), which holds the base and the
# custom VM; the node is a daemon of its own fleet on 127.0.0.1 holding only the base (copied
# with an overlay package). The work directory, the domain XML and the console helpers are
# vm_test.sh's: it is sourced with the no-op case `true`.
set -euo pipefail
CLOUDLETD=$(readlink -f "$2")
APP_CASE=$3
# shellcheck source-path=SCRIPTDIR source=vm_test.sh
source "$(cd "$(dirname "$0")" && pwd)/vm_test.sh" "$1" true
[ -f "$W/guest" ] || skip "no test guest: the fixture vm (vm_test.sh setup) did not run here"
[ -f "$W/tick-before-save" ] || skip "no custom VM: the fixture vmstore did not run here"
# shellcheck source=../lib/procs.sh
. "$HERE/../lib/procs.sh"

DPIDS=()
app_cleanup() {
    stop_pids "${DPIDS[@]}"
    case_cleanup
}
trap app_cleanup EXIT

# node NAME [CONF LINES]: a node home of the cases' fleet holding the base VM, its daemon
# started (discovery off, 127.0.0.1:any); sets NODE_HOME, NODE_ADDR and NODE_KEY, and makes the
# app's home hold the fleet's client key.
node() {
    local n=$T/$1
    shift
    if [ -f "$W/fleet" ]; then
        cl init --home "$n" --fleet-key "$W/fleet" >/dev/null
    else
        cl init --home "$n" --new-fleet >/dev/null
        (umask 077 && cl fleet-key --home "$n" >"$W/fleet")
    fi
    {
        printf 'discovery = off\nlisten = 127.0.0.1:0\nlaunch_dir = %s\n' "$CLOUDLET_LAUNCH_DIR"
        for line in "$@"; do echo "$line"; done
    } >"$n/cloudlet.conf"
    # Level 3: the base's package is made once per fixture, and level 19 takes about 15 s.
    [ -f "$W/base.pkg" ] || cl overlay export --home "$H" --level 3 base "$W/base.pkg" >/dev/null
    cl overlay import --home "$n" "$W/base.pkg" >/dev/null
    "$CLOUDLETD" --home "$n" --foreground --log-level debug 2>>"$n.log" &
    DPIDS+=($!)
    for _ in $(seq 200); do [ -S "$n/control.sock" ] && break; sleep 0.05; done
    [ -S "$n/control.sock" ] || fail "cloudletd never served: $(tail "$n.log")"
    cl status --home "$n" --json >"$n.status"
    NODE_HOME=$n
    NODE_ADDR=$(json_get "$n.status" '["listen"]')
    NODE_KEY=$(tr -d '\n' <"$n/node.pub")
    if [ ! -f "$H/client.key" ]; then
        cl fleet-key --home "$n" --client >"$T/client.key"
        cl init --home "$H" --client-key "$T/client.key" >/dev/null
    fi
}

# launch NAME [options]: the app launches the custom VM on the node as domain NAME and waits.
launch() {
    local name=$1
    shift
    cl launch --home "$H" custom --node "$NODE_ADDR" --node-key "$NODE_KEY" --name "$name" \
        --wait "$@"
}

# ---- cases ----------------------------------------------------------------------------------------

app_launch_resumes_with_only_the_overlay_from_the_app() {
    scratch
    node n
    local name=$P-app
    CASE_DOMAINS=("$name" "$P-app2")
    launch "$name" --json >"$T/j" 2>"$T/err" || fail "launch failed: $(cat "$T/err" "$T/j")"
    cat "$T/j"
    python3 - "$T/j" "$name" <<'PY' || fail "launch report: $(cat "$T/j")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] and r["done"] and r["domain"] == sys.argv[2], r
for stage in ("resolve_s", "transfer_s", "apply_s", "restore_s"):
    assert r[stage] >= 0, stage
PY
    resumed "$name"
    # What travelled from the app: the overlay, not the VM. The node held the base; the overlay
    # package of the custom VM is the yardstick (its headers and the chunk ids on the wire aside,
    # the same bytes).
    local origin pkg
    origin=$(src_bytes "$T/j" origin)
    cl overlay export --home "$H" custom "$T/custom.pkg" >/dev/null
    pkg=$(stat -c %s "$T/custom.pkg")
    echo "from the app: $origin bytes; the overlay package: $pkg bytes"
    [ "$origin" -gt 0 ] && [ "$origin" -le $((pkg * 6 / 5)) ] ||
        fail "$origin bytes came from the app for an overlay of $pkg bytes"
    # A second launch on the same node: nothing from the app. The plain report ends with the
    # domain's name and times every stage.
    destroy_domain "$name"
    launch "$P-app2" >"$T/out" 2>"$T/err" || fail "second launch: $(cat "$T/err")"
    cat "$T/out"
    [ "$(tail -1 "$T/out")" = "$P-app2" ] || fail "the last line is not the domain name"
    for stage in resolve transfer apply restore; do
        grep -Eq "^$stage +[0-9]+\.[0-9]{3} s" "$T/out" || fail "no time for stage $stage"
    done
    grep -Eq "^from origin +0 B" "$T/out" || fail "the second launch took bytes from the app"
    resumed "$P-app2"
}

app_launch_errors_are_clear_and_leave_nothing() {
    scratch
    node n
    local unknown
    unknown=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    expect_status 1 cl launch --home "$H" "$unknown" --node "$NODE_ADDR" --node-key "$NODE_KEY" --wait
    grep -q "unknown manifest $unknown" "$T/err" || fail "$(cat "$T/err")"
    # A name libvirt already has: refused, and no directory is left.
    local name=$P-taken
    CASE_DOMAINS=("$name")
    cp --sparse=always "$(guest)/disk.img" "$T/disk.img"
    domain_xml "$name" "$T/disk.img" "$T" >"$T/d.xml"
    virsh_ define "$T/d.xml" >/dev/null
    expect_status 1 launch "$name"
    grep -q "a domain named $name exists already" "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$CLOUDLET_LAUNCH_DIR/$name" ] || fail "a launch directory was left"
    # Past max_launches, an app is told the node is busy (the first launch is slowed down, then
    # stopped with its app).
    node busy "max_launches = 1" "rate_total = 100K"
    (exec "$CLOUDLET" launch --home "$H" custom --node "$NODE_ADDR" --node-key "$NODE_KEY" \
        --name "$P-busy1" --wait >"$T/b1" 2>&1) &
    local first=$!
    CASE_DOMAINS+=("$P-busy1" "$P-busy2")
    for _ in $(seq 100); do grep -q "an app asks to launch" "$NODE_HOME.log" && break; sleep 0.05; done
    expect_status 1 launch "$P-busy2"
    grep -q "this node is busy: 1 launches are under way" "$T/err" || fail "$(cat "$T/err")"
    kill "$first"
    wait "$first" 2>/dev/null || true
}

app_gone_mid_launch_fails_cleanly_and_the_retry_takes_only_the_rest() {
    scratch
    # 100 KiB/s from all sources: the transfer of the overlay takes several seconds.
    node n "rate_total = 100K"
    local name=$P-gone before after
    CASE_DOMAINS=("$name" "$P-retry")
    cl store stats --home "$NODE_HOME" --json >"$T/s0"
    before=$(json_get "$T/s0" '["chunks"]')
    (exec "$CLOUDLET" launch --home "$H" custom --node "$NODE_ADDR" --node-key "$NODE_KEY" \
        --name "$name" --wait >"$T/o1" 2>"$T/e1") &
    local app=$!
    sleep 2
    kill -9 "$app" || fail "the launch ended before the app could be killed: $(cat "$T/o1" "$T/e1")"
    wait "$app" 2>/dev/null || true
    for _ in $(seq 100); do grep -q "launch of .* failed" "$NODE_HOME.log" && break; sleep 0.1; done
    grep -q "launch of .* failed: the app went away" "$NODE_HOME.log" ||
        fail "the node did not end the launch when the app went: $(tail -5 "$NODE_HOME.log")"
    ! virsh_ dominfo "$name" >/dev/null 2>&1 || fail "a domain was left"
    [ ! -e "$CLOUDLET_LAUNCH_DIR/$name" ] || fail "a launch directory was left"
    # What arrived before the app went stays for the next try.
    cl store stats --home "$NODE_HOME" --json >"$T/s1"
    after=$(json_get "$T/s1" '["chunks"]')
    [ "$after" -gt "$before" ] || fail "no chunk stayed: $before before, $after after"
    launch "$P-retry" --json >"$T/j2" 2>"$T/e2" || fail "retry: $(cat "$T/e2")"
    echo "kept $((after - before)) chunks; the retry took $(src_bytes "$T/j2" origin) bytes from the app"
    resumed "$P-retry"
}

# Early start (docs/launch.md): the VM runs once its memory is here; its disk is read from the
# node's store over NBD while the disk's chunks still arrive, then pulled into disk.qcow2.
# shellcheck disable=SC2016
app_launch_runs_before_its_disk_has_arrived() {
    scratch
    # 100 KiB/s from all sources. The test guest's overlay is mostly memory (about 2 MB of it
    # changed, against 0.2 MB of disk): the VM runs after about 17 s, the disk's chunks take two
    # more.
    node n "rate_total = 100K"
    local name=$P-early sock
    CASE_DOMAINS=("$name")
    launch "$name" --json --progress-json >"$T/j" 2>"$T/err" &
    local app=$!
    for _ in $(seq 1200); do grep -q '"stage": "running"' "$T/j" && break; sleep 0.05; done
    grep -q '"stage": "running"' "$T/j" || fail "no running stage: $(cat "$T/j" "$T/err")"
    # While the disk still arrives (about two seconds here): the guest answers, and reads a file
    # from its disk after its page cache is dropped, through the node's NBD server while it runs
    # (or from the overlay, if the pull has ended by then; the node's log tells which).
    sock=$CLOUDLET_LAUNCH_DIR/$name/console.sock
    [ -S "$CLOUDLET_LAUNCH_DIR/$name/disk.sock" ] || fail "no NBD socket while the VM runs"
    [ "$(guest_run "$sock" 'echo 3 >/proc/sys/vm/drop_caches; echo MARK=$(cat /mnt/custom.txt)')" = \
        custom-file ] || fail "the guest could not read its disk while it arrived"
    wait "$app" || fail "launch failed: $(cat "$T/err" "$T/j")"
    python3 - "$T/j" <<'PY' || fail "launch report: $(tail -3 "$T/j")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
r = lines[-1]
running = [l["progress"] for l in lines[:-1] if l["progress"]["stage"] == "running"]
assert r["ok"] and r["done"], r
assert running and running[0]["fetch_done"] < running[0]["fetch_total"], running[:1]
assert 0 < r["running_s"] < r["total_s"], r
print(f"running after {r['running_s']} s of {r['total_s']} s; "
      f"{running[0]['fetch_total'] - running[0]['fetch_done']} chunk bytes still to come then")
PY
    resumed "$name"
    grep -o "$name: disk served over NBD.*" "$NODE_HOME.log" || fail "no NBD report in the node's log"
    # The end state: the disk is the standalone overlay, the NBD server is gone.
    virsh_ dumpxml "$name" >"$T/live.xml"
    grep -q "type='qcow2'" "$T/live.xml" || fail "the disk is not the qcow2 overlay"
    ! grep -q nbd "$T/live.xml" || fail "the disk still has the NBD backing: $(grep -A8 '<disk' "$T/live.xml")"
    [ ! -e "$CLOUDLET_LAUNCH_DIR/$name/disk.sock" ] || fail "the NBD socket was left"
    qemu-img info -U "$CLOUDLET_LAUNCH_DIR/$name/disk.qcow2" >"$T/info"
    ! grep -q "backing file" "$T/info" || fail "disk.qcow2 still names a backing file: $(cat "$T/info")"
}

two_apps_launching_one_manifest_share_its_fetch() {
    scratch
    # 200 KiB/s: the first launch's fetch is still running when the second arrives.
    node n "rate_total = 200K"
    CASE_DOMAINS=("$P-s1" "$P-s2")
    launch "$P-s1" --json >"$T/j1" 2>"$T/e1" &
    local first=$!
    for _ in $(seq 100); do grep -q "pull .* from 1 peer" "$NODE_HOME.log" && break; sleep 0.05; done
    launch "$P-s2" --json >"$T/j2" 2>"$T/e2" || fail "second launch: $(cat "$T/e2")"
    wait "$first" || fail "first launch: $(cat "$T/e1")"
    local o1 o2
    o1=$(src_bytes "$T/j1" origin)
    o2=$(src_bytes "$T/j2" origin)
    echo "origin bytes: first launch $o1, second launch $o2"
    [ "$o1" -gt 0 ] && [ "$o2" = 0 ] || fail "the fetch was not shared: $o1 and $o2 bytes from the app"
    resumed "$P-s1"
    resumed "$P-s2"
}

"$APP_CASE"
