#!/usr/bin/env bash
# Training on a Slurm cluster with srun (mmdet-style launcher), ready for pre-emption and requeue.
#
# Usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#        bash tools/slurm_train.sh [--signal SIG@SECONDS | --no-signal] [--requeue] \
#            PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
#   e.g. GPUS=16 bash tools/slurm_train.sh gpu tla_deit_s configs/pretrain/deit-small_tla_8xb128-300e_in1k.py \
#            work_dirs/deit-small_tla_8xb128-300e_in1k
#
# --signal SIG@SECONDS (default USR1@120): srun --signal, Slurm sends SIG to every task SECONDS before the
#     time limit. PreemptionHook (configs/_base_/*runtime.py) turns it, and SIGTERM (pre-emption, scancel),
#     into a checkpoint of that iteration and exit status 75. --no-signal: no early signal.
# --requeue: rank 0 runs `scontrol requeue $SLURM_JOB_ID` after that checkpoint (train.py --requeue), so
#     the batch job this runs in goes back to the queue; for sites that do not requeue pre-empted jobs
#     themselves. Every launch resumes: the tasks get --resume, and a requeued job (SLURM_RESTART_COUNT)
#     resumes without it too. Requeue needs a batch job:
#       sbatch -p gpu -N 2 --gres=gpu:8 --ntasks-per-node=8 --requeue \
#           --wrap "bash tools/slurm_train.sh --requeue gpu tla_deit_s CONFIG WORK_DIR"
# One task per GPU; each runs tools/train.py with --launcher slurm. PYTHON (python) picks the interpreter.
# Without CUDA the tasks run on CPU processes with gloo (tools/launch.py: slurm_to_torchrun_env).

SIGNAL=USR1@120
REQUEUE=0
while [ $# -gt 0 ]; do
    case $1 in
        --signal) SIGNAL=$2; shift 2 ;;
        --signal=*) SIGNAL=${1#*=}; shift ;;
        --no-signal) SIGNAL=; shift ;;
        --requeue) REQUEUE=1; shift ;;
        --*) echo "slurm_train.sh: unknown option $1 (options go before PARTITION)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -lt 4 ]; then
    echo "Usage: bash $0 [--signal SIG@SECONDS | --no-signal] [--requeue] PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
    exit 2
fi

set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=${@:5}
if [ "$REQUEUE" = 1 ]; then
    PY_ARGS="$PY_ARGS --requeue"
    case " $PY_ARGS " in *" --resume"*) ;; *) PY_ARGS="$PY_ARGS --resume" ;; esac
fi

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
srun -p ${PARTITION} \
    --job-name=${JOB_NAME} \
    --gres=gpu:${GPUS_PER_NODE} \
    --ntasks=${GPUS} \
    --ntasks-per-node=${GPUS_PER_NODE} \
    --cpus-per-task=${CPUS_PER_TASK} \
    --kill-on-bad-exit=1 \
    ${SIGNAL:+--signal=${SIGNAL}} \
    ${SRUN_ARGS} \
    ${PYTHON:-python} -u $(dirname "$0")/train.py ${CONFIG} --work-dir=${WORK_DIR} --launcher="slurm" ${PY_ARGS}
