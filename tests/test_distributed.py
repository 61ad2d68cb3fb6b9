"""Several processes on the CPU (gloo): a DDP step equals one process with the doubled batch, and
distributed inference gives the frames of a single process."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from megactor.data.video_io import read_video
from megactor.models import SigmaDiT, save_pretrained

from conftest import curated_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]
# accelerate's --cpu launcher runs one process without MPI; its torchrun launcher (--multi_gpu) runs
# several, and on a machine without GPUs the trainer's Accelerator(cpu=True) joins them over gloo.
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """At least 4 curated samples (the curation may drop some of the 6): one process's batch of 4 and two
    processes' batches of 2 are then the same 4 samples of epoch 0 (dataset.py)."""
    return curated_synthetic_shards(tmp_path_factory.mktemp("synthetic"), clips=6, seed=2)


def _run(args, cwd):
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_process_step_equals_one_process_with_the_doubled_batch(shards, tmp_path):
    from megactor.config import PRESETS

    torch.manual_seed(0)
    init = SigmaDiT(PRESETS["tiny"])
    for p in init.parameters():  # no zero-initialised layer: every parameter gets a gradient in one step
        p.data.normal_(std=0.05)
    save_pretrained(init, str(tmp_path / "init"))
    common = [str(ROOT / "train.py"), "--config", str(ROOT / "configs/train/tiny/train_stage1.yaml"),
              f"train_data.data_dirs=[{shards}]", f"init_checkpoint={tmp_path / 'init'}", "max_train_steps=1",
              "lr_warmup_steps=0", "use_ema=false", "train_data.num_workers=0",
              # Adam's first step is lr * g / (|g| + eps): with the default eps any gradient element near zero moves
              # by a full +-lr on float rounding alone. A large eps makes the step proportional to the gradient, so
              # comparing weights compares the two runs' gradients.
              "adam_epsilon=1e-2"]
    two = _run([*LAUNCH, *common, "train_batch_size=2", f"output_dir={tmp_path / 'two'}"], tmp_path)
    assert "on 2 process(es)" in two.stderr
    _run([*common, "train_batch_size=4", f"output_dir={tmp_path / 'one'}"], tmp_path)
    a = load_file(tmp_path / "two" / "model" / "model.safetensors")
    b = load_file(tmp_path / "one" / "model" / "model.safetensors")
    start = init.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-5  # the step did move the weights


def test_two_process_inference_gives_the_single_process_frames(testcases, tmp_path):
    args = [str(ROOT / "eval_audio.py"), "--config", str(ROOT / "configs/inference/tiny/inference.yaml"),
            "--source", str(testcases / "source" / "10.png"), "--driver", str(testcases / "driver" / "audio_ENTF_1.mp4"),
            "--num-steps", "3", "--limit", "2", "checkpoint=", "context.context_frames=8", "context.context_overlap=2",
            "paste_back=false"]
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518", *args,
          "--output-path", str(tmp_path / "two.mp4")], tmp_path)
    _run([*args, "--output-path", str(tmp_path / "one.mp4")], tmp_path)
    two, one = read_video(str(tmp_path / "two.mp4")).frames, read_video(str(tmp_path / "one.mp4")).frames
    assert one.shape == two.shape == (60, 64, 64, 3)
    assert np.array_equal(one, two)
