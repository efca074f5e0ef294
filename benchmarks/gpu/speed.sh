#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool: carry [".whl", ".data"], timeout_s <= 600), from the repo root:
#   bash benchmarks/gpu/speed.sh
# The speed table (docs/performance.md) on a GPU: per-config steps (bare / with loss / full; the engine rows are run.sh's),
# the distilled-step rows with their per-part profile for the GPU-size pairs (bccd, raccoon) and the synthetic
# pair, and the matching rows with 1 vs all-core solver threads. bf16 autocast where a config says mixed_precision bf16 (the
# teacher then runs in bf16 too). Results land in benchmarks/results/speed-gpu-<date>.{json,md} and in $OUT.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD DETRDISTILL_DATA=$PWD/.data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "${OUT:-/tmp/out}"
timeout 540 python3 benchmarks/speed.py --steps 10 --threads "$(nproc)" --parts models distill matching \
  --configs configs/bccd_teacher.yaml configs/bccd_student.yaml configs/raccoon_teacher.yaml \
            configs/raccoon_student.yaml configs/synthetic_teacher.yaml configs/synthetic_student.yaml \
  --note "GPU session, $(nproc) CPU cores" 2>&1 | tee "${OUT:-/tmp/out}/speed.log"
cp benchmarks/results/speed-gpu-* "${OUT:-/tmp/out}/" 2>/dev/null
