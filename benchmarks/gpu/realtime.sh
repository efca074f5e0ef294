#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool: carry [".whl", ".data"], timeout_s 600), from the repo root, one pair per call:
#   bash benchmarks/gpu/realtime.sh rt_detr      # or d_fine, deimv2
# A real-time pair of the bccd protocol at GPU size (configs/bccd_<family>_{teacher,student}.yaml: full-resolution
# images, batch 16, bf16, 30 M / 3.5 M params): the teacher for TEACHER_MIN minutes (a time budget sizes only the
# teacher), then 3 seeds x {student alone, DETRDistill} in parallel on the one GPU under ONE EQUAL STEP SCHEDULE
# (STEPS, default the student config's 600), each trained its family's own way; everything in about 9 minutes
# (estimated, not yet measured: no GPU has run it). Results: benchmarks/results/bccd-<family>-gpu-<date>.{json,md,png},
# copied to $OUT with the run logs. Prepare here first: bash benchmarks/gpu/prepare.sh (wheels incl. transformers
# 5.25, whose D-FINE / DEIMv2 / LW-DETR / RF-DETR classes the GPU machine's older transformers may lack, + the data).
set -uo pipefail
FAMILY=${1:-rt_detr}; TEACHER_MIN=${TEACHER_MIN:-3}; STEPS=${STEPS:-600}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD DETRDISTILL_DATA=$PWD/.data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
RES=benchmarks/results/bccd-$FAMILY-gpu-$(date +%F).json
timeout 530 python3 benchmarks/distill.py --dataset bccd --seeds 0 1 2 --parallel 6 --methods baseline detrdistill \
  --teacher-config configs/bccd_${FAMILY}_teacher.yaml --student-config configs/bccd_${FAMILY}_student.yaml \
  --teacher-set "train.time_budget_min=$TEACHER_MIN" --student-set "train.max_steps=$STEPS" \
  --work-dir runs/bench/bccd-$FAMILY-gpu --out "$RES" 2>&1 | tee "$OUT/distill.log"
cp benchmarks/results/bccd-$FAMILY-gpu-* "$OUT/" 2>/dev/null
for f in runs/bench/bccd-$FAMILY-gpu/*/metrics.jsonl runs/bench/bccd-$FAMILY-gpu/*/log.txt; do
  [ -f "$f" ] && mkdir -p "$OUT/$(dirname "$f")" && cp "$f" "$OUT/$f"; done
