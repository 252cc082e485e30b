#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (mmdet-style launcher).
#
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py args...]
#   e.g. bash tools/dist_train.sh configs/pretrain/deit-small_tla_8xb128-300e_in1k.py 8 --amp
#        NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29501 bash tools/dist_train.sh CFG 8
# Environment: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1),
#              PYTHON (python) -- the interpreter that runs torchrun.
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

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    $(dirname "$0")/train.py \
    $CONFIG \
    --launcher pytorch ${@:3}
