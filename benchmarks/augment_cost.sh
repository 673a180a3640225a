#!/usr/bin/env bash
# Epoch time with and without the training augmentation, runs alternating: the defaults (128 px) twice each,
# then 256 px once each. Usage: DATA=../shared/data/cxr-lungs benchmarks/augment_cost.sh [OUT_DIR]
# Prints each configuration's epoch times (validation included) and optimiser-step images/s.
set -euo pipefail
DATA=${DATA:-../shared/data/cxr-lungs}
OUT=${1:-$(mktemp -d)}
for rep in 1 2; do
  for aug in augment no-augment; do
    cxrseg train --data "$DATA" --epochs 3 --$aug --runs-dir "$OUT/s128-$aug-$rep" > "$OUT/s128-$aug-$rep.log" 2>&1
  done
done
for aug in augment no-augment; do
  cxrseg train --data "$DATA" --epochs 2 --image-size 256 --$aug --runs-dir "$OUT/s256-$aug" > "$OUT/s256-$aug.log" 2>&1
done
python - "$OUT" <<'PY'
import glob, json, statistics, sys
for pattern in ["s128-augment-*", "s128-no-augment-*", "s256-augment", "s256-no-augment"]:
    rows = [json.loads(line) for f in sorted(glob.glob(f"{sys.argv[1]}/{pattern}/*/metrics.jsonl")) for line in open(f)]
    epochs = [round(r["seconds"], 1) for r in rows]
    rate = statistics.median(r["images_per_s"] for r in rows)
    print(f"{pattern:18s} epochs {epochs} s; median epoch {statistics.median(epochs):.1f} s; median train {rate:.1f} img/s")
PY
