"""The attention calls of one SigmaDiT-xl forward, timed per scaled_dot_product_attention backend.

    python bench/attention_bench.py                    # 16 frames of 512x512, batch 1 (a training step)
    python bench/attention_bench.py --batch 3          # the three guidance branches of inference

Each row is one attention call of one block, at the shapes the model makes (bf16, heads laid out
as `split_heads` leaves them: views into the fused projection's output). Times are medians over CUDA
events; FLOPs are `FlopCounterMode`'s. A backend that refuses the shape shows "-".
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from model_bench import count_flops, matmul_peak, timed

BACKENDS = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}


def shapes(frames: int, batch: int, tokens: int, heads: int = 16, head_dim: int = 72):
    """name -> (rows, query tokens, key tokens, how many such calls one forward makes)."""
    rows = batch * frames
    return {
        "self + reference keys": (rows, tokens, 2 * tokens, 28),
        "temporal (frames at each position)": (batch * tokens, frames, frames, 28),
        "audio cross (32 tokens)": (rows, tokens, 32, 28),
        "context cross (120 tokens)": (rows, tokens, 120, 28),
        "reference net self": (batch, tokens, tokens, 27),
    }, heads, head_dim


def make_inputs(rows, n, m, heads, head_dim, device):
    """q, k, v as SelfAttention/CrossAttention produce them: (rows, heads, tokens, head_dim) views of a fused projection."""
    d = heads * head_dim
    q = torch.randn(rows, n, d, device=device, dtype=torch.bfloat16).view(rows, n, heads, head_dim).transpose(1, 2)
    kv = torch.randn(rows, m, 2 * d, device=device, dtype=torch.bfloat16)
    k, v = (t.reshape(rows, m, heads, head_dim).transpose(1, 2) for t in kv.chunk(2, dim=-1))
    return [t.detach().requires_grad_() for t in (q, k, v)]


def run(name, rows, n, m, heads, head_dim, backend, device, args):
    q, k, v = make_inputs(rows, n, m, heads, head_dim, device)
    grad = torch.randn(rows, heads, n, head_dim, device=device, dtype=torch.bfloat16)
    def ctx():  # a fresh context each time: sdpa_kernel's is single-use
        return sdpa_kernel([BACKENDS[backend]]) if BACKENDS[backend] is not None else contextlib.nullcontext()

    def fwd():
        with ctx(), torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    def fwd_bwd():
        with ctx():
            F.scaled_dot_product_attention(q, k, v).backward(grad)

    try:
        t_fwd = timed(fwd, device, warmup=args.warmup, repeat=args.repeat)
        t_step = timed(fwd_bwd, device, warmup=args.warmup, repeat=args.repeat)
    except RuntimeError as e:  # the backend cannot take this shape/layout
        print(f"  {name} / {backend}: {str(e).splitlines()[0][:100]}", flush=True)
        return None
    with ctx():
        flops_fwd = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
        flops_step = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).backward(grad))
    return t_fwd, t_step, flops_fwd, flops_step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per frame (64x64 latents, patch 2)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    device = torch.device("cuda")
    peak = matmul_peak(device)
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; bf16 matmul {peak / 1e12:.0f} TFLOP/s")
    table, heads, head_dim = shapes(args.frames, args.batch, args.tokens)
    print(f"\n{args.frames} frames, batch {args.batch}, {heads} heads of {head_dim}; per call, and x calls per forward")
    print("| attention | q x k tokens (rows) | backend | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | "
          "fwd+bwd ms x calls |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, (rows, n, m, calls) in table.items():
        for backend in args.backends.split(","):
            r = run(name, rows, n, m, heads, head_dim, backend, device, args)
            if r is None:
                print(f"| {name} | {n}x{m} ({rows}) | {backend} | - | - | - | - | - |", flush=True)
                continue
            t_fwd, t_step, f_fwd, f_step = r
            print(f"| {name} | {n}x{m} ({rows}) | {backend} | {t_fwd * 1e3:.3f} | {f_fwd / t_fwd / 1e12:.0f} | "
                  f"{t_step * 1e3:.3f} | {f_step / t_step / 1e12:.0f} | {t_step * 1e3 * calls:.1f} |", flush=True)


if __name__ == "__main__":
    main()
