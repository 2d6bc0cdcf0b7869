#!/usr/bin/env bash
# Distributed training with torchrun through mmengine's runner (tools/dist_run.sh):
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
set -euo pipefail
exec bash "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" "${@:3}"
