#!/usr/bin/env bash
# Launch a training stage with accelerate.
#
#   bash train.sh train.py CONFIG NUM_GPUS [key=value ...]
#   bash train.sh train.py ./configs/train/megactor-sigma/train_stage1.yaml 8
#
# NUM_GPUS > 1 uses configs/accelerate/ddp.yaml; set ACCELERATE_CONFIG to use another
# (configs/accelerate/deepspeed_zero2.yaml). With no GPU
# it runs NUM_GPUS CPU processes on the gloo backend (accelerate's --cpu launcher starts one
# process unless MPI is set up, so several CPU processes go through its torchrun launcher).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash train.sh train.py CONFIG NUM_GPUS [key=value ...]" >&2
    exit 2
fi
script=$1 config=$2 num=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -eq 0 ] && [ "$num" -eq 1 ]; then
    launch=(--config_file "$here/configs/accelerate/cpu.yaml" --cpu)
elif [ "$gpus" -eq 0 ]; then
    launch=(--multi_gpu --num_processes "$num" --num_machines 1 --mixed_precision no --dynamo_backend no)
elif [ "$num" -eq 1 ]; then
    launch=(--config_file "${ACCELERATE_CONFIG:-$here/configs/accelerate/single_gpu.yaml}" --num_processes 1)
else
    launch=(--config_file "${ACCELERATE_CONFIG:-$here/configs/accelerate/ddp.yaml}" --num_processes "$num")
fi
exec accelerate launch "${launch[@]}" "$script" --config "$config" "$@"
