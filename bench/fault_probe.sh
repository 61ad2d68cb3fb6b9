#!/bin/bash
# Bad input at the entry points: each case's exit code, seconds and the last line it printed to stderr.
#   bash bench/fault_probe.sh            (CPU, the tiny preset, the real clips in ../shared/testcases)
# Every case but the last eval_audio one must fail with one line naming what is wrong, before loading a model.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
TC=../shared/testcases; SRC=$TC/source/1.png; DRV=$TC/driver/audio_CHTF_2.mp4
CFG=configs/inference/tiny/inference.yaml; TRAIN=configs/train/tiny/train_stage1.yaml
mkdir -p "$T/taken.mp4" "$T/clip"; cp "$SRC" "$T/still.mp4"
python - "$T" "$DRV" <<'PY' 2>/dev/null
import sys
from megactor.config import PRESETS
from megactor.data.video_io import read_video, write_video
from megactor.models import SigmaDiT, save_pretrained
t, driver = sys.argv[1:]
save_pretrained(SigmaDiT(PRESETS["tiny"]), f"{t}/ckpt")
weights = f"{t}/ckpt/model.safetensors"
data = open(weights, "rb").read()
open(weights, "wb").write(data[: len(data) // 3])  # a checkpoint cut short
clip = read_video(driver, max_seconds=1.0)
write_video(f"{t}/clip/talk.mp4", clip.frames[:, ::4, ::4], clip.fps, clip.audio)
PY
python data_processing/1_pack.py --input-dir "$T/clip" --output-dir "$T/curated" clip_seconds=1 min_clip_seconds=0.5 >/dev/null 2>&1
probe() {  # name, command...
  local name=$1; shift
  local start=$(date +%s.%N)
  "$@" >"$T/stdout" 2>"$T/stderr"; local rc=$?
  local seconds=$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  local last=$(grep -v 'denoising\|RANDOMLY\|=====\|noise-like\|^\s*$' "$T/stderr" | tail -1 | sed "s#$T#T#g" | cut -c1-140)
  echo "| $name | $rc | $seconds | $last |"
}
echo "| case | exit | s | last line on stderr |"
echo "| --- | --- | --- | --- |"
probe "eval: missing source" python eval_audio.py --config $CFG --source "$T/nope.png" --driver $DRV --output-path "$T/o.mp4"
probe "eval: output is a folder" python eval_audio.py --config $CFG --source $SRC --driver $DRV --output-path "$T/taken.mp4"
probe "eval: output on a read-only fs" python eval_audio.py --config $CFG --source $SRC --driver $DRV --output-path /sys/x/o.mp4
probe "eval: --num-steps 0" python eval_audio.py --config $CFG --source $SRC --driver $DRV --num-steps 0
probe "eval: --num-steps -1" python eval_audio.py --config $CFG --source $SRC --driver $DRV --num-steps -1
probe "eval: --limit -1" python eval_audio.py --config $CFG --source $SRC --driver $DRV --limit -1
probe "eval: epsilon + zero SNR" python eval_audio.py --config $CFG --source $SRC --driver $DRV \
  "noise_scheduler_kwargs={rescale_betas_zero_snr: true}"
probe "eval: corrupt checkpoint" python eval_audio.py --config $CFG --source $SRC --driver $DRV \
  --output-path "$T/o.mp4" checkpoint="$T/ckpt"
probe "eval: PNG named .mp4 as driver" python eval_audio.py --config $CFG --source $SRC --driver "$T/still.mp4" \
  --output-path "$T/o.mp4" --num-steps 1 checkpoint=
probe "train: epsilon + zero SNR" python train.py --config $TRAIN noise_scheduler_kwargs.prediction_type=epsilon
probe "train: shards of 1_pack.py alone" python train.py --config $TRAIN "train_data.data_dirs=[$T/curated/1_pack/shards]" \
  output_dir="$T/run" init_checkpoint=null train_data.num_workers=0
probe "eval: 0.3 s, 1 step (works)" python eval_audio.py --config $CFG --source $SRC --driver $DRV \
  --output-path "$T/ok.mp4" --limit 0.3 --num-steps 1 checkpoint=
echo "MediaPipe/absl lines in that run's stderr: $(grep -c 'W0000\|I0000\|Feedback manager\|XNNPACK' "$T/stderr")"
python -c "
from megactor.data.video_io import read_audio, read_video
v = read_video('$T/ok.mp4'); print(f'ok.mp4: {v.duration:.3f} s of video, {len(read_audio(\"$T/ok.mp4\")) / 16000:.3f} s of decoded audio')"
