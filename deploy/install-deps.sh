#!/usr/bin/env bash
# Installs what cloudlet needs on Debian 12, and nothing when it is all there already.
# Usage: deploy/install-deps.sh [build|test]   (test adds what the test suite needs)
set -euo pipefail
want=${1:-build}

pkgs=(build-essential cmake pkg-config libuv1-dev libsodium-dev liblmdb-dev libzstd-dev
      libvirt-dev e2fsprogs)
if [ "$want" = test ]; then
    pkgs+=(python3 util-linux)
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
