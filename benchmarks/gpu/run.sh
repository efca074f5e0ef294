#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool: carry [".whl", ".data"], timeout_s <= 600), from the repo root:
#   bash benchmarks/gpu/run.sh raccoon 4       # dataset, minutes for the teacher (students get the same)
# Speed table first, then the distillation benchmark on one dataset with baseline + detrdistill x 3 seeds
# (all students in parallel on the one GPU), everything copied to $OUT.
set -uo pipefail
DATASET=${1:-raccoon}; MIN=${2:-4}; METHODS=${METHODS:-baseline detrdistill}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD DETRDISTILL_DATA=$PWD/.data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 90 python3 benchmarks/speed.py --steps 10 2>&1 | tee "$OUT/speed.log"
timeout $(( MIN * 60 * 2 + 150 )) python3 benchmarks/distill.py --dataset "$DATASET" --seeds 0 1 2 --parallel 6 \
  --methods $METHODS --teacher-set "train.time_budget_min=$MIN" --student-set "train.time_budget_min=$MIN" \
  2>&1 | tee "$OUT/distill.log"
cp benchmarks/results/* "$OUT/" 2>/dev/null
for f in runs/bench/*/*/metrics.jsonl runs/bench/*/*/eval*.json runs/bench/*/*/eval-*/eval.json; do
  [ -f "$f" ] && mkdir -p "$OUT/$(dirname "$f")" && cp "$f" "$OUT/$f"; done
