#!/bin/bash
# bench.store_smoke: the benchmark runs on a tiny input, exits 0, and prints every figure and
# goal, as its report and as JSON.
set -u
BENCH=$1 DIR=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
out=$("$BENCH" --size 8M --dir "$DIR") || fail "bench_store exited with $?"
echo "$out"
for want in "BLAKE2b-256" "zstd -3 compress" "zstd -3 decompress" "memcpy" \
            "hash + compress" "MB/s of the image" "on disk / stored" "compression ratio" \
            "cs_image_export_fd" "cs_reader"; do
    grep -qF -- "$want" <<<"$out" || fail "no figure for: $want"
done
[ "$(grep -cE '^  (PASS|FAIL)  ' <<<"$out")" -eq 3 ] || fail "not three goals with PASS/FAIL"
"$BENCH" --size 4M --dir "$DIR" --json >"$DIR/bench.json" || fail "--json run exited with $?"
python3 - "$DIR/bench.json" <<'PY' || fail "the JSON output lacks figures"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["size_bytes"] == 4 << 20
assert all(v > 0 for v in d["ceilings_mbps"].values())
assert [i["threads"] for i in d["ingest"]] == [1, 2]
assert all(i["mbps"] > 0 and i["disk_per_stored"] > 0 for i in d["ingest"])
assert len(d["goals"]) == 3 and all(isinstance(g["pass"], bool) for g in d["goals"])
PY
"$BENCH" --help | grep -q -- "--size" || fail "--help"
"$BENCH" --size 3 2>/dev/null; [ $? -eq 2 ] || fail "a bad --size is not a usage error"
ls "$DIR"/cloudlet-bench-* >/dev/null 2>&1 && fail "temporary directories left behind"
exit 0
