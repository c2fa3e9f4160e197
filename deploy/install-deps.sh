#!/usr/bin/env bash
# Installs what cloudlet needs on Debian 12, and nothing when it is all there already.
# Usage: deploy/install-deps.sh [build|test|slow]   (test adds what the test suite needs; slow
# adds clang for the slow tier's fuzzing)
set -euo pipefail
want=${1:-build}

pkgs=(build-essential cmake pkg-config libuv1-dev libsodium-dev liblmdb-dev libzstd-dev
      libvirt-dev e2fsprogs)
if [ "$want" = test ] || [ "$want" = slow ]; then
    # The VM tests: QEMU, libvirt's daemon with its QEMU driver (libvirt-daemon-system also
    # makes the libvirt-qemu user QEMU runs as), virsh, and what tests/vm/build-guest.sh
    # builds the test guest with (busybox-static, cpio, kmod; the kernel is fetched with
    # apt-get download).
    # qemu-utils: qemu-img, which makes a launch's disk overlay (early start) and which the
    # NBD tests use as a real client.
    pkgs+=(python3 util-linux qemu-system-x86 qemu-utils libvirt-daemon-system
           libvirt-daemon-driver-qemu libvirt-clients busybox-static cpio kmod
           iproute2 iptables)  # the network-namespace tests (ip netns, veth, bridge; loss)
fi
if [ "$want" = slow ]; then
    pkgs+=(clang)  # libFuzzer
fi

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
