# lan_nodes.sh — daemons in network namespaces on one bridge (netns.sh), for tests through the
# real binaries. Source it after setting CLOUDLET, CLOUDLETD, NODES_TAG (names the temporary
# directory) and LAN (a short prefix unique to the run: it names the namespaces). It gives what
# nodes.sh gives (T, PIDS, fail, cl, json_get, key_of), lan_up/lan_node from netns.sh, and a
# `start` that runs a node's daemon in its namespace; the EXIT trap stops the daemons and
# deletes the namespaces. Exits 77 (skipped) from lan_up when namespaces cannot be made here.
# shellcheck shell=bash
# shellcheck source=nodes.sh
. "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
# shellcheck source=netns.sh
. "$(dirname "${BASH_SOURCE[0]}")/netns.sh"
cleanup() {
    stop_pids "${PIDS[@]}"
    lan_down
    [ -n "${KEEP:-}" ] && echo "kept $T" >&2 || rm -rf "$T"
}
trap 'exit 1' TERM INT HUP

# start NAME: cloudletd for home $T/NAME in namespace $LAN-NAME; returns once it serves.
start() {
    local name=$1
    ip netns exec "$LAN-$name" "$CLOUDLETD" --home "$T/$name" --foreground --log-level debug \
        2>"$T/$name.log" &
    PIDS+=($!)
    for _ in $(seq 200); do [ -S "$T/$name/control.sock" ] && return 0; sleep 0.05; done
    fail "cloudletd $name never served"
}
