#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool: carry [".whl", ".data"], timeout_s 600), from the repo root, one pair per call:
#   bash benchmarks/gpu/realtime.sh rt_detr      # or d_fine, deimv2
# A real-time pair of the bccd protocol at GPU size (configs/bccd_<family>_{teacher,student}.yaml: full-resolution
# images, batch 16, bf16, 30 M / 3.5 M params): the teacher for TEACHER_MIN minutes (a time budget sizes only the
# teacher), then 3 seeds x {student alone, DETRDistill} in parallel on the one GPU under ONE EQUAL STEP SCHEDULE
# (STEPS, default the student config's 600), each trained its family's own way; everything in about 9 minutes
# (estimated, not yet measured: no GPU has run it). Results: benchmarks/results/bccd-<family>[_<variant>]-gpu-<date>.{json,md,png},
# copied to $OUT with the run logs. Prepare here first: bash benchmarks/gpu/prepare.sh (wheels incl. transformers
# 5.25, whose D-FINE / DEIMv2 / LW-DETR / RF-DETR classes the GPU machine's older transformers may lack, + the data).
set -uo pipefail
# DISTILLED=detrdistill_quality_warmup runs that variant of the full method (the one that gains on the CPU D-FINE pair)
FAMILY=${1:-rt_detr}; TEACHER_MIN=${TEACHER_MIN:-3}; STEPS=${STEPS:-600}; DISTILLED=${DISTILLED:-detrdistill}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD DETRDISTILL_DATA=$PWD/.data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
NAME=bccd-$FAMILY${DISTILLED#detrdistill}-gpu  # e.g. bccd-d_fine_quality_warmup-gpu: one file per arm
RES=benchmarks/results/$NAME-$(date +%F).json
timeout 530 python3 benchmarks/distill.py --dataset bccd --seeds 0 1 2 --parallel 6 --methods baseline "$DISTILLED" \
  --teacher-config configs/bccd_${FAMILY}_teacher.yaml --student-config configs/bccd_${FAMILY}_student.yaml \
  --teacher-set "train.time_budget_min=$TEACHER_MIN" --student-set "train.max_steps=$STEPS" \
  --work-dir runs/bench/$NAME --out "$RES" 2>&1 | tee "$OUT/distill.log"
cp benchmarks/results/$NAME-* "$OUT/" 2>/dev/null
for f in runs/bench/$NAME/*/metrics.jsonl runs/bench/$NAME/*/log.txt; do
  [ -f "$f" ] && mkdir -p "$OUT/$(dirname "$f")" && cp "$f" "$OUT/$f"; done
