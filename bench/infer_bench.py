"""End-to-end inference speed: seconds per second of video, split by stage.

    python bench/infer_bench.py --driver-dir DIR --source IMG        # xl, 5 s at 25 fps, 512x512, 25 steps

The model, the VAE (SD-VAE shape) and Whisper (whisper-tiny shape) are random
initialisations saved to a temporary folder and loaded through the real loaders:
the cost is that of the real weights. The driver is the first `--seconds` of the
clips in `--driver-dir` played back to back, resampled to `--fps`. Guidance uses
three branches (audio scale != visual scale), batched through the model.
"""
from __future__ import annotations

import argparse
import copy
import glob
import os
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from megactor.animate import Animator
from megactor.config import PRESETS, AudioEncoderConfig, CodecConfig, ContextConfig, GuidanceConfig, InferenceConfig
from megactor.data.video_io import read_video, write_video
from megactor.models.audio_encoder import feature_shape, whisper_config, window_size

from model_bench import matmul_peak


def make_driver(folder: str, seconds: float, fps: float, out: str) -> str:
    """Concatenate the clips in `folder`, resample to `fps` by frame picking, cut to `seconds`."""
    frames, audio = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.mp4"))):
        clip = read_video(path)
        picks = np.round(np.arange(0, clip.duration, 1 / fps) * clip.fps).astype(int)
        frames.append(clip.frames[picks[picks < clip.num_frames]])
        audio.append(np.resize(clip.audio, int(round(len(frames[-1]) / fps * 16000))))
    n = int(round(seconds * fps))
    frames, audio = np.concatenate(frames), np.concatenate(audio)
    if len(frames) < n:
        raise SystemExit(f"{folder}: clips hold {len(frames) / fps:.1f} s, fewer than --seconds {seconds}")
    write_video(out, frames[:n], fps, audio[: int(n / fps * 16000)])
    return out


def save_random_weights(folder: str):
    """An SD-VAE-shaped AutoencoderKL and a whisper-tiny-shaped Whisper, random, via save_pretrained."""
    from diffusers import AutoencoderKL
    from transformers import WhisperFeatureExtractor, WhisperModel

    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    vae.save_pretrained(os.path.join(folder, "vae"))
    WhisperModel(whisper_config(AudioEncoderConfig(d_model=384, layers=4, heads=6))).save_pretrained(
        os.path.join(folder, "whisper"))
    WhisperFeatureExtractor().save_pretrained(os.path.join(folder, "whisper"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver-dir", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--preset", default="xl")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--num-steps", type=int, default=25, help="denoising steps (num_inference_steps)")
    ap.add_argument("--context-frames", type=int, default=16)
    ap.add_argument("--context-overlap", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp()
    driver = make_driver(args.driver_dir, args.seconds, args.fps, os.path.join(tmp, "driver.mp4"))
    warm = make_driver(args.driver_dir, 1.0, args.fps, os.path.join(tmp, "warm.mp4"))
    model = copy.deepcopy(PRESETS[args.preset])
    if model.codec.type == "vae":  # the tiny/small presets need no weights
        save_random_weights(tmp)
        model.codec = CodecConfig(type="vae", path=os.path.join(tmp, "vae"))
        model.audio_encoder = AudioEncoderConfig(path=os.path.join(tmp, "whisper"))
    cfg = InferenceConfig(model=model, sample_size=args.size, num_inference_steps=args.num_steps, dtype="bf16",
                          compile=not args.no_compile, guidance=GuidanceConfig(audio_scale=2.5, visual_scale=1.5),
                          context=ContextConfig(args.context_frames, args.context_overlap))
    animator = Animator.from_config(cfg, device=args.device)
    for p in animator.model.parameters():  # no zero-initialised shortcuts
        p.data.normal_(std=0.02)

    calls = []
    forward = animator.model.forward

    def counted(*a, **kw):
        calls.append(a[0].shape)
        return forward(*a, **kw)

    animator.model.forward = counted
    t0 = time.perf_counter()
    animator.animate(args.source, warm, progress=False)  # compiles
    print(f"warm-up (compilation included): {time.perf_counter() - t0:.1f} s", flush=True)

    runs = []
    for _ in range(args.repeat):
        calls.clear()
        start = time.perf_counter()
        result = animator.animate(args.source, driver, progress=False)
        total = time.perf_counter() - start
        runs.append((total, result.timings, list(calls)))
    total, timings, shapes = min(runs, key=lambda r: r[0])

    del animator.model.forward
    with FlopCounterMode(display=False) as counter:  # the model's parameters need no grad: no autograd graph
        x = torch.randn(shapes[0], device=args.device, dtype=next(animator.model.parameters()).dtype)
        ctrl = torch.randn_like(x)
        n, frames = shapes[0][0], shapes[0][2]
        layers, dim = feature_shape(animator.model.config.audio_encoder)
        audio = torch.randn(n, frames, window_size(animator.model.config.audio_window), layers, dim,
                            device=args.device, dtype=x.dtype)
        kv = animator.model.encode_reference(torch.randn(1, shapes[0][1], *shapes[0][3:], device=args.device,
                                                         dtype=x.dtype))
        animator.model(x, torch.full((n,), 500, device=args.device), control=ctrl, audio=audio, reference_kv=kv)
    flops = counter.get_total_flops() * len(shapes)
    peak = matmul_peak(torch.device(args.device))

    seconds = len(result.frames) / result.fps
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{name}: {args.preset}, {len(result.frames)} frames ({seconds:.1f} s at "
          f"{result.fps:g} fps), {args.size}x{args.size}, {args.num_steps} steps, {shapes[0][0]} guidance branches, "
          f"windows of {args.context_frames} overlapping {args.context_overlap}, "
          f"{'torch.compile' if not args.no_compile else 'eager'}, bf16; best of {args.repeat}")
    print("| stage | s | s per video-second |")
    print("|---|---:|---:|")
    for k, v in timings.items():
        print(f"| {k} | {v:.2f} | {v / seconds:.2f} |")
    print(f"| **total** | {total:.2f} | **{total / seconds:.2f}** |")
    print(f"denoising: {len(shapes)} model calls of {tuple(shapes[0])}, {flops / 1e12:.0f} TFLOP, "
          f"{flops / timings['denoising'] / 1e12:.0f} TFLOP/s = {flops / timings['denoising'] / peak:.0%} of the "
          f"{peak / 1e12:.0f} TFLOP/s bf16 matmul")


if __name__ == "__main__":
    main()
