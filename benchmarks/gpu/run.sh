#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool: carry [".whl", ".data"], timeout_s <= 600), from the repo root:
#   bash benchmarks/gpu/run.sh raccoon 3 300   # dataset, minutes for the teacher, optimizer steps per student
# Speed table first (without the distilled-step rows: those are benchmarks/gpu/speed.sh), then the distillation
# benchmark on one dataset with baseline + detrdistill x 3 seeds
# (all students in parallel on the one GPU) under ONE EQUAL STEP SCHEDULE (a time budget sizes only the
# teacher), everything copied to $OUT. Sizing (H100, 2026-11-26, bf16, batch 16): teacher 0.234 s/step,
# student 0.128 s/step, distilled ~0.46 s/step single-process, ~20 s start-up per process; with 6 students
# sharing the GPU, 300 steps each is an estimate to fit about 4.5 min after a 3-min teacher (unmeasured).
set -uo pipefail
DATASET=${1:-raccoon}; MIN=${2:-3}; STEPS=${3:-300}; METHODS=${METHODS:-baseline detrdistill}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD DETRDISTILL_DATA=$PWD/.data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 benchmarks/speed.py --steps 10 --parts models engine matching 2>&1 | tee "$OUT/speed.log"
timeout $(( 520 - 150 )) python3 benchmarks/distill.py --dataset "$DATASET" --seeds 0 1 2 --parallel 6 \
  --methods $METHODS --teacher-set "train.time_budget_min=$MIN" --student-set "train.max_steps=$STEPS" \
  2>&1 | tee "$OUT/distill.log"
cp benchmarks/results/* "$OUT/" 2>/dev/null
for f in runs/bench/*/*/metrics.jsonl runs/bench/*/*/eval*.json runs/bench/*/*/eval-*/eval.json; do
  [ -f "$f" ] && mkdir -p "$OUT/$(dirname "$f")" && cp "$f" "$OUT/$f"; done
