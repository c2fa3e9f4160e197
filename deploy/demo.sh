#!/usr/bin/env bash
# The README's first command: installs what is needed, builds, and runs the demo on this
# machine with two node homes: a sample VM disk and a changed copy stored as chunks, the
# import report against the base, the overlay a second node needs, synthesis there from its
# store alone, and a node daemon answering. CLOUDLET_DEMO_DIR picks where (default
# /var/tmp/cloudlet-demo); running it again starts the demo afresh.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/deploy/install-deps.sh" build
"$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
bin=$top/build
cloudlet=$bin/cli/cloudlet
demo=${CLOUDLET_DEMO_DIR:-/var/tmp/cloudlet-demo}
if [ -f "$demo/a/cloudletd.lock" ]; then kill "$(head -1 "$demo/a/cloudletd.lock")" 2>/dev/null || true; fi
rm -rf "$demo"
mkdir -p "$demo/tree/bin"
A=$demo/a B=$demo/b
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "two node homes: cloudlet init"
"$cloudlet" init --home "$A"
"$cloudlet" init --home "$B"

step "a base VM disk: 256 MiB raw ext4 holding up to 96 MiB of this machine's programs"
total=0
for f in /usr/bin/* /usr/sbin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    size=$(stat -c %s "$f")
    [ $((total + size)) -le $((96 << 20)) ] || continue
    cp "$f" "$demo/tree/bin/" 2>/dev/null && total=$((total + size))
done
mkfs.ext4 -q -F -d "$demo/tree" "$demo/base.img" 256M
cat >"$demo/base.xml" <<XML
<domain type='qemu'><name>demo</name><memory unit='MiB'>256</memory>
  <os><type arch='x86_64'>hvm</type></os></domain>
XML
echo "$(du -h --apparent-size "$demo/base.img" | cut -f1) apparent, $(du -h "$demo/base.img" | cut -f1) allocated (the rest are holes)"

step "node A: cloudlet vm import --name base"
"$cloudlet" vm import --home "$A" --name base --disk "$demo/base.img" --xml "$demo/base.xml"

step "a custom VM: the base plus a 4 MiB application file and an edited config file"
cp --sparse=always "$demo/base.img" "$demo/custom.img"
head -c 4M /dev/urandom >"$demo/app.bin"
printf 'listen 8080\nworkers 4\n' >"$demo/app.conf"
debugfs -w -R "write $demo/app.bin app.bin" "$demo/custom.img" >/dev/null 2>&1
debugfs -w -R "write $demo/app.conf app.conf" "$demo/custom.img" >/dev/null 2>&1

step "node A: cloudlet vm import --name custom --parent base (only what differs is recorded)"
custom=$("$cloudlet" vm import --home "$A" --name custom --parent base --disk "$demo/custom.img" | tee /dev/stderr | tail -1)

step "node A: cloudlet overlay export custom (what a node holding the base needs)"
"$cloudlet" overlay export --home "$A" custom "$demo/custom.overlay"

step "node B holds the base, then imports the overlay"
"$cloudlet" vm import --home "$B" --name base --disk "$demo/base.img" --xml "$demo/base.xml" | tail -1
"$cloudlet" overlay import --home "$B" "$demo/custom.overlay"

step "node B: cloudlet synth custom (from its store alone)"
"$cloudlet" synth --home "$B" "$custom" --out "$demo/synth"
cmp "$demo/custom.img" "$demo/synth/disk.raw" && echo "the rebuilt disk is bit-identical to custom.img"

step "node B: cloudlet ls, cloudlet store stats, cloudlet store verify"
"$cloudlet" ls --home "$B"
"$cloudlet" store stats --home "$B"
"$cloudlet" store verify --home "$B"

step "node A: the daemon, cloudletd, and cloudlet status"
"$bin/node/cloudletd" --home "$A"
"$cloudlet" status --home "$A"
kill "$(head -1 "$A/cloudletd.lock")"
echo
echo "demo homes: $A and $B"
