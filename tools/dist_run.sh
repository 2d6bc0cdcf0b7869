#!/usr/bin/env bash
# torchrun through mmengine's runner, shared by dist_train.sh and dist_test.sh:
#   bash tools/dist_run.sh SCRIPT NUM_PROCS [SCRIPT args...]
# Without a GPU the processes use the gloo backend on CPU (see cbam_det/engine/cpu_dist.py).
set -euo pipefail
SCRIPT=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-python}

PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$DIR/$SCRIPT" "${@:3}" --launcher pytorch
