#!/usr/bin/env bash
# Launch by manifest id over a slow client link (docs/PERFORMANCE.md, "Launch by manifest id"):
#
#   tests/bench/bench_launch.sh [BUILD_DIR] [--rate RATE] [--rounds N] [--work DIR]
#                               [--cache DIR] [--timeout S] [--json]
#
# On the benchmark pair of tests/bench/vm-pair.sh (a Debian minbase base; the same plus python3,
# numpy, flask and nginx running), with the app's link shaped by `tc` to RATE (default 38mbit,
# the seed paper's measured Wi-Fi) in both directions, in one run, the time from the launch
# request to the VM answering on its serial console, for:
#   (a) cloudlet: the node holds the base, the app holds the custom VM (the overlay's only
#       copy): `cloudlet launch ID --node NODE --node-key KEY --wait` from the app's namespace;
#   (b) the same with a neighbour node on the LAN that holds the custom VM (LAN links unshaped);
#   (c) the seed system's sequential method: the xdelta3+xz overlay of tests/bench/seed_overlay.py
#       (bench_vm.sh's method (b)) sent whole over the same shaped link by a TCP sender in the
#       app's namespace to a receiver in the node's, then decoded and applied
#       (`seed_overlay.py decode`), the save file rebuilt from the flat RAM image, and
#       `virsh restore --xml` (the disk and console paths rewritten).
# "Answering": a probe connected to the guest's serial console (retrying until the socket
# exists) types one byte every 50 ms; the guest kernel's tty echoes it once the vCPU runs and
# takes interrupts. The first echoed byte ends the measurement, the same way for (a), (b), (c).
# The guests have no network and their init has no shell on the console, so the app (nginx,
# flask) cannot be asked directly; the echo is the first thing a restored guest can answer.
#
# Prints the stage times cloudlet reports (resolve, transfer, apply, restore), the bytes by
# source, the overlay sizes, and the goals with PASS or FAIL; --json prints one JSON object as
# the last line. The exit status is 0 when every run completed, 1 on an error, 77 when network
# namespaces cannot be made here. Needs root (namespaces, tc, libvirt's qemu:///system).
#
#   BUILD_DIR  a Release build with cli/cloudlet and node/cloudletd (default: build-rel/ at the
#              top of the source tree); the script builds nothing
#   --rate     the app's link, as tc takes it (default 38mbit)
#   --rounds   repeat (c), (a), (b) this many times (default 1; each round is reported)
#   --work     scratch directory, emptied first (default /var/tmp/cloudlet-launchbench)
#   --cache    vm-pair.sh's cache (default $CLOUDLET_BENCH_CACHE or /var/tmp/cloudlet-bench); the
#              seed method's inputs (flat RAM images, its encoded overlay: a few minutes to
#              make) are kept there too, under seed-KEY (KEY: the pair and seed_overlay.py)
#   --timeout  seconds each launch may take until the guest answers (default 600)
set -euo pipefail

synopsis() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }
usage() { synopsis >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
BUILD="" RATE=38mbit ROUNDS=1 W=/var/tmp/cloudlet-launchbench TIMEOUT=600 JSON=0
CACHE=${CLOUDLET_BENCH_CACHE:-/var/tmp/cloudlet-bench}
while [ $# -gt 0 ]; do
    case $1 in
    --rate) RATE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --work) W=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    -h | --help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench_launch: unknown option $1" >&2; usage ;;
    *) BUILD=$1; shift ;;
    esac
done
BUILD=${BUILD:-$TOP/build-rel}
CLOUDLET=$BUILD/cli/cloudlet CLOUDLETD=$BUILD/node/cloudletd
for b in "$CLOUDLET" "$CLOUDLETD"; do
    [ -x "$b" ] || { echo "bench_launch: missing $b (build $BUILD first)" >&2; exit 1; }
done
CLOUDLET=$(readlink -f "$CLOUDLET") CLOUDLETD=$(readlink -f "$CLOUDLETD")
"$CLOUDLET" launch --help 2>&1 | grep -q -- '--node' ||
    { echo "bench_launch: $CLOUDLET has no remote launch (launch --node)" >&2; exit 1; }
RATE_BPS=$(python3 - "$RATE" <<'PY'
import re, sys
m = re.fullmatch(r"([\d.]+)\s*([kmg]?)(bit|bps)", sys.argv[1].lower())
if not m:
    sys.exit("bench_launch: --rate takes e.g. 38mbit, 4500kbit or 5mbps")
v = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
print(int(v * (8 if m.group(3) == "bps" else 1)))
PY
)
[ "$(id -u)" = 0 ] || { echo "bench_launch: needs root" >&2; exit 1; }
need=()
command -v xdelta3 >/dev/null || need+=(xdelta3)
command -v xz >/dev/null || need+=(xz-utils)
[ ${#need[@]} -eq 0 ] || apt-get install -y -q "${need[@]}" >/dev/null
for tool in virsh tc ip python3 xdelta3 xz; do
    command -v $tool >/dev/null || { echo "bench_launch: $tool is missing" >&2; exit 1; }
done
log() { echo "bench_launch: $(date -u +%H:%M:%S) $*" >&2; }
"$TOP/deploy/start-libvirt.sh" 60 >/dev/null

pair=$("$HERE/vm-pair.sh" --cache "$CACHE")
BD=$pair/base.disk BS=$pair/base.save CD=$pair/custom.disk CS=$pair/custom.save
log "pair: $pair"

# ---- scratch, namespaces, clean-up ------------------------------------------------------------
# shellcheck disable=SC2034 # netns.sh keeps its scratch files under $T
T=$W
rm -rf "$W"
mkdir -p "$W"
chmod 755 "$W"
LAN=clb$$
PIDS=()
DOMAINS=()    # domains this run made (names), destroyed on exit
SEED_DOM=""   # the seed method's domain: its name is the one in the save file
# shellcheck source=../lib/netns.sh
. "$HERE/../lib/netns.sh"
virsh_() { virsh -q -c qemu:///system "$@"; }
cleanup() {
    set +e
    local d
    for d in "${DOMAINS[@]}"; do virsh_ destroy "$d" >/dev/null 2>&1; done
    # The seed method's domain has the save file's name: destroyed only if its disk is ours.
    if [ -n "$SEED_DOM" ] && virsh_ domblklist "$SEED_DOM" 2>/dev/null | grep -q "$W/"; then
        virsh_ destroy "$SEED_DOM" >/dev/null 2>&1
    fi
    stop_pids "${PIDS[@]}"
    lan_down
    [ -n "${KEEP:-}" ] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "bench_launch: FAIL: $*" >&2
    for l in "$W"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -20 "$l" >&2; }; done
    exit 1
}
cl() { "$CLOUDLET" "$@"; }
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }
psi() { awk '/^some/ { split($5, a, "="); print a[2] }' /proc/pressure/cpu 2>/dev/null || echo 0; }
R=$W/results.jsonl   # one JSON object per measured launch
: >"$R"

APP_ADDR=198.18.2.10 NODE_ADDR=198.18.2.1 NBR_ADDR=198.18.2.2
lan_up
lan_node app $APP_ADDR      # link $LAN-0: the app's, shaped
lan_node node $NODE_ADDR
lan_node nbr $NBR_ADDR
# The app's link in both directions: its eth0 (app -> LAN: the overlay's bytes) and the
# bridge's end of its veth pair (LAN -> app: requests and progress).
ip netns exec "$LAN-app" tc qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 50ms
ip netns exec "$LAN-sw" tc qdisc add dev "$LAN-0" root tbf rate "$RATE" burst 64kb latency 50ms

# ---- the seed method's inputs (cached) --------------------------------------------------------
seed_key=$( (cat "$HERE/seed_overlay.py"; echo "$pair") | sha256sum | cut -c1-16)
SEED=$CACHE/seed-$seed_key
if [ ! -f "$SEED/ready" ]; then
    log "seed method: flatten the save files and encode the overlay (cached in $SEED)"
    rm -rf "$SEED"
    mkdir -p "$SEED"
    python3 "$HERE/seed_overlay.py" flatten "$BS" "$SEED/base.ram" "$SEED/base.state" >/dev/null
    python3 "$HERE/seed_overlay.py" flatten "$CS" "$SEED/custom.ram" "$SEED/custom.state" >/dev/null
    python3 "$HERE/seed_overlay.py" encode --base-disk "$BD" --base-ram "$SEED/base.ram" \
        --custom-disk "$CD" --custom-ram "$SEED/custom.ram" --custom-state "$SEED/custom.state" \
        --out "$SEED/overlay.xz" --json >"$SEED/encode.json"
    rm -f "$SEED/base.state" "$SEED/custom.state"
    touch "$SEED/ready"
fi
SEED_OVERLAY_BYTES=$(stat -c %s "$SEED/overlay.xz")
SEED_DOM=$(virsh_ save-image-dumpxml "$CS" | sed -n 's|^ *<name>\(.*\)</name>.*|\1|p' | head -1)

# ---- homes: one fleet; a store with the base, one with base and custom ------------------------
log "homes: importing the base and the custom VM"
cl init --home "$W/full" --new-fleet >/dev/null
(umask 077 && cl fleet-key --home "$W/full" >"$W/fleet" &&
    cl fleet-key --client --home "$W/full" >"$W/client")
cl vm import --home "$W/full" --name base --disk "$BD" --memory "$BS" --json >"$W/import-base.json"
cl vm import --home "$W/full" --name custom --parent base --disk "$CD" --memory "$CS" \
    --json >"$W/import-custom.json"
CID=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$W/import-custom.json")
cl init --home "$W/baseonly" --fleet-key "$W/fleet" >/dev/null
cl vm import --home "$W/baseonly" --name base --disk "$BD" --memory "$BS" >/dev/null
cl init --home "$W/app" --client-key "$W/client" >/dev/null
rm -rf "$W/app/store"
cp -a --sparse=always "$W/full/store" "$W/app/store"
rm -f "$W/app/store/lock.mdb"
# The package `cloudlet overlay export` would write (zstd level 22, its default): the import
# reports its size.
CL_OVERLAY_BYTES=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["overlay_bytes"])' \
    "$W/import-custom.json")
mkdir -p "$W/launch"
chmod 755 "$W/launch"

# node_home NAME STORE ADDR [PEER_HOME PEER_ADDR]: a node home of the fleet holding a copy of
# STORE's store, listening on ADDR, discovery off, launches under $W/launch.
node_home() {
    local name=$1 from=$2 addr=$3
    rm -rf "${W:?}/$name"
    cl init --home "$W/$name" --fleet-key "$W/fleet" >/dev/null
    rm -rf "$W/$name/store"
    cp -a --sparse=always "$W/$from/store" "$W/$name/store"
    rm -f "$W/$name/store/lock.mdb"
    printf 'listen = %s:7420\ndiscovery = off\nlaunch_dir = %s\nlog_level = info\n' \
        "$addr" "$W/launch" >"$W/$name/cloudlet.conf"
    [ $# -lt 5 ] || printf 'peer = %s:7420 %s\n' "$5" "$(tr -d '\n' <"$W/$4/node.pub")" \
        >>"$W/$name/cloudlet.conf"
}
# start NAME NS: its daemon in namespace $LAN-NS; returns once it serves, its pid in PID_NAME.
start() {
    local name=$1 ns=$LAN-$2
    ip netns exec "$ns" "$CLOUDLETD" --home "$W/$name" --foreground 2>>"$W/$name.log" &
    PIDS+=($!)
    eval "PID_$name=$!"
    for _ in $(seq 200); do [ -S "$W/$name/control.sock" ] && break; sleep 0.05; done
    [ -S "$W/$name/control.sock" ] || fail "cloudletd $name never served"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks_s() { echo "$1 $2 $(getconf CLK_TCK)" | awk '{ printf "%.2f\n", ($2 - $1) / $3 }'; }
stop() {
    local p="PID_$1"
    kill -TERM "${!p}" 2>/dev/null || true
    wait "${!p}" 2>/dev/null || true
}

# cpu_of OUT CMD...: runs CMD and writes to OUT the CPU seconds (user + system) it and its
# children used.
cpu_of() {
    python3 -c '
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.2f\n" % (u.ru_utime + u.ru_stime))
sys.exit(rc)' "$@"
}

# probe SOCK OUT: in the background (pid in PROBE), waits for the console socket SOCK, types one
# byte every 50 ms and writes to OUT the time of connecting and of the first echoed byte.
probe() {
    python3 - "$1" "$2" "$TIMEOUT" <<'PY' &
import socket, sys, time
path, out, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.time() + timeout
s = None
while s is None:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
    except OSError:
        s.close()
        s = None
        if time.time() > end:
            sys.exit(1)
        time.sleep(0.01)
t_conn = time.time()
s.setblocking(False)
sent, last = 0, 0.0
while time.time() < end:
    t = time.time()
    if t - last >= 0.05:
        try:
            s.send(b"%")
            sent += 1
        except BlockingIOError:
            pass
        last = t
    try:
        d = s.recv(65536)
    except BlockingIOError:
        time.sleep(0.002)
        continue
    if not d:
        sys.exit(1)
    if b"%" in d:
        with open(out, "w") as f:
            f.write("%.6f %.6f %d\n" % (t_conn, time.time(), sent))
        sys.exit(0)
sys.exit(1)
PY
    PROBE=$!
}

# ---- (c) the seed system's sequential method --------------------------------------------------
run_seed() {
    local round=$1 d=$W/c$1 t0 t1 t2 t3 t4 load0 psi0
    mkdir -p "$d"
    chmod 755 "$d"
    # The restore's XML: the save file's, with the disk and the console moved into $d.
    virsh_ save-image-dumpxml "$CS" | sed -e "s|$CD|$d/custom.disk|" \
        -e "s|<source mode='bind' path='[^']*'/>|<source mode='bind' path='$d/console.sock'/>|" \
        -e "s|<log file='[^']*'/>|<log file='$d/console.log'/>|" >"$d/domain.xml"
    grep -q "$d/custom.disk" "$d/domain.xml" && grep -q "$d/console.sock" "$d/domain.xml" ||
        fail "(c): could not rewrite the save file's XML"
    sync
    cat "$BD" "$SEED/base.ram" "$SEED/overlay.xz" >/dev/null
    # The receiver, on the node's side, listening before the clock starts.
    ip netns exec "$LAN-node" python3 - "$NODE_ADDR" "$d/overlay.xz" "$d/recv.ready" <<'PY' &
import socket, sys
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], 7500))
ls.listen(1)
open(sys.argv[3], "w").close()
c, _ = ls.accept()
with open(sys.argv[2], "wb") as f:
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        f.write(b)
c.close()
PY
    local recv=$!
    for _ in $(seq 200); do [ -f "$d/recv.ready" ] && break; sleep 0.05; done
    [ -f "$d/recv.ready" ] || fail "(c): the receiver did not start"
    load0=$(loadavg) psi0=$(psi)
    log "round $round (c): seed method over $RATE"
    t0=$(now)
    probe "$d/console.sock" "$d/answer"
    local probe_pid=$PROBE
    ip netns exec "$LAN-app" python3 - "$NODE_ADDR" "$SEED/overlay.xz" <<'PY' || fail "(c): send"
import socket, sys
s = socket.create_connection((sys.argv[1], 7500))
with open(sys.argv[2], "rb") as f:
    s.sendfile(f)
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the receiver closes once it has written everything
PY
    wait "$recv" || fail "(c): receive"
    t1=$(now)
    cmp -s "$d/overlay.xz" "$SEED/overlay.xz" || fail "(c): the overlay arrived damaged"
    python3 "$HERE/seed_overlay.py" decode --base-disk "$BD" --base-ram "$SEED/base.ram" \
        --overlay "$d/overlay.xz" --out "$d" --json >"$d/decode.json" || fail "(c): decode"
    t2=$(now)
    # The save file again, from the flat RAM image and the rest (seed_overlay.py's state: the
    # file without its page records): every page as a PAGE or ZERO record, inserted where the
    # last ram section's EOS record is.
    python3 - "$d/custom.ram" "$d/custom.state" "$d/custom.save" <<'PY' || fail "(c): rebuild"
import struct, sys
ram_path, state_path, out_path = sys.argv[1:4]
st = open(state_path, "rb").read()
data_len = struct.unpack_from("<I", st, 20)[0]
stream = 92 + data_len
pat = b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04"
at = st.find(pat, stream, stream + 65536)
assert at > 0 and st[at - 5] == 0x01, "no ram START section"
ram_id = struct.unpack_from(">I", st, at - 4)[0]
p = at + len(pat)
blocks = []
insert = None
while True:
    v = struct.unpack_from(">Q", st, p)[0]
    flags, addr = v & 0xFFF, v & ~0xFFF
    if flags & 0x04:  # MEM_SIZE and the block list
        p += 8
        got = 0
        while got < addr:
            n = st[p]
            name = st[p + 1:p + 1 + n]
            ln = struct.unpack_from(">Q", st, p + 1 + n)[0]
            p += 1 + n + 8
            blocks.append((name, ln))
            got += ln
        continue
    assert flags & 0x10, "unexpected record flags %#x" % flags
    insert = p  # this EOS record: the pages go before it
    q = p + 8
    if st[q] == 0x7E:
        q += 5
    if st[q] in (0x02, 0x03) and struct.unpack_from(">I", st, q + 1)[0] == ram_id:
        p = q + 5
        continue
    break
zero = bytes(4096)
with open(ram_path, "rb") as ram, open(out_path, "wb") as out:
    out.write(st[:insert])
    for name, ln in blocks:
        first = True
        for off in range(0, ln, 4096):
            page = ram.read(4096)
            head = struct.pack(">Q", off | (0x02 if page == zero else 0x08) | (0 if first else 0x20))
            out.write(head if not first else head + bytes([len(name)]) + name)
            out.write(b"\0" if page == zero else page)
            first = False
    out.write(st[insert:])
PY
    t3=$(now)
    virsh_ restore "$d/custom.save" --xml "$d/domain.xml" >/dev/null || fail "(c): virsh restore"
    t4=$(now)
    wait "$probe_pid" || fail "(c): the guest did not answer on its console"
    local t5 psi1
    t5=$(now) psi1=$(psi)
    virsh_ destroy "$SEED_DOM" >/dev/null
    python3 - "$round" "$t0" "$t1" "$t2" "$t3" "$t4" "$d/answer" "$d/decode.json" "$load0" "$(loadavg)" \
        "$psi0" "$psi1" "$SEED_OVERLAY_BYTES" "$t5" >>"$R" <<'PY'
import json, sys
a = sys.argv
t0, t1, t2, t3, t4 = (float(x) for x in a[2:7])
conn, ans, sent = open(a[7]).read().split()
dec = json.load(open(a[8]))
print(json.dumps({"method": "c", "round": int(a[1]), "answer_s": round(float(ans) - t0, 3),
    "transfer_s": round(t1 - t0, 3), "decode_apply_s": round(t2 - t1, 3), "decode": dec,
    "rebuild_save_s": round(t3 - t2, 3), "restore_s": round(t4 - t3, 3),
    "echo_after_restore_s": round(float(ans) - t4, 3), "overlay_bytes": int(a[13]),
    "load": [float(a[9]), float(a[10])],
    "cpu_wait_share": round((int(a[12]) - int(a[11])) / 1e6 / (float(a[14]) - t0), 2)}))
PY
    rm -rf "$d"
}

# ---- (a) and (b): cloudlet --------------------------------------------------------------------
run_cloudlet() { # ROUND a|b
    local round=$1 m=$2 node=n$2$1 dom=lb$2$1-$$ t0 t1 load0 psi0
    if [ "$m" = b ]; then
        node_home "nbr$round" full "$NBR_ADDR"
        start "nbr$round" nbr
        node_home "$node" baseonly "$NODE_ADDR" "nbr$round" "$NBR_ADDR"
    else
        node_home "$node" baseonly "$NODE_ADDR"
    fi
    start "$node" node
    DOMAINS+=("$dom")
    sync
    local pn="PID_$node" pb="PID_nbr$round" cn0 cn1 cb0=0 cb1=0
    cn0=$(cpu_ticks "${!pn}")
    [ "$m" = a ] || cb0=$(cpu_ticks "${!pb}")
    load0=$(loadavg) psi0=$(psi)
    log "round $round ($m): cloudlet launch --node $NODE_ADDR --wait" \
        "$([ "$m" = b ] && echo '(a neighbour holds the VM)')"
    t0=$(now)
    probe "$W/launch/$dom/console.sock" "$W/$dom.answer"
    local probe_pid=$PROBE
    cpu_of "$W/$dom.cpu" ip netns exec "$LAN-app" "$CLOUDLET" launch --home "$W/app" "$CID" \
        --node "$NODE_ADDR" --node-key "$(tr -d '\n' <"$W/$node/node.pub")" --wait --name "$dom" \
        --json --progress-json >"$W/$dom.json" 2>"$W/$dom.err" ||
        fail "($m): launch: $(cat "$W/$dom.err" "$W/$dom.json")"
    t1=$(now)
    wait "$probe_pid" || fail "($m): the guest did not answer on its console"
    local t2 psi1
    t2=$(now) psi1=$(psi)
    cn1=$(cpu_ticks "${!pn}")
    [ "$m" = a ] || cb1=$(cpu_ticks "${!pb}")
    virsh_ destroy "$dom" >/dev/null 2>&1 || true
    python3 - "$m" "$round" "$t0" "$t2" "$W/$dom.answer" "$W/$dom.json" "$load0" "$(loadavg)" \
        "$psi0" "$psi1" "$t1" "$(cat "$W/$dom.cpu")" "$(ticks_s "$cn0" "$cn1")" \
        "$(ticks_s "$cb0" "$cb1")" "$RATE_BPS" >>"$R" <<'PY' || fail "($m): report"
import json, sys
a = sys.argv
t0, t2, t1 = float(a[3]), float(a[4]), float(a[11])
conn, ans, sent = open(a[5]).read().split()
lines = [json.loads(l) for l in open(a[6]) if l.strip()]
r, prog = lines[-1], [l["progress"] for l in lines[:-1]]
assert r["ok"] and r["done"], r
src = {}
for s in r["sources"]:
    src[s["kind"]] = src.get(s["kind"], 0) + s["bytes"]
# From the node's progress reports (elapsed since it took the launch): when bytes came, at
# what rate, and when the node started writing the VM.
def received(p):
    return sum(s["bytes"] for s in p["sources"] if s["kind"] != "local")
total = received(r)
series = [(p["elapsed_s"], received(p)) for p in prog]
def first_at(frac):
    return next((e for e, b in series if b >= frac * total), None) if total else None
t10, t90 = first_at(0.1), first_at(0.9)
# Transfer time during which bytes came at under a quarter of the app's link rate.
link = int(a[15])
slow = sum(e1 - e0 for (e0, b0), (e1, b1), p in zip(series, series[1:], prog[1:])
           if p["stage"] in ("transfer", "running") and e1 > e0 and (b1 - b0) * 8 / (e1 - e0) < link / 4)
timeline = {
    "slow_s": round(slow, 2),
    "reports": len(prog), "received_bytes": total,
    "first_byte_s": next((e for e, b in series if b > 0), None),
    "rate_10_90_mbit_s": round((0.8 * total) * 8 / (t90 - t10) / 1e6, 1) if t10 is not None and
        t90 is not None and t90 > t10 else None,
    "stage_start_s": {st: next((p["elapsed_s"] for p in prog if p["stage"] == st), None)
                      for st in ("resolve", "transfer", "running", "apply", "restore")},
    "vm_done_at_transfer_end": next((p["vm_done"] for p in prog
                                     if p["stage"] not in ("resolve", "transfer", "running")), None),
}
print(json.dumps({"method": a[1], "round": int(a[2]), "answer_s": round(float(ans) - t0, 3),
    "command_s": round(t1 - t0, 3), "resolve_s": r["resolve_s"], "transfer_s": r["transfer_s"],
    "apply_s": r["apply_s"], "restore_s": r["restore_s"], "total_s": r["total_s"],
    "running_s": r.get("running_s"),
    "accel": r["accel"], "sources": r["sources"], "bytes_by_kind": src, "served": r["served"],
    "timeline": timeline,
    "cpu_s": {"app": float(a[12]), "node": float(a[13]), "neighbour": float(a[14])},
    "load": [float(a[7]), float(a[8])],
    "cpu_wait_share": round((int(a[10]) - int(a[9])) / 1e6 / (t2 - t0), 2)}))
PY
    stop "$node"
    [ "$m" = a ] || stop "nbr$round"
    rm -rf "${W:?}/launch/$dom" "${W:?}/$node"
    [ "$m" = a ] || rm -rf "${W:?}/nbr$round"
}

LOAD_START=$(loadavg)
for r in $(seq "$ROUNDS"); do
    run_seed "$r"
    run_cloudlet "$r" a
    run_cloudlet "$r" b
done

# ---- report -----------------------------------------------------------------------------------
python3 - "$R" "$RATE" "$RATE_BPS" "$CL_OVERLAY_BYTES" "$SEED_OVERLAY_BYTES" "$SEED/encode.json" \
    "$W/import-custom.json" "$pair" "$JSON" "$LOAD_START" "$(loadavg)" <<'PY'
import json, sys
a = sys.argv
runs = [json.loads(l) for l in open(a[1])]
rate, bps = a[2], int(a[3])
cl_ovl, seed_ovl = int(a[4]), int(a[5])
MB = 1e6
rounds = sorted({r["round"] for r in runs})
out = {"pair": a[8], "rate": rate, "rate_bit_per_s": bps,
       "overlay_bytes": {"cloudlet_package": cl_ovl, "seed_xdelta3_xz": seed_ovl},
       "seed_encode": json.load(open(a[6])), "cloudlet_import": json.load(open(a[7])), "runs": runs,
       "load_start": float(a[10]), "load_end": float(a[11]), "rounds": []}
def mbit(nbytes, s): return nbytes * 8 / s / 1e6 if s > 0 else 0.0
print(f"pair: {a[8]}")
print(f"app link: {rate} both ways (tbf); overlays: cloudlet package (overlay export, zstd level 22) "
      f"{cl_ovl / MB:.1f} MB, seed (xdelta3 + xz -9) {seed_ovl / MB:.1f} MB")
print()
for rd in rounds:
    by = {r["method"]: r for r in runs if r["round"] == rd}
    c, ra, rb = by["c"], by["a"], by["b"]
    print(f"round {rd}: seconds from the request to the guest's answer, and stages")
    print(f"  {'':34} {'answer':>8} {'command':>8} {'resolve':>8} {'transfer':>9} {'apply':>7} {'restore':>8}")
    for k, label in (("a", "(a) cloudlet, node has the base"), ("b", "(b) cloudlet, a neighbour has it")):
        r = by[k]
        print(f"  {label:34} {r['answer_s']:8.2f} {r['command_s']:8.2f} {r['resolve_s']:8.3f} "
              f"{r['transfer_s']:9.2f} {r['apply_s']:7.2f} {r['restore_s']:8.2f}"
              + (f"  (running after {r['running_s']:.2f} s, the launch done after {r['total_s']:.2f} s)"
                 if r.get("running_s") else ""))
    print(f"  {'(c) seed: send, decode, restore':34} {c['answer_s']:8.2f} {'':>8} {'':>8} "
          f"{c['transfer_s']:9.2f} {c['decode_apply_s'] + c['rebuild_save_s']:7.2f} {c['restore_s']:8.2f}")
    for k in ("a", "b"):
        r = by[k]
        got = ", ".join(f"{s['kind']}{'' if s['kind'] == s['label'] else ' ' + s['label'][:12]} "
                        f"{s['bytes'] / MB:.1f} MB" for s in r["sources"] if s["kind"] != "local")
        held = sum(s["bytes"] for s in r["sources"] if s["kind"] == "local")
        print(f"  ({k}) chunks held by the node {held / MB:.1f} MB; received (compressed): {got}; the app "
              f"sent {r['served']['bytes'] / MB:.1f} MB ({r['served']['chunks']} chunks whole, "
              f"{r['served']['deltas']} as deltas), {mbit(r['served']['bytes'], r['transfer_s']):.1f} Mbit/s "
              f"over the transfer stage")
        tl = r["timeline"]
        print(f"      node's reports: first received byte at {tl['first_byte_s']} s, 10-90 % of the "
              f"received bytes at {tl['rate_10_90_mbit_s']} Mbit/s, {tl['slow_s']} s of the transfer under a "
              f"quarter of {rate}; stages began at "
              + ", ".join(f"{k} {v}" for k, v in tl["stage_start_s"].items() if v is not None))
        print(f"      CPU s: app {r['cpu_s']['app']:.1f}, node {r['cpu_s']['node']:.1f}"
              + (f", neighbour {r['cpu_s']['neighbour']:.1f}" if k == "b" else "")
              + f"; load {r['load'][0]:.1f} -> {r['load'][1]:.1f}, some task waited for a CPU "
              f"{100 * r['cpu_wait_share']:.0f} % of the time")
    print(f"  (c) {seed_ovl / MB:.1f} MB sent at {mbit(seed_ovl, c['transfer_s']):.1f} Mbit/s; apply = "
          f"decode + apply {c['decode_apply_s']:.2f} s (xz -d {c['decode']['time_xz_s']:.2f}, copy base "
          f"{c['decode']['time_copy_base_s']:.2f}, records {c['decode']['time_apply_s']:.2f}) + save file "
          f"rebuilt {c['rebuild_save_s']:.2f} s; echo {c['echo_after_restore_s']:+.2f} s after "
          f"`virsh restore` returned; load {c['load'][0]:.1f} -> {c['load'][1]:.1f}, CPU wait "
          f"{100 * c['cpu_wait_share']:.0f} %")
    origin = ra["served"]["bytes"]
    link_s = origin * 8 / bps
    bound = 1.15 * link_s + ra["restore_s"]
    b_app = rb["served"]["bytes"]
    goals = [
        {"goal": "(a) <= 0.5 x (c)", "value": round(ra["answer_s"] / c["answer_s"], 3),
         "pass": ra["answer_s"] <= 0.5 * c["answer_s"]},
        {"goal": "(a) <= 1.15 x origin bytes / link rate + restore", "value": round(ra["answer_s"], 3),
         "bound": round(bound, 3), "origin_bytes": origin, "origin_link_s": round(link_s, 3),
         "pass": ra["answer_s"] <= bound},
        {"goal": "(b) limited by the LAN: the app sends < 5 % of (a)'s bytes, and the transfer takes "
                 "less than (a)'s bytes need on the app's link", "value": round(rb["transfer_s"], 3),
         "bound": round(link_s, 3), "app_bytes": b_app,
         "pass": b_app < 0.05 * origin and rb["transfer_s"] < link_s},
    ]
    print(f"  (a)'s origin bytes over the link at {rate}: {link_s:.2f} s; (c)'s overlay: {seed_ovl * 8 / bps:.2f} s")
    for g in goals:
        v = (f"{g['value']:.2f} s, bound {g['bound']:.2f} s" if "bound" in g else f"{g['value']:.3f}")
        print(f"  goal: {g['goal']}: {v}  {'PASS' if g['pass'] else 'FAIL'}")
    out["rounds"].append({"round": rd, "goals": goals})
    print()
print(f"load average {a[10]} at the start, {a[11]} at the end")
if a[9] == "1":
    print(json.dumps(out))
PY
