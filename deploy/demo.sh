#!/usr/bin/env bash
# The README's first command: installs what is needed, builds, and runs the demo on this
# machine: a node home, a sample disk image and a changed copy of it stored as chunks, what
# that costs, and a bit-identical read back. CLOUDLET_DEMO_DIR picks where (default
# /var/tmp/cloudlet-demo); running it again starts the demo afresh.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/deploy/install-deps.sh" build
"$top/deploy/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=Release
cloudlet=$top/build/cli/cloudlet
demo=${CLOUDLET_DEMO_DIR:-/var/tmp/cloudlet-demo}
rm -rf "$demo"
mkdir -p "$demo/tree"
export CLOUDLET_HOME=$demo/home
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cloudlet init"
"$cloudlet" init

step "a sample disk image: 256 MiB raw ext4 holding up to 96 MiB of this machine's programs"
mkdir -p "$demo/tree/bin"
total=0
for f in /usr/bin/* /usr/sbin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    size=$(stat -c %s "$f")
    [ $((total + size)) -le $((96 << 20)) ] || continue
    cp "$f" "$demo/tree/bin/" 2>/dev/null && total=$((total + size))
done
mkfs.ext4 -q -F -d "$demo/tree" "$demo/base.img" 256M
du -h --apparent-size "$demo/base.img" | sed 's/\t.*/ apparent size/'
du -h "$demo/base.img" | sed 's/\t.*/ allocated (the rest are holes)/'

step "cloudlet store add base.img"
base=$("$cloudlet" store add "$demo/base.img" | tee /dev/stderr | tail -1)

step "a changed copy: a new 4 MiB file written into the image; it costs only what changed"
cp --sparse=always "$demo/base.img" "$demo/custom.img"
head -c 4M /dev/urandom >"$demo/app.bin"
debugfs -w -R "write $demo/app.bin app.bin" "$demo/custom.img" >/dev/null 2>&1
custom=$("$cloudlet" store add "$demo/custom.img" | tee /dev/stderr | tail -1)

step "cloudlet store stats"
"$cloudlet" store stats

step "cloudlet store verify"
"$cloudlet" store verify

step "cloudlet store cat: the image comes back bit-identical"
"$cloudlet" store cat "$custom" -o "$demo/custom.out"
cmp "$demo/custom.img" "$demo/custom.out" && echo "custom.img and custom.out are identical"
echo
echo "demo home: $CLOUDLET_HOME  (base $base)"
