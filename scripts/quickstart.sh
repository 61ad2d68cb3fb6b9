#!/usr/bin/env bash
# The training quickstart: from a fresh clone, with no downloads, synthetic talking heads ->
# curated shards -> the tiny preset's three stages, on a CPU (under 10 minutes on 2 cores: each stage also
# stops at its max_train_minutes).
# It leaves runs/tiny/stage3/model, the checkpoint configs/inference/tiny/inference.yaml uses.
#   bash scripts/quickstart.sh [key=value ...]      (overrides go to every stage)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_minloglevel=2  # MediaPipe's C++ logging
python -m megactor.data.synthetic --out data/synthetic/clips --clips 192 --seconds 2 --size 96 --seed 0 --workers 2
python data_processing/curate.py --input-dir data/synthetic/clips --output-dir data/synthetic/curated \
    --workers 2 min_face_size=24
python -m megactor.data.synthetic --out data/synthetic/heldout --clips 8 --seconds 4 --size 96 --seed 1000 --workers 2
for stage in 1 2 3; do
    python train.py --config "configs/train/tiny/train_stage$stage.yaml" "$@"
done
echo "done: runs/tiny/stage3/model. Animate with: python eval_audio.py --config configs/inference/tiny/inference.yaml"
