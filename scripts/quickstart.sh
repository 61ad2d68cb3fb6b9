#!/usr/bin/env bash
# The training quickstart: from a fresh clone, with no downloads, synthetic talking heads ->
# curated shards -> the tiny preset's three stages, on a CPU. Every stage runs a fixed number of steps, so the
# model does not depend on how busy the machine is (each stage's max_train_minutes is a safety net that says
# loudly when it cuts a stage). Threads: one per idle core at the start, since with another job on the
# cores two threads ran stage 1 about 4 times slower than one (docs/control.md).
# It leaves runs/tiny/stage3/model, the checkpoint configs/inference/tiny/inference.yaml uses. The three stages
# run in one train.py process, which imports once and decodes each clip once.
#   bash scripts/quickstart.sh [--long] [key=value ...]      (overrides go to every stage)
#   --long: the longer recipe of configs/train/tiny/long/, about 26 minutes of 2 cores: stage 1 for 3500
#           steps, stage 2 for 1500 steps of 16 clips of 2 frames, stage 3 for 300 steps (docs/control.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_minloglevel=2  # MediaPipe's C++ logging
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then  # one thread per idle core: torch's threads on busy cores run far slower
    OMP_NUM_THREADS=$(python scripts/idle_cores.py)
    export OMP_NUM_THREADS
fi
echo "quickstart: OMP_NUM_THREADS=$OMP_NUM_THREADS"
configs=configs/train/tiny
if [[ "${1:-}" == "--long" ]]; then
    shift
    configs=configs/train/tiny/long
fi
python -m megactor.data.synthetic --out data/synthetic/clips --clips 192 --seconds 2 --size 96 --seed 0 --workers 2
python data_processing/curate.py --input-dir data/synthetic/clips --output-dir data/synthetic/curated \
    --workers 2 min_face_size=24
python -m megactor.data.synthetic --out data/synthetic/heldout --clips 8 --seconds 4 --size 96 --seed 1000 --workers 2
python train.py --config "$configs"/train_stage{1,2,3}.yaml "$@"
echo "done: runs/tiny/stage3/model. Measure it: python bench/control_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout --json control.json"
echo "A real portrait needs the xl preset with pretrained weights: this tiny model animates synthetic heads, so try eval_audio.py on a held-out one (data/synthetic/heldout)."
