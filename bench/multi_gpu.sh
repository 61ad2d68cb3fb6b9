#!/usr/bin/env bash
# Scaling from 1 to 2 GPUs, on a machine with two:
#   training:  bench/train_bench.py, xl stage 3 (16 frames of 512x512, gradient checkpointing), on 1 GPU, then
#              2 GPUs under DDP and DeepSpeed ZeRO-2 (configs/accelerate/)
#   inference: eval_audio.py, xl (random init), a 10 s driver at 25 fps, on 1 GPU and under torchrun on 2;
#              the two outputs are compared frame by frame
# Usage: OUT_DIR=out DRIVERS=dir SOURCE=img bash bench/multi_gpu.sh
set -uo pipefail
out=${OUT_DIR:-multi_gpu}; mkdir -p "$out"
work=$(mktemp -d)
train_cfg=configs/train/megactor-sigma/train_stage3.yaml
python3 - "$work" "$DRIVERS" <<'PY'
import sys
sys.path.insert(0, "bench")
from infer_bench import make_driver, save_random_weights
save_random_weights(sys.argv[1])
make_driver(sys.argv[2], 10.0, 25.0, f"{sys.argv[1]}/driver10.mp4")
PY
eval_args=(--config configs/inference/megactor-sigma/inference.yaml --source "$SOURCE" --driver "$work/driver10.mp4"
           --num-steps "${EVAL_STEPS:-10}" --audio-scale 2.5 --visual-scale 1.5 --seed 0 checkpoint= compile=false
           "model.codec.path=$work/vae" model.codec.subfolder=null "model.audio_encoder.path=$work/whisper")
# the 1-GPU baselines one at a time, so that neither slows the other
CUDA_VISIBLE_DEVICES=0 python3 bench/train_bench.py --config $train_cfg > "$out/train_1gpu.log" 2>&1
CUDA_VISIBLE_DEVICES=0 python3 eval_audio.py "${eval_args[@]}" --output-path "$work/one_gpu.mp4" \
    > "$out/eval_1gpu.log" 2>&1
limit=${LAUNCH_TIMEOUT:-300}
for strategy in ddp deepspeed_zero2; do
    timeout "$limit" accelerate launch --config_file configs/accelerate/$strategy.yaml --num_processes 2 \
        --mixed_precision bf16 bench/train_bench.py --config $train_cfg > "$out/train_2gpu_$strategy.log" 2>&1
done
timeout "$limit" torchrun --nproc_per_node 2 eval_audio.py "${eval_args[@]}" --output-path "$work/two_gpus.mp4" \
    > "$out/eval_2gpu.log" 2>&1
python3 - "$work" <<'PY' > "$out/eval_compare.log" 2>&1
import sys
import numpy as np
from megactor.data.video_io import read_video
a, b = (read_video(f"{sys.argv[1]}/{n}.mp4").frames.astype(np.int16) for n in ("one_gpu", "two_gpus"))
d = np.abs(a - b)
print(f"frames {a.shape}; |1 GPU - 2 GPUs| per pixel (0-255): mean {d.mean():.3f}, 99th percentile "
      f"{np.percentile(d, 99):.0f}, max {d.max()}")
PY
for f in "$out"/train_*.log; do echo "== $f"; grep -A3 "| processes" "$f" || tail -n 5 "$f"; done
grep -h "wrote\|per pixel" "$out"/eval_*.log
