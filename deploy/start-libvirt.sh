#!/usr/bin/env bash
# Starts libvirt's daemons when they are not running, and waits until qemu:///system answers.
# Usage: deploy/start-libvirt.sh [TIMEOUT_S]   (default 60)
#
# With systemd running, systemctl starts the units. Without it (containers, CI machines),
# virtlogd must run before libvirtd: QEMU's console and log files go through it, and
# `virsh start` fails without it. The first start of libvirtd probes QEMU's capabilities and
# takes several seconds; later starts answer at once. Idempotent: nothing happens when
# libvirtd already answers.
set -euo pipefail
timeout=${1:-60}
uri=qemu:///system

answers() { virsh -c "$uri" version >/dev/null 2>&1; }

# Without udev (containers, some CI machines) /dev/kvm keeps the kernel's default root-only
# mode. libvirt then finds KVM in QEMU's capabilities when it probes them but not usable by
# the user QEMU runs as when it checks its cache, so it throws the cache away and probes
# QEMU again (tens of seconds) before every domain start. Give /dev/kvm the group and mode
# Debian's udev rules give it (root:kvm 0660); whether KVM is fast enough to use is decided
# per launch (docs/launch.md).
if [ "$(id -u)" = 0 ] && [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

answers && exit 0
command -v libvirtd >/dev/null || {
    echo "start-libvirt: libvirtd is not installed (deploy/install-deps.sh test installs it)" >&2
    exit 1
}
if [ "$(id -u)" != 0 ]; then
    echo "start-libvirt: need root to start libvirtd" >&2
    exit 1
fi

if [ -d /run/systemd/system ]; then
    systemctl start virtlogd.socket virtlogd.service >/dev/null 2>&1 || true
    systemctl start libvirtd.service
else
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
fi

deadline=$((SECONDS + timeout))
until answers; do
    if [ $SECONDS -ge $deadline ]; then
        echo "start-libvirt: $uri did not answer within ${timeout} s:" >&2
        virsh -c "$uri" version >&2 || true
        exit 1
    fi
    sleep 0.2
done
