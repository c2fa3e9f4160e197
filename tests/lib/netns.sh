# netns.sh — a LAN of network namespaces for tests and benchmarks: a "switch" namespace holding
# a bridge, and one namespace per node joined to it by a veth pair. Nothing is created in the
# caller's namespace, so the bridge can never reach a real interface; addresses come from
# 198.18.0.0/15 (reserved for network tests). Source it after setting T (a scratch directory)
# and LAN (a short prefix unique to the run, e.g. "cl$$": it names the namespaces and links).
# Every namespace made is appended to the array NSES, which the caller's EXIT trap deletes.
# shellcheck shell=bash
# shellcheck source=procs.sh
. "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
NSES=()
LAN_LINKS=0

# lan_up: the switch namespace $LAN-sw with bridge br0; exits 77 (skipped), saying why, when
# namespaces cannot be made here.
lan_up() {
    if ! ip netns add "$LAN-sw" 2>"$T/lan-skip"; then
        echo "SKIP: cannot create a network namespace here: $(cat "$T/lan-skip")"
        exit 77
    fi
    NSES+=("$LAN-sw")
    ip -n "$LAN-sw" link add br0 type bridge
    # Flood multicast to every port: there is no IGMP querier on this LAN.
    ip -n "$LAN-sw" link set br0 type bridge mcast_snooping 0
    ip -n "$LAN-sw" link set br0 up
}

# lan_node NAME ADDR: namespace $LAN-NAME with ADDR/24 on its eth0, joined to the bridge.
lan_node() {
    local ns=$LAN-$1 addr=$2 link=$LAN-$LAN_LINKS
    LAN_LINKS=$((LAN_LINKS + 1))
    ip netns add "$ns"
    NSES+=("$ns")
    ip -n "$LAN-sw" link add "$link" type veth peer name eth0 netns "$ns"
    ip -n "$LAN-sw" link set "$link" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    # Joining a multicast group on INADDR_ANY needs a route for it (there is no default route).
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
}

# lan_down: deletes every namespace lan_up and lan_node made.
lan_down() {
    local ns
    for ns in "${NSES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
