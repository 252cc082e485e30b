#!/usr/bin/env bash
# Testing on a Slurm cluster with srun (mmdet-style launcher).
#
# Usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#        bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
#   e.g. GPUS=8 bash tools/slurm_test.sh gpu test_tla configs/pretrain/deit-small_tla_8xb128-300e_in1k.py \
#            work_dirs/deit-small_tla_8xb128-300e_in1k/epoch_300.pth --out results.pkl
# One task per GPU; each runs tools/test.py with --launcher slurm.  PYTHON (python) picks
# the interpreter.
# Without CUDA the tasks run on CPU processes with gloo (tools/launch.py: slurm_to_torchrun_env).

set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=${@:5}

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
srun -p ${PARTITION} \
    --job-name=${JOB_NAME} \
    --gres=gpu:${GPUS_PER_NODE} \
    --ntasks=${GPUS} \
    --ntasks-per-node=${GPUS_PER_NODE} \
    --cpus-per-task=${CPUS_PER_TASK} \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    ${PYTHON:-python} -u $(dirname "$0")/test.py ${CONFIG} ${CHECKPOINT} --launcher="slurm" ${PY_ARGS}
