#!/usr/bin/env bash
# Chunk transfer between nodes (docs/PERFORMANCE.md, "Chunk transfer between nodes"):
#
#   tests/bench/bench_pull.sh [BUILD_DIR] [--size SIZE] [--shaped-size SIZE] [--rate RATE]
#                             [--rounds N] [--shaped-rounds N] [--channel-mib N] [--json]
#                             [--json-file FILE]
#
# In one run, in network namespaces joined by veth links to a bridge: the loopback TCP ceiling
# and the single-stream secretstream ceiling of this machine (tests/net/bench_channel, run in
# the puller's namespace), then one manifest of SIZE (default 1G) pulled by one node from 1, 2
# and 3 sources, first on unshaped links, then with each source's link shaped to RATE (default
# 100mbit) by `tc … tbf` on the source's side (egress toward the bridge), at --shaped-size
# (default: SIZE). Prints a table and the goals with PASS or FAIL; --json prints the figures as
# one JSON object instead (--json-file FILE writes it there as well as printing the text).
# Goals are reported, not enforced: the exit status is 0 when every run completed, 1 on an
# error, 77 when network namespaces cannot be made here (needs root).
#
# BUILD_DIR (default: build-rel/ at the top of the source tree) must hold a build with
# cli/cloudlet, node/cloudletd and tests/net/bench_channel; the script builds nothing.
#
# Set-up: a bridge in its own namespace and four node namespaces (sources s1, s2, s3 and the
# puller p) on 198.18.1.0/24 (198.18.0.0/15 is reserved for network tests), with default routes;
# nothing is created in the caller's namespace and everything is removed on exit. Every node
# home is in one fleet (`init --new-fleet`, `fleet-key`, `init --fleet-key`), listens on its own
# address, runs with discovery off and knows its sources as static peers with their node keys.
# The input is written by this script: 1 MiB pieces, shuffled with a fixed seed, 75 % random
# bytes (a fixed-seed generator) and 25 % system binaries (ELF files under /usr, in name order,
# each padded to 4 KiB); no zero pieces, since zero chunks never cross the network. It is stored
# on s1 with `cloudlet store add`, and s1's store directory is copied to s2 and s3 while no
# daemon has it open (LMDB files may be copied then); `store add` of the same file on the
# copies must give the same manifest id. Before each pull the puller gets a fresh home (an empty
# store) and a configuration naming exactly the sources of that run.
set -euo pipefail

synopsis() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
usage() { synopsis >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
BUILD="" SIZE=1G SHAPED_SIZE="" RATE=100mbit ROUNDS=3 SHAPED_ROUNDS=1 CH_MIB=256 JSON=0
JSON_FILE=""
while [ $# -gt 0 ]; do
    case $1 in
    --size) SIZE=$2; shift 2 ;;
    --shaped-size) SHAPED_SIZE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --shaped-rounds) SHAPED_ROUNDS=$2; shift 2 ;;
    --channel-mib) CH_MIB=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    --json-file) JSON_FILE=$2; shift 2 ;;
    -h | --help) synopsis; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) BUILD=$1; shift ;;
    esac
done
BUILD=${BUILD:-$TOP/build-rel}
CLOUDLET=$BUILD/cli/cloudlet CLOUDLETD=$BUILD/node/cloudletd CHANNEL=$BUILD/tests/net/bench_channel
for b in "$CLOUDLET" "$CLOUDLETD" "$CHANNEL"; do
    [ -x "$b" ] || { echo "missing $b (build $BUILD first)" >&2; exit 1; }
done
bytes_of() { # 1G, 512M, 64K or a plain number of bytes
    local v=$1
    case $v in
    *[Gg]) echo $((${v%?} << 30)) ;;
    *[Mm]) echo $((${v%?} << 20)) ;;
    *[Kk]) echo $((${v%?} << 10)) ;;
    *) echo $((v)) ;;
    esac
}
SIZE_B=$(bytes_of "$SIZE")
SHAPED_B=$(bytes_of "${SHAPED_SIZE:-$SIZE}")
[ $((SIZE_B % 4096)) = 0 ] && [ $((SHAPED_B % 4096)) = 0 ] && [ "$SHAPED_B" -le "$SIZE_B" ] &&
    [ "$SIZE_B" -ge $((1 << 20)) ] ||
    { echo "sizes: multiples of 4 KiB, at least 1M, --shaped-size at most --size" >&2; exit 2; }

ID=$$
T=$(mktemp -d "${TMPDIR:-/var/tmp}/cloudlet-benchpull-XXXXXX")
PFX=cbp$ID
LAN=$PFX
PIDS=()
# shellcheck source=../lib/netns.sh
. "$(dirname "$0")/../lib/netns.sh"
cleanup() {
    stop_pids "${PIDS[@]}"
    lan_down
    [ -n "${KEEP:-}" ] && echo "kept $T" >&2 || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "FAIL: $*" >&2
    for l in "$T"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -20 "$l" >&2; }; done
    exit 1
}
say() { [ "$JSON" = 1 ] || echo "$@"; }
cl() { "$CLOUDLET" "$@"; }

lan_up

# netns NAME N: namespace $PFX-NAME holding 198.18.1.N/24 on eth0, joined to the bridge.
netns() { lan_node "$1" "198.18.1.$2"; }
addr_of() { # the address of node NAME: s1..s3 are the sources, p* the puller
    case $1 in s1) echo 198.18.1.1 ;; s2) echo 198.18.1.2 ;; s3) echo 198.18.1.3 ;; p*) echo 198.18.1.4 ;; esac
}
# home NAME: a node home of the fleet listening on its namespace's address, discovery off.
home() {
    local name=$1
    if [ ! -f "$T/fleet" ]; then
        cl init --home "$T/$name" --new-fleet >/dev/null
        (umask 077 && cl fleet-key --home "$T/$name" >"$T/fleet")
    else
        cl init --home "$T/$name" --fleet-key "$T/fleet" >/dev/null
    fi
    printf 'discovery = off\nlisten = %s:7420\n' "$(addr_of "$name")" >"$T/$name/cloudlet.conf"
}
# start NAME NS: its daemon in namespace NS; returns once it serves, its pid in PID_NAME.
start() {
    local name=$1 ns=$PFX-$2
    ip netns exec "$ns" "$CLOUDLETD" --home "$T/$name" --foreground 2>>"$T/$name.log" &
    PIDS+=($!)
    eval "PID_$name=$!"
    for _ in $(seq 200); do [ -S "$T/$name/control.sock" ] && break; sleep 0.05; done
    [ -S "$T/$name/control.sock" ] || fail "cloudletd $name never served"
}
stop() {
    local p="PID_$1"
    kill -TERM "${!p}" 2>/dev/null || true
    wait "${!p}" 2>/dev/null || true
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
psi_total() { sed -n 's/^some .*total=\([0-9]*\)/\1/p' /proc/pressure/cpu 2>/dev/null || echo 0; }
now_ns() { date +%s%N; }

netns s1 1; netns s2 2; netns s3 3; netns p 4
home s1; home s2; home s3

# ---- the input ------------------------------------------------------------------------------
say "writing the input: $SIZE_B bytes (75 % random, 25 % system binaries, 1 MiB pieces) ..."
python3 - "$T/file" "$SIZE_B" <<'PY'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
MIB = 1 << 20
pieces = (size + MIB - 1) // MIB
nbin = pieces // 4
# System binaries in name order, each padded to 4 KiB, until nbin MiB are gathered.
want, parts, have = nbin * MIB, [], 0
for root in ("/usr/bin", "/usr/sbin", "/usr/libexec", "/usr/lib"):
    if have >= want: break
    for d, subdirs, files in os.walk(root):
        subdirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p): continue
                with open(p, "rb") as fh:
                    if fh.read(4) != b"\x7fELF": continue
                    fh.seek(0)
                    b = fh.read()
            except OSError:
                continue
            b += b"\0" * (-len(b) % 4096)
            parts.append(b); have += len(b)
            if have >= want: break
        if have >= want: break
bins = b"".join(parts)
nbin = min(nbin, len(bins) // MIB)
rng = random.Random(20261125)
kinds = [1] * nbin + [0] * (pieces - nbin)
rng.shuffle(kinds)
bi = 0
with open(path, "wb") as out:
    left = size
    for k in kinds:
        n = min(MIB, left)
        if k:
            out.write(bins[bi * MIB: bi * MIB + n]); bi += 1
        else:
            out.write(rng.randbytes(n))
        left -= n
print(nbin, pieces - nbin, file=open(path + ".mix", "w"))
PY
read -r MIX_BIN MIX_RND <"$T/file.mix"
FILES=("$T/file")
if [ "$SHAPED_B" != "$SIZE_B" ]; then
    head -c "$SHAPED_B" "$T/file" >"$T/file-shaped"
    FILES+=("$T/file-shaped")
fi

t0=$(now_ns)
cl store add --home "$T/s1" "${FILES[@]}" --json >"$T/add.json" || fail "store add on s1"
t1=$(now_ns)
ADD_S=$(python3 -c "print('%.2f' % (($t1 - $t0) / 1e9))")
read -r FILE_ID SHAPED_ID < <(python3 - "$T/add.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d[0]["id"], d[-1]["id"])
PY
)
for s in s2 s3; do
    rm -rf "${T:?}/$s/store"
    cp -a --sparse=always "$T/s1/store" "$T/$s/store"
    rm -f "$T/$s/store/lock.mdb"
done
for s in s2 s3; do # the same file gives the same manifest on every source (and adds nothing)
    cl store add --home "$T/$s" "${FILES[@]}" --json >"$T/add-$s.json" || fail "store add on $s"
    python3 - "$T/add-$s.json" "$FILE_ID" "$SHAPED_ID" <<'PY' || fail "$s: ids differ: $(cat "$T/add-$s.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d[0]["id"] == sys.argv[2] and d[-1]["id"] == sys.argv[3], d
assert all(f["new"] == 0 for f in d), d
PY
done
start s1 s1; start s2 s2; start s3 s3

# ---- ceilings -------------------------------------------------------------------------------
say "ceilings: bench_channel $CH_MIB in the puller's namespace ..."
ip netns exec "$PFX-p" "$CHANNEL" "$CH_MIB" >"$T/channel.out" || fail "bench_channel"
[ "$JSON" = 1 ] || sed 's/^/  /' "$T/channel.out"

# ---- pulls ----------------------------------------------------------------------------------
RUN=0
# pull_run LABEL NSOURCES MANIFEST: a fresh puller home that knows sources s1..sN, one pull, the
# figures appended to $T/runs.jsonl.
pull_run() {
    local label=$1 n=$2 id=$3 name s i
    RUN=$((RUN + 1))
    name=p$RUN
    home "$name"
    for i in $(seq "$n"); do
        printf 'peer = %s:7420 %s\n' "$(addr_of "s$i")" "$(tr -d '\n' <"$T/s$i/node.pub")" \
            >>"$T/$name/cloudlet.conf"
    done
    start "$name" p
    local pp="PID_$name" c0=() c1=() psi0 psi1 t0 t1 load0 load1
    for s in s1 s2 s3 "$name"; do local v="PID_$s"; c0+=("$(cpu_ticks "${!v}")"); done
    psi0=$(psi_total); load0=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(now_ns)
    cl pull --home "$T/$name" "$id" --json >"$T/$name.pull.json" 2>"$T/$name.pull.err" ||
        fail "pull $label: $(cat "$T/$name.pull.err")"
    t1=$(now_ns)
    psi1=$(psi_total); load1=$(cut -d' ' -f1 /proc/loadavg)
    for s in s1 s2 s3 "$name"; do local v="PID_$s"; c1+=("$(cpu_ticks "${!v}")"); done
    if [ "$label" = unshaped-3 ]; then # once: the pulled file is the stored one, byte for byte
        cl store cat --home "$T/$name" "$id" -o "$T/back"
        cmp -s "$T/file" "$T/back" || fail "the pulled file differs"
        rm -f "$T/back"
    fi
    stop "$name"
    python3 - "$T/$name.pull.json" "$label" "$n" "$((t1 - t0))" "$((psi1 - psi0))" "$load0" "$load1" \
        "$(getconf CLK_TCK)" "${c0[*]}" "${c1[*]}" "$(tr -d '\n' <"$T/s1/node.pub")" \
        "$(tr -d '\n' <"$T/s2/node.pub")" "$(tr -d '\n' <"$T/s3/node.pub")" >>"$T/runs.jsonl" <<'PY' ||
import json, sys
a = sys.argv
d = json.load(open(a[1]))
label, n, ns, psi = a[2], int(a[3]), int(a[4]), int(a[5])
assert d.get("done") == "pulled", d
assert d["chunks_fetched"] == d["missing"] and d["held_before"] == 0, d
keys = a[11:11 + n]
got = [s for s in d["sources"] if s["chunks"] > 0]
assert len(got) == n and sorted(s["key"] for s in got) == sorted(keys), d["sources"]
hz = int(a[8]); c0 = [int(x) for x in a[9].split()]; c1 = [int(x) for x in a[10].split()]
cpu = [(y - x) / hz for x, y in zip(c0, c1)]
wall = ns / 1e9
print(json.dumps({
    "run": label, "sources": n, "bytes": d["bytes"], "chunks": d["chunks_fetched"],
    "wire_bytes": sum(s["wire_bytes"] for s in d["sources"]),
    "seconds": round(wall, 3), "daemon_seconds": d["ms"] / 1e3,
    "mb_per_s": round(d["bytes"] / wall / 1e6, 1),
    "wire_mbit_per_s": round(sum(s["wire_bytes"] for s in d["sources"]) * 8 / wall / 1e6, 1),
    "per_source": [{"address": s["address"], "chunks": s["chunks"], "bytes": s["bytes"],
                    "wire_bytes": s["wire_bytes"], "failures": s["failures"],
                    "timeouts": s["timeouts"]} for s in d["sources"]],
    "failures": d["failures"],
    "cpu_s": {"s1": cpu[0], "s2": cpu[1], "s3": cpu[2], "puller": cpu[3]},
    "cpu_wait_share": round(psi / 1e6 / wall, 3), "load": [float(a[6]), float(a[7])],
}))
PY
        fail "pull $label: report $(cat "$T/$name.pull.json")"
    rm -rf "${T:?}/$name"
    if [ "$JSON" != 1 ]; then
        tail -1 "$T/runs.jsonl" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("  %-12s %d source(s): %8.1f MiB in %6.2f s = %7.1f MB/s (wire %6.1f Mbit/s), CPU s1 %.1f s2 %.1f s3 %.1f puller %.1f s, CPU wait %d %%" % (
    r["run"], r["sources"], r["bytes"] / 2**20, r["seconds"], r["mb_per_s"], r["wire_mbit_per_s"],
    r["cpu_s"]["s1"], r["cpu_s"]["s2"], r["cpu_s"]["s3"], r["cpu_s"]["puller"], 100 * r["cpu_wait_share"]))'
    fi
}

say "unshaped links, $SIZE_B bytes, $ROUNDS round(s) ..."
for r in $(seq "$ROUNDS"); do
    for n in 1 2 3; do pull_run "unshaped-$n" "$n" "$FILE_ID"; done
done
for s in 1 2 3; do
    ip netns exec "$PFX-s$s" tc qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 50ms
done
say "links shaped to $RATE on each source's side, $SHAPED_B bytes, $SHAPED_ROUNDS round(s) ..."
for r in $(seq "$SHAPED_ROUNDS"); do
    for n in 1 2 3; do pull_run "shaped-$n" "$n" "$SHAPED_ID"; done
done

# ---- report ---------------------------------------------------------------------------------
python3 - "$T/channel.out" "$T/runs.jsonl" "$JSON" "$SIZE_B" "$SHAPED_B" "$RATE" "$ADD_S" \
    "$T/add.json" "$MIX_BIN" "$MIX_RND" "$(nproc)" "$JSON_FILE" <<'PY'
import json, re, sys
a = sys.argv
ch = open(a[1]).read()
as_json = a[3] == "1"
tcp = float(re.search(r"loopback TCP.*?([\d.]+) MB/s", ch).group(1))
ss = {int(m.group(1)): (float(m.group(2)), float(m.group(3)), float(m.group(4))) for m in re.finditer(
    r"secretstream\s+(\d+) B messages: seal\s+([\d.]+) MB/s, open\s+([\d.]+) MB/s, both\s+([\d.]+)", ch)}
conn = {int(m.group(1)): float(m.group(2)) for m in re.finditer(
    r"net_conn over 127.0.0.1,\s+(\d+) B messages, one loop:\s+([\d.]+)", ch)}
seal, opn, both = ss[65536]
ceiling = min(seal, opn)      # one stream, the sender sealing and the receiver opening on a core each
runs = [json.loads(l) for l in open(a[2])]
best = {}
for r in runs:                # the fastest of the rounds of each run
    if r["run"] not in best or r["seconds"] < best[r["run"]]["seconds"]:
        best[r["run"]] = r
u1, s1, s3 = best["unshaped-1"], best["shaped-1"], best["shaped-3"]
g1 = u1["mb_per_s"] / ceiling
g2 = s3["mb_per_s"] / s1["mb_per_s"]
add = json.load(open(a[8]))
out = {
    "size_bytes": int(a[4]), "shaped_size_bytes": int(a[5]), "rate": a[6], "cpus": int(a[11]),
    "input": {"binary_mib": int(a[9]), "random_mib": int(a[10]), "store_add_seconds": float(a[7]),
              "chunks": add[0]["chunks"], "duplicate": add[0]["duplicate"], "zero": add[0]["zero"],
              "stored_bytes": add[0]["stored_bytes"]},
    "ceilings_mb_per_s": {"loopback_tcp": tcp, "secretstream_64k_seal": seal,
                          "secretstream_64k_open": opn, "secretstream_64k_seal_and_open_one_core": both,
                          "secretstream_single_stream": ceiling, "net_conn_64k_one_loop": conn.get(65536)},
    "runs": runs, "best": best,
    "goals": [
        {"goal": "one source, unshaped >= 70% of the secretstream ceiling", "value": round(g1, 3),
         "pass": g1 >= 0.70},
        {"goal": "three sources >= 2.5x one source, links shaped to " + a[6], "value": round(g2, 2),
         "pass": g2 >= 2.5},
    ],
}
if a[12]:
    with open(a[12], "w") as f:
        json.dump(out, f, indent=1)
if as_json:
    print(json.dumps(out, indent=1))
    sys.exit(0)
print()
print("input: %d MiB random + %d MiB binaries; %d chunks, %d duplicate, %.1f MB stored (zstd); store add %.1f s"
      % (int(a[10]), int(a[9]), add[0]["chunks"], add[0]["duplicate"], add[0]["stored_bytes"] / 1e6, float(a[7])))
print("%-40s %10s" % ("ceiling", "MB/s"))
print("%-40s %10.0f" % ("loopback TCP (plain)", tcp))
print("%-40s %10.0f" % ("secretstream 64 KiB, seal (one core)", seal))
print("%-40s %10.0f" % ("secretstream 64 KiB, open (one core)", opn))
print("%-40s %10.0f" % ("single-stream ceiling = min(seal, open)", ceiling))
print("%-40s %10.0f" % ("seal and open on one core", both))
print()
print("%-12s %8s %9s %8s %9s %12s  %s" % ("run (best)", "sources", "MiB", "s", "MB/s", "wire Mbit/s", "MiB per source"))
for k in ("unshaped-1", "unshaped-2", "unshaped-3", "shaped-1", "shaped-2", "shaped-3"):
    r = best[k]
    print("%-12s %8d %9.1f %8.2f %9.1f %12.1f  %s" % (k, r["sources"], r["bytes"] / 2**20, r["seconds"],
          r["mb_per_s"], r["wire_mbit_per_s"], " / ".join("%.0f" % (s["bytes"] / 2**20) for s in r["per_source"])))
print()
for g in out["goals"]:
    print("%s: %s (%s)" % ("PASS" if g["pass"] else "FAIL", g["goal"],
                           ("%.0f %%" % (100 * g["value"])) if "70%" in g["goal"] else ("%.2fx" % g["value"])))
PY
