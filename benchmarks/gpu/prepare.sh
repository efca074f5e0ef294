#!/usr/bin/env bash
# Run HERE (the CPU machine), from the repo root, before a device run: puts what the GPU machine lacks
# into ignored folders that the device tool's `carry` takes along (64 MiB in all):
#   .whl/   wheels for Python 3.12 (the GPU machine has torch, transformers, accelerate, scipy, but no
#           pycocotools / pydantic, and its transformers may predate the real-time DETRs: the tested one is carried)
#   .data/  bccd + raccoon (../shared beside the checkout does not travel)
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info && touch .git/info/exclude
for d in /.whl/ /.data/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pycocotools pydantic pydantic-core annotated-types typing-inspection
# the transformers this project is tested with (its real-time DETR classes; pure Python, no dependencies pulled)
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "transformers==$(python3 -c 'import transformers; print(transformers.__version__)')"
mkdir -p .data && cp -r ../shared/data/bccd ../shared/data/raccoon .data/
du -sh .whl .data
