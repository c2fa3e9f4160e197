#!/usr/bin/env bash
# The VM-synthesis benchmark (docs/PERFORMANCE.md, "VM synthesis"): on the pair of VMs that
# tests/bench/vm-pair.sh builds (a Debian minbase base and the same plus python3, numpy, flask
# and nginx running), disk and memory together, in one run:
#   - the overlay bytes of cloudlet's package (`cloudlet overlay export`) against
#     (a) the seed paper's baseline: `xdelta3 -e -9` of the whole disk and of the whole save
#         file against the base's, then `xz -9`;
#     (b) the seed system's optimized method (tests/bench/seed_overlay.py): changed 4 KiB chunks
#         after dedup against zero, the base disk, the base memory and itself, each xdelta3-
#         encoded against the base chunk at the same place when that is smaller, `xz -9`;
#     (c) `zstd --patch-from -19 --long=31` of each custom file against its base file;
#   - the time to decode and apply each (every output checked against the original);
#   - local synthesis throughput: `cloudlet synth` from a warm store, run twice, the second
#     counted: VM bytes (disk length + memory.save size) / wall-clock time, with its stages.
# Then the goals with PASS or FAIL; --json prints one JSON object as the last line.
#
# Usage: tests/bench/bench_vm.sh [--cloudlet PATH] [--work DIR] [--jobs N] [--json]
#                                [--disk-size SIZE] [--ram MIB] [--cache DIR]
#   --cloudlet  the cloudlet binary (default: `cloudlet` on PATH)
#   --work      scratch directory, emptied first (default /var/tmp/cloudlet-vmbench)
#   --jobs      threads for the seed method's per-chunk xdelta3 (default: nproc)
#   --disk-size, --ram, --cache   passed to vm-pair.sh (defaults 2G, 512, its cache)
# Needs root (vm-pair.sh); installs xdelta3, xz-utils and zstd with apt-get when missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CLOUDLET=$(command -v cloudlet || true)
W=/var/tmp/cloudlet-vmbench
jobs=$(nproc)
json=0
pair_args=()
disk_size=2G
ram=512
while [ $# -gt 0 ]; do
    case $1 in
        --cloudlet) CLOUDLET=$2; shift 2 ;;
        --work) W=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --json) json=1; shift ;;
        --disk-size) disk_size=$2; pair_args+=(--disk-size "$2"); shift 2 ;;
        --ram) ram=$2; pair_args+=(--ram "$2"); shift 2 ;;
        --cache) pair_args+=(--cache "$2"); shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "bench_vm: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$CLOUDLET" ] && [ -x "$CLOUDLET" ] || { echo "bench_vm: no cloudlet binary (--cloudlet PATH)" >&2; exit 2; }
CLOUDLET=$(readlink -f "$CLOUDLET")
log() { echo "bench_vm: $(date -u +%H:%M:%S) $*" >&2; }

need=()
command -v xdelta3 >/dev/null || need+=(xdelta3)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ ${#need[@]} -eq 0 ] || apt-get install -y -q "${need[@]}" >/dev/null

pair=$("$here/vm-pair.sh" "${pair_args[@]}")
log "pair: $pair"

rm -rf "$W"
mkdir -p "$W"
chmod 755 "$W"
R=$W/results          # key value, one per line; the report is made from it
: >"$R"
put() { echo "$1 $2" >>"$R"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
psi() { awk '/^some/ { split($5, a, "="); print a[2] }' /proc/pressure/cpu 2>/dev/null || echo 0; }
timed() { # timed KEY cmd... : runs cmd, records its wall-clock seconds under KEY
    local key=$1 t
    shift
    t=$(now)
    "$@"
    put "$key" "$(elapsed "$t" "$(now)")"
}
fsize() { stat -c %s "$1"; }
warm() { for f in "$@"; do cat "$f" >/dev/null; done; }

BD=$pair/base.disk BS=$pair/base.save CD=$pair/custom.disk CS=$pair/custom.save
put load_start "$(cut -d' ' -f1 /proc/loadavg)"
psi0=$(psi); t_run0=$(now)
put disk_length "$(fsize "$CD")"
put base_save_bytes "$(fsize "$BS")"
put custom_save_bytes "$(fsize "$CS")"
put base_disk_allocated "$(($(stat -c %b "$BD") * 512))"
put custom_disk_allocated "$(($(stat -c %b "$CD") * 512))"
warm "$BD" "$BS" "$CD" "$CS"

# ---- cloudlet: import both into a fresh home, export the overlay ------------------------------
log "cloudlet vm import base and custom"
HA=$W/home-a
"$CLOUDLET" init --home "$HA" >/dev/null
timed cl_import_base_s "$CLOUDLET" vm import --home "$HA" --name base --disk "$BD" --memory "$BS" --json >"$W/base.import.json"
timed cl_import_custom_s "$CLOUDLET" vm import --home "$HA" --name custom --parent base --disk "$CD" --memory "$CS" --json >"$W/custom.import.json"
log "cloudlet overlay export"
timed cl_export_s "$CLOUDLET" overlay export --home "$HA" --json custom "$W/custom.overlay" >"$W/export.json"
put cl_overlay_bytes "$(fsize "$W/custom.overlay")"
cid=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$W/custom.import.json")

# ---- (a) xdelta3 -e -9 of whole files, then xz -9 ----------------------------------------------
log "(a) xdelta3 -e -9 + xz -9 (disk, then save file)"
A=$W/a
mkdir -p "$A"
a_encode() {
    xdelta3 -e -9 -f -s "$BD" "$CD" "$A/disk.vcdiff"
    xdelta3 -e -9 -f -s "$BS" "$CS" "$A/save.vcdiff"
    xz -9 -T1 -f "$A/disk.vcdiff" "$A/save.vcdiff"
}
timed a_encode_s a_encode
put a_bytes $(($(fsize "$A/disk.vcdiff.xz") + $(fsize "$A/save.vcdiff.xz")))
put a_disk_bytes "$(fsize "$A/disk.vcdiff.xz")"
put a_mem_bytes "$(fsize "$A/save.vcdiff.xz")"
a_decode() {
    xz -d -c "$A/disk.vcdiff.xz" >"$A/disk.vcdiff"
    xdelta3 -d -f -s "$BD" "$A/disk.vcdiff" "$A/custom.disk"
    xz -d -c "$A/save.vcdiff.xz" >"$A/save.vcdiff"
    xdelta3 -d -f -s "$BS" "$A/save.vcdiff" "$A/custom.save"
}
warm "$BD" "$BS"
timed a_decode_s a_decode
cmp "$A/custom.disk" "$CD" && cmp "$A/custom.save" "$CS" || { echo "bench_vm: (a) decoded wrong" >&2; exit 1; }
rm -rf "$A"

# ---- (b) the seed's optimized method -----------------------------------------------------------
log "(b) seed method: flatten the save files"
B=$W/b
mkdir -p "$B"
python3 "$here/seed_overlay.py" flatten "$BS" "$B/base.ram" "$B/base.state" >/dev/null
python3 "$here/seed_overlay.py" flatten "$CS" "$B/custom.ram" "$B/custom.state" >/dev/null
put ram_image_bytes "$(fsize "$B/custom.ram")"
log "(b) seed method: encode ($jobs xdelta3 threads)"
timed b_encode_s python3 "$here/seed_overlay.py" encode --base-disk "$BD" --base-ram "$B/base.ram" \
    --custom-disk "$CD" --custom-ram "$B/custom.ram" --custom-state "$B/custom.state" \
    --out "$B/overlay.xz" --jobs "$jobs" --json >"$W/seed.encode.json"
put b_bytes "$(fsize "$B/overlay.xz")"
log "(b) seed method: decode"
warm "$BD" "$B/base.ram"
timed b_decode_s python3 "$here/seed_overlay.py" decode --base-disk "$BD" --base-ram "$B/base.ram" \
    --overlay "$B/overlay.xz" --out "$B/out" --jobs "$jobs" --json >"$W/seed.decode.json"
cmp "$B/out/custom.disk" "$CD" && cmp "$B/out/custom.ram" "$B/custom.ram" &&
    cmp "$B/out/custom.state" "$B/custom.state" || { echo "bench_vm: (b) decoded wrong" >&2; exit 1; }
# Its floor without any per-chunk xdelta3 process: xz -d of the stream and copying the base images.
b_floor() {
    xz -d -c "$B/overlay.xz" >/dev/null
    cp --sparse=always "$BD" "$B/floor.disk"
    cp --sparse=always "$B/base.ram" "$B/floor.ram"
}
timed b_floor_s b_floor
rm -rf "$B/out" "$B/floor.disk" "$B/floor.ram"

# ---- (c) zstd --patch-from -19 --long=31 -------------------------------------------------------
log "(c) zstd --patch-from -19 --long=31"
C=$W/c
mkdir -p "$C"
c_encode() {
    zstd -q -f -19 --long=31 -T1 --patch-from="$BD" "$CD" -o "$C/disk.zst"
    zstd -q -f -19 --long=31 -T1 --patch-from="$BS" "$CS" -o "$C/save.zst"
}
timed c_encode_s c_encode
put c_bytes $(($(fsize "$C/disk.zst") + $(fsize "$C/save.zst")))
put c_disk_bytes "$(fsize "$C/disk.zst")"
put c_mem_bytes "$(fsize "$C/save.zst")"
c_decode() {
    zstd -q -f -d --long=31 --patch-from="$BD" "$C/disk.zst" -o "$C/custom.disk"
    zstd -q -f -d --long=31 --patch-from="$BS" "$C/save.zst" -o "$C/custom.save"
}
warm "$BD" "$BS"
timed c_decode_s c_decode
cmp "$C/custom.disk" "$CD" && cmp "$C/custom.save" "$CS" || { echo "bench_vm: (c) decoded wrong" >&2; exit 1; }
rm -rf "$C"

# ---- cloudlet: decode and apply on a node that holds only the base -----------------------------
log "cloudlet overlay import + synth on a node with only the base"
HB=$W/home-b
"$CLOUDLET" init --home "$HB" >/dev/null
"$CLOUDLET" vm import --home "$HB" --name base --disk "$BD" --memory "$BS" >/dev/null
warm "$W/custom.overlay"
# The import's CPU time (user + system, all its threads) as well: on a shared machine its wall
# time says as much about the other work as about the import.
cpu=()
[ -x /usr/bin/time ] && cpu=(/usr/bin/time -f "%U %S" -o "$W/overlay.import.cpu")
t=$(now)
"${cpu[@]}" "$CLOUDLET" overlay import --home "$HB" "$W/custom.overlay" --json >"$W/overlay.import.json"
t1=$(now)
[ -s "$W/overlay.import.cpu" ] && put cl_overlay_import_cpu_s "$(awk '{ print $1 + $2 }' "$W/overlay.import.cpu")"
"$CLOUDLET" synth --home "$HB" "$cid" --out "$W/synth1" --json >"$W/synth1.json"
t2=$(now)
put cl_overlay_import_s "$(elapsed "$t" "$t1")"
put cl_first_synth_s "$(elapsed "$t1" "$t2")"
put cl_decode_s "$(elapsed "$t" "$t2")"
cmp "$W/synth1/disk.raw" "$CD" || { echo "bench_vm: cloudlet's disk differs" >&2; exit 1; }
python3 "$here/seed_overlay.py" flatten "$W/synth1/memory.save" "$W/synth.ram" "$W/synth.state" >/dev/null
cmp "$W/synth.ram" "$B/custom.ram" || { echo "bench_vm: cloudlet's RAM differs" >&2; exit 1; }
rm -f "$W/synth.ram" "$W/synth.state"
rm -rf "$W/synth1"

# ---- synthesis throughput from a warm store ----------------------------------------------------
log "cloudlet synth, twice (the second counts)"
for i in 1 2; do
    rm -rf "$W/synth"
    sync
    t=$(now)
    "$CLOUDLET" synth --home "$HB" "$cid" --out "$W/synth" --json >"$W/synth.json"
    put synth_run${i}_s "$(elapsed "$t" "$(now)")"
done
put synth_memory_save_bytes "$(fsize "$W/synth/memory.save")"
put synth_disk_length "$(fsize "$W/synth/disk.raw")"
rm -rf "$W/synth"

put load_end "$(cut -d' ' -f1 /proc/loadavg)"
put cpu_wait_share "$(python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) / 1e6 / (float(sys.argv[4]) - float(sys.argv[3])):.2f}')" "$psi0" "$(psi)" "$t_run0" "$(now)")"

# ---- the report --------------------------------------------------------------------------------
python3 - "$W" "$R" "$pair" "$json" <<'PY'
import json, os, sys
W, R, pair, want_json = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
r = {}
for line in open(R):
    k, v = line.split(None, 1)
    v = v.strip()
    try:
        r[k] = int(v)
    except ValueError:
        try:
            r[k] = float(v)
        except ValueError:
            r[k] = v
def load(name):
    try:
        return json.load(open(os.path.join(W, name)))
    except Exception:
        return None
imp = load("custom.import.json")
exp = load("export.json")
seed_enc = load("seed.encode.json")
seed_dec = load("seed.decode.json")
ovl = load("overlay.import.json")
s1 = load("synth1.json")
s2 = load("synth.json")
MB = 1e6
vm_bytes = r["synth_disk_length"] + r["synth_memory_save_bytes"]
synth_s = r["synth_run2_s"]
res = {
    "pair": pair,
    "disk_length": r["disk_length"],
    "base_save_bytes": r["base_save_bytes"], "custom_save_bytes": r["custom_save_bytes"],
    "base_disk_allocated": r["base_disk_allocated"], "custom_disk_allocated": r["custom_disk_allocated"],
    "overlay": {
        "cloudlet": r["cl_overlay_bytes"],
        "a_xdelta3_xz": r["a_bytes"], "a_disk": r["a_disk_bytes"], "a_memory": r["a_mem_bytes"],
        "b_seed_optimized": r["b_bytes"],
        "c_zstd_patch_from": r["c_bytes"], "c_disk": r["c_disk_bytes"], "c_memory": r["c_mem_bytes"],
    },
    "encode_s": {"cloudlet_import_custom": r["cl_import_custom_s"], "cloudlet_export": r["cl_export_s"],
                 "a": r["a_encode_s"], "b": r["b_encode_s"], "c": r["c_encode_s"]},
    "decode_apply_s": {"cloudlet": r["cl_decode_s"], "cloudlet_overlay_import": r["cl_overlay_import_s"],
                       "cloudlet_overlay_import_cpu": r.get("cl_overlay_import_cpu_s"),
                       "cloudlet_synth": r["cl_first_synth_s"], "a": r["a_decode_s"], "b": r["b_decode_s"],
                       "b_floor_xz_and_copy": r["b_floor_s"], "c": r["c_decode_s"]},
    "synth": {"vm_bytes": vm_bytes, "run1_s": r["synth_run1_s"], "run2_s": synth_s,
              "mb_per_s": round(vm_bytes / MB / synth_s, 1), "stages": s2},
    "custom_import_report": imp, "export_report": exp, "seed_encode": seed_enc,
    "seed_decode": seed_dec, "overlay_import": ovl, "synth_first": s1,
    "load_start": r["load_start"], "load_end": r["load_end"], "cpu_wait_share": r["cpu_wait_share"],
}
o = res["overlay"]; d = res["decode_apply_s"]
goals = [
    ("overlay <= 0.5 x (a)", o["cloudlet"] / o["a_xdelta3_xz"], "<=", 0.5),
    ("overlay <= 1.0 x (b)", o["cloudlet"] / o["b_seed_optimized"], "<=", 1.0),
    ("decode+apply >= 10 x faster than (b)", d["b"] / d["cloudlet"], ">=", 10.0),
    ("synthesis >= 300 MB/s", res["synth"]["mb_per_s"], ">=", 300.0),
]
res["goals"] = [{"goal": g, "value": round(v, 3), "pass": (v <= lim if op == "<=" else v >= lim)}
                for g, v, op, lim in goals]
def mb(b): return f"{b / MB:,.1f} MB"
print(f"pair: {pair}")
print(f"VM: disk {r['disk_length'] / 2**30:.2f} GiB (base {mb(r['base_disk_allocated'])} allocated, "
      f"custom {mb(r['custom_disk_allocated'])}), save files base {mb(r['base_save_bytes'])}, "
      f"custom {mb(r['custom_save_bytes'])}")
print()
print(f"{'method':44} {'overlay':>12} {'encode':>9} {'decode+apply':>13}")
rows = [("cloudlet (overlay export; import + synth)", o["cloudlet"],
         r["cl_import_custom_s"] + r["cl_export_s"], d["cloudlet"]),
        ("    cloudlet: overlay import, then synth", None, None, None),
        ("(a) xdelta3 -e -9 whole files + xz -9", o["a_xdelta3_xz"], r["a_encode_s"], d["a"]),
        ("(b) seed: dedup + per-chunk xdelta3 + xz -9", o["b_seed_optimized"], r["b_encode_s"], d["b"]),
        ("    (b) floor: xz -d + copying the base", None, None, d["b_floor_xz_and_copy"]),
        ("(c) zstd --patch-from -19 --long=31", o["c_zstd_patch_from"], r["c_encode_s"], d["c"])]
for name, size, enc, dec in rows:
    if dec is None:
        cpu = r.get("cl_overlay_import_cpu_s")
        print(f"{name:44} {'':>12} {'':>9} {r['cl_overlay_import_s']:>6.2f} + {r['cl_first_synth_s']:.2f} s"
              + (f" (import CPU {cpu:.2f} s)" if cpu is not None else ""))
        continue
    print(f"{name:44} {mb(size) if size else '':>12} {f'{enc:.1f} s' if enc else '':>9} {dec:>11.2f} s")
print()
st = s2 or {}
written = (st or {}).get("disk_written", 0) + r["synth_memory_save_bytes"]
res["synth"]["written_bytes"] = written
res["synth"]["written_mb_per_s"] = round(written / MB / synth_s, 1)
print(f"synthesis (warm store, second run): {mb(vm_bytes)} of VM in {synth_s:.2f} s = "
      f"{res['synth']['mb_per_s']:.0f} MB/s (first run {r['synth_run1_s']:.2f} s); stages: "
      + ", ".join(f"{k} {v}" for k, v in st.items())
      + f"; bytes written {mb(written)}, {written / MB / synth_s:.0f} MB/s")
print(f"load {r['load_start']} -> {r['load_end']}; some task waited for a CPU {r['cpu_wait_share'] * 100:.0f} % of the run")
print()
for g in res["goals"]:
    print(f"goal: {g['goal']:40} {g['value']:8.3f}  {'PASS' if g['pass'] else 'FAIL'}")
if want_json:
    print(json.dumps(res))
PY
