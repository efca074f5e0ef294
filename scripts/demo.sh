#!/usr/bin/env bash
# Install, then run the main job on the embedded default (synthetic data, nothing to download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
detrdistill demo "$@"
