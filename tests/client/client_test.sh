#!/usr/bin/env bash
# `cloudlet init --client-key` and `cloudlet launch --node` through the real binaries: an app's
# home and a real cloudletd on 127.0.0.1 (discovery off, listen on a port the system picks, the
# node's key from its node.pub; tests/lib/nodes.sh). The cases that launch a VM boot one under
# libvirt (a blank disk: it starts and waits in the firmware) and are skipped (77) where
# libvirt or QEMU cannot run.
# Usage: client_test.sh CLOUDLET CLOUDLETD CASE
set -euo pipefail
CLOUDLET=$1
CLOUDLETD=$2
CASE=$3
HERE=$(cd "$(dirname "$0")" && pwd)
NODES_TAG=client
# shellcheck source=../lib/nodes.sh
. "$HERE/../lib/nodes.sh"

skip() {
    echo "SKIP: $*" >&2
    exit 77
}

# expect_status N CMD...: runs CMD, its stderr in $T/err, and fails unless it exits N.
expect_status() {
    local want=$1
    shift
    local rc=0
    "$@" >"$T/out" 2>"$T/err" || rc=$?
    [ "$rc" = "$want" ] || fail "$* exited $rc, not $want: $(cat "$T/err")"
}

# app: an app's home holding the fleet's client key (the fleet made by the first node).
app() {
    cl fleet-key --home "$T/node1" --client >"$T/client.txt"
    cl init --home "$T/app" --client-key "$T/client.txt" >"$T/init.out"
}

node_addr() { local p="PORT_$1"; echo "127.0.0.1:${!p}"; }

# ---- without libvirt ----------------------------------------------------------------------

init_client_key_makes_an_app_home() {
    home node1
    app
    grep -q 'stored the fleet.s client key' "$T/init.out" || fail "$(cat "$T/init.out")"
    [ "$(stat -c %a "$T/app/client.key")" = 600 ] || fail "client.key is not 0600"
    cmp -s <(tr -d '\n' <"$T/app/client.key") <(tr -d '\n' <"$T/client.txt") ||
        fail "client.key differs from the key handed over"
    grep -q '^cloudlet-node-key:' <(tail -1 "$T/init.out") || fail "the last line is not the key"
    # Again with the same key: nothing changes; from standard input too.
    cl init --home "$T/app" --client-key - <"$T/client.txt" >"$T/again"
    grep -q 'already holds this client key' "$T/again" || fail "$(cat "$T/again")"
    # Another fleet's client key is refused and the key stays.
    cl init --home "$T/other" --new-fleet >/dev/null
    cl fleet-key --home "$T/other" --client >"$T/other.txt"
    expect_status 1 cl init --home "$T/app" --client-key "$T/other.txt"
    grep -q 'holds another client key' "$T/err" || fail "$(cat "$T/err")"
    cmp -s <(tr -d '\n' <"$T/app/client.key") <(tr -d '\n' <"$T/client.txt") ||
        fail "client.key was replaced"
    # A fleet key is not a client key, and nothing is created for it.
    cl fleet-key --home "$T/node1" >"$T/fleet.txt"
    expect_status 1 cl init --home "$T/app2" --client-key "$T/fleet.txt"
    grep -q 'this is a fleet key' "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$T/app2" ] || fail "a home was made for a refused key"
    # A node's home needs none; and the options exclude each other.
    expect_status 1 cl init --home "$T/node1" --client-key "$T/client.txt"
    grep -q 'needs no client.key' "$T/err" || fail "$(cat "$T/err")"
    [ ! -e "$T/node1/client.key" ] || fail "a node's home got a client key"
    expect_status 2 cl init --home "$T/app3" --client-key "$T/client.txt" --new-fleet
    expect_status 2 cl init --home "$T/app3" --client-key "$T/client.txt" --fleet-key "$T/fleet.txt"
}

launch_errors_are_clear() {
    home node1
    start node1
    app
    local id key
    id=$(head -c 100000 /dev/urandom >"$T/f" && cl store add --home "$T/app" "$T/f" | tail -1)
    key=$(key_of node1)
    # Usage: one of --local, --node, --discover; --node-key with --node; names the node allows.
    expect_status 2 cl launch --home "$T/app" "$id"
    grep -q -- '--local is required' "$T/err" || fail "$(cat "$T/err")"
    expect_status 2 cl launch --home "$T/app" "$id" --node 127.0.0.1 --discover
    expect_status 2 cl launch --home "$T/app" "$id" --discover --node-key "$key"
    expect_status 2 cl launch --home "$T/app" "$id" --node 127.0.0.1 --group 239.255.0.1
    expect_status 2 cl launch --home "$T/app" "$id" --node 127.0.0.1 --name 'a b'
    expect_status 2 cl launch --home "$T/app" "$id" --node 127.0.0.1 --progress-json
    # A malformed address or key.
    expect_status 1 cl launch --home "$T/app" "$id" --node '127.0.0.1:99999' --node-key "$key"
    grep -q 'expected HOST' "$T/err" || fail "$(cat "$T/err")"
    expect_status 1 cl launch --home "$T/app" "$id" --node "$(node_addr node1)" \
        --node-key "$(cat "$T/client.txt")"
    grep -q 'not a node public key' "$T/err" || fail "$(cat "$T/err")"
    # A home without the client key says how to get one.
    cl init --home "$T/bare" >/dev/null
    expect_status 1 cl launch --home "$T/bare" "$id" --node "$(node_addr node1)" --node-key "$key"
    grep -q 'cloudlet init --client-key' "$T/err" || fail "$(cat "$T/err")"
    # The key of another node (or a node of another fleet): the handshake fails.
    expect_status 1 cl launch --home "$T/app" "$id" --node "$(node_addr node1)" \
        --node-key "$(tr -d '\n' <"$T/app/node.pub")"
    grep -q 'not of this fleet (the handshake failed)' "$T/err" || fail "$(cat "$T/err")"
    # Another app's client key.
    cl init --home "$T/other" --new-fleet >/dev/null
    cl fleet-key --home "$T/other" --client >"$T/other.txt"
    cl init --home "$T/app2" --client-key "$T/other.txt" >/dev/null
    expect_status 1 cl launch --home "$T/app2" "$id" --node "$(node_addr node1)" --node-key "$key"
    grep -q 'not of this fleet' "$T/err" || fail "$(cat "$T/err")"
    # Nobody listening, and a probe nobody answers (discovery is off).
    stop_pids "$PID_node1"
    expect_status 1 cl launch --home "$T/app" "$id" --node "$(node_addr node1)" --node-key "$key"
    grep -q 'cannot connect to 127.0.0.1' "$T/err" || fail "$(cat "$T/err")"
    expect_status 1 cl launch --home "$T/app" "$id" --node 127.0.0.1 --discovery-port 9
    grep -q 'did not answer the discovery probe' "$T/err" || fail "$(cat "$T/err")"
    # An unknown name is this home's to resolve.
    expect_status 1 cl launch --home "$T/app" no-such-vm --node 127.0.0.1 --node-key "$key"
    grep -q 'no-such-vm is neither' "$T/err" || fail "$(cat "$T/err")"
}

a_failed_launch_exits_1_with_the_nodes_reason() {
    # A plain file is no VM: the node takes its chunks from the app, then says why it cannot
    # launch it.
    home node1
    start node1
    app
    local id
    head -c 300000 /dev/urandom >"$T/f"
    id=$(cl store add --home "$T/app" "$T/f" | tail -1)
    expect_status 1 cl launch --home "$T/app" "$id" --node "$(node_addr node1)" \
        --node-key "$(key_of node1)" --wait --json
    grep -q 'disk' "$T/err" || fail "the node's reason is not on stderr: $(cat "$T/err")"
    [ "$(json_get "$T/out" '["ok"]')" = False ] || fail "json: $(cat "$T/out")"
    [ "$(json_get "$T/out" '["done"]')" = True ] || fail "json: $(cat "$T/out")"
    [[ "$(json_get "$T/out" '["error"]')" == *disk* ]] || fail "json: $(cat "$T/out")"
}

progress_is_shown_on_a_terminal_only() {
    # The node reports its first progress (resolve) as soon as it takes the launch; a plain
    # file then fails to launch, which does not matter here.
    home node1
    start node1
    app
    local id
    head -c 300000 /dev/urandom >"$T/f"
    id=$(cl store add --home "$T/app" "$T/f" | tail -1)
    script -qec "'$CLOUDLET' launch --home '$T/app' $id --node $(node_addr node1) \
        --node-key $(key_of node1) --wait" /dev/null >"$T/tty" </dev/null || true
    grep -q $'\r\033\[Kresolve ' "$T/tty" || fail "no progress line on a terminal: $(cat -v "$T/tty")"
    expect_status 1 cl launch --home "$T/app" "$id" --node "$(node_addr node1)" \
        --node-key "$(key_of node1)" --wait
    ! grep -q $'\r' "$T/err" "$T/out" || fail "progress off a terminal: $(cat -v "$T/err")"
    # With --progress-json the reports are objects on standard output, one per line.
    expect_status 1 cl launch --home "$T/app" "$id" --node "$(node_addr node1)" \
        --node-key "$(key_of node1)" --wait --json --progress-json
    head -1 "$T/out" >"$T/first"
    [ "$(json_get "$T/first" '["progress"]["stage"]')" = resolve ] || fail "$(cat "$T/out")"
    tail -1 "$T/out" >"$T/last"
    [ "$(json_get "$T/last" '["done"]')" = True ] || fail "$(cat "$T/out")"
}

# ---- with libvirt -------------------------------------------------------------------------

need_libvirt() {
    [ "$(id -u)" = 0 ] || skip "launching needs root (libvirt's qemu:///system)"
    command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed"
    command -v virsh >/dev/null || skip "virsh is not installed"
    "$HERE/../../deploy/start-libvirt.sh" 60 >/dev/null 2>&1 || skip "libvirt does not start here"
}

DOMAINS=()
destroy_domains() {
    for d in "${DOMAINS[@]}"; do virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true; done
}
trap 'destroy_domains; cleanup' EXIT

# A VM without memory snapshot (the node boots it): a 4 MiB disk with 1 MiB of random bytes
# and a minimal domain. Prints its id.
make_vm() {
    local d=$T/vm
    mkdir -p "$d"
    truncate -s 4M "$d/disk.raw"
    head -c 1048576 /dev/urandom | dd of="$d/disk.raw" bs=64K seek=8 conv=notrunc status=none
    cat >"$d/d.xml" <<XML
<domain type='qemu'>
  <name>client-test</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$d/disk.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='unix'>
      <source mode='bind' path='$d/console.sock'/>
      <log file='$d/console.log'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    cl vm import --home "$T/app" --disk "$d/disk.raw" --xml "$d/d.xml" | tail -1
}

# home_with_launch_dir NAME: a node whose launches go under $T (QEMU must traverse it).
home_with_launch_dir() {
    home "$1"
    mkdir -p "$T/launch"
    chmod 755 "$T" "$T/launch"
    echo "launch_dir = $T/launch" >>"$T/$1/cloudlet.conf"
}

a_node_lacking_the_vm_gets_its_chunks_from_the_app() {
    need_libvirt
    home_with_launch_dir node1
    start node1
    app
    local id name=cltest-$$-a
    id=$(make_vm)
    DOMAINS+=("$name")
    cl launch --home "$T/app" "$id" --node "$(node_addr node1)" --node-key "$(key_of node1)" \
        --wait --name "$name" >"$T/out" 2>"$T/err" || fail "launch failed: $(cat "$T/err")"
    [ "$(tail -1 "$T/out")" = "$name" ] || fail "the last line is not the domain: $(cat "$T/out")"
    grep -q "^console  $T/launch/$name/console.sock" "$T/out" || fail "no console: $(cat "$T/out")"
    grep -Eq '^transfer [0-9.]+ s' "$T/out" || fail "no stage times: $(cat "$T/out")"
    # The 256 non-zero chunks came from the app: the node held none of them.
    grep -Eq '^from origin +1\.0 MiB +\(this home sent 256 chunks whole' "$T/out" ||
        fail "not from the origin: $(cat "$T/out")"
    # (Not `virsh | grep -q`: under pipefail, grep leaving early can fail the pipeline.)
    [ "$(virsh -c qemu:///system domstate "$name")" = running ] || fail "$name is not running"
    cl manifest show --home "$T/node1" "$id" >/dev/null || fail "the node does not hold the manifest"
    cl store verify --home "$T/node1" >/dev/null || fail "the node's store does not verify"
}

a_launch_of_a_vm_the_node_holds_needs_nothing_from_the_app() {
    need_libvirt
    home_with_launch_dir node1
    start node1
    app
    local id name=cltest-$$-b
    id=$(make_vm)
    # The node pulls it first from the app's copy: a second node holding the same store.
    cl overlay export --home "$T/app" "$id" "$T/vm.pkg" >/dev/null
    cl overlay import --home "$T/node1" "$T/vm.pkg" >/dev/null
    DOMAINS+=("$name")
    cl launch --home "$T/app" "$id" --node "$(node_addr node1)" --node-key "$(key_of node1)" \
        --wait --name "$name" --json >"$T/out" 2>"$T/err" || fail "launch failed: $(cat "$T/err")"
    [ "$(json_get "$T/out" '["ok"]')" = True ] || fail "json: $(cat "$T/out")"
    [ "$(json_get "$T/out" '["domain"]')" = "$name" ] || fail "json: $(cat "$T/out")"
    [ "$(json_get "$T/out" '["served"]["chunks"]')" = 0 ] || fail "the app sent chunks: $(cat "$T/out")"
    [[ "$(json_get "$T/out" '["accel"]')" =~ ^(kvm|tcg)$ ]] || fail "json accel: $(cat "$T/out")"
}

without_wait_the_command_returns_once_the_node_has_every_chunk() {
    need_libvirt
    home_with_launch_dir node1
    start node1
    app
    local id name=cltest-$$-c
    id=$(make_vm)
    DOMAINS+=("$name")
    cl launch --home "$T/app" "$id" --node "$(node_addr node1)" --node-key "$(key_of node1)" \
        --name "$name" --json --progress-json >"$T/out" 2>"$T/err" ||
        fail "launch failed: $(cat "$T/err")"
    tail -1 "$T/out" >"$T/last"
    [ "$(json_get "$T/last" '["done"]')" = False ] || fail "json: $(cat "$T/last")"
    [[ "$(json_get "$T/last" '["stage"]')" =~ ^(apply|restore)$ ]] || fail "json: $(cat "$T/last")"
    [ "$(json_get "$T/last" '["served"]["chunks"]')" = 256 ] || fail "json: $(cat "$T/last")"
    grep -q '^{"progress"' "$T/out" || fail "no progress lines: $(cat "$T/out")"
    # The node finishes the launch on its own.
    for _ in $(seq 300); do
        [ "$(virsh -c qemu:///system domstate "$name" 2>/dev/null)" = running ] && return 0
        sleep 0.1
    done
    fail "the node did not finish the launch: $(tail -5 "$T/node1.log")"
}

"$CASE"
