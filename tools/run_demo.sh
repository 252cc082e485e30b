#!/usr/bin/env bash
# README command one: set up, build the real demo data, and run the whole TL-Align chain through
# the user-facing tools: TL-Align pretraining -> backbone export -> UperNet fine-tuning ->
# Cascade Mask R-CNN fine-tuning, evaluating each stage and drawing pictures.
#
#   bash tools/run_demo.sh                 # everything (set-up is skipped in seconds when cached)
#   WORK_DIR=work_dirs/demo GPUS=1 bash tools/run_demo.sh
#   bash tools/run_demo.sh --quick         # the same chain, shortened
#
# Steps: tools/setup_env.sh -> tools/prepare_demo_data.py (Fashion-MNIST from the Debian package,
# VOC masks and COCO polygons from the labelme source archive on PyPI) ->
#   tools/dist_train.sh configs/demo/swin-demo_tla_...        (TL-Align pretraining, exports backbone.pth)
#   tools/test.py                                             (top-1 / top-5)
#   tools/dist_train.sh configs/demo/upernet_swin-demo_fmnist-tla-pre_... (from backbone.pth)
#   tools/test.py --show-dir                                  (mIoU, painted predictions)
#   tools/dist_train.sh configs/demo/cascade-mask-rcnn_...    (from backbone.pth)
#   tools/test.py --show-dir                                  (bbox / segm AP, painted predictions)
#   tools/analysis/plot_curves.py                             (loss and metric curves)
# Environment: WORK_DIR (default work_dirs/demo, or work_dirs/demo-quick with --quick),
# GPUS (processes per stage, default 1), SKIP_SETUP=1 (use the existing .venv as it is).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "run_demo.sh: unknown argument '$arg' (use --quick or nothing)" >&2; exit 2 ;;
    esac
done
if [ "$QUICK" = 1 ]; then WORK_DIR=${WORK_DIR:-work_dirs/demo-quick}; else WORK_DIR=${WORK_DIR:-work_dirs/demo}; fi
case "$WORK_DIR" in /*) ;; *) WORK_DIR=$REPO/$WORK_DIR ;; esac
GPUS=${GPUS:-1}
PRE_CFG=configs/demo/swin-demo_tla_1xb64-10e_fashion-mnist.py
SEG_CFG=configs/demo/upernet_swin-demo_fmnist-tla-pre_1xb4-400i_voc-seg-256x256.py
DET_CFG=configs/demo/cascade-mask-rcnn_swin-demo_fmnist-tla-pre_fpn_1xb2-10e_coco-voc.py
# --quick: same configs and code path, schedules cut to a few iterations
PRE_OPTS=() SEG_OPTS=() DET_OPTS=()
if [ "$QUICK" = 1 ]; then
    PRE_OPTS=(--cfg-options train_cfg.max_epochs=1 train_cfg.val_interval=1 train_dataloader.dataset.indices=1280)
    SEG_OPTS=(train_cfg.max_iters=20 train_cfg.val_interval=20 default_hooks.checkpoint.interval=20)
    DET_OPTS=(train_cfg.max_epochs=1 train_cfg.val_interval=1 default_hooks.checkpoint.interval=1
              train_dataloader.dataset.times=5)
fi
T0=$(date +%s)
step() { printf '\n==== [demo %s, %ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }

step "1/7 environment (tools/setup_env.sh)"
if [ "${SKIP_SETUP:-0}" = 1 ] && [ -x .venv/bin/python ]; then
    echo "SKIP_SETUP=1: using .venv as it is"
else
    bash tools/setup_env.sh
fi
PY=$REPO/.venv/bin/python
export PYTHON=$PY

step "2/7 demo data (tools/prepare_demo_data.py)"
INSTALL_APT=()
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then INSTALL_APT=(--install-apt); fi
"$PY" tools/prepare_demo_data.py --only cls,seg,coco "${INSTALL_APT[@]}"

T1=$(date +%s)
BACKBONE=$WORK_DIR/pretrain/backbone.pth
step "3/7 TL-Align pretraining of a small Swin on Fashion-MNIST ($GPUS process(es), tools/dist_train.sh)"
rm -f "$BACKBONE"  # never fine-tune from a previous run's export
bash tools/dist_train.sh "$PRE_CFG" "$GPUS" --work-dir "$WORK_DIR/pretrain" \
    ${PRE_OPTS[@]+"${PRE_OPTS[@]}"}
if [ ! -f "$BACKBONE" ]; then
    echo "run_demo.sh: pretraining finished without exporting $BACKBONE (BackboneExportHook)" >&2; exit 1
fi
"$PY" tools/test.py "$PRE_CFG" "$(cat "$WORK_DIR/pretrain/last_checkpoint")" --work-dir "$WORK_DIR/pretrain/test" \
    | tee "$WORK_DIR/pretrain/test.txt"

# fine-tune CFG from the exported backbone into $WORK_DIR/NAME, then evaluate it and paint the predictions
finetune() {
    local name=$1 cfg=$2 n=$3 what=$4; shift 4
    step "$n/7 $what from the exported backbone (tools/dist_train.sh)"
    bash tools/dist_train.sh "$cfg" "$GPUS" --work-dir "$WORK_DIR/$name" \
        --cfg-options model.backbone.init_cfg.checkpoint="$BACKBONE" "$@"
    step "$((n + 1))/7 $what: evaluation and pictures (tools/test.py --show-dir)"
    "$PY" tools/test.py "$cfg" "$(cat "$WORK_DIR/$name/last_checkpoint")" --work-dir "$WORK_DIR/$name/test" \
        --show-dir "$WORK_DIR/pictures/$name" | tee "$WORK_DIR/$name/test.txt"
}
T2=$(date +%s)
finetune upernet "$SEG_CFG" 4 "UperNet on the VOC demo masks" ${SEG_OPTS[@]+"${SEG_OPTS[@]}"}
T3=$(date +%s)
finetune cascade "$DET_CFG" 6 "Cascade Mask R-CNN on the VOC demo polygons" ${DET_OPTS[@]+"${DET_OPTS[@]}"}
step "training curves (tools/analysis/plot_curves.py)"
"$PY" tools/analysis/plot_curves.py "$WORK_DIR/pretrain" "$WORK_DIR/upernet" "$WORK_DIR/cascade" \
    --titles "TL-Align pretraining (Swin, Fashion-MNIST)" "UperNet (VOC demo)" "Cascade Mask R-CNN (VOC demo)" \
    --out "$WORK_DIR/pictures/curves.png"

T4=$(date +%s)
step "done in $(( T4 - T0 ))s"
"$PY" tools/analysis/demo_results.py "$WORK_DIR" --results-json "$WORK_DIR/results.json" \
    --command "bash tools/run_demo.sh $*" \
    --seconds $(( T1 - T0 )) $(( T2 - T1 )) $(( T3 - T2 )) $(( T4 - T3 )) $(( T4 - T0 ))
cat <<EOF
  metrics     : above (train = val images for the two downstream sets: they measure fitting),
                with the command, commit, date and machine in $WORK_DIR/results.json
  checkpoints : $WORK_DIR/{pretrain,upernet,cascade}/  (last_checkpoint names the newest of each)
  backbone    : $BACKBONE  (init_cfg=dict(type='Pretrained', checkpoint=...))
  logs        : $WORK_DIR/<stage>/<timestamp>/<timestamp>.log, scalars in .../vis_data/scalars.json
  pictures    : $WORK_DIR/pictures/curves.png (losses and metrics of the three stages)
                $WORK_DIR/pictures/upernet/ (segmentation: ground truth | prediction)
                $WORK_DIR/pictures/cascade/ (detection: ground truth | prediction)
EOF
