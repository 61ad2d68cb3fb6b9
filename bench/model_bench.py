"""SigmaDiT speed: forward and forward+backward time, FLOPs, MFU and peak memory.

    python bench/model_bench.py                       # xl, 16 frames of 512x512, all modes (GPU)
    python bench/model_bench.py --preset tiny --size 64 --frames 8 --device cpu --modes eager-fp32

MFU is measured FLOP/s over a bf16 8192^3 matmul timed in the same run. diffusers'
PixArtTransformer2DModel (XL-2 config, the frames as its batch) is timed at the same
shape as the reference point. Modes:
  eager-autocast   fp32 weights, bf16 autocast (what mixed-precision training does)
  eager-bf16       bf16 weights
  compile-autocast SigmaDiT.compile_model() + autocast
  compile-bf16     SigmaDiT.compile_model() + bf16 weights
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from megactor.config import PRESETS
from megactor.models import SigmaDiT
from megactor.models.audio_encoder import feature_shape, window_size

MODES = ["eager-autocast", "eager-bf16", "compile-autocast", "compile-bf16"]


def timed(fn, device, warmup=3, repeat=10) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(device) -> float:
    """bf16 FLOP/s of an 8192^3 matmul on random data (the MFU denominator)."""
    if device.type != "cuda":
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        return 2 * n**3 / timed(lambda: a @ b, device)
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, warmup=5, repeat=20)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sigma_case(args, device):
    cfg = copy.deepcopy(PRESETS[args.preset])
    cfg.gradient_checkpointing = args.checkpointing
    model = SigmaDiT(cfg).to(device)
    for p in model.parameters():  # zero-initialised branches would make some kernels trivially cheap
        p.data.normal_(std=0.02)
    h = args.size // (8 if cfg.codec.type == "vae" else cfg.codec.factor)
    c = cfg.in_channels
    layers, dim = feature_shape(cfg.audio_encoder)
    inputs = dict(
        latents=torch.randn(args.batch, c, args.frames, h, h, device=device),
        timestep=torch.randint(0, 1000, (args.batch,), device=device),
        control=torch.randn(args.batch, c, args.frames, h, h, device=device),
        audio=torch.randn(args.batch, args.frames, window_size(cfg.audio_window), layers, dim, device=device),
        reference=torch.randn(args.batch, c, h, h, device=device),
    )

    def compile_fn(m):
        m.compile_model(cudagraphs=not args.no_cudagraphs)

    return model, inputs, compile_fn


def pixart_case(args, device):
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(sample_size=args.size // 8, num_layers=28, num_attention_heads=16,
                                     attention_head_dim=72, caption_channels=4096, in_channels=4, out_channels=8)
    model = model.to(device)
    n = args.batch * args.frames
    inputs = dict(
        hidden_states=torch.randn(n, 4, args.size // 8, args.size // 8, device=device),
        encoder_hidden_states=torch.randn(n, 120, 4096, device=device),
        timestep=torch.randint(0, 1000, (n,), device=device),
    )

    def compile_fn(m):
        for blk in m.transformer_blocks:
            blk.compile()

    return model, inputs, compile_fn


def run_mode(name, case, mode, args, device):
    model, inputs, compile_fn = case(args, device)
    autocast = "autocast" in mode and device.type == "cuda"
    if "bf16" in mode:
        model = model.to(torch.bfloat16)
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    if mode.startswith("compile"):
        torch._dynamo.reset()  # each mode compiles afresh: no cache entries left over from the last
        compile_fn(model)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(**inputs)
        return out if torch.is_tensor(out) else out.sample

    def infer():
        with torch.no_grad():
            forward()

    def train_step():  # as a training step: gradients start from None (the optimizer's zero_grad)
        model.zero_grad(set_to_none=True)
        forward().float().square().mean().backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_fwd = timed(infer, device, warmup=args.warmup, repeat=args.repeat)
    t_step = timed(train_step, device, warmup=args.warmup, repeat=args.repeat)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if f"{name}:{mode}" in (args.profile or "").split(","):
        profile(train_step, device, trace=args.trace and f"{args.trace}.{mode}.json")
    del model, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(name=name, mode=mode, fwd_s=t_fwd, step_s=t_step, mem=mem)


KERNEL_KINDS = [  # (kind, substrings of CUDA kernel names), first match wins
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("triton (compiled)", ("triton",)),
    ("copy / layout", ("copy", "cat", "transpose", "memcpy", "memset")),
    ("normalisation", ("norm",)),
]


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other elementwise")


def profile(step, device, rows: int = 40, steps: int = 3, trace: Optional[str] = None) -> None:
    """The kernels of three training steps, most time first, and their time per step by kind;
    `trace`: also a Chrome trace of the steps there."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    if trace:
        prof.export_chrome_trace(trace)
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=rows,
                         max_name_column_width=70), flush=True)
    if not cuda:
        return
    kinds: dict = {}
    for e in averages:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / 1e3 / steps
    total = sum(kinds.values())
    print("| kernel kind | ms per step | share |\n|---|---:|---:|")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
    print(f"| all kernels | {total:.1f} | |", flush=True)


def case_flops(case, args, device):
    """FLOPs of one forward and one forward+backward, counted eagerly (a counter cannot see into compiled graphs)."""
    model, inputs, _ = case(args, device)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(**inputs)
        return out if torch.is_tensor(out) else out.sample

    fwd = count_flops(forward)  # with autograd on: FlopCounterMode's module hooks need it; same FLOPs
    step = count_flops(lambda: forward().float().square().mean().backward())
    del model, inputs
    return fwd, step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="xl", choices=sorted(PRESETS))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512, help="pixels; latents are size/8 (VAE) or size/factor (pixel)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--no-cudagraphs", action="store_true",
                    help="compiled modes: no CUDA graphs (SigmaDiT.compile_model(cudagraphs=False))")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    ap.add_argument("--no-sigma", action="store_true", help="time only the diffusers PixArt reference point")
    ap.add_argument("--no-pixart", action="store_true", help="skip the diffusers PixArt reference point")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--trace", help="with --profile: write Chrome traces to TRACE.<mode>.json")
    ap.add_argument("--profile", help="MODEL:MODE[,MODEL:MODE] to profile, e.g. 'SigmaDiT-xl:compile-autocast'")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(device)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"bf16 8192^3 matmul: {peak / 1e12:.3g} TFLOP/s", flush=True)
    modes = args.modes.split(",")
    cases = [] if args.no_sigma else [("SigmaDiT-" + args.preset, sigma_case)]
    if not args.no_pixart and args.preset == "xl":
        cases.append(("diffusers PixArt-XL-2", pixart_case))
    rows = []
    for name, case in cases:
        fwd_flops, step_flops = case_flops(case, args, device)
        for mode in modes:
            r = run_mode(name, case, mode, args, device)
            r.update(fwd_flops=fwd_flops, step_flops=step_flops)
            rows.append(r)
            print(f"  done {name} {mode}: fwd {r['fwd_s'] * 1e3:.1f} ms, fwd+bwd {r['step_s'] * 1e3:.1f} ms", flush=True)

    print(f"\n{args.frames} frames of {args.size}x{args.size}, batch {args.batch}, "
          f"reference + audio + temporal on, gradient checkpointing {'on' if args.checkpointing else 'off'}")
    print("| model | mode | fwd ms | fwd TFLOP | fwd MFU | fwd+bwd ms | fwd+bwd TFLOP | fwd+bwd MFU | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['mode']} | {r['fwd_s'] * 1e3:.1f} | {r['fwd_flops'] / 1e12:.2f} | "
              f"{r['fwd_flops'] / r['fwd_s'] / peak:.0%} | {r['step_s'] * 1e3:.1f} | {r['step_flops'] / 1e12:.2f} | "
              f"{r['step_flops'] / r['step_s'] / peak:.0%} | {r['mem']:.1f} |")


if __name__ == "__main__":
    main()
