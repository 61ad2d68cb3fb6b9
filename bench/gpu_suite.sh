#!/usr/bin/env bash
# The single-GPU figures of docs/benchmarks.md in one go (bench/multi_gpu.sh has the 1 -> 2 GPU scaling):
#   bench/infer_bench.py (xl, 5 s driver), bench/train_bench.py (xl stage 3), bench/model_bench.py without its
#   PixArt reference point (run that on its own: several minutes), then synthetic clips -> curation -> the small
#   preset's stage 1 trained for SMALL_MINUTES (its TensorBoard events: $OUT_DIR/small.tfevents).
# Usage: OUT_DIR=out DRIVERS=dir SOURCE=img bash bench/gpu_suite.sh
set -uo pipefail
out=${OUT_DIR:-gpu_suite}; mkdir -p "$out"
work=$(mktemp -d)
python3 bench/infer_bench.py --driver-dir "$DRIVERS" --source "$SOURCE" --repeat 1 > "$out/infer_bench.log" 2>&1
python3 bench/train_bench.py --config configs/train/megactor-sigma/train_stage3.yaml > "$out/train_bench.log" 2>&1
python3 bench/model_bench.py --modes "${MODEL_MODES:-eager-autocast,compile-autocast}" --no-pixart \
    > "$out/model_bench.log" 2>&1
python3 -m megactor.data.synthetic --out "$work/clips" --clips "${SMALL_CLIPS:-96}" --seconds 4 --size 128 \
    > "$work/data.log" 2>&1
python3 data_processing/curate.py --input-dir "$work/clips" --output-dir "$work/curated" --workers 14 \
    min_face_size=32 >> "$work/data.log" 2>&1
python3 train.py --config configs/train/small/train_stage1.yaml "train_data.data_dirs=[$work/curated/shards]" \
    "output_dir=$work/small" "max_train_minutes=${SMALL_MINUTES:-8.5}" train_data.num_workers=12 \
    > "$work/small_train.log" 2>&1
cp "$work"/small/tensorboard/events.out.tfevents.* "$out/small.tfevents"
tail -c 3000 "$work/small_train.log" > "$out/small_train_tail.log"
tail -n 14 "$out/infer_bench.log"; grep -h -A3 "| processes" "$out/train_bench.log"; tail -n 5 "$out/model_bench.log"
