#!/usr/bin/env bash
# The real end-to-end VM test: real QEMU under libvirt, the tiny test guest (build-guest.sh),
# the real `cloudlet` binary. Usage: vm_test.sh CLOUDLET CASE
#
# The cases share one work directory and one node home, set up by `setup` and
# `capture_base_and_custom` (ctest fixtures) and removed by `cleanup`:
#   setup                      guest built (cached), libvirt running, a fresh node home
#   capture_base_and_custom    boot, `virsh save`, `cloudlet vm import --name base`; restore,
#                              change the guest (files on its disk, a value in RAM, the counter
#                              runs on), save, `cloudlet vm import --name custom --parent base`;
#                              the original save files and disk are then deleted
#   the other cases            synthesize and launch from the store alone
# Exit 77 (skipped) only when libvirt or QEMU cannot run here, with the reason.
set -euo pipefail
CLOUDLET=$(readlink -f "$1")
CASE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/domain.sh
. "$HERE/../lib/domain.sh"
URI=qemu:///system
# One work directory and one domain prefix per build tree, so two build trees never collide.
TAG=$(printf '%s' "$CLOUDLET" | sha256sum | cut -c1-6)
W=/var/tmp/cloudlet-vmtest-$TAG
P=cltest-$TAG
H=$W/home
export CLOUDLET_LAUNCH_DIR=$W/launch

cl() { "$CLOUDLET" "$@"; }
virsh_() { virsh -q -c "$URI" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }
console() { python3 "$HERE/console.py" "$@"; }
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval("d"+sys.argv[2]))' "$@"; }
expect_status() { # expect_status N cmd... (output in $T/out, $T/err)
    local want=$1; shift
    set +e; "$@" >"$T/out" 2>"$T/err"; local got=$?; set -e
    [ "$got" = "$want" ] || { cat "$T/out" "$T/err" >&2; fail "$* exited $got, expected $want"; }
}
# Every domain this build tree's tests made, running or defined.
our_domains() { virsh_ list --all --name 2>/dev/null | grep "^$P-" || true; }
destroy_domain() {
    virsh_ destroy "$1" >/dev/null 2>&1 || true
    virsh_ undefine "$1" >/dev/null 2>&1 || true
}

# A case's scratch directory; its domains are destroyed even when a step fails.
T=
CASE_DOMAINS=()
case_cleanup() {
    for d in "${CASE_DOMAINS[@]}"; do
        destroy_domain "$d"
        rm -rf "${CLOUDLET_LAUNCH_DIR:?}/$d"
    done
    [ -z "$T" ] || rm -rf "$T"
}
trap case_cleanup EXIT
scratch() {
    T=$(mktemp -d "$W/case.XXXXXX")
    chmod 755 "$T"
}

guest() { cat "$W/guest"; }

# The test guest's domain XML: name $1, disk $2, console socket and log in directory $3.
domain_xml() {
    local g
    g=$(guest)
    guest_domain_xml "$1" "$(cat "$W/domtype")" 256 "$g/vmlinuz" "$g/initrd.img" \
        "$(cat "$g/cmdline")" "$2" "$3/console.sock" "$3/console.log"
}

# Boots the guest as domain $1 on disk $2 (console in directory $3) and waits for its ticks.
boot() {
    domain_xml "$1" "$2" "$3" >"$3/$1.xml"
    virsh_ create "$3/$1.xml" >/dev/null
    console "$3/console.sock" --expect '^guest: ready' --timeout 120 >/dev/null ||
        console "$3/console.sock" --expect 'tick (\d+)' --timeout 30 >/dev/null ||
        fail "the guest did not come up: $(tail -20 "$3/console.log")"
}

# The number of the last tick the guest printed on console $1.
tick_now() { console "$1" --expect '^tick (\d+)' --timeout 10; }

# Runs shell line $2 in the guest on console $1 and prints what follows MARK= on its output.
guest_run() { console "$1" --send "$2" --expect 'MARK=(.*)$' --timeout 30; }

# For the launches from an app (app_launch_test.sh, fleet_launch_test.sh):
# resumed NAME: the custom VM launched as domain NAME (its console in $CLOUDLET_LAUNCH_DIR/NAME)
# carries on from where it was saved: the counter, the values in RAM and the file on its disk.
# The single-quoted command line is expanded by the guest's shell.
# shellcheck disable=SC2016
resumed() {
    local sock=$CLOUDLET_LAUNCH_DIR/$1/console.sock t
    [ -S "$sock" ] || fail "$1: no console socket at $sock"
    t=$(tick_now "$sock")
    [ "$t" -ge "$(cat "$W/tick-before-save")" ] || fail "$1: tick $t, not where it was saved"
    [ "$(guest_run "$sock" 'echo MARK=$X-$(cat /run/val)-$(cat /mnt/custom.txt)')" = \
        4242-4343-custom-file ] || fail "$1: the guest lost its state"
}
# src_bytes REPORT.json KIND [LABEL]: bytes a launch's report (`cloudlet launch --json`) says
# came from sources of KIND (local, neighbour, origin), summed (only source LABEL when given).
src_bytes() {
    python3 - "$@" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(sum(s["bytes"] for s in r["sources"]
          if s["kind"] == sys.argv[2] and (len(sys.argv) < 4 or s["label"] == sys.argv[3])))
PY
}

# ---- cases ----------------------------------------------------------------------------------------

setup() {
    [ "$(id -u)" = 0 ] || skip "the VM tests need root (libvirt's qemu:///system)"
    command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed"
    command -v virsh >/dev/null || skip "virsh is not installed"
    command -v libvirtd >/dev/null || skip "libvirtd is not installed"
    "$HERE/../../deploy/start-libvirt.sh" 60 || skip "libvirt does not start here"
    local g
    g=$("$HERE/build-guest.sh") || fail "building the test guest failed"
    for d in $(our_domains); do destroy_domain "$d"; done
    rm -rf "$W"
    mkdir -p "$W" "$CLOUDLET_LAUNCH_DIR"
    chmod 755 "$W" "$CLOUDLET_LAUNCH_DIR"
    echo "$g" >"$W/guest"
    # The domain type the capture runs with: what launch would pick here.
    if [ "${CLOUDLET_ACCEL:-}" = kvm ]; then echo kvm; else echo qemu; fi >"$W/domtype"
    cl init --home "$H" >/dev/null
    # QEMU itself must start here (not only libvirtd): boot the guest once.
    mkdir -p "$W/probe" && chmod 755 "$W/probe"
    cp --sparse=always "$g/disk.img" "$W/probe/disk.img"
    domain_xml "$P-probe" "$W/probe/disk.img" "$W/probe" >"$W/probe/d.xml"
    if ! virsh_ create "$W/probe/d.xml" >"$W/probe/out" 2>&1; then
        skip "QEMU cannot run a guest under libvirt here: $(cat "$W/probe/out")"
    fi
    console "$W/probe/console.sock" --expect '^tick (\d+)' --timeout 120 >/dev/null ||
        fail "the test guest did not tick: $(tail -20 "$W/probe/console.log")"
    destroy_domain "$P-probe"
    rm -rf "$W/probe"
}

capture_base_and_custom() {
    local c=$W/cap base=$P-base
    mkdir -p "$c" && chmod 755 "$c"
    CASE_DOMAINS=("$base")
    cp --sparse=always "$(guest)/disk.img" "$c/disk.img"
    boot "$base" "$c/disk.img" "$c"
    virsh_ save "$base" "$c/base.save" >/dev/null
    cl vm import --home "$H" --name base --disk "$c/disk.img" --memory "$c/base.save" >"$c/base.report"
    grep -Eq '^[0-9a-f]{64}$' <(tail -1 "$c/base.report") || fail "no id: $(cat "$c/base.report")"

    # Resume the base and make it the custom VM: files on its disk, a value in RAM (a shell
    # variable and a file on tmpfs), 256 KiB of random bytes (incompressible: stored raw).
    virsh_ restore "$c/base.save" >/dev/null
    local t0
    t0=$(tick_now "$c/console.sock")
    guest_run "$c/console.sock" 'X=4242; echo 4343 >/run/val; echo custom-file >/mnt/custom.txt; head -c 262144 /dev/urandom >/mnt/rand; sync; echo MARK=$X' >"$c/out"
    [ "$(cat "$c/out")" = 4242 ] || fail "the guest did not take the change: $(cat "$c/out")"
    # 256 KiB of random bytes in RAM only (tmpfs), and 64 of them in hex, to find their chunk
    # in the store later.
    guest_run "$c/console.sock" 'head -c 262144 /dev/urandom >/run/ramrand; echo MARK=$(dd if=/run/ramrand bs=64 skip=640 count=1 2>/dev/null | od -An -v -tx1 | tr -d " \n")' >"$c/hex"
    python3 -c 'import sys; open(sys.argv[2], "wb").write(bytes.fromhex(open(sys.argv[1]).read().strip()))' \
        "$c/hex" "$W/ram-needle"
    [ "$(stat -c %s "$W/ram-needle")" = 64 ] || fail "cannot read /run/ramrand: $(cat "$c/hex")"
    # Let the counter move on past the base's value (a few ticks, within a bounded time).
    local t1 deadline=$((SECONDS + 30))
    t1=$(tick_now "$c/console.sock")
    while [ "$t1" -lt $((t0 + 4)) ]; do
        [ $SECONDS -lt $deadline ] || fail "the counter does not move: $t0 then $t1"
        t1=$(tick_now "$c/console.sock")
    done
    echo "$t1" >"$W/tick-before-save"
    virsh_ save "$base" "$c/custom.save" >/dev/null
    sha256sum <"$c/disk.img" | cut -d' ' -f1 >"$W/disk.sha256"
    # 64 bytes of the random file, to find its chunk in the store later.
    debugfs -R "cat /rand" "$c/disk.img" >"$c/rand" 2>/dev/null
    dd if="$c/rand" of="$W/disk-needle" bs=64 skip=$((4096 * 10 / 64)) count=1 status=none
    [ "$(stat -c %s "$W/disk-needle")" = 64 ] || fail "cannot read /rand from the guest's disk"

    cl vm import --home "$H" --name custom --parent base --disk "$c/disk.img" --memory "$c/custom.save" \
        >"$c/custom.report"
    cat "$c/custom.report"
    grep -Eq '^[0-9a-f]{64}$' <(tail -1 "$c/custom.report") || fail "no id: $(cat "$c/custom.report")"
    # The original RAM, parsed by the save-file parser into a scratch home, to compare the
    # rebuilt RAM against once the originals are gone.
    cl init --home "$W/orig" >/dev/null
    cl vm import --home "$W/orig" --name orig --memory "$c/custom.save" --json >"$W/orig.json"

    rm -rf "$c" # the originals: from here on, only the store holds the VM
}

synth_rebuilds_disk_and_ram_exactly() {
    scratch
    cl synth --home "$H" custom --out "$T/s" >"$T/out"
    [ -f "$T/s/disk.raw" ] && [ -f "$T/s/memory.save" ] || fail "synth wrote $(ls "$T/s")"
    [ "$(sha256sum <"$T/s/disk.raw" | cut -d' ' -f1)" = "$(cat "$W/disk.sha256")" ] ||
        fail "the rebuilt disk differs from the saved one"
    # The rebuilt save file, parsed again, against the original: every RAM chunk the same at
    # the same place, and as many zero chunks (so no page became zero either).
    cl vm import --home "$W/orig" --parent orig --memory "$T/s/memory.save" --json >"$T/r.json"
    python3 - "$W/orig.json" "$T/r.json" <<'PY'
import json, sys
orig = {i["name"]: i for i in json.load(open(sys.argv[1]))["images"]}
new = {i["name"]: i for i in json.load(open(sys.argv[2]))["images"]}
ram = [n for n, i in orig.items() if i["kind"] in (2, "ram")]  # CS_IMAGE_RAM
assert ram, f"no RAM images in {orig}"
for n in ram:
    o, r = orig[n], new.get(n)
    assert r, f"RAM image {n} missing from the rebuilt file"
    assert r["length"] == o["length"], f"{n}: length {r['length']} != {o['length']}"
    assert r["zero"] == o["zero"], f"{n}: {r['zero']} zero chunks, the original had {o['zero']}"
    assert r["same_as_parent"] == r["chunks"] - r["zero"], f"{n}: differs: {r}"
    print(f"{n}: {r['chunks']} chunks, {r['zero']} zero, every other one identical")
PY
}

# launch_resumes VARIANT [launch options]: the launched guest carries on where it was saved.
launch_resumes() {
    local name=$P-$1
    shift
    CASE_DOMAINS=("$name")
    scratch
    cl launch --home "$H" custom --local --name "$name" "$@" >"$T/out"
    cat "$T/out"
    [ "$(tail -1 "$T/out")" = "$name" ] || fail "the last line is not the domain name"
    for stage in resolve disk memory restore; do
        grep -Eq "^$stage +[0-9]+\.[0-9]{3} s" "$T/out" || fail "no time for stage $stage"
    done
    local d=$CLOUDLET_LAUNCH_DIR/$name
    [ "$(virsh_ domstate "$name")" = running ] || fail "domain $name is $(virsh_ domstate "$name")"
    # The counter continues from its saved value (not from 0, not far ahead).
    local saved first
    saved=$(cat "$W/tick-before-save")
    console "$d/console.sock" --expect '^tick (\d+)' --timeout 60 >/dev/null
    first=$(grep -a -m1 -o '^tick [0-9]*' "$d/console.log" | cut -d' ' -f2)
    [ "$first" -gt "$saved" ] && [ "$first" -le $((saved + 10)) ] ||
        fail "the first tick after launch is $first; the last before save was $saved"
    # RAM (a shell variable, a tmpfs file) and disk are as saved, and it answers commands.
    local got
    got=$(guest_run "$d/console.sock" 'echo "MARK=$X $(cat /run/val) $(cat /mnt/custom.txt) $(wc -c </mnt/rand) $((6 * 7))"')
    [ "$got" = "4242 4343 custom-file 262144 42" ] || fail "the guest answered: $got"
    destroy_domain "$name"
    rm -rf "$d"
}

launch_from_a_file_resumes_where_saved() { launch_resumes file; }
launch_through_a_fifo_resumes_where_saved() { launch_resumes fifo --fifo; }

# corrupt_launch NEEDLE VARIANT [launch options]: flips a byte of the stored chunk that holds
# NEEDLE (in a copy of the home); the launch must fail saying so and leave no domain, no files.
corrupt_launch() {
    local needle=$1 name=$P-$2
    shift 2
    CASE_DOMAINS=("$name")
    scratch
    cp -a "$H" "$T/home" # a copy: the shared store stays whole for the other cases
    python3 - "$T/home/store/data.mdb" "$needle" <<'PY'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
needle = open(sys.argv[2], 'rb').read()
# Every copy: the same bytes may sit in a disk chunk and in a page-cache page of RAM.
at = data.find(needle)
assert at >= 0, "the random bytes are not in the store"
while at >= 0:
    data[at + 10] ^= 0xff
    at = data.find(needle, at + 1)
open(sys.argv[1], 'r+b').write(data)
PY
    expect_status 1 cl launch --home "$T/home" custom --local --name "$name" "$@"
    cat "$T/err"
    grep -q "corrupt" "$T/err" || fail "the error does not say what was wrong: $(cat "$T/err")"
    ! virsh_ dominfo "$name" >/dev/null 2>&1 || fail "domain $name was left behind"
    [ ! -e "$CLOUDLET_LAUNCH_DIR/$name" ] || fail "files were left: $(ls -la "$CLOUDLET_LAUNCH_DIR/$name")"
}

corrupt_disk_chunk_fails_launch_and_leaves_nothing() {
    corrupt_launch "$W/disk-needle" corrupt-disk
    grep -q "disk chunk" "$T/err" || fail "not the disk that failed: $(cat "$T/err")"
}

# The damaged page is met while QEMU already reads the stream: the restore must fail too, and
# the domain it had started must go.
corrupt_ram_chunk_fails_fifo_launch_and_leaves_nothing() {
    corrupt_launch "$W/ram-needle" corrupt-ram --fifo
    ! grep -q "disk chunk" "$T/err" || fail "the disk failed, not the memory: $(cat "$T/err")"
}

capture_command_saves_a_running_domain() {
    local name=$P-capture
    CASE_DOMAINS=("$name")
    scratch
    cp --sparse=always "$(guest)/disk.img" "$T/disk.img"
    boot "$name" "$T/disk.img" "$T"
    cl vm capture --home "$H" "$name" --name captured --parent base --tmpdir "$T" >"$T/out"
    cat "$T/out"
    grep -Eq '^[0-9a-f]{64}$' <(tail -1 "$T/out") || fail "no id on the last line"
    grep -q '^pc.ram ' "$T/out" || fail "no RAM image in the report"
    ! virsh_ dominfo "$name" >/dev/null 2>&1 || fail "the domain still exists after capture"
    [ -z "$(ls "$T" | grep -v -e disk.img -e console -e "$name.xml" -e out)" ] ||
        fail "capture left files: $(ls "$T")"
    cl manifest show --home "$H" captured --json >"$T/m.json"
    json_get "$T/m.json" '["parent"]' | grep -Eq '^[0-9a-f]{64}$' || fail "captured has no parent"
}

launch_of_a_vm_without_memory_boots_it() {
    local name=$P-boot
    CASE_DOMAINS=("$name")
    scratch
    cp --sparse=always "$(guest)/disk.img" "$T/disk.img"
    domain_xml "$P-template" "$T/disk.img" "$T" >"$T/d.xml"
    cl vm import --home "$H" --name diskonly --disk "$T/disk.img" --xml "$T/d.xml" >/dev/null
    cl launch --home "$H" diskonly --local --name "$name" --json >"$T/out"
    [ "$(json_get "$T/out" '["domain"]')" = "$name" ] || fail "json: $(cat "$T/out")"
    [ "$(json_get "$T/out" '["resumed"]')" = False ] || fail "json says resumed: $(cat "$T/out")"
    json_get "$T/out" '["accel"]' | grep -Eqx 'kvm|tcg' || fail "json accel: $(cat "$T/out")"
    console "$CLOUDLET_LAUNCH_DIR/$name/console.sock" --expect '^tick (\d+)' --timeout 120 >/dev/null ||
        fail "the booted guest does not tick"
    destroy_domain "$name"
    rm -rf "${CLOUDLET_LAUNCH_DIR:?}/$name"
}

launch_and_capture_refuse_bad_input_clearly() {
    scratch
    cl launch --help >"$T/h"
    grep -q '^usage: cloudlet launch' "$T/h" || fail "launch --help: $(head -1 "$T/h")"
    grep -q 'synthesize and resume on this machine' "$T/h" || fail "launch --help does not explain --local"
    cl vm capture --help >"$T/h"
    grep -q '^usage: cloudlet vm capture' "$T/h" || fail "vm capture --help: $(head -1 "$T/h")"
    grep -q 'STOPS' "$T/h" || fail "vm capture --help does not say the domain stops"
    expect_status 2 cl launch --home "$H" custom
    grep -q -- "--local is required" "$T/err" || fail "$(cat "$T/err")"
    expect_status 2 cl launch --home "$H" custom --local --accel fast
    expect_status 2 cl launch --home "$H" custom --local --name ../x
    expect_status 1 cl launch --home "$H" no-such-vm --local
    grep -q "no-such-vm is neither" "$T/err" || fail "$(cat "$T/err")"
    expect_status 1 cl vm capture --home "$H" "$P-no-such-domain"
    grep -q "no domain $P-no-such-domain" "$T/err" || fail "$(cat "$T/err")"
    # A name libvirt already has: refused before anything is written.
    local name=$P-taken
    CASE_DOMAINS=("$name")
    cp --sparse=always "$(guest)/disk.img" "$T/disk.img"
    domain_xml "$name" "$T/disk.img" "$T" >"$T/d.xml"
    virsh_ define "$T/d.xml" >/dev/null
    expect_status 1 cl launch --home "$H" custom --local --name "$name"
    grep -q "a domain named $name exists already" "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$CLOUDLET_LAUNCH_DIR/$name" ] || fail "a launch directory was made"
}

cleanup() {
    for d in $(our_domains); do destroy_domain "$d"; done
    rm -rf "$W"
}

"$CASE"
