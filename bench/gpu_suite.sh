#!/usr/bin/env bash
# The GPU figures of the README in one go, on a machine with two GPUs (one works too, slower):
#   GPU 0: bench/model_bench.py (xl, 16 frames of 512x512), then bench/infer_bench.py (5 s driver)
#   GPU 1: bench/train_bench.py (xl stage 3), then synthetic clips -> curation -> the small preset
#          trained for SMALL_MINUTES (its TensorBoard events: $OUT_DIR/small.tfevents)
# Usage: OUT_DIR=out DRIVERS=dir SOURCE=img bash bench/gpu_suite.sh
set -uo pipefail
out=${OUT_DIR:-gpu_suite}; mkdir -p "$out"
gpu1=$(( $(python3 -c "import torch; print(torch.cuda.device_count())") > 1 ? 1 : 0 ))
work=$(mktemp -d)

(
  export CUDA_VISIBLE_DEVICES=0
  python3 bench/model_bench.py --modes eager-autocast,compile-autocast,compile-bf16 > "$out/model_bench.log" 2>&1
  python3 bench/infer_bench.py --driver-dir "$DRIVERS" --source "$SOURCE" > "$out/infer_bench.log" 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=$gpu1
  python3 bench/train_bench.py --config configs/train/megactor-sigma/train_stage3.yaml > "$out/train_bench.log" 2>&1
  python3 -m megactor.data.synthetic --out "$work/clips" --clips "${SMALL_CLIPS:-96}" --seconds 4 --size 128 \
      > "$out/data.log" 2>&1
  python3 data_processing/curate.py --input-dir "$work/clips" --output-dir "$work/curated" --workers 12 \
      min_face_size=32 >> "$out/data.log" 2>&1
  python3 train.py --config configs/train/small/train_stage1.yaml "train_data.data_dirs=[$work/curated/shards]" \
      "output_dir=$work/small" "max_train_minutes=${SMALL_MINUTES:-6}" train_data.num_workers=12 \
      > "$out/small_train.log" 2>&1
  cp "$work"/small/tensorboard/events.out.tfevents.* "$out/small.tfevents"
  cp "$work/curated/report.md" "$out/curation_report.md"
) &
wait
tail -n 25 "$out"/model_bench.log "$out"/infer_bench.log "$out"/train_bench.log
grep -o "loss=[0-9.]*, sps=[0-9.]*" "$out/small_train.log" | sed -n '1p;$p'
