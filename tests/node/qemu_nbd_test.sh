#!/bin/bash
# qemu_nbd_test.sh NBD_SERVE — QEMU's own NBD client against the store's NBD export.
#
# Builds a raw disk of about 20 MiB (random blocks, repeated blocks, zero runs and a tail that
# is not a whole chunk), serves it from a store with nbd_serve, and checks that qemu-img sees
# its size and the same bytes (compare, convert), that qemu-img map (structured replies and
# base:allocation, which QEMU negotiates by default) reports the zero runs as zeros that are not
# data, and qemu-io reads zeros and refuses writes. Where qemu-storage-daemon and python3 are
# installed, it also pulls the disk into a qcow2 overlay as a launch's block pull does, and
# checks that the zero runs never crossed the socket.
# Exit 77 (skipped) when QEMU's tools are missing.
set -euo pipefail
serve=$1
for t in qemu-img qemu-io; do
    command -v "$t" >/dev/null || { echo "$t is not installed: skipped"; exit 77; }
done

fail() { echo "FAIL: $*"; exit 1; }
# A client that hangs fails the test instead of stalling it.
q() { timeout 60 "$@"; }

dir=$(mktemp -d)
pid=
cleanup() {
    exec 3>&- 2>/dev/null || true
    [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    rm -rf "$dir"
}
trap cleanup EXIT

disk=$dir/disk.raw
{
    head -c $((2 << 20)) /dev/urandom > "$dir/a"
    cat "$dir/a"                           # 2 MiB of random blocks
    head -c $((3 << 20)) /dev/zero         # a zero run
    head -c 65536 "$dir/a"                 # blocks the image holds already
    head -c 4096 /dev/urandom
    head -c $((1 << 20)) /dev/zero
    head -c $((13 << 20)) /dev/urandom
    head -c 8192 /dev/zero
    head -c 1234 /dev/urandom              # a partial last chunk
} > "$disk"
size=$(stat -c %s "$disk")

mkfifo "$dir/ctl"
"$serve" "$dir/store" "$disk" "$dir/nbd.sock" < "$dir/ctl" > "$dir/serve.out" 2>&1 &
pid=$!
exec 3> "$dir/ctl" # the server runs until this closes
for _ in $(seq 300); do
    grep -q ready "$dir/serve.out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/serve.out"; fail "nbd_serve ended"; }
    sleep 0.1
done
grep -q ready "$dir/serve.out" || fail "nbd_serve never got ready"
url="nbd+unix:///disk?socket=$dir/nbd.sock"

info=$(q qemu-img info --output=json -f raw "$url")
echo "$info"
# The export ends at the end of the image's last 512-byte sector, as a raw file would.
sectors=$(( (size + 511) / 512 * 512 ))
echo "$info" | grep -q "\"virtual-size\": $sectors," || fail "qemu-img info: virtual size is not $sectors"
cp "$disk" "$dir/padded.raw"
truncate -s "$sectors" "$dir/padded.raw"

# The allocation map: "start length zero data" per extent.
map=$(q qemu-img map --output=json -f raw "$url") || fail "qemu-img map"
echo "$map"
extents=$(echo "$map" | sed -n 's/.*"start": *\([0-9]*\), *"length": *\([0-9]*\),.*"zero": *\([a-z]*\), *"data": *\([a-z]*\).*/\1 \2 \3 \4/p')
[ "$(echo "$extents" | awk '{ n += $2 } END { print n }')" = "$sectors" ] ||
    fail "qemu-img map does not cover the export"
# run START LENGTH ZERO DATA: every extent overlapping [START, START + LENGTH) says ZERO and DATA.
run() {
    echo "$extents" | awk -v s="$1" -v l="$2" -v z="$3" -v d="$4" '
        $1 < s + l && $1 + $2 > s { if ($3 != z || $4 != d) bad = 1; lo = $1 > s ? $1 : s;
                                     hi = $1 + $2 < s + l ? $1 + $2 : s + l; n += hi - lo }
        END { exit bad || n != l }'
}
run $((2 << 20)) $((3 << 20)) true false || fail "qemu-img map: the 3 MiB zero run is not a hole"
run $(((5 << 20) + 69632)) $((1 << 20)) true false || fail "qemu-img map: the 1 MiB zero run is not a hole"
run $(((19 << 20) + 69632)) 8192 true false || fail "qemu-img map: the 8 KiB zero run is not a hole"
run 0 $((2 << 20)) false true || fail "qemu-img map: the random blocks are not data"
run $(((6 << 20) + 69632)) $((13 << 20)) false true || fail "qemu-img map: the 13 MiB of random blocks are not data"

q qemu-img compare -f raw -F raw "$disk" "$url" || fail "qemu-img compare found a difference"
q qemu-img convert -f raw -O raw "$url" "$dir/out.raw" || fail "qemu-img convert"
cmp "$dir/padded.raw" "$dir/out.raw" || fail "the converted copy differs"

# What a launch does: a qcow2 overlay whose backing file is the export.
q qemu-img create -q -f qcow2 -b "$url" -F raw "$dir/overlay.qcow2" || fail "qemu-img create of the overlay"
q qemu-img compare -f qcow2 -F raw "$dir/overlay.qcow2" "$disk" || fail "the overlay differs from the disk"

# Zeros where the disk has a zero run, the random bytes where it has them.
q qemu-io -r -f raw -c "read -P 0 $((2 << 20)) $((3 << 20))" "$url" | tee "$dir/io.out"
grep -q "read $((3 << 20))/$((3 << 20)) bytes" "$dir/io.out" || fail "qemu-io read of the zero run"
! grep -qi "pattern verification failed" "$dir/io.out" || fail "the zero run is not zero"
# The first 16 bytes as hex, read through qemu-io.
head16() { q qemu-io -r -f raw -c "read -v 0 16" "$url" | awk '/^00000000:/ { for (i = 2; i <= 17; i++) printf "%s", $i }'; }
want_hex=$(head -c 16 "$disk" | od -An -tx1 | tr -d ' \n')
[ "$(head16)" = "$want_hex" ] || fail "qemu-io read -v 0 16 gave $(head16), not $want_hex"

# The export is read-only: the write fails and changes nothing.
q qemu-io -f raw -c "write -P 1 0 4096" "$url" > "$dir/w.out" 2>&1 || true
cat "$dir/w.out"
! grep -q "wrote 4096/4096" "$dir/w.out" || fail "a write to the read-only export succeeded"
[ "$(head16)" = "$want_hex" ] || fail "the disk changed after a refused write"

exec 3>&-
wait "$pid"
pid=
cat "$dir/serve.out"

# What the end of an early-start launch does (virDomainBlockPull): a stream job copies the
# backing export into the overlay. The server sends only the data: the zero runs (4 MiB and
# 8 KiB) are holes.
if command -v qemu-storage-daemon >/dev/null && command -v python3 >/dev/null; then
    mkfifo "$dir/ctl2"
    "$serve" "$dir/store" "$disk" "$dir/nbd2.sock" < "$dir/ctl2" > "$dir/serve2.out" 2>&1 &
    pid=$!
    exec 3> "$dir/ctl2"
    for _ in $(seq 300); do grep -q ready "$dir/serve2.out" && break; sleep 0.1; done
    grep -q ready "$dir/serve2.out" || fail "the second nbd_serve never got ready"
    q qemu-img create -q -f qcow2 -b "nbd+unix:///disk?socket=$dir/nbd2.sock" -F raw "$dir/pull.qcow2"
    q qemu-storage-daemon --chardev "socket,path=$dir/qmp.sock,server=on,wait=off,id=m" \
        --monitor chardev=m > "$dir/qsd.out" 2>&1 &
    q python3 - "$dir/qmp.sock" "$dir/pull.qcow2" <<'PY' || { cat "$dir/qsd.out"; fail "block-stream"; }
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
for _ in range(100):
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.1)
f = s.makefile("rw")
def event_or_return():
    return json.loads(f.readline())
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
    f.flush()
    while True:
        m = event_or_return()
        if "event" not in m:
            if "error" in m:
                sys.exit("%s: %s" % (name, m["error"]))
            return m
event_or_return()  # the greeting
cmd("qmp_capabilities")
cmd("blockdev-add", **{"driver": "qcow2", "node-name": "top",
                       "file": {"driver": "file", "filename": sys.argv[2]}})
cmd("block-stream", **{"job-id": "pull", "device": "top"})
while True:
    m = event_or_return()
    if m.get("event") == "BLOCK_JOB_COMPLETED":
        if m["data"].get("error"):
            sys.exit("block-stream: " + m["data"]["error"])
        break
cmd("quit")
PY
    exec 3>&-
    wait "$pid"
    pid=
    cat "$dir/serve2.out"
    sent=$(sed -n 's/.*read_bytes \([0-9]*\).*/\1/p' "$dir/serve2.out")
    data=$((sectors - (4 << 20) - 8192))
    [ -n "$sent" ] && [ "$sent" -le "$data" ] ||
        fail "the block pull read $sent bytes: more than the $data bytes of data"
    q qemu-img compare -f qcow2 -F raw "$dir/pull.qcow2" "$dir/padded.raw" ||
        fail "the pulled overlay differs from the disk"
else
    echo "qemu-storage-daemon or python3 is not installed: block pull not checked"
fi
echo "PASS"
