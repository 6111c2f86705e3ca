#!/bin/sh
# Usage: bench/gpu_check.sh [report.md] [gpu_check.py options]  (after `pip install -e . --no-build-isolation`)
cd "$(dirname "$0")/.." && { [ $# -gt 0 ] || set -- "bench/results/gpu_check_$(date +%Y%m%d_%H%M%S).md"; } && exec python bench/gpu_check.py "$@"
