#!/usr/bin/env bash
# Builds the tiny test guest from Debian packages and prints the directory that holds it:
#   vmlinuz     the Debian cloud kernel
#   initrd.img  busybox-static, the virtio modules, and /init (below)
#   disk.img    a 32 MiB raw ext4 disk (copy it before use: the guest writes to it)
#   cmdline     the kernel arguments to boot with
# Usage: tests/vm/build-guest.sh [CACHE_DIR]
#
# The result is cached outside the repository, in CACHE_DIR or $CLOUDLET_GUEST_CACHE or
# /var/tmp/cloudlet-guest, under a key made of this script's hash: it is rebuilt only when
# missing or when this script changes. Every directory on the way is world-traversable, since
# QEMU runs as libvirt-qemu.
#
# The guest's /init mounts /dev/vda on /mnt and a tmpfs on /run, prints "tick N" on the serial
# console every half second (N counts from 0 in the ticker's RAM), and runs every line typed on
# the console as a shell command in one long-lived shell, so shell variables set by one
# command are seen by the next (a value kept in RAM). Echo is off, so only what the commands
# print appears.
set -euo pipefail
script=$(readlink -f "$0")
cache=${1:-${CLOUDLET_GUEST_CACHE:-/var/tmp/cloudlet-guest}}
key=$(sha256sum "$script" | cut -c1-16)
out=$cache/$key
if [ -f "$out/ready" ]; then
    echo "$out"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip mkfs.ext4; do
    command -v $tool >/dev/null || { echo "build-guest: $tool is missing (deploy/install-deps.sh test)" >&2; exit 1; }
done
busybox=/bin/busybox
if [ ! -x "$busybox" ] || LC_ALL=C readelf -d "$busybox" 2>/dev/null | grep -q NEEDED; then
    echo "build-guest: $busybox is not static (install busybox-static)" >&2
    exit 1
fi

mkdir -p "$cache"
chmod 755 "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The kernel: the package linux-image-cloud-amd64 depends on (e.g. linux-image-6.1.0-NN-cloud-amd64).
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || { echo "build-guest: no linux-image-*-cloud-amd64 known to apt (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1) || {
    echo "build-guest: apt-get download $pkg failed" >&2
    exit 1
}
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/k"
vmlinuz=$(ls "$work"/k/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$work/k/lib/modules/$kver
config=$work/k/boot/config-$kver

# Modules in load order (other orders fail on missing symbols). ext4 is built into the cloud
# kernel; should it ever become a module, its own chain is loaded too.
mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"
if grep -q '^CONFIG_EXT4_FS=m' "$config"; then
    mods="$mods crc16 mbcache jbd2 ext4"
fi

root=$work/initrd
mkdir -p "$root"/{bin,dev,proc,sys,mnt,run,lib/modules}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
for m in $mods; do
    f=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
    [ -n "$f" ] || { echo "build-guest: module $m not found in $pkg" >&2; exit 1; }
    case $f in
        *.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
        *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
    esac
done

cat >"$root/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $mods; do insmod /lib/modules/\$m.ko || echo "init: insmod \$m failed"; done
n=0
while [ ! -b /dev/vda ] && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n + 1)); done
mount -t ext4 /dev/vda /mnt || echo "init: cannot mount /dev/vda"
mount -t tmpfs tmpfs /run
stty -echo -F /dev/console 2>/dev/null
echo "guest: ready"
( i=0; while :; do echo "tick \$i"; i=\$((i + 1)); sleep 0.5; done ) &
while :; do
    while IFS= read -r line; do eval "\$line"; done </dev/console
    sleep 0.1
done
EOF
chmod 755 "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"

mkdir -p "$work/tree"
echo "made by tests/vm/build-guest.sh" >"$work/tree/README"
mkfs.ext4 -q -F -d "$work/tree" "$work/disk.img" 32M >/dev/null

echo "console=ttyS0 panic=-1 init_on_free=1 nokaslr" >"$work/cmdline"
rm -rf "$out"
mkdir -p "$out"
cp "$vmlinuz" "$out/vmlinuz"
mv "$work/initrd.img" "$work/disk.img" "$work/cmdline" "$out/"
echo "$pkg" >"$out/kernel-package"
chmod -R a+rX "$out"
touch "$out/ready"
echo "$out"
