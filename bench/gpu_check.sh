#!/usr/bin/env bash
# Run bench/gpu_check.py from the repository root (the venv in .venv if there is one); arguments pass through.
#   bench/gpu_check.sh                 # CUDA if available (< 8 min), else the CPU smoke
#   bench/gpu_check.sh --cpu-smoke     # what CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
exec python bench/gpu_check.py "$@"
