#!/usr/bin/env bash
# CLI behaviour, through the real `cloudlet` binary: cli_test.sh CLOUDLET CASE
set -euo pipefail
CLOUDLET=$1
CASE=$2
T=$(mktemp -d "${TMPDIR:-/tmp}/cloudlet-cli-XXXXXX")
trap 'rm -rf "$T"' EXIT
H=$T/home
cl() { "$CLOUDLET" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_status() { # expect_status N cmd...
    local want=$1; shift
    set +e; "$@" >"$T/out" 2>"$T/err"; local got=$?; set -e
    [ "$got" = "$want" ] || { cat "$T/out" "$T/err" >&2; fail "$* exited $got, expected $want"; }
}
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval("d"+sys.argv[2]))' "$@"; }
mkfile_random() { head -c "$2" /dev/urandom >"$1"; }

init_creates_home_and_is_idempotent() {
    cl init --home "$H" | grep -q "initialised node home $H"
    [ "$(stat -c %a "$H")" = 700 ] || fail "home mode is $(stat -c %a "$H")"
    [ -f "$H/store/data.mdb" ] || fail "no store"
    cl init --home "$H" | grep -q "already initialised"
}

add_then_cat_is_bit_identical() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/odd" 100001                    # not a multiple of 4 KiB
    : >"$T/empty"
    truncate -s 50M "$T/sparse"                      # mostly holes, some data
    dd if=/dev/urandom of="$T/sparse" bs=4096 seek=1000 count=3 conv=notrunc status=none
    printf 'tail' | dd of="$T/sparse" bs=1 seek=$((50*1024*1024-4)) conv=notrunc status=none
    for f in odd empty sparse; do
        id=$(cl store add --home "$H" "$T/$f" | tail -1)
        [[ $id =~ ^[0-9a-f]{64}$ ]] || fail "last line is not an id: $id"
        cl store cat --home "$H" "$id" -o "$T/$f.out"
        cmp "$T/$f" "$T/$f.out" || fail "$f differs after a round trip"
        cl store cat --home "$H" "$id" | cmp - "$T/$f" || fail "$f differs through a pipe"
    done
    # The sparse file stays sparse and its holes were never stored.
    [ "$(du -k "$T/sparse.out" | cut -f1)" -lt 1024 ] || fail "output is not sparse"
    cl store stats --home "$H" --json >"$T/s.json"
    [ "$(json_get "$T/s.json" '["chunks"]')" -le 30 ] || fail "holes were stored"
}

adding_twice_stores_nothing_new() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/f" 300000
    a=$(cl store add --home "$H" "$T/f" | tail -1)
    cl store add --home "$H" "$T/f" >"$T/out"
    grep -q "0 new" "$T/out" || fail "second add stored chunks: $(cat "$T/out")"
    [ "$(tail -1 "$T/out")" = "$a" ] || fail "same file, other id"
}

options_stand_anywhere_after_the_subcommand() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/f" 5000
    id=$(cl store add "$T/f" --home "$H" | tail -1)
    cl store cat "$id" --home "$H" -o "$T/o1"
    cl store cat -o "$T/o2" "$id" --home "$H"
    cmp "$T/f" "$T/o1" && cmp "$T/f" "$T/o2"
}

home_comes_from_the_environment() {
    CLOUDLET_HOME=$H cl init >/dev/null
    mkfile_random "$T/f" 5000
    id=$(CLOUDLET_HOME=$H cl store add "$T/f" | tail -1)
    CLOUDLET_HOME=$H cl store cat "$id" | cmp - "$T/f"
    # --home wins over the environment.
    expect_status 1 env CLOUDLET_HOME=$H "$CLOUDLET" store stats --home "$T/nowhere"
}

missing_home_is_a_clear_error() {
    expect_status 1 cl store stats --home "$T/nowhere"
    grep -q "no node home at $T/nowhere" "$T/err" || fail "unclear error: $(cat "$T/err")"
    grep -q "cloudlet init" "$T/err" || fail "error does not say how to fix it"
}

json_outputs_parse() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/f" 70000
    cl store add --json --home "$H" "$T/f" >"$T/add.json"
    [ "$(json_get "$T/add.json" '[0]["chunks"]')" = 18 ] || fail "chunks in add --json"
    cl store stats --json --home "$H" >"$T/s.json"
    [ "$(json_get "$T/s.json" '["chunks"]')" = 18 ] || fail "chunks in stats --json"
    cl store verify --json --home "$H" >"$T/v.json"
    [ "$(json_get "$T/v.json" '["ok"]')" = True ] || fail "verify --json"
    cl store gc --json --home "$H" >"$T/g.json"
    json_get "$T/g.json" '["chunks_removed"]' >/dev/null
}

corruption_is_reported_and_never_served() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/f" 40960          # random: stored raw, so its bytes appear in data.mdb
    id=$(cl store add --home "$H" "$T/f" | tail -1)
    python3 - "$H/store/data.mdb" "$T/f" <<'PY'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
needle = open(sys.argv[2], 'rb').read()[8192:8192 + 64]   # inside chunk 2
at = data.find(needle)
assert at >= 0, "chunk bytes not found in the store"
data[at + 10] ^= 0xff
open(sys.argv[1], 'r+b').write(data)
PY
    expect_status 1 cl store verify --home "$H"
    grep -q "^bad chunk [0-9a-f]\{64\}$" "$T/out" || fail "verify did not name the chunk: $(cat "$T/out")"
    grep -q "1 bad chunks" "$T/out" || fail "verify count: $(cat "$T/out")"
    expect_status 1 cl store cat --home "$H" "$id" -o "$T/o"
    grep -q "corrupt" "$T/err" || fail "cat error unclear: $(cat "$T/err")"
    [ ! -e "$T/o" ] || fail "a damaged file was left behind"
}

rm_then_gc_frees_space() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/a" 400000
    mkfile_random "$T/b" 400000
    cl store add --home "$H" "$T/a" >/dev/null
    b=$(cl store add --home "$H" "$T/b" | tail -1)
    cl store rm --home "$H" "$b" | grep -q unpinned
    cl store gc --json --home "$H" >"$T/g.json"
    [ "$(json_get "$T/g.json" '["chunks_removed"]')" = 98 ] || fail "gc removed $(cat "$T/g.json")"
    cl store stats --json --home "$H" >"$T/s.json"
    [ "$(json_get "$T/s.json" '["chunks"]')" = 98 ] || fail "chunks left: $(cat "$T/s.json")"
    expect_status 1 cl store cat --home "$H" "$b" -o "$T/o"
    grep -q "no such manifest" "$T/err" || fail "$(cat "$T/err")"
}

every_command_has_help() {
    # Every command the top-level help lists (two-space indent, then one or two words).
    cl --help | sed -n 's/^  \([a-z-]*\( [a-z-]*\)\?\)  .*/\1/p' | sed 's/ *$//' >"$T/cmds"
    for c in init "store add" "overlay export" "vm capture" launch pull; do
        grep -qx "$c" "$T/cmds" || fail "cloudlet --help does not list $c: $(cat "$T/cmds")"
    done
    while read -r c; do
        # shellcheck disable=SC2086
        cl $c --help >"$T/h" || fail "$c --help failed"
        grep -q "^usage: cloudlet $c" "$T/h" || fail "$c --help: $(head -1 "$T/h")"
    done <"$T/cmds"
}

usage_errors_exit_2() {
    expect_status 2 cl
    expect_status 2 cl frobnicate
    expect_status 2 cl store add --bogus x
    grep -q "usage: cloudlet store add" "$T/err" || fail "no usage after the error"
    expect_status 2 cl store cat
    expect_status 2 cl store
}

no_progress_output_off_a_terminal() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/f" 2000000
    cl store add --home "$H" "$T/f" >/dev/null 2>"$T/err"
    [ ! -s "$T/err" ] || fail "stderr not empty: $(cat "$T/err")"
}

derived_file_travels_as_an_overlay_package() {
    cl init --home "$T/a" >/dev/null
    cl init --home "$T/b" >/dev/null
    seq -f "line %g of a text-like base image" 200000 >"$T/base"
    cp "$T/base" "$T/child"
    printf 'EDIT' | dd of="$T/child" bs=1 seek=70000 conv=notrunc status=none
    head -c 100000 /dev/urandom >>"$T/child"
    base=$(cl store add --home "$T/a" "$T/base" | tail -1)
    child=$(cl store add --home "$T/a" --parent "$base" "$T/child" | tail -1)
    cl overlay export --home "$T/a" "$child" "$T/pkg" --json >"$T/e.json"
    [ "$(json_get "$T/e.json" '["delta_chunks"]')" -ge 1 ] || fail "no delta: $(cat "$T/e.json")"
    [ "$(stat -c %s "$T/pkg")" -lt 130000 ] || fail "package too big: $(stat -c %s "$T/pkg")"
    expect_status 1 cl overlay import --home "$T/b" "$T/pkg"
    grep -q "parent manifest $base is not in this store" "$T/err" || fail "$(cat "$T/err")"
    cl store add --home "$T/b" "$T/base" >/dev/null
    head -c 5000 "$T/pkg" >"$T/short"
    expect_status 1 cl overlay import --home "$T/b" "$T/short"
    grep -q "truncated" "$T/err" || fail "$(cat "$T/err")"
    got=$(cl overlay import --home "$T/b" "$T/pkg" | tail -1)
    [ "$got" = "$child" ] || fail "imported id $got, expected $child"
    cl store cat --home "$T/b" "$child" | cmp - "$T/child"
}

vm_import_reports_how_chunks_relate_to_the_parent() {
    cl init --home "$H" >/dev/null
    # A base disk: 256 chunks of text-like data with distinct heads, 64 holes at the end.
    python3 - "$T/base.img" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    for i in range(256):
        f.write((b"block %6d " % i + b"cloudlet test data " * 300)[:4096])
    f.truncate(320 * 4096)
PY
    echo "<domain type='qemu'><name>base</name></domain>" >"$T/base.xml"
    cp --sparse=always "$T/base.img" "$T/custom.img"
    python3 - "$T/custom.img" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for i in range(10, 15):                      # 5 chunks with a few bytes changed: deltas
    os.pwrite(fd, b"EDITED", i * 4096 + 100)
for i in range(20, 23):                      # 3 chunks of fresh random bytes: new
    os.pwrite(fd, os.urandom(4096), i * 4096)
os.pwrite(fd, os.pread(fd, 4096, 200 * 4096), 30 * 4096)   # a copy of chunk 200: dedup
os.pwrite(fd, os.urandom(4096), 300 * 4096)  # new data where the base had a hole
os.close(fd)
PY
    fallocate --punch-hole --offset $((40 * 4096)) --length $((4 * 4096)) "$T/custom.img"   # TRIM
    cl vm import --home "$H" --name base --disk "$T/base.img" --xml "$T/base.xml" >/dev/null
    cl vm import --home "$H" --name custom --parent base --disk "$T/custom.img" --json >"$T/r.json"
    python3 - "$T/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["images"][0]
want = {"chunks": 320, "zero": 64 - 1 + 4, "zeroed": 4, "dedup": 1, "delta": 5, "new": 3 + 1,
        "same_as_parent": 256 - 5 - 3 - 1 - 4}
got = {k: d[k] for k in want}
assert got == want, (got, want)
assert 0 < r["overlay_bytes"] < 5 * 4096 + 4 * 4096 + 2048, r["overlay_bytes"]
PY
    cl manifest show --home "$H" custom --json >"$T/m.json"
    python3 - "$T/m.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["images"][0]["differs_from_parent"] == 5 + 3 + 1 + 1 + 4, m
assert m["import_report"]["images"][0]["delta"] == 5
assert m["xml_bytes"] > 0          # inherited from the parent
PY
    cl ls --home "$H" --json | python3 -c 'import json,sys; l=json.load(sys.stdin); assert sorted(n for e in l for n in e["names"]) == ["base", "custom"], l'
    cl store cat --home "$H" custom --image disk | cmp - "$T/custom.img"
    cl synth --home "$H" custom --out "$T/syn" >/dev/null
    cmp "$T/syn/disk.raw" "$T/custom.img" || fail "synthesized disk differs"
    cmp "$T/syn/domain.xml" "$T/base.xml" || fail "domain XML differs"
    [ "$(du -k "$T/syn/disk.raw" | cut -f1)" -lt 1400 ] || fail "synthesized disk is not sparse"
}

synth_of_a_damaged_vm_fails_and_leaves_no_disk() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/d.img" 409600          # random: stored raw, findable in data.mdb
    cl vm import --home "$H" --name v --disk "$T/d.img" >/dev/null
    python3 - "$H/store/data.mdb" "$T/d.img" <<'PY'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
at = data.find(open(sys.argv[2], 'rb').read()[50 * 4096:50 * 4096 + 64])
assert at >= 0
data[at + 5] ^= 1
open(sys.argv[1], 'r+b').write(data)
PY
    expect_status 1 cl synth --home "$H" v --out "$T/syn"
    grep -q "disk chunk [0-9a-f]* at offset $((50 * 4096)): stored data is corrupt" "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$T/syn/disk.raw" ] && [ ! -e "$T/syn/disk.raw.partial" ] || fail "a partial disk was left: $(ls "$T/syn")"
}

vm_import_refuses_qcow2_naming_the_conversion() {
    cl init --home "$H" >/dev/null
    printf 'QFI\373\0\0\0\3' >"$T/d.qcow2"
    expect_status 1 cl vm import --home "$H" --disk "$T/d.qcow2"
    grep -q "qemu-img convert -O raw $T/d.qcow2" "$T/err" || fail "$(cat "$T/err")"
    cl store stats --home "$H" --json | grep -q '"manifests": 0'
}

progress_is_shown_on_a_terminal() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/f" 3000000
    script -qec "'$CLOUDLET' store add --home '$H' '$T/f'" /dev/null >"$T/tty" </dev/null
    grep -q "ETA" "$T/tty" || fail "no progress on a terminal: $(cat -v "$T/tty")"
    grep -q "/s" "$T/tty" || fail "no rate in the progress line"
}

store_add_on_a_full_disk_fails_clearly_and_loses_nothing() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/small" 300000
    small=$(cl store add --home "$H" "$T/small" | tail -1)
    mkfile_random "$T/big" 8000000
    # A file size limit 2 MiB above the store's size (ulimit -f counts KiB), in a subshell.
    limit=$(( $(stat -c %s "$H/store/data.mdb") / 1024 + 2048 ))
    set +e
    ( ulimit -f "$limit"; exec "$CLOUDLET" store add --home "$H" "$T/big" ) \
        >"$T/out" 2>"$T/err"
    got=$?
    set -e
    [ "$got" = 1 ] || { cat "$T/out" "$T/err" >&2; fail "store add on a full disk exited $got"; }
    grep -q "^cloudlet store add: $T/big: no space left" "$T/err" || fail "unclear error: $(cat "$T/err")"
    ! grep -qi "MDB_\|mapsize\|Input/output" "$T/err" || fail "LMDB leaks through: $(cat "$T/err")"
    [ ! -s "$T/out" ] || fail "a failed add printed an id: $(cat "$T/out")"
    # The limit lifted: the store is whole, the earlier file intact, and the add now works.
    cl store verify --home "$H" >/dev/null || fail "verify after a full disk"
    cl store cat --home "$H" "$small" | cmp - "$T/small"
    big=$(cl store add --home "$H" "$T/big" | tail -1)
    cl store cat --home "$H" "$big" | cmp - "$T/big"
    cl store verify --home "$H" >/dev/null
}

stats_and_verify_answer_while_a_writer_writes() {
    cl init --home "$H" >/dev/null
    mkfile_random "$T/a" 1000000
    a=$(cl store add --home "$H" "$T/a" | tail -1)
    mkfile_random "$T/big" 300000000     # grows the 64 MiB map several times
    cl store add --home "$H" "$T/big" >"$T/w.out" 2>"$T/w.err" &
    w=$!
    n=0 prev=0
    while kill -0 "$w" 2>/dev/null; do
        cl store stats --json --home "$H" >"$T/s.json" || fail "stats failed while writing"
        c=$(sed -n 's/.*"chunks": \([0-9]*\).*/\1/p' "$T/s.json")  # no python in the loop: more rounds
        [ "$c" -ge "$prev" ] || fail "chunks went from $prev down to $c"
        prev=$c
        cl store verify --json --home "$H" >"$T/v.json" || fail "verify failed while writing: $(cat "$T/v.json")"
        grep -q '"ok": true' "$T/v.json" || fail "verify while writing: $(cat "$T/v.json")"
        cl store cat --home "$H" "$a" | cmp - "$T/a" || fail "a stored file changed while writing"
        n=$((n + 1))
    done
    wait "$w" || fail "the writer failed: $(cat "$T/w.err")"
    [ "$n" -ge 1 ] || fail "the writer finished before the readers ran"
    big=$(tail -1 "$T/w.out")
    cl store stats --json --home "$H" >"$T/s.json"
    [ "$(json_get "$T/s.json" '["chunks"]')" = $(( (1000000 + 4095) / 4096 + (300000000 + 4095) / 4096 )) ] ||
        fail "chunks after the writer: $(cat "$T/s.json")"
    [ "$(json_get "$T/s.json" '["map_bytes"]')" -ge $(( 256 << 20 )) ] || fail "the map did not grow: $(cat "$T/s.json")"
    cl store verify --home "$H" >/dev/null
    cl store cat --home "$H" "$big" | cmp - "$T/big"
    echo "$n rounds of stats, verify and cat while the writer wrote"
}

# A small libvirt save file (docs/savefile.md): header, XML region, a QEMU stream with two RAM
# blocks, re-sent pages, device state and the VM description.
mksave() {
    python3 - "$1" <<'PY'
import os, struct, sys
def s8(b): return bytes([len(b)]) + b
xml = b"<domain type='qemu'><name>mem</name></domain>"
region = xml + b"\0" + b"<cookie/>\0"
region += b"\0" * (8192 - len(region))
hdr = b"LibvirtQemudSave" + struct.pack("<5I", 2, len(region), 0, 0, len(xml) + 1) + b"\0" * 56
blocks = [(b"pc.ram", 32 * 4096), (b"pc.rom", 2 * 4096)]
st = b"QEVM" + struct.pack(">I", 3) + b"\x07" + struct.pack(">I", 13) + b"pc-i440fx-7.2"
st += b"\x01" + struct.pack(">I", 2) + s8(b"ram") + struct.pack(">II", 0, 4)
st += struct.pack(">Q", sum(l for _, l in blocks) | 0x04)
for n, l in blocks: st += s8(n) + struct.pack(">Q", l)
st += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2)
st += b"\x02" + struct.pack(">I", 2)
for p in range(0, 32, 2):
    st += struct.pack(">Q", p * 4096 | 0x08 | (0x20 if p else 0)) + (b"" if p else s8(b"pc.ram"))
    st += bytes([p + 1]) * 4096
st += struct.pack(">Q", 4 * 4096 | 0x22) + b"\0"          # page 4 sent, then zeroed
st += struct.pack(">Q", 0x08) + s8(b"pc.rom") + os.urandom(4096)
st += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2)
st += b"\x03" + struct.pack(">I", 2) + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2)
st += b"\x04" + struct.pack(">I", 3) + s8(b"timer") + struct.pack(">II", 0, 2) + b"\x01" * 40
st += b"\x7e" + struct.pack(">I", 3)
desc = b'{"page_size": 4096, "devices": []}'
st += b"\x00\x06" + struct.pack(">I", len(desc)) + desc
open(sys.argv[1], "wb").write(hdr + region + st)
PY
}

vm_import_memory_reports_ram_and_state_images() {
    cl init --home "$H" >/dev/null
    mksave "$T/vm.save"
    cl vm import --home "$H" --name mem --memory "$T/vm.save" >"$T/out"
    grep -q "^pc.ram  .* 128.0 KiB \+32 \+17 " "$T/out" || fail "no pc.ram line: $(cat "$T/out")"
    grep -q "^pc.rom " "$T/out" && grep -q "^state " "$T/out" || fail "no pc.rom or state line: $(cat "$T/out")"
    id=$(tail -1 "$T/out")
    [[ "$id" =~ ^[0-9a-f]{64}$ ]] || fail "last line is not an id: $id"
    cl manifest show --home "$H" mem | grep -q "^state  .* state " || fail "manifest show has no state image"
    cl manifest show --home "$H" mem --json | python3 -c '
import json, sys
m = json.load(sys.stdin)
assert [(i["name"], i["kind"]) for i in m["images"]] == [("pc.ram", "ram"), ("pc.rom", "ram"), ("state", "state")], m
assert m["xml_bytes"] == len("<domain type='"'"'qemu'"'"'><name>mem</name></domain>"), m'
    cl synth --home "$H" mem --out "$T/syn" --json >"$T/s.json"
    [ "$(json_get "$T/s.json" '["memory_bytes"]')" = "$(stat -c %s "$T/syn/memory.save")" ] ||
        fail "memory_bytes: $(cat "$T/s.json")"
    cl synth --home "$H" mem --out "$T/syn2" | grep -q "^memory " || fail "no memory line in synth"
    [ ! -e "$T/syn/disk.raw" ] || fail "a disk.raw for a VM without disk"
    # The rebuilt file holds the same memory: importing it gives the same manifest.
    again=$(cl vm import --home "$H" --memory "$T/syn/memory.save" | tail -1)
    [ "$again" = "$id" ] || fail "re-importing the synthesized save file gave $again, not $id"
}

vm_import_memory_refuses_a_truncated_file() {
    cl init --home "$H" >/dev/null
    mksave "$T/vm.save"
    head -c 60000 "$T/vm.save" >"$T/cut.save"
    expect_status 1 cl vm import --home "$H" --name mem --memory "$T/cut.save"
    grep -q "^cloudlet vm import: $T/cut.save: truncated stream: .* at byte [0-9]* .*ends at byte 60000" "$T/err" ||
        fail "unclear error: $(cat "$T/err")"
    [ ! -s "$T/out" ] || fail "a failed import printed: $(cat "$T/out")"
    cl store stats --home "$H" --json | grep -q '"manifests": 0' || fail "something was stored"
    expect_status 1 cl manifest show --home "$H" mem
}

"$CASE"
echo "ok: $CASE"
