#!/usr/bin/env bash
# The training quickstart: from a fresh clone, with no downloads, synthetic talking heads ->
# curated shards -> the tiny preset's three stages, on a CPU. Every stage runs a fixed number of steps, so the
# model does not depend on how busy the machine is (each stage's max_train_minutes is a safety net that says
# loudly when it cuts a stage). Threads: one per idle core at the start, since with another job on the
# cores two threads ran stage 1 about 4 times slower than one (docs/control.md).
# It leaves runs/tiny/stage3/model, the checkpoint configs/inference/tiny/inference.yaml uses.
#   bash scripts/quickstart.sh [--long] [key=value ...]      (overrides go to every stage)
#   --long: the longer recipe, for a GPU or an hour of 2 cores: stage 1 for 3500 steps, stage 2 for 1500 steps
#           of 16 clips of 2 frames at LR 5e-4 (20/30/40/10 visual/audio/both/undriven), stage 3 for 300 steps;
#           ten times the frames of the quickstart's stage 2, for more audio and less leak (docs/control.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_minloglevel=2  # MediaPipe's C++ logging
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then  # one thread per idle core: torch's threads on busy cores run far slower
    OMP_NUM_THREADS=$(python scripts/idle_cores.py)
    export OMP_NUM_THREADS
fi
echo "quickstart: OMP_NUM_THREADS=$OMP_NUM_THREADS"
long=()
if [[ "${1:-}" == "--long" ]]; then
    shift
    long=("max_train_steps=3500 max_train_minutes=20"
        "max_train_steps=1500 train_batch_size=16 train_data.video_length=2 learning_rate=5e-4 lr_warmup_steps=20
         train_data.use_audio_ratio=0.3 max_train_minutes=45"
        "max_train_steps=300 max_train_minutes=10")
fi
python -m megactor.data.synthetic --out data/synthetic/clips --clips 192 --seconds 2 --size 96 --seed 0 --workers 2
python data_processing/curate.py --input-dir data/synthetic/clips --output-dir data/synthetic/curated \
    --workers 2 min_face_size=24
python -m megactor.data.synthetic --out data/synthetic/heldout --clips 8 --seconds 4 --size 96 --seed 1000 --workers 2
for stage in 1 2 3; do
    # shellcheck disable=SC2206  # the --long overrides split into their key=value words
    extra=(${long[$((stage - 1))]:-})
    python train.py --config "configs/train/tiny/train_stage$stage.yaml" "${extra[@]}" "$@"
done
echo "done: runs/tiny/stage3/model. Measure it: python bench/control_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout --json control.json"
echo "A real portrait needs the xl preset with pretrained weights: this tiny model animates synthetic heads, so try eval_audio.py on a held-out one (data/synthetic/heldout)."
