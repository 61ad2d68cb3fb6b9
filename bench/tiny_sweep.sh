#!/usr/bin/env bash
# Variants of the tiny quickstart's recipe side by side on one GPU box: each variant trains the tiny stages
# (the step counts of configs/train/tiny unless overridden) in its own process, then bench/control_eval.py
# scores it across identities on the held-out clips. Assumes the quickstart's data
# (data/synthetic/{curated,heldout}).
#   bash bench/tiny_sweep.sh "NAME|overrides for every stage|stage 1|stage 2|stage 3" ...
#   bash bench/tiny_sweep.sh "base||||" "s2long|||max_train_steps=3000|max_train_steps=300"
# STAGE1=DIR skips stage 1 and starts every variant's stage 2 from that stage-1 model (one stage 1 shared
# by variants that differ later). EVAL_ARGS replaces control_eval's "--pairs 8 --num-steps 15
# --sweep-pairs 1"; PYTHON and TRAIN the interpreter and trainer. Prints one line per variant (the
# control_eval keys) and leaves NAME.json, NAME.log and NAME.eval in ${SWEEP_DIR:-runs/sweep}.
set -uo pipefail
dir=${SWEEP_DIR:-runs/sweep}
python=${PYTHON:-python}
train=${TRAIN:-$python train.py}  # the stage trainer
variant() {
    local name=$1 all=$2 run=$dir/$1 init="" first=1
    local stage_overrides=("$3" "$4" "$5")  # stages 1, 2, 3
    if [[ -n "${STAGE1:-}" ]]; then first=2; init="init_checkpoint=$STAGE1"; fi
    for ((stage = first; stage <= 3; stage++)); do
        # shellcheck disable=SC2086  # the override lists split on spaces
        $train --config "configs/train/tiny/train_stage$stage.yaml" "output_dir=$run/stage$stage" $init \
            train_data.num_workers=2 $all ${stage_overrides[stage - 1]} >> "$run.log" 2>&1 \
            || { echo "$name: stage $stage failed, see $run.log"; return; }
        init="init_checkpoint=$run/stage$stage/model"
    done
    # shellcheck disable=SC2086  # EVAL_ARGS splits on spaces
    $python bench/control_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout \
        ${EVAL_ARGS:---pairs 8 --num-steps 15 --sweep-pairs 1} --json "$run.json" "checkpoint=$run/stage3/model" \
        > "$run.eval" 2>&1 || { echo "$name: control_eval failed, see $run.eval"; return; }
    echo "$name: $($python -c "import json, sys; d = json.load(open(sys.argv[1])); print(', '.join(
        f'{k} {v:.2f}' for k, v in d.items() if isinstance(v, float) and k != 'seconds'),
        'rho', {k: v if v is None else round(v, 2) for k, v in (d['amplitude_rho'] or {}).items()})" "$run.json")"
}
mkdir -p "$dir"
for spec in "$@"; do
    IFS='|' read -r name all s1 s2 s3 <<< "$spec"
    rm -f "$dir/$name.log"
    variant "$name" "$all" "$s1" "$s2" "$s3" &
done
wait
