"""Training-step speed and memory of a stage config, through the real Trainer.

    python bench/train_bench.py --config configs/train/megactor-sigma/train_stage3.yaml
    accelerate launch --multi_gpu --num_processes 2 bench/train_bench.py --config ...   # DDP

Weights are random (an SD-VAE-shaped VAE and a whisper-tiny-shaped Whisper are
saved and loaded through the real loaders; init_checkpoint and the PixArt path
are dropped); batches are random tensors in the dataset's format, so the figure
is the step alone, not the data loader. Prints step time, samples/s, frames/s and
peak GPU memory.
"""
from __future__ import annotations

import argparse
import statistics
import tarfile
import tempfile
import time

import torch

from infer_bench import save_random_weights
from megactor.config import TrainConfig, load_config
from megactor.training.trainer import Trainer


def random_batch(cfg: TrainConfig, seconds: float = 5.0, fps: float = 25.0):
    b, f, s = cfg.train_batch_size, cfg.train_data.video_length, cfg.train_data.sample_size
    n = int(seconds * 16000)
    return {
        "pixel_values": torch.rand(b, 3, f, s, s) * 2 - 1, "control": torch.rand(b, 3, f, s, s) * 2 - 1,
        "reference": torch.rand(b, 3, s, s) * 2 - 1,
        "face_parts": (torch.rand(b, f, s, s) < 0.1).to(torch.uint8),
        "use_visual": torch.ones(b), "use_audio": torch.ones(b),
        "audio": torch.randn(b, n) * 0.1, "audio_lengths": torch.full((b,), n),
        "frame_indices": torch.arange(f).repeat(b, 1), "fps": torch.full((b,), fps),
        "noise_seed": torch.arange(b),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    tarfile.open(f"{tmp}/unused.tar", "w").close()  # the config check wants a shard folder; batches are random
    overrides = [f"train_data.data_dirs=[{tmp}]", "init_checkpoint=null", "model.transformer_path=null",
                 f"output_dir={tmp}/run", "use_ema=true"]
    cfg = load_config(TrainConfig, args.config, overrides + args.overrides)
    if cfg.model.codec.type == "vae":
        save_random_weights(tmp)
        cfg.model.codec.path, cfg.model.codec.subfolder = f"{tmp}/vae", None
        cfg.model.audio_encoder.path = f"{tmp}/whisper"
    trainer = Trainer(cfg)
    batch = random_batch(cfg)
    times = []
    for i in range(args.steps + 2):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        logs = trainer.train_step([batch] * cfg.gradient_accumulation_steps)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= 2:  # the first steps warm up (and compile)
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    procs = trainer.accelerator.num_processes
    samples = cfg.train_batch_size * cfg.gradient_accumulation_steps * procs
    if not trainer.accelerator.is_main_process:
        return
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    trainable = sum(p.numel() for p in trainer.params)
    total = sum(p.numel() for p in trainer.unwrapped.parameters())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{procs} x {device} ({trainer.accelerator.distributed_type}): {args.config} (stage {cfg.stage}), "
          f"batch {samples} x {cfg.train_data.video_length} frames "
          f"of {cfg.train_data.sample_size}px, gradient checkpointing {cfg.model.gradient_checkpointing}, "
          f"{'compiled' if cfg.compile else 'eager'}, {trainer.accelerator.mixed_precision}")
    print(f"trainable {trainable / 1e6:.1f}M of {total / 1e6:.1f}M parameters; last loss {logs['loss']:.4f}")
    print("| processes | step s | samples/s | frames/s | peak GPU GiB (per process) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {procs} | {step:.3f} | {samples / step:.2f} | {samples * cfg.train_data.video_length / step:.1f} | "
          f"{mem:.1f} |")


if __name__ == "__main__":
    main()
