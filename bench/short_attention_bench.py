"""Attention over few keys (the temporal layers' 16 frames, the audio's 32 tokens, the context's 120):
fused SDPA kernels against explicit matmul-softmax-matmul, eager and compiled, forward+backward of the
whole module (norm, projections, attention) at the xl model's shapes. For the temporal layer also the
model's own (blocks.TemporalAttention), in torch on the token layout (attention.torch_frame_attention)
and with the Triton kernel of triton_frame_attention at each of --warps.

    python bench/short_attention_bench.py [--batch 1] [--warps 1,2,4]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from megactor.models import attention, triton_frame_attention
from megactor.models.attention import short_attention
from megactor.models.blocks import TemporalAttention
from model_bench import timed


class Temporal(nn.Module):
    def __init__(self, dim, heads, impl):
        super().__init__()
        self.heads, self.impl = heads, impl
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("pos", torch.randn(64, dim) * 0.02)

    def forward(self, x, f):
        """The temporal layer on (B*N, F, D) copies of the tokens, as it was before FrameAttention."""
        n = x.shape[1]
        h = rearrange(x, "(b f) n d -> (b n) f d", f=f)
        h = self.norm(h) + self.pos[:f].to(h.dtype)
        q, k, v = (rearrange(t, "r f (h d) -> r h f d", h=self.heads) for t in self.qkv(h).chunk(3, -1))
        o = F.scaled_dot_product_attention(q, k, v) if self.impl == "sdpa" else short_attention(q, k, v)
        return x + rearrange(self.proj(rearrange(o, "r h f d -> r f (h d)")), "(b n) f d -> (b f) n d", n=n)


def model_temporal(dim, heads, impl):
    """The model's own layer (blocks.TemporalAttention: FrameAttention on the token layout), output projection
    randomised out of its zero init; impl "torch" or "Triton, N warps"."""
    attention.fused_frame_attention = None if impl == "torch" else triton_frame_attention.frame_attention
    if impl.startswith("Triton"):
        triton_frame_attention.NUM_WARPS = int(impl.split()[1])
    m = TemporalAttention(dim, heads, max_frames=64)
    nn.init.normal_(m.attn.proj.weight, std=0.02)
    return m


class Cross(nn.Module):
    def __init__(self, dim, heads, impl):
        super().__init__()
        self.heads, self.impl = heads, impl
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, ctx):
        q = rearrange(self.q(x), "r n (h d) -> r h n d", h=self.heads)
        k, v = (rearrange(t, "r m (h d) -> r h m d", h=self.heads).expand(x.shape[0], -1, -1, -1)
                for t in self.kv(ctx).chunk(2, -1))
        o = F.scaled_dot_product_attention(q, k, v) if self.impl == "sdpa" else short_attention(q, k, v)
        return x + self.proj(rearrange(o, "r h n d -> r n (h d)"))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--warps", default="1,2,4", help="num_warps of the Triton temporal kernel to time")
    args = ap.parse_args()
    dev, dim, heads, tokens, f = torch.device("cuda"), 1152, 16, 1024, args.frames
    rows = args.batch * f
    x = torch.randn(rows, tokens, dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
    cases = [("temporal", Temporal, impl, lambda m: m(x, f)) for impl in ("sdpa", "math")]
    impls = ["torch"] + [f"Triton, {w} warps" for w in args.warps.split(",")]
    cases += [("temporal (model)", model_temporal, impl, lambda m: m(x, f)) for impl in impls]
    for name, m_keys in (("audio cross", None), ("context cross", 120)):
        ctx = torch.randn(rows if m_keys is None else 1, 32 if m_keys is None else m_keys, dim, device=dev,
                          dtype=torch.bfloat16)
        cases += [(name, Cross, impl, (lambda c: lambda m: m(x, c))(ctx)) for impl in ("sdpa", "math")]
    print("| module | attention | mode | fwd ms | fwd+bwd ms |\n|---|---|---|---:|---:|")
    for name, cls, impl, call in cases:
        for compiled in (False, True):
            torch._dynamo.reset()
            m = cls(dim, heads, impl).to(dev, torch.bfloat16)
            fn = torch.compile(m) if compiled else m
            grad = torch.randn_like(x)

            def fwd():
                with torch.no_grad():
                    call(fn)

            def step():
                call(fn).backward(grad)

            t_f, t_s = timed(fwd, dev, repeat=20), timed(step, dev, repeat=20)
            print(f"| {name} | {impl} | {'compiled' if compiled else 'eager'} | {t_f * 1e3:.3f} | {t_s * 1e3:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
