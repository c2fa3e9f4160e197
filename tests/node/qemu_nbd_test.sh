#!/bin/bash
# qemu_nbd_test.sh NBD_SERVE — QEMU's own NBD client against the store's NBD export.
#
# Builds a raw disk of about 20 MiB (random blocks, repeated blocks, zero runs and a tail that
# is not a whole chunk), serves it from a store with nbd_serve, and checks that qemu-img sees
# its size and the same bytes (compare, convert), and qemu-io reads zeros and refuses writes.
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
echo "PASS"
