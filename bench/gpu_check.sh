#!/usr/bin/env bash
# One command on a GPU machine (< 8 min on one H100): every backend that runs there, SwinT random weights at
# 640x853, encoder, decoder at 1/10/32/60 prompts, node-core latency at 30 Hz, peak GPU memory, accuracy vs fp32.
# Uses the machine's own Python and the source tree (no install, no network). Writes bench/results/gpu_check.json
# and bench/results/gpu_check.md; extra arguments go to bench/gpu_check.py (e.g. --no-compile, --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=. exec timeout 470 python3 bench/gpu_check.py "$@"
