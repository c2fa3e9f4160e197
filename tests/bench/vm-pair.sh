#!/usr/bin/env bash
# Builds the VM-synthesis benchmark's pair of VMs and prints the directory that holds it:
#   base.disk     raw ext4 disk (sparse): Debian bookworm minbase, as the booted base left it
#   base.save     `virsh save` of the base, booted and idle (a libvirt save file)
#   custom.disk   a copy of base.disk plus python3, python3-numpy, python3-flask and nginx
#   custom.save   `virsh save` of the custom VM with nginx and a flask app (numpy) answering
#   base.xml, custom.xml   the domain XML each was booted with
#   info          what was built (sizes, packages, kernel, times)
#   vmlinuz, initrd.img, cmdline   the kernel, its initramfs and arguments
#
# Usage: tests/bench/vm-pair.sh [--disk-size SIZE] [--ram MIB] [--cache DIR]
#   --disk-size  the raw disk's length, as mkfs.ext4 takes it (default 2G)
#   --ram        guest RAM in MiB (default 512)
#   --cache      where the pair is kept (default $CLOUDLET_BENCH_CACHE or /var/tmp/cloudlet-bench)
#
# The pair is cached outside the repository under a key made of this script's hash (with
# tests/lib/domain.sh's) and the sizes: it is rebuilt only when missing or when either changes.
# Needs root (debootstrap, a loop mount, libvirt's qemu:///system); installs debootstrap when
# it is missing. Network is used only by debootstrap and apt-get, through the Debian mirror
# this machine's apt uses; the guests have none.
#
# How the pair is made:
#  1. `debootstrap --variant=minbase bookworm` into a tree; minbase has no init, so /sbin/init
#     is a shell script: it mounts proc, sys, dev, /run and /tmp, and when /opt/app/app.py
#     exists brings up lo, starts nginx (proxying / to the app) and the flask app, and waits
#     until `http://127.0.0.1/` answers; then it TRIMs the root file system (the disk is
#     attached with discard='unmap', so freed blocks become holes), prints "guest: ready" on the
#     serial console and idles.
#  2. `mkfs.ext4 -d TREE` onto a sparse raw disk of --disk-size: base.disk.
#  3. The Debian cloud kernel and the virtio modules of tests/vm/build-guest.sh; an initramfs
#     whose /init loads them, mounts /dev/vda and switch_roots to it.
#  4. Boot the base (TCG, --ram MiB, init_on_free=1), wait for "guest: ready", virsh save.
#  5. custom.disk = a copy of base.disk after that boot; loop-mounted, the packages are
#     installed into it with apt-get in a chroot (apt's lists and cache removed afterwards,
#     free blocks trimmed), and the app files added.
#  6. Boot the custom VM, wait until its app answers, virsh save.
set -euo pipefail
script=$(readlink -f "$0")
here=$(dirname "$script")
# shellcheck source=../lib/domain.sh
. "$here/../lib/domain.sh"
disk_size=2G
ram=512
cache=${CLOUDLET_BENCH_CACHE:-/var/tmp/cloudlet-bench}
while [ $# -gt 0 ]; do
    case $1 in
        --disk-size) disk_size=$2; shift 2 ;;
        --ram) ram=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$script"; exit 0 ;;
        *) echo "vm-pair: unknown argument $1" >&2; exit 2 ;;
    esac
done
key=$( (cat "$script" "$here/../lib/domain.sh"; echo "$disk_size $ram") | sha256sum | cut -c1-16)
out=$cache/pair-$key
if [ -f "$out/ready" ]; then
    echo "$out"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "vm-pair: needs root" >&2; exit 1; }
log() { echo "vm-pair: $(date -u +%H:%M:%S) $*" >&2; }

command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
for tool in debootstrap mkfs.ext4 virsh cpio gzip python3 fstrim losetup; do
    command -v $tool >/dev/null || { echo "vm-pair: $tool is missing" >&2; exit 1; }
done

# The Debian mirror apt uses here (deb822 sources first, then the one-line format).
mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' \
    /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

"$here/../../deploy/start-libvirt.sh" 60
guest=$("$here/../vm/build-guest.sh")

mkdir -p "$cache"
chmod 755 "$cache"
# Built in place (the save files name the kernel's path), marked ready only when whole.
work=$out
rm -rf "$work"
mkdir -p "$work"
chmod 755 "$work"
mnt=$work/mnt
dom=
cleanup() {
    set +e
    [ -z "$dom" ] || virsh -q -c qemu:///system destroy "$dom" >/dev/null 2>&1
    for m in dev/pts dev proc sys; do mountpoint -q "$mnt/$m" 2>/dev/null && umount "$mnt/$m"; done
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    rm -rf "$work"
}
trap cleanup EXIT
t0=$SECONDS

# ---- 1. the tree ------------------------------------------------------------------------------
log "debootstrap --variant=minbase bookworm from $mirror"
tree=$work/tree
debootstrap --variant=minbase bookworm "$tree" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2; exit 1; }
cat >"$tree/sbin/init" <<'EOF'
#!/bin/sh
# The benchmark guest's init (tests/bench/vm-pair.sh).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname bench
exec </dev/console >/dev/console 2>&1
if [ -f /opt/app/app.py ]; then
    python3 -c 'import socket, fcntl, struct; fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sH14x", b"lo", 0x49))'
    mkdir -p /var/log/nginx
    nginx
    (cd /opt/app && python3 app.py >/run/app.log 2>&1 &)
    python3 - <<'PY'
import time, urllib.request
for i in range(1200):
    try:
        body = urllib.request.urlopen("http://127.0.0.1/", timeout=5).read().decode()
        print("guest: app answers:", body.strip())
        break
    except Exception:
        time.sleep(0.5)
else:
    print("guest: app does not answer")
PY
fi
sync
fstrim / 2>/dev/null
echo "guest: ready"
while :; do sleep 3600; done
EOF
chmod 755 "$tree/sbin/init"
echo bench >"$tree/etc/hostname"
printf '/dev/vda / ext4 defaults 0 1\n' >"$tree/etc/fstab"
chroot "$tree" apt-get clean
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin

# ---- 2. the base disk -------------------------------------------------------------------------
log "mkfs.ext4 -d onto a $disk_size raw disk"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$tree" "$work/base.disk" "$disk_size"
base_tree_bytes=$(du -sb "$tree" | cut -f1)

# ---- 3. kernel and initramfs ------------------------------------------------------------------
cp "$guest/vmlinuz" "$work/vmlinuz"
mkdir "$work/initrd"
(cd "$work/initrd" && gzip -dc "$guest/initrd.img" | cpio -id --quiet)
mods=$(cd "$work/initrd/lib/modules" && ls)
order="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc16 mbcache jbd2 ext4"
load=
for m in $order; do [ -f "$work/initrd/lib/modules/$m.ko" ] && load="$load $m"; done
mkdir -p "$work/initrd/newroot"
cat >"$work/initrd/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in$load; do insmod /lib/modules/\$m.ko || echo "initramfs: insmod \$m failed"; done
n=0
while [ ! -b /dev/vda ] && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
EOF
chmod 755 "$work/initrd/init"
(cd "$work/initrd" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"
echo "console=ttyS0 panic=-1 init_on_free=1 nokaslr" >"$work/cmdline"
chmod a+r "$work/vmlinuz" "$work/initrd.img" "$work/cmdline"

domain_xml() { # NAME DISK
    guest_domain_xml "$1" qemu "$ram" "$work/vmlinuz" "$work/initrd.img" "$(cat "$work/cmdline")" \
        "$2" "$work/$1.sock" "$work/$1.console.log"
}

boot_and_save() { # WHICH: boots WHICH.disk, waits for "guest: ready", saves WHICH.save
    local which=$1 t
    dom=vmbench-$which-$$
    domain_xml "$dom" "$work/$which.disk" >"$work/$which.xml"
    t=$SECONDS
    log "booting the $which VM ($ram MiB, TCG)"
    virsh -q -c qemu:///system create "$work/$which.xml" >/dev/null
    python3 "$here/../vm/console.py" "$work/$dom.sock" --expect '^guest: ready' --timeout 900 >/dev/null || {
        tail -30 "$work/$dom.console.log" >&2; echo "vm-pair: the $which VM did not come up" >&2; exit 1; }
    echo "$which boot to ready: $((SECONDS - t)) s" >>"$work/info.times"
    sleep 2
    t=$SECONDS
    virsh -q -c qemu:///system save "$dom" "$work/$which.save" >/dev/null
    echo "$which save: $((SECONDS - t)) s" >>"$work/info.times"
    dom=
}

# ---- 4. the base VM ---------------------------------------------------------------------------
boot_and_save base

# ---- 5. the custom disk: the base disk plus the application stack -----------------------------
log "custom disk: apt-get install python3 python3-numpy python3-flask nginx (chroot)"
cp --sparse=always "$work/base.disk" "$work/custom.disk"
mkdir -p "$mnt"
mount -o loop "$work/custom.disk" "$mnt"
mount -t proc proc "$mnt/proc"
mount -t sysfs sys "$mnt/sys"
mount --bind /dev "$mnt/dev"
mount --bind /dev/pts "$mnt/dev/pts"
echo "deb $mirror bookworm main" >"$mnt/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' >"$mnt/usr/sbin/policy-rc.d"
chmod 755 "$mnt/usr/sbin/policy-rc.d"
packages="python3 python3-numpy python3-flask nginx"
chroot "$mnt" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -q >"$work/apt.log" 2>&1
chroot "$mnt" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -q --no-install-recommends \
    $packages >>"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; exit 1; }
installed=$(chroot "$mnt" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort)
chroot "$mnt" apt-get clean
rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt/usr/sbin/policy-rc.d"
mkdir -p "$mnt/opt/app"
cat >"$mnt/opt/app/app.py" <<'EOF'
import numpy as np
from flask import Flask, jsonify

app = Flask(__name__)
rng = np.random.default_rng(1)
m = rng.standard_normal((256, 256))


@app.route("/")
def index():
    v = np.linalg.eigvalsh(m @ m.T)
    return jsonify(app="bench", largest=round(float(v[-1]), 3), numpy=np.__version__)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
EOF
[ -x "$mnt/usr/sbin/nginx" ] || { tail -30 "$work/apt.log" >&2; echo "vm-pair: nginx not installed" >&2; exit 1; }
rm -f "$mnt/etc/nginx/sites-enabled/default"
cat >"$mnt/etc/nginx/conf.d/app.conf" <<'EOF'
server {
    listen 80 default_server;
    location / { proxy_pass http://127.0.0.1:5000; }
}
EOF
umount "$mnt/dev/pts" "$mnt/dev" "$mnt/sys" "$mnt/proc"
fstrim "$mnt" 2>/dev/null || true
df_custom=$(df -B1 --output=used "$mnt" | tail -1)
umount "$mnt"
rmdir "$mnt"

# ---- 6. the custom VM -------------------------------------------------------------------------
boot_and_save custom
grep -a 'guest: app' "$work"/vmbench-custom-*.console.log | tail -1 >"$work/app-answer" || true

# ---- what was built ---------------------------------------------------------------------------
nonzero_pages() { python3 - "$1" <<'PY'
import sys
z = bytes(4096); n = 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        n += sum(1 for i in range(0, len(b), 4096) if b[i:i + 4096] != z[:len(b[i:i + 4096])])
print(n)
PY
}
{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - t0)) s by tests/bench/vm-pair.sh"
    echo "mirror: $mirror"
    echo "kernel: $(cat "$guest/kernel-package"); cmdline: $(cat "$work/cmdline")"
    echo "ram_mib: $ram"
    echo "disk_size: $disk_size"
    echo "base_tree_bytes: $base_tree_bytes"
    for f in base.disk custom.disk; do
        echo "$f: length $(stat -c %s "$work/$f"), allocated $(($(stat -c %b "$work/$f") * 512))"
    done
    echo "custom_fs_used_bytes: $df_custom"
    for f in base.save custom.save; do
        echo "$f: $(stat -c %s "$work/$f") bytes, non-zero 4 KiB blocks $(nonzero_pages "$work/$f")"
    done
    echo "packages added: $packages (--no-install-recommends)"
    echo "app: $(cat "$work/app-answer" 2>/dev/null)"
    cat "$work/info.times"
    echo "custom dpkg list:"
    echo "$installed"
} >"$work/info"
rm -rf "$tree" "$work/initrd" "$work"/*.sock
chmod -R a+rX "$work"
touch "$out/ready"
trap - EXIT
log "done in $((SECONDS - t0)) s"
echo "$out"
