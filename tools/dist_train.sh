#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (mmdet-style launcher).
#
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py args...]
#   e.g. bash tools/dist_train.sh configs/pretrain/deit-small_tla_8xb128-300e_in1k.py 8 --amp
#        NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29501 bash tools/dist_train.sh CFG 8
# Environment: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1),
#              PYTHON (python) -- the interpreter that runs torchrun,
#              MAX_RESTARTS (0) -- torchrun --max-restarts: when a process fails, torchrun relaunches
#                  all of them up to this many times; tools/train.py then resumes from the latest
#                  checkpoint by itself (TORCHELASTIC_RESTART_COUNT), to the run a job never stopped
#                  would give. With MAX_RESTARTS > 0 the nodes meet through torchrun's c10d
#                  rendezvous at MASTER_ADDR:PORT (RDZV_ID names the job, default tlalign_mm).
# A stop on a signal (torchrun forwards SIGTERM) saves a checkpoint and exits with status 75.
# GPUS is the number of processes per node.  Without CUDA the processes run on CPU:
# tools/train.py then switches the backend to gloo by itself.

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

if [ -z "$CONFIG" ] || [ -z "$GPUS" ]; then
    echo "Usage: bash $0 CONFIG GPUS [train.py args...]" >&2
    exit 2
fi
if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "dist_train.sh: error: GPUS (the processes per node, after CONFIG) must be a positive integer, got '$GPUS'" >&2
    echo "Usage: bash $0 CONFIG GPUS [train.py args...]" >&2
    exit 2
fi

if [ "${MAX_RESTARTS:-0}" -gt 0 ]; then
    # torchrun's c10d rendezvous: each restart meets in a fresh store (the static rendezvous of
    # --master_addr / --master_port keeps one store across restarts, where a relaunched rank can read
    # its peer's address from the attempt before and wait for it forever). Node ranks are assigned by
    # the rendezvous; NODE_RANK is not used.
    RENDEZVOUS="--rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:$PORT --rdzv-id=${RDZV_ID:-tlalign_mm} --max-restarts=$MAX_RESTARTS"
else
    RENDEZVOUS="--node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=$PORT"
fi

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes=$NNODES \
    --nproc_per_node=$GPUS \
    $RENDEZVOUS \
    $(dirname "$0")/train.py \
    $CONFIG \
    --launcher pytorch ${@:3}
