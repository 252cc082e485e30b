#!/usr/bin/env bash
# README command one: set up, build the real demo data, run TL-Align pretraining end to end
# through the user-facing tools, evaluate, and export the backbone for downstream configs.
#
#   bash tools/run_demo.sh            # everything (set-up is skipped in seconds when cached)
#   WORK_DIR=work_dirs/demo GPUS=1 bash tools/run_demo.sh
#
# Steps: tools/setup_env.sh -> tools/prepare_demo_data.py (Fashion-MNIST from the Debian
# package) -> tools/dist_train.sh configs/demo/deit-demo_tla_... (TL-Align pretraining, with
# the token-fluctuation hook logging and backbone export) -> tools/test.py (top-1/top-5).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WORK_DIR=${WORK_DIR:-work_dirs/demo}
GPUS=${GPUS:-1}
CFG=configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py
T0=$(date +%s)
step() { printf '\n==== [demo %s, %ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }

step "1/4 environment (tools/setup_env.sh)"
bash tools/setup_env.sh
PY=$REPO/.venv/bin/python
export PYTHON=$PY

step "2/4 demo data (tools/prepare_demo_data.py --only cls)"
INSTALL_APT=()
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then INSTALL_APT=(--install-apt); fi
"$PY" tools/prepare_demo_data.py --only cls "${INSTALL_APT[@]}"

step "3/4 TL-Align pretraining on Fashion-MNIST ($GPUS process(es), tools/dist_train.sh)"
bash tools/dist_train.sh "$CFG" "$GPUS" --work-dir "$WORK_DIR/pretrain"

step "4/4 evaluation (tools/test.py)"
CKPT=$(cat "$WORK_DIR/pretrain/last_checkpoint")
"$PY" tools/test.py "$CFG" "$CKPT" --work-dir "$WORK_DIR/test"

step "done in $(( $(date +%s) - T0 ))s"
cat <<EOF
  checkpoints : $WORK_DIR/pretrain/epoch_*.pth  (last: $CKPT)
  backbone    : $WORK_DIR/pretrain/backbone.pth  (load with init_cfg=dict(type='Pretrained', checkpoint=...))
  logs        : $WORK_DIR/pretrain/<timestamp>/<timestamp>.log  (train/align/rmse = token fluctuation)
  scalars     : $WORK_DIR/pretrain/<timestamp>/vis_data/scalars.json
  metrics     : $WORK_DIR/test/<timestamp>/<timestamp>.log  (accuracy/top1, accuracy/top5)
EOF
