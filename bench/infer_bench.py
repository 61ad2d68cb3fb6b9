"""End-to-end inference speed and what each speed option changes: seconds per second of video, by stage.

    python bench/infer_bench.py --driver-dir DIR --source IMG        # xl, 5 s at 25 fps, 512x512
    python bench/infer_bench.py ... --variants baseline,fast          # a subset (names below)

The model, the VAE (SD-VAE shape) and Whisper (whisper-tiny shape) are random initialisations (the
VAE and Whisper saved to a temporary folder and loaded through the real loaders): the cost is that
of the real weights. The driver is the first `--seconds` of the clips in `--driver-dir` played back
to back, resampled to `--fps`; mixed driving with three guidance passes (audio scale != visual scale).

Each variant changes the inference config (and, for fp8, converts the denoiser's linear layers) and
animates the same source and driver with the same seed. Against the first variant, the full bf16
path (25 DDIM steps, 3 passes at every step, windows of 16 overlapping by 2 in the "shifted" layout),
it reports the relative L2 of the final latents and the PSNR of the decoded frames. The blocks are
compiled (SigmaDiT.compile_blocks) and every input shape is compiled before the timed run.
"""
from __future__ import annotations

import argparse
import copy
import glob
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from megactor.animate import Animator
from megactor.config import (PRESETS, AudioEncoderConfig, CodecConfig, ContextConfig, GuidanceConfig, InferenceConfig,
                             load_config)
from megactor.data.video_io import read_video, write_video
from megactor.diffusion.context import context_windows
from megactor.models.audio_encoder import feature_shape, whisper_config, window_size
from megactor.models.fp8 import convert_to_fp8

from model_bench import matmul_peak

XL_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "inference", "megactor-sigma", "inference.yaml")
INTERVAL = list(load_config(InferenceConfig, XL_CONFIG).guidance.interval)  # the default's; the H200 table ran [0.3, 0.7]


@dataclass
class Variant:
    name: str
    overrides: Dict = field(default_factory=dict)  # InferenceConfig attributes, "guidance.x" / "context.x" paths
    fp8: bool = False


VARIANTS = [  # the most telling first: a run cut short by a time limit has printed them
    Variant("baseline", {"context.layout": "shifted"}),
    Variant("default", {"guidance.interval": INTERVAL}),  # configs/inference/megactor-sigma/inference.yaml
    Variant("fast", {"guidance.interval": INTERVAL, "scheduler": "dpmsolver++", "num_inference_steps": 10},
            fp8=True),  # configs/inference/megactor-sigma/inference_fast.yaml
    Variant("fp8", {"context.layout": "shifted"}, fp8=True),
    Variant("default + fp8", {"guidance.interval": INTERVAL}, fp8=True),
    Variant("guidance interval", {"context.layout": "shifted", "guidance.interval": INTERVAL}),
    Variant("fewest windows", {"context.layout": "fewest"}),
    Variant("default + windows of 24", {"guidance.interval": INTERVAL, "context.context_frames": 24}),
    Variant("default + windows of 32", {"guidance.interval": INTERVAL, "context.context_frames": 32}),
]


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


def configure(base: InferenceConfig, variant: Variant) -> InferenceConfig:
    cfg = copy.deepcopy(base)
    for key, value in variant.overrides.items():
        obj, *path = key.split(".")
        target = cfg if not path else getattr(cfg, obj)
        setattr(target, path[0] if path else obj, value)
    return cfg


def random_call(model, shape, device, dtype, reference_kv) -> None:
    """One model call on random latents of `shape` (n, C, F, h, w), with control, audio and reference on."""
    n, f = shape[0], shape[2]
    layers, dim = feature_shape(model.config.audio_encoder)
    x = torch.randn(shape, device=device, dtype=dtype)
    audio = torch.randn(n, f, window_size(model.config.audio_window), layers, dim, device=device, dtype=dtype)
    model(x, torch.full((n,), 500, device=device), control=torch.randn_like(x), audio=audio,
          reference_kv=reference_kv, audio_amplitude=torch.ones(n, device=device),
          visual_amplitude=torch.ones(n, device=device))


def random_reference(model, shape, device, dtype):
    """Reference keys/values of a random reference latent matching latents of `shape`."""
    return model.encode_reference(torch.randn(1, shape[1], *shape[3:], device=device, dtype=dtype))


def compile_shapes(animator: Animator, cfg: InferenceConfig, num_frames: int, passes: List[int]) -> None:
    """Run the compiled blocks once at every input shape the timed run will meet: windows x guidance passes."""
    m, dev, dt = animator.model, animator.device, animator.dtype
    lengths = {len(w) for s in range(4) for w in context_windows(num_frames, cfg.context.context_frames,
                                                                 cfg.context.context_overlap, s, cfg.context.layout)}
    c, size = m.config.in_channels, m.config.sample_size  # the latents' channels and side
    with torch.no_grad():
        kv = random_reference(m, (1, c, 1, size, size), dev, dt)
        for f in lengths:
            for n in passes:
                random_call(m, (n, c, f, size, size), dev, dt, kv)


def forward_flops(model, shape, device) -> float:
    """FLOPs of one model call on latents of `shape` (counted on the bf16 model)."""
    dtype = next(model.parameters()).dtype
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        random_call(model, shape, device, dtype, random_reference(model, shape, device, dtype))
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver-dir", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--preset", default="xl")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--num-steps", type=int, default=25, help="denoising steps (num_inference_steps)")
    ap.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                    help="comma-separated names; the first is the reference of the output comparison")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    by_name = {v.name: v for v in VARIANTS}
    unknown = [n for n in args.variants.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(by_name)}")
    variants = [by_name[n] for n in args.variants.split(",")]

    tmp = tempfile.mkdtemp()
    driver = make_driver(args.driver_dir, args.seconds, args.fps, os.path.join(tmp, "driver.mp4"))
    model_cfg = copy.deepcopy(PRESETS[args.preset])
    if model_cfg.codec.type == "vae":  # the tiny/small presets need no weights
        save_random_weights(tmp)
        model_cfg.codec = CodecConfig(type="vae", path=os.path.join(tmp, "vae"))
        model_cfg.audio_encoder = AudioEncoderConfig(path=os.path.join(tmp, "whisper"))
    base_cfg = InferenceConfig(model=model_cfg, sample_size=args.size, num_inference_steps=args.num_steps, dtype="bf16",
                               paste_back=False, idle_motion=False,  # the square crop the model makes
                               guidance=GuidanceConfig(audio_scale=2.5, visual_scale=1.5),
                               context=ContextConfig(16, 2))
    base = Animator.from_config(base_cfg, device=args.device)
    for p in base.model.parameters():  # no zero-initialised shortcuts
        p.data.normal_(std=0.02)
    models = {False: base.model}
    if any(v.fp8 for v in variants):
        models[True] = copy.deepcopy(base.model)
        convert_to_fp8(models[True].blocks)  # as Animator.from_config does for fp8=true
    flops_model = copy.deepcopy(base.model) if args.device.startswith("cuda") else base.model
    if not args.no_compile:
        for m in models.values():
            m.compile_blocks()

    calls = []
    for m in models.values():
        forward = m.forward

        def counted(*a, _forward=forward, **kw):
            calls.append(tuple(a[0].shape))
            return _forward(*a, **kw)

        m.forward = counted
    decoded = []
    decode = base.codec.decode_video
    base.codec.decode_video = lambda latents: decoded.append(latents.float().cpu()) or decode(latents)

    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak_tflops = matmul_peak(torch.device(args.device))
    flop_cache, rows = {}, []  # rows: the variants printed so far
    reference = None
    num_frames = int(round(args.seconds * args.fps))
    for v in variants:
        cfg = configure(base_cfg, v)
        animator = Animator(models[v.fp8], base.codec, base.audio_encoder, base.faces, cfg, base.device, base.dtype)
        start = time.perf_counter()
        passes = sorted({3, 1} if cfg.guidance.interval is not None else {3})
        compile_shapes(animator, cfg, num_frames, passes)
        warm = time.perf_counter() - start
        calls.clear()
        decoded.clear()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = animator.animate(args.source, driver, progress=False)
        total = time.perf_counter() - start
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        seconds = len(result.frames) / result.fps
        for shape in set(calls):
            if shape not in flop_cache:
                flop_cache[shape] = forward_flops(flops_model, shape, args.device)
        flops = sum(flop_cache[s] for s in calls)
        latents, frames = decoded[0], result.frames.astype(np.float64)
        if reference is None:
            reference = (latents, frames)
        rel = ((latents - reference[0]).norm() / reference[0].norm()).item()
        mse = np.mean((frames - reference[1]) ** 2)
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        if not rows:
            print(f"\n{name}: {args.preset}, {num_frames} frames ({args.seconds:g} s at {args.fps:g} fps), "
                  f"{args.size}x{args.size}, mixed driving (audio scale 2.5, visual scale 1.5), bf16 "
                  f"{'compiled blocks' if not args.no_compile else 'eager'}; bf16 matmul measured at "
                  f"{peak_tflops / 1e12:.0f} TFLOP/s. Stages in seconds per video-second.")
            print("| variant | " + " | ".join(result.timings) + " | **total** | model calls | TFLOP | "
                  "TFLOP/s (denoising) | peak GiB | latents rel L2 | PSNR dB | compile s |")
            print("|---|" + "---:|" * (len(result.timings) + 8))
        rows.append(v.name)
        per = " | ".join(f"{x / seconds:.2f}" for x in result.timings.values())
        print(f"| {v.name} | {per} | **{total / seconds:.2f}** | {len(calls)} | {flops / 1e12:.0f} | "
              f"{flops / result.timings['denoising'] / 1e12:.0f} | {peak_mem:.1f} | {rel:.3f} | {psnr:.1f} | "
              f"{warm:.0f} |", flush=True)


if __name__ == "__main__":
    main()
