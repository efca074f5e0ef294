#!/usr/bin/env bash
# Install, then run the whole test suite (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest tests -p no:cacheprovider "$@"
