#!/usr/bin/env bash
# Closing the semantic gap on stock QEMU, measured on the test guest (docs/vm.md): blocks the
# guest TRIMs on a disk attached with discard='unmap', and pages a guest booted with
# init_on_free=1 frees, come back as zero chunks in the import report.
# Usage: gap_test.sh CLOUDLET CASE
#
# The cases need only the fixture `vm` (the guest, libvirt, the work directory made by
# vm_test.sh's `setup`); each imports into a node home of its own in its scratch directory, so
# it does not depend on, nor change, the VMs of the other cases. The domain XML, the console
# helpers and the work directory are vm_test.sh's: it is sourced with the no-op case `true`.
# Each case prints its figures (chunks are 4 KiB, 256 per MiB).
#
# The single-quoted command lines are expanded by the guest's shell, not here.
# shellcheck disable=SC2016
set -euo pipefail
GAP_CASE=$2
# shellcheck source-path=SCRIPTDIR source=vm_test.sh
source "$(cd "$(dirname "$0")" && pwd)/vm_test.sh" "$1" true
[ -f "$W/guest" ] || skip "no test guest: the fixture vm (vm_test.sh setup) did not run here"

MiB=256 # chunks per MiB

# The test guest's domain XML (vm_test.sh's domain_xml) changed by sed script $4, booted as
# domain $1 on disk $2 with its console in directory $3; waits until the guest is ready.
boot_with() {
    domain_xml "$1" "$2" "$3" | sed -e "$4" >"$3/$1.xml"
    virsh_ create "$3/$1.xml" >/dev/null
    console "$3/console.sock" --expect '^guest: ready' --timeout 120 >/dev/null ||
        console "$3/console.sock" --expect 'tick (\d+)' --timeout 30 >/dev/null ||
        fail "the guest did not come up: $(tail -20 "$3/console.log")"
}

# Like guest_run, for commands that take longer under TCG (writing tens of MiB).
guest_run_long() { console "$1" --send "$2" --expect 'MARK=(.*)$' --timeout 180; }

# report_sum REPORT.json KIND FIELD: FIELD (zero, chunks) of the import report's images of
# KIND (disk or ram), summed.
report_sum() {
    python3 - "$@" <<'PY'
import json, sys
kinds = {"disk": (1, "disk"), "ram": (2, "ram")}[sys.argv[2]]
imgs = [i for i in json.load(open(sys.argv[1]))["images"] if i["kind"] in kinds]
assert imgs, f"no {sys.argv[2]} image in {sys.argv[1]}"
print(sum(i[sys.argv[3]] for i in imgs))
PY
}
zero_chunks() { report_sum "$1" "$2" zero; }

# Blocks the file takes on the host's filesystem, in 512-byte units.
allocated() { stat -c %b "$1"; }

# ---- disk: TRIM ------------------------------------------------------------------------------------

# gap_disk VARIANT SED: the guest (disk attached as domain_xml gives it, changed by SED) writes
# FILE_MIB of random bytes to a file on its ext4 disk and syncs; save, import the disk. Restore,
# delete the file, fstrim, sync; save, import again. Sets Z0 (zero chunks of the pristine
# disk), Z1 (with the file), Z2 (after the delete and TRIM), B0, B1 and B2 (the raw file's
# allocated 512-byte blocks at each) and TRIMMED (what fstrim said).
FILE_MIB=8
gap_disk() {
    local name=$P-gap-$1
    CASE_DOMAINS=("$name")
    scratch
    cl init --home "$T/home" >/dev/null
    cp --sparse=always "$(guest)/disk.img" "$T/disk.img"
    cl vm import --home "$T/home" --disk "$T/disk.img" --json >"$T/0.json"
    Z0=$(zero_chunks "$T/0.json" disk)
    B0=$(allocated "$T/disk.img")

    boot_with "$name" "$T/disk.img" "$T" "$2"
    local got
    got=$(guest_run_long "$T/console.sock" \
        "head -c $((FILE_MIB << 20)) /dev/urandom >/mnt/big; sync; echo MARK=\$(wc -c </mnt/big)")
    [ "$got" = $((FILE_MIB << 20)) ] || fail "the guest wrote $got bytes"
    virsh_ save "$name" "$T/1.save" >/dev/null
    cl vm import --home "$T/home" --disk "$T/disk.img" --json >"$T/1.json"
    Z1=$(zero_chunks "$T/1.json" disk)
    B1=$(allocated "$T/disk.img")

    virsh_ restore "$T/1.save" >/dev/null
    # The delete must be committed (sync) before its blocks count as free for fstrim.
    TRIMMED=$(guest_run_long "$T/console.sock" \
        'rm /mnt/big; sync; t=$(fstrim -v /mnt 2>&1); sync; echo "MARK=$t"')
    virsh_ save "$name" "$T/2.save" >/dev/null
    cl vm import --home "$T/home" --disk "$T/disk.img" --json >"$T/2.json"
    Z2=$(zero_chunks "$T/2.json" disk)
    B2=$(allocated "$T/disk.img")
    destroy_domain "$name"

    echo "disk attached with: $(grep -o "<driver [^>]*>" "$T/$name.xml")"
    echo "fstrim in the guest: $TRIMMED"
    echo "zero chunks: pristine $Z0, with the $FILE_MIB MiB file $Z1, after rm + fstrim $Z2" \
        "(+$((Z2 - Z1)); the file is $((FILE_MIB * MiB)) chunks)"
    local n
    n=$(report_sum "$T/2.json" disk chunks)
    echo "non-zero disk: $(((n - Z0) * 4)) KiB pristine, $(((n - Z1) * 4)) KiB with the file," \
        "$(((n - Z2) * 4)) KiB after"
    echo "raw file allocated: $((B0 / 2)) KiB pristine, $((B1 / 2)) KiB with the file, $((B2 / 2)) KiB after"
    [ $((Z0 - Z1)) -ge $((FILE_MIB * MiB)) ] ||
        fail "the file's $((FILE_MIB * MiB)) chunks did not show as non-zero ($Z0 then $Z1 zero chunks)"
}

# With discard='unmap' (the test guest's disk has it), TRIM punches holes in the raw file: the
# zero chunks grow by about the file's size, and the file's allocated blocks shrink as much.
gap_trim_with_discard_unmap_gives_zero_chunks() {
    gap_disk unmap 's/^//'
    grep -q "discard='unmap'" "$T/$P-gap-unmap.xml" || fail "the disk is not attached with discard='unmap'"
    local file=$((FILE_MIB * MiB))
    [ $((Z2 - Z1)) -ge $((file * 95 / 100)) ] ||
        fail "TRIM gave $((Z2 - Z1)) more zero chunks, expected about $file"
    [ $((Z2 - Z1)) -le $((file + MiB)) ] ||
        fail "TRIM gave $((Z2 - Z1)) more zero chunks, more than the file's $file and 1 MiB"
    [ $((B1 - B2)) -ge $((FILE_MIB * 2048 * 95 / 100)) ] ||
        fail "the raw file shrank by $((B1 - B2)) blocks of 512 bytes, not by about $FILE_MIB MiB"
}

# Negative control: with the default discard='ignore', fstrim reaches QEMU but no hole is
# punched; the deleted file's bytes stay on the disk and are stored as before.
gap_trim_without_discard_unmap_leaves_the_bytes() {
    gap_disk ignore "s/ discard='unmap'//"
    ! grep -q "discard=" "$T/$P-gap-ignore.xml" || fail "the disk is still attached with discard"
    local file=$((FILE_MIB * MiB))
    [ $((Z2 - Z1)) -lt $((file / 10)) ] ||
        fail "without discard='unmap', $((Z2 - Z1)) chunks became zero"
    [ $((B1 - B2)) -lt $((FILE_MIB * 2048 / 10)) ] ||
        fail "without discard='unmap', the raw file shrank by $((B1 - B2)) blocks"
}

# ---- memory: init_on_free ---------------------------------------------------------------------------

# gap_ram VARIANT SED: the guest (kernel command line changed by SED) is saved and its memory
# imported; restored, it writes FREE_MIB of random bytes to a tmpfs file and deletes it; saved
# and imported again. Sets R1 and R2, the RAM images' zero chunks before and after, CMDLINE
# (the guest's /proc/cmdline) and AUTOINIT (the kernel's "mem auto-init:" line).
FREE_MIB=64
gap_ram() {
    local name=$P-gap-$1
    CASE_DOMAINS=("$name")
    mkdir -p "$T/$1"
    chmod 755 "$T/$1"
    local d=$T/$1
    cp --sparse=always "$(guest)/disk.img" "$d/disk.img"
    boot_with "$name" "$d/disk.img" "$d" "$2"
    CMDLINE=$(guest_run "$d/console.sock" 'echo "MARK=$(cat /proc/cmdline)"')
    # What the kernel made of it: "heap free:on" when freed pages are zeroed.
    AUTOINIT=$(guest_run "$d/console.sock" 'echo "MARK=$(dmesg | grep -o "mem auto-init:.*")"')
    virsh_ save "$name" "$d/1.save" >/dev/null
    cl vm import --home "$T/home" --memory "$d/1.save" --json >"$d/1.json"
    R1=$(zero_chunks "$d/1.json" ram)
    virsh_ restore "$d/1.save" >/dev/null
    local got
    got=$(guest_run_long "$d/console.sock" \
        "head -c $((FREE_MIB << 20)) /dev/urandom >/run/x; n=\$(wc -c </run/x); rm /run/x; echo MARK=\$n")
    [ "$got" = $((FREE_MIB << 20)) ] || fail "the guest wrote $got bytes to /run/x"
    virsh_ save "$name" "$d/2.save" >/dev/null
    cl vm import --home "$T/home" --memory "$d/2.save" --json >"$d/2.json"
    R2=$(zero_chunks "$d/2.json" ram)
    local ram
    ram=$(report_sum "$d/2.json" ram chunks)
    destroy_domain "$name"
    rm -f "$d"/*.save
    echo "$1: kernel command line: $CMDLINE; $AUTOINIT"
    echo "$1: RAM $ram chunks; non-zero after boot $(((ram - R1) / MiB)) MiB," \
        "after $FREE_MIB MiB written to tmpfs and deleted $(((ram - R2) / MiB)) MiB" \
        "(zero chunks $R1 then $R2)"
}

# Two guests in turn, with and without init_on_free=1, each allocate and free FREE_MIB of
# memory (a tmpfs file): with init_on_free the freed pages are zero chunks in the RAM images.
gap_init_on_free_gives_zero_chunks_for_freed_ram() {
    scratch
    cl init --home "$T/home" >/dev/null
    gap_ram plain 's/ init_on_free=1//'
    case " $CMDLINE " in *" init_on_free=1 "*) fail "the plain guest booted with init_on_free=1" ;; esac
    case $AUTOINIT in *"heap free:on"*) fail "the plain guest zeroes freed pages: $AUTOINIT" ;; esac
    local p1=$R1 p2=$R2
    gap_ram iof "/<cmdline>/{/init_on_free=1/!s|</cmdline>| init_on_free=1</cmdline>|}"
    case " $CMDLINE " in *" init_on_free=1 "*) ;; *) fail "the guest booted without init_on_free=1: $CMDLINE" ;; esac
    case $AUTOINIT in *"heap free:on"*) ;; *) fail "the kernel does not zero freed pages: $AUTOINIT" ;; esac
    local i1=$R1 i2=$R2 freed=$((FREE_MIB * MiB))
    echo "freeing $FREE_MIB MiB ($freed chunks): $((p1 - p2)) zero chunks fewer without init_on_free," \
        "$((i1 - i2)) with it; after the free, $((i2 - p2)) more zero chunks with init_on_free"
    # Without init_on_free the freed pages keep the random bytes: most of them are non-zero.
    [ $((p1 - p2)) -ge $((freed / 2)) ] ||
        fail "without init_on_free only $((p1 - p2)) chunks became non-zero; the test did not free $FREE_MIB MiB"
    # With it they are zero again: hardly any chunk more is non-zero.
    [ $((i1 - i2)) -lt $((freed / 8)) ] ||
        fail "with init_on_free, $((i1 - i2)) chunks stayed non-zero after the free"
    # And compared directly, the guest with init_on_free has far more zero chunks.
    [ $((i2 - p2)) -ge $((freed / 2)) ] ||
        fail "with init_on_free only $((i2 - p2)) more zero chunks than without"
}

"$GAP_CASE"
