#!/usr/bin/env bash
# Variants of the tiny quickstart's recipe side by side on one GPU box: each variant trains the three tiny
# stages (the step counts of configs/train/tiny) in its own process, then bench/follow_eval.py scores it on
# the held-out clips (2 s each, 15 steps). Assumes the quickstart's data (data/synthetic/{curated,heldout}).
#   bash bench/tiny_sweep.sh "NAME|overrides for every stage|stage 1 overrides|stage 2 overrides" ...
#   bash bench/tiny_sweep.sh "base|||" "fp30|face_parts_loss_weight=30||" "lr4e-3||learning_rate=4e-3|"
# FOLLOW_ARGS replaces follow_eval's "--limit 2 --num-steps 15"; PYTHON and TRAIN the interpreter and trainer.
# Prints one line per variant (mean correlation: visual-only, audio-only, ceiling); runs in ${SWEEP_DIR:-runs/sweep}.
set -uo pipefail
dir=${SWEEP_DIR:-runs/sweep}
python=${PYTHON:-python}
train=${TRAIN:-$python train.py}  # the stage trainer
variant() {
    local name=$1 all=$2 run=$dir/$1 init=""
    local stage_overrides=("$3" "$4" "")  # stages 1, 2, 3
    for stage in 1 2 3; do
        # shellcheck disable=SC2086  # the override lists split on spaces
        $train --config "configs/train/tiny/train_stage$stage.yaml" "output_dir=$run/stage$stage" $init \
            train_data.num_workers=2 $all ${stage_overrides[stage - 1]} >> "$run.log" 2>&1 \
            || { echo "$name: stage $stage failed, see $run.log"; return; }
        init="init_checkpoint=$run/stage$stage/model"
    done
    $python bench/follow_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout \
        ${FOLLOW_ARGS:---limit 2 --num-steps 15} "checkpoint=$run/stage3/model" > "$run.eval" 2>&1
    echo "$name: $(grep -h '\*\*mean' "$run.eval" || echo "follow_eval failed, see $run.eval")"
}
mkdir -p "$dir"
for spec in "$@"; do
    IFS='|' read -r name all s1 s2 <<< "$spec"
    rm -f "$dir/$name.log"
    variant "$name" "$all" "$s1" "$s2" &
done
wait
