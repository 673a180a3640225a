#!/usr/bin/env bash
# Time one training recipe and score it: wall time of `cxrseg train`, then the evaluate means on the `val`
# split (what choices are made on) and on the `test` split (reported, never chosen on).
# Usage: benchmarks/time_to_accuracy.sh NAME [train flags...]
# Env: DATA (default ../shared/data/cxr-lungs), OUT (default /tmp/cxrseg-tta); appends to $OUT/results.txt.
set -euo pipefail
name=$1; shift
data=${DATA:-../shared/data/cxr-lungs}
out=${OUT:-/tmp/cxrseg-tta}
runs=$out/runs-$name
rm -rf "$runs"; mkdir -p "$out"
start=$(date +%s.%N)
cxrseg train --data "$data" --runs-dir "$runs" "$@" > "$out/$name.train.log" 2>&1
end=$(date +%s.%N)
score() {
  cxrseg evaluate --data "$data" --runs-dir "$runs" --split "$1" --json 2>/dev/null | python3 -c \
    "import json,sys; d=json.load(sys.stdin); print(f\"$1 dice={d['dice']:.4f} iou={d['iou']:.4f} hd95={d['hd95']:.2f}\")"
}
printf '%s | %s | wall %.1fs | %s | %s\n' "$name" "$*" "$(echo "$end - $start" | bc)" "$(score val)" "$(score test)" \
  | tee -a "$out/results.txt"
