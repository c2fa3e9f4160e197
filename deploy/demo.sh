#!/usr/bin/env bash
# The README's first command: the mission on one machine. Installs what is needed, builds,
# starts libvirt, then:
#   1. boots the tiny test guest (tests/vm/build-guest.sh) under libvirt, saves it and imports
#      it as the base VM into an app's home; restores it, changes it (a file on its disk, a
#      value in RAM), saves it again and imports it as the custom VM with --parent base;
#   2. makes a fleet of three nodes, each in its own network namespace on a bridge
#      (198.18.0.1-3), each holding the base VM, and shows that their daemons found each other;
#   3. from the app's namespace (198.18.0.10), which holds the custom VM and the fleet's client
#      key, launches the custom VM by its manifest id on a node found by discovery;
#   4. talks to the resumed guest on its serial console;
#   5. launches it again on another node, which takes it from the first node and nothing from
#      the app, and shows the fleet's replication view.
# Then it stops the daemons, destroys its domains and removes its namespaces, and leaves the
# homes, logs and launch directories in CLOUDLET_DEMO_DIR (default /var/tmp/cloudlet-demo;
# QEMU must be able to traverse its parents). Running it again starts afresh.
#
# Needs root (libvirt's qemu:///system, network namespaces); without it, it runs itself through
# sudo. Where network namespaces cannot be made (or with CLOUDLET_DEMO_LAN=loopback) the nodes
# listen on 127.0.0.1 ports 7431-7433 with discovery off and each other as static peers, and
# the app names its node and the node's key. CLOUDLET_DEMO_BUILD picks the build directory
# (default build/ in the repository); CLOUDLET_ACCEL=kvm boots the guest with KVM.
#
# The single-quoted lines sent to the guest are expanded by the guest's shell, not here.
# shellcheck disable=SC2016 source-path=SCRIPTDIR
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "demo: needs root (libvirt, network namespaces)" >&2; exit 1; }
    exec sudo --preserve-env=CLOUDLET_DEMO_DIR,CLOUDLET_DEMO_BUILD,CLOUDLET_DEMO_LAN,CLOUDLET_ACCEL \
        "$0" "$@"
fi
started=$SECONDS

"$top/deploy/install-deps.sh" test # the build's packages, and QEMU, libvirt, the guest's tools
build=${CLOUDLET_DEMO_BUILD:-$top/build}
echo "building cloudlet in $build"
log=$(mktemp)
if ! "$top/deploy/build.sh" "$build" -DCMAKE_BUILD_TYPE=Release >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
"$top/deploy/start-libvirt.sh"
guest=$("$top/tests/vm/build-guest.sh")
cloudlet=$build/cli/cloudlet
cloudletd=$build/node/cloudletd
# shellcheck source=../tests/lib/domain.sh
. "$top/tests/lib/domain.sh"
# shellcheck source=../tests/lib/procs.sh
. "$top/tests/lib/procs.sh"

demo=${CLOUDLET_DEMO_DIR:-/var/tmp/cloudlet-demo}
URI=qemu:///system
P='cloudlet-demo' # the prefix of the demo's domains
LAN=cldemo # the prefix of its namespaces
if [ -t 1 ]; then B=$'\033[1m' D=$'\033[2m' N=$'\033[0m'; else B='' D='' N=''; fi
step() { printf '\n%s== %s%s  %s(%d s)%s\n' "$B" "$*" "$N" "$D" $((SECONDS - started)) "$N"; }
note() { printf '%s%s%s\n' "$D" "$*" "$N"; }
# virsh's standard error is shown only when it fails: on a terminal, virsh warns about a
# missing polkit agent, which root does not need.
virsh_() {
    local err rc=0
    { err=$(virsh -q -c "$URI" "$@" 2>&1 >&3 3>&-) || rc=$?; } 3>&1
    [ $rc = 0 ] || printf '%s\n' "$err" >&2
    return $rc
}
console() { python3 "$top/tests/vm/console.py" "$@"; }
destroy_domain() {
    virsh_ destroy "$1" >/dev/null 2>&1 || true
    virsh_ undefine "$1" >/dev/null 2>&1 || true
}
our_domains() { virsh_ list --all --name 2>/dev/null | grep "^$P-" || true; }
our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^$LAN-" || true; }

# What an earlier run left running (it was killed before its own clean-up) goes first.
old=()
for lock in "$demo"/*/cloudletd.lock; do
    [ -f "$lock" ] || continue
    pid=$(head -1 "$lock")
    # Only a daemon of that home: the number may belong to another process by now.
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "cloudletd .*--home ${lock%/*} "; then
        old+=("$pid")
    fi
done
stop_pids "${old[@]}"
for d in $(our_domains); do destroy_domain "$d"; done
for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
rm -rf "$demo"
mkdir -p "$demo/launch" "$demo/guest"
chmod 755 "$demo" "$demo/launch" "$demo/guest"
# shellcheck disable=SC2034 # netns.sh keeps a scratch file in $T
T=$demo

DPIDS=()
# Stops the daemons, destroys the demo's domains, removes its namespaces; the files stay.
clean_up() {
    stop_pids "${DPIDS[@]}"
    DPIDS=()
    for d in $(our_domains); do destroy_domain "$d"; done
    for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
}
finish() {
    local rc=$?
    trap - EXIT
    [ $rc = 0 ] || echo "demo: stopped (exit $rc); what it made so far, logs too, is in $demo" >&2
    clean_up
    exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

# Where each home's commands run: its namespace, when the LAN is up.
declare -A NS=()
# run WHERE CMD...: CMD in WHERE's namespace (or here).
run() {
    local where=$1; shift
    if [ -n "${NS[$where]:-}" ]; then ip netns exec "${NS[$where]}" "$@"; else "$@"; fi
}
# cl_bare WHERE ARGS...: runs `cloudlet ARGS` on WHERE's home ($demo/WHERE), in its namespace.
cl_bare() { local where=$1; shift; run "$where" "$cloudlet" "$@" --home "$demo/$where"; }
# cl WHERE ARGS...: the same, showing the command first.
cl() { note "[$1]\$ cloudlet ${*:2}"; cl_bare "$@"; }
# cl_last WHERE ARGS...: the same, showing only the last line of its output.
cl_last() { note "[$1]\$ cloudlet ${*:2}"; cl_bare "$@" | tail -1; }

# guest_run SOCKET LINE: runs LINE in the guest's shell, prints what follows MARK= in its output.
guest_run() { console "$1" --send "$2" --expect 'MARK=(.*)$' --timeout 30; }
tick_now() { console "$1" --expect '^tick (\d+)' --timeout 10; }

# ---- 1 ------------------------------------------------------------------------------------------
g=$demo/guest dom=$P-guest
domtype=qemu
[ "${CLOUDLET_ACCEL:-}" = kvm ] && domtype=kvm
step "1. the test guest booted under libvirt, saved, imported as the base VM into the app's home"
cl_bare app init >/dev/null
cp --sparse=always "$guest/disk.img" "$g/disk.img"
guest_domain_xml "$dom" "$domtype" 256 "$guest/vmlinuz" "$guest/initrd.img" "$(cat "$guest/cmdline")" \
    "$g/disk.img" "$g/console.sock" "$g/console.log" >"$g/domain.xml"
virsh_ create "$g/domain.xml" >/dev/null
echo "booting $dom (256 MiB RAM, a 32 MiB raw disk; busybox, a shell on the serial console)"
console "$g/console.sock" --expect '^tick (\d+)' --timeout 180 >/dev/null ||
    { tail -20 "$g/console.log" >&2; echo "demo: the guest did not come up" >&2; exit 1; }
echo "it runs: its console says tick $(tick_now "$g/console.sock")"
note "\$ virsh save $dom base.save"
virsh_ save "$dom" "$g/base.save" >/dev/null
cl app vm import --name base --disk "$g/disk.img" --memory "$g/base.save"

step "1. restored, changed (a file on its disk, a value in RAM), saved, imported as the custom VM"
note "\$ virsh restore base.save"
virsh_ restore "$g/base.save" >/dev/null
change='MSG="kept in RAM since the save"; echo "written on the disk before the save" >/mnt/note.txt; head -c 1048576 /dev/urandom >/mnt/app.bin; sync; echo MARK=ok'
note "in the guest: $change"
[ "$(guest_run "$g/console.sock" "$change")" = ok ] || { echo "demo: the guest did not take the change" >&2; exit 1; }
tick=$(tick_now "$g/console.sock")
echo "saved at tick $tick"
note "\$ virsh save $dom custom.save"
virsh_ save "$dom" "$g/custom.save" >/dev/null
cl app vm import --name custom --parent base --disk "$g/disk.img" --memory "$g/custom.save" | tee "$g/custom.report"
echo "per image, how the custom VM's chunks relate to the base's: as-parent = the base's chunk at the"
echo "same place (costs nothing), zeroed = freed since the base, dedup = held elsewhere in the store,"
echo "delta = travels as a zstd delta against the base's chunk there, new = travels whole"
id=$(tail -1 "$g/custom.report")
rm -f "$g/base.save" "$g/custom.save" # from here on the app's store alone holds both VMs

# ---- 2 ------------------------------------------------------------------------------------------
lan=netns
if [ "${CLOUDLET_DEMO_LAN:-}" = loopback ]; then
    lan=loopback
elif ! ip netns add "$LAN-probe" 2>"$demo/netns.err"; then
    lan=loopback
    echo "network namespaces cannot be made here ($(cat "$demo/netns.err")): the nodes run on 127.0.0.1"
fi
ip netns del "$LAN-probe" 2>/dev/null || true
declare -A ADDR=()
if [ $lan = netns ]; then
    step "2. a fleet of three nodes, each in its own network namespace on a bridge (198.18.0.0/24)"
    # shellcheck source=../tests/lib/netns.sh
    . "$top/tests/lib/netns.sh"
    lan_up
    for i in 1 2 3; do
        lan_node node$i 198.18.0.$i
        NS[node$i]=$LAN-node$i ADDR[node$i]=198.18.0.$i
    done
    lan_node app 198.18.0.10
    NS[app]=$LAN-app
    echo "node1 198.18.0.1, node2 198.18.0.2, node3 198.18.0.3, the app 198.18.0.10"
else
    step "2. a fleet of three nodes on 127.0.0.1 (discovery off, each other as static peers)"
    for i in 1 2 3; do ADDR[node$i]=127.0.0.1:743$i; done
fi
cl_last node1 init --new-fleet
cl_bare node1 fleet-key >"$demo/fleet.key"
chmod 600 "$demo/fleet.key"
for i in 2 3; do cl_last node$i init --fleet-key "$demo/fleet.key"; done
for i in 1 2 3; do
    echo "launch_dir = $demo/launch" >"$demo/node$i/cloudlet.conf"
done
if [ $lan = loopback ]; then
    for i in 1 2 3; do
        printf 'listen = %s\ndiscovery = off\n' "${ADDR[node$i]}" >>"$demo/node$i/cloudlet.conf"
        for j in 1 2 3; do
            [ "$i" = "$j" ] || echo "peer = ${ADDR[node$j]} $(tr -d '\n' <"$demo/node$j/node.pub")" \
                >>"$demo/node$i/cloudlet.conf"
        done
    done
fi
echo
echo "each node holds the base VM:"
# Level 3: the package only goes to the nodes on this machine (the default, 19, makes it
# smaller for the network but takes tens of seconds here).
cl_last app overlay export base "$demo/base.overlay" --level 3
for i in 1 2 3; do cl_last node$i overlay import "$demo/base.overlay"; done
echo
for i in 1 2 3; do
    note "[node$i]\$ cloudletd --foreground"
    if [ -n "${NS[node$i]:-}" ]; then
        ip netns exec "${NS[node$i]}" "$cloudletd" --home "$demo/node$i" --foreground 2>>"$demo/node$i.log" &
    else
        "$cloudletd" --home "$demo/node$i" --foreground 2>>"$demo/node$i.log" &
    fi
    DPIDS+=($!)
done
deadline=$((SECONDS + 30))
for i in 1 2 3; do
    until run node$i "$cloudlet" peers --home "$demo/node$i" --json 2>/dev/null |
        python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)["peers"]) >= 2 else 1)' 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            echo "demo: node$i does not see its two neighbours within 30 s:" >&2
            tail -20 "$demo/node$i.log" >&2
            exit 1
        fi
        sleep 0.2
    done
done
if [ $lan = netns ]; then
    echo "each node found the two others by their beacons:"
else
    echo "each node lists the two others as static peers (daemons on one host share the beacon"
    echo "port, so only some of them hear the others' beacons; the peers' keys in cloudlet.conf"
    echo "are enough to connect):"
fi
for i in 1 2 3; do cl node$i peers; done

# ---- 3 ------------------------------------------------------------------------------------------
cl_bare node1 fleet-key --client >"$demo/client.key"
chmod 600 "$demo/client.key"
if [ $lan = netns ]; then
    step "3. the app (198.18.0.10) launches the custom VM by its id on a node it discovers"
    where=(--discover)
else
    step "3. the app launches the custom VM by its id on node1"
    where=(--node "${ADDR[node1]}" --node-key "$(tr -d '\n' <"$demo/node1/node.pub")")
fi
cl app init --client-key "$demo/client.key" >/dev/null
echo "the app's home holds the custom VM and the fleet's client key; the nodes hold only the base"
cl app launch "$id" "${where[@]}" --wait --name "$P-1" | tee "$demo/launch-1.out"
first=$(sed -n 's/^launching [0-9a-f]* on \([^ ]*\) port \([0-9]*\).*/\1:\2/p' "$demo/launch-1.out")
[ -n "$first" ] || { echo "demo: the launch did not say which node it chose" >&2; exit 1; }
sock1=$(sed -n 's/^console  \([^ ]*\).*/\1/p' "$demo/launch-1.out")
[ -n "$sock1" ] || sock1=$demo/launch/$P-1/console.sock

# ---- 4 ------------------------------------------------------------------------------------------
step "4. the resumed guest answers on its serial console"
ask='echo MARK="MSG=$MSG | /mnt/note.txt: $(cat /mnt/note.txt)"'
note "in the guest: $ask"
echo "it says: $(guest_run "$sock1" "$ask")"
echo "and ticks on from where it was saved (tick $tick): tick $(tick_now "$sock1")"

# ---- 5 ------------------------------------------------------------------------------------------
second='' third=''
for i in 1 2 3; do
    case "$first" in
        "${ADDR[node$i]}" | "${ADDR[node$i]}":*) continue ;;
    esac
    if [ -z "$second" ]; then second=node$i; else third=node$i; fi
done
step "5. the same VM launched on $second: it takes the VM from its neighbour, nothing from the app"
if [ $lan = netns ]; then
    where=(--node "${ADDR[$second]}")
else
    where=(--node "${ADDR[$second]}" --node-key "$(tr -d '\n' <"$demo/$second/node.pub")")
fi
cl app launch "$id" "${where[@]}" --wait --name "$P-2" | tee "$demo/launch-2.out"
sock2=$(sed -n 's/^console  \([^ ]*\).*/\1/p' "$demo/launch-2.out")
[ -n "$sock2" ] || sock2=$demo/launch/$P-2/console.sock
echo "its guest says: $(guest_run "$sock2" "$ask")"
echo
cl "$third" replication "$id"

# ---- end ----------------------------------------------------------------------------------------
clean_up
step "done: daemons stopped, domains $P-1 and $P-2 destroyed, namespaces removed"
echo "in $demo: the homes app, node1, node2, node3 (try: $cloudlet ls --home $demo/node2),"
echo "the daemons' logs node*.log, and the launch directories under launch/ (disk, XML, console log)."
echo "run it again (it starts afresh): $0"
