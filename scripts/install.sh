#!/usr/bin/env bash
# Install detrdistill into the active Python environment (CPU torch pinned: an unpinned torch pulls a
# multi-GB CUDA build). On a GPU machine install the CUDA torch you want first; the constraint below
# is then already satisfied or can be dropped with DETRDISTILL_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q --upgrade pip
if [ "${DETRDISTILL_TORCH:-}" != "skip" ]; then
  pip install -q torch==2.13.0
  pip install -q -c <(echo torch==2.13.0) -e ".[test]"
else
  pip install -q -e ".[test]"
fi
