#!/usr/bin/env bash
# The GPU figures of the README in one go, on a machine with two GPUs (with one, in turn, no scaling):
#   GPU 0: bench/infer_bench.py (xl, 5 s driver), eval_audio.py on a 10 s driver (1 GPU), bench/model_bench.py
#   GPU 1: bench/train_bench.py (xl stage 3), then synthetic clips -> curation -> the small preset
#          trained for SMALL_MINUTES (its TensorBoard events: $OUT_DIR/small.tfevents)
#   both:  bench/train_bench.py under DDP, and eval_audio.py on the 10 s driver under torchrun
# bench/model_bench.py with its diffusers PixArt reference point: run it on its own (several minutes).
# Usage: OUT_DIR=out DRIVERS=dir SOURCE=img bash bench/gpu_suite.sh
set -uo pipefail
out=${OUT_DIR:-gpu_suite}; mkdir -p "$out"
work=$(mktemp -d)
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
second=$(( gpus > 1 ? 1 : 0 ))
python3 - "$work" "$DRIVERS" <<'PY'
import sys
sys.path.insert(0, "bench")
from infer_bench import make_driver, save_random_weights
save_random_weights(sys.argv[1])
make_driver(sys.argv[2], 10.0, 25.0, f"{sys.argv[1]}/driver10.mp4")
PY
eval_args=(--config configs/inference/megactor-sigma/inference.yaml --source "$SOURCE" --driver "$work/driver10.mp4"
           --num-steps "${EVAL_STEPS:-10}" --audio-scale 2.5 --visual-scale 1.5 checkpoint=
           "model.codec.path=$work/vae" model.codec.subfolder=null "model.audio_encoder.path=$work/whisper")
(
  export CUDA_VISIBLE_DEVICES=0
  python3 bench/infer_bench.py --driver-dir "$DRIVERS" --source "$SOURCE" --repeat 1 > "$out/infer_bench.log" 2>&1
  python3 eval_audio.py "${eval_args[@]}" --output-path "$work/one_gpu.mp4" > "$out/eval_1gpu.log" 2>&1
  python3 bench/model_bench.py --modes "${MODEL_MODES:-eager-autocast,compile-autocast}" --no-pixart \
      > "$out/model_bench.log" 2>&1
) &
[ "$gpus" -gt 1 ] || wait  # one GPU: one thing at a time
(
  export CUDA_VISIBLE_DEVICES=$second
  python3 bench/train_bench.py --config configs/train/megactor-sigma/train_stage3.yaml > "$out/train_bench.log" 2>&1
  python3 -m megactor.data.synthetic --out "$work/clips" --clips "${SMALL_CLIPS:-96}" --seconds 4 --size 128 \
      > "$work/data.log" 2>&1
  python3 data_processing/curate.py --input-dir "$work/clips" --output-dir "$work/curated" --workers 12 \
      min_face_size=32 >> "$work/data.log" 2>&1
  python3 train.py --config configs/train/small/train_stage1.yaml "train_data.data_dirs=[$work/curated/shards]" \
      "output_dir=$work/small" "max_train_minutes=${SMALL_MINUTES:-6}" train_data.num_workers=12 \
      > "$work/small_train.log" 2>&1
  cp "$work"/small/tensorboard/events.out.tfevents.* "$out/small.tfevents"
  tail -c 3000 "$work/small_train.log" > "$out/small_train_tail.log"
) &
wait
[ "$gpus" -gt 1 ] && accelerate launch --multi_gpu --num_processes 2 bench/train_bench.py \
    --config configs/train/megactor-sigma/train_stage3.yaml >> "$out/train_bench.log" 2>&1
[ "$gpus" -gt 1 ] && torchrun --nproc_per_node 2 eval_audio.py "${eval_args[@]}" --output-path "$work/two_gpus.mp4" \
    > "$out/eval_2gpu.log" 2>&1
[ "$gpus" -gt 1 ] && python3 - "$work" <<'PY' > "$out/eval_compare.log" 2>&1
import sys
import numpy as np
from megactor.data.video_io import read_video
a, b = (read_video(f"{sys.argv[1]}/{n}.mp4").frames.astype(np.int16) for n in ("one_gpu", "two_gpus"))
print(f"frames {a.shape}; |1 GPU - 2 GPUs| per pixel: mean {np.abs(a - b).mean():.3f}, max {np.abs(a - b).max()} (0-255)")
PY
grep -h "wrote\|per pixel" "$out"/eval_*.log
tail -n 14 "$out/infer_bench.log"; grep -h -A3 "| processes" "$out/train_bench.log"; tail -n 5 "$out/model_bench.log"
