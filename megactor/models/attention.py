"""Attention layers. Every attention in SigmaDiT goes through `attention()`:
PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels on GPU),
or xformers when it is installed and asked for.

Projections are kept in the token layout (batch, tokens, heads*head_dim) and reach the kernels
as (batch, heads, tokens, head_dim) views of it: no transposing copies.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

try:
    from .triton_frame_attention import frame_attention as fused_frame_attention
except ImportError:  # torch builds without Triton (CPU-only)
    fused_frame_attention = None

KV = Tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, M, heads*head_dim) each, in the token layout

BACKENDS = ("sdpa", "xformers")


def check_backend(name: str) -> str:
    """`name` if it is a backend this process can run; fails here, not mid-forward, when xformers is missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: use one of {BACKENDS}")
    if name == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as e:
            raise ImportError("model.attention=xformers needs the xformers package (pip install '.[xformers]')") from e
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """(B, H, N, d), (B, H, M, d), (B, H, M, d) -> (B, H, N, d). xformers runs on CUDA only; elsewhere sdpa."""
    if backend == "xformers" and q.is_cuda:
        import xformers.ops as xops

        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v spelt out, softmax in fp32; (..., N, d), (..., M, d), (..., M, d) -> (..., N, d).

    For a handful of keys (the temporal layers' frames) on tensors in any layout: the fused kernels
    want (batch, heads, tokens, d) rows of many tokens, and a compiled graph fuses this with its
    neighbours instead (bench/short_attention_bench.py).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(v.dtype), v)


def torch_frame_attention(qkv: torch.Tensor, num_frames: int, heads: int) -> torch.Tensor:
    """triton_frame_attention.frame_attention in torch (its reference, and the path off CUDA), on views of the
    token layout:
    qkv (B*F, N, 3*H*d) -> (B*F, N, H*d)."""
    q, k, v = (rearrange(t, "(b f) n (h d) -> b n h f d", f=num_frames, h=heads) for t in qkv.chunk(3, dim=-1))
    return rearrange(short_attention(q, k, v), "b n h f d -> (b f) n (h d)")


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d), a view."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def append_tokens(own: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """own (R, N, D), extra (b, M, D) with R = b*k -> (R, N + M, D).

    The extra tokens are broadcast over each sample's k rows as a stride-0 view, so
    the concatenation is the only copy, and their gradient is a plain sum.
    """
    r, b = own.shape[0], extra.shape[0]
    if r % b:
        raise ValueError(f"cannot share keys/values of {b} samples among {r} rows")
    extra = extra[:, None].expand(b, r // b, *extra.shape[1:])
    return torch.cat([own.unflatten(0, (b, r // b)), extra], dim=2).flatten(0, 1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    `extra_kv` appends keys/values from elsewhere (the reference image's tokens) to
    this layer's own, so every query also attends to them. `backend` is set by the model that holds
    the layer (SigmaDiT.set_attention_backend).
    """

    backend = "sdpa"

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, extra_kv: Optional[KV] = None, return_kv: bool = False):
        """x (R, N, D); extra_kv (b, M, D) each, shared by the R/b consecutive rows of each of its b samples."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (R, N, D) each
        own_kv = (k, v)
        if extra_kv is not None:
            k, v = append_tokens(k, extra_kv[0]), append_tokens(v, extra_kv[1])  # (R, N + M, D)
        out = attention(*(split_heads(t, self.heads) for t in (q, k, v)), self.backend)  # (R, H, N, d)
        out = self.proj(merge_heads(out))
        return (out, own_kv) if return_kv else out


class FrameAttention(SelfAttention):
    """Self-attention across frames: each token attends to the tokens at its position in its sample's frames.

    Tokens stay laid out (B*F, N, D) as the spatial layers have them. On CUDA the attention is one
    Triton kernel on that layout (triton_frame_attention); elsewhere torch_frame_attention, on views of it.
    """

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x (B*F, N, D) -> (B*F, N, D)."""
        qkv = self.qkv(x)  # (B*F, N, 3D)
        fused = qkv.is_cuda and fused_frame_attention is not None
        return self.proj((fused_frame_attention if fused else torch_frame_attention)(qkv, num_frames, self.heads))


class CrossAttention(nn.Module):
    """Queries from `x`, keys/values from a context sequence."""

    backend = "sdpa"

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_context(self, context: torch.Tensor) -> KV:
        """context (B or 1, M, C) -> keys, values (B or 1, M, D): computed once where the context is constant."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return k, v

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_kv: Optional[KV] = None) -> torch.Tensor:
        """x (B, N, D) and a context (B or 1, M, C), or its `project_context` -> (B, N, D).
        A context of batch 1 is shared by all rows."""
        b, n, d = x.shape
        k, v = self.project_context(context) if context_kv is None else context_kv
        if k.shape[0] == 1 and not torch.is_grad_enabled():
            # all rows' queries as one sequence against the one set of keys: a faster forward, but a slower
            # backward (the keys' gradients would be reduced over all rows' queries by a few thread blocks)
            x = x.reshape(1, b * n, d)
        q = split_heads(self.q(x), self.heads)
        k, v = (split_heads(t, self.heads).expand(x.shape[0], -1, -1, -1) for t in (k, v))
        return self.proj(merge_heads(attention(q, k, v, self.backend))).reshape(b, n, d)
