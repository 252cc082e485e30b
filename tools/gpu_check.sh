#!/usr/bin/env bash
# One-command GPU check of TL-Align under mixed precision (label-path cost, precision budget,
# a pretraining step with no host-device synchronisation); prints one table.
# Needs torch with CUDA, timm, mmengine and this package (no mmcv / mmseg / mmdet).
#
# Usage: bash tools/gpu_check.sh [--iters 20] [--warmup 5] [--pretrain-iters 50] [--json FILE]
#        PYTHON=/path/to/python bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
# this checkout's package first (as tools/dist_train.sh does), installed or not
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" tools/analysis/gpu_check.py "$@"
