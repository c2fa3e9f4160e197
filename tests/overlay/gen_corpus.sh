#!/usr/bin/env bash
# Writes the overlay_fuzz seed corpus with the real CLI: gen_corpus.sh CLOUDLET OUT_DIR
set -euo pipefail
cl=$1 out=$2
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
"$cl" init --home "$t/h" >/dev/null
seq -f "cloudlet overlay corpus line %g" 3000 >"$t/base"; truncate -s 65536 "$t/base"
cp "$t/base" "$t/child"
printf 'CHANGED' | dd of="$t/child" bs=1 seek=5000 conv=notrunc status=none   # a delta
head -c 8192 /dev/urandom | dd of="$t/child" bs=4096 seek=10 conv=notrunc status=none  # new chunks
dd if="$t/child" of="$t/child" bs=4096 skip=10 seek=13 count=1 conv=notrunc status=none  # one twice
dd if="$t/base" of="$t/child" bs=4096 skip=2 seek=14 count=1 conv=notrunc status=none  # a parent's chunk moved
base=$("$cl" store add --home "$t/h" "$t/base" | tail -1)
child=$("$cl" store add --home "$t/h" --parent "$base" "$t/child" | tail -1)
mkdir -p "$out"
"$cl" overlay export --home "$t/h" "$child" "$out/derived" >/dev/null
"$cl" overlay export --home "$t/h" "$base" "$out/root" >/dev/null
head -c 300 "$out/derived" >"$out/derived-truncated"
# An old package version: refused by its version byte.
cp "$out/derived" "$out/old-version"
printf '\001' | dd of="$out/old-version" bs=1 seek=4 conv=notrunc status=none
