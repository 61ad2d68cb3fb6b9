"""Attention layers. Every attention in SigmaDiT goes through `attention()`:
PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels on GPU),
or xformers when it is installed and asked for.

Tensors inside are laid out (batch, heads, tokens, head_dim).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

KV = Tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, heads, M, head_dim) each

_BACKEND = "sdpa"


def set_attention_backend(name: str) -> None:
    """"sdpa" (default) or "xformers"; the latter fails here, not mid-forward, when xformers is missing."""
    global _BACKEND
    if name == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as e:
            raise ImportError("model.attention=xformers needs the xformers package (pip install '.[xformers]')") from e
    elif name != "sdpa":
        raise ValueError(f"unknown attention backend {name!r}: use 'sdpa' or 'xformers'")
    _BACKEND = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d), (B, H, M, d), (B, H, M, d) -> (B, H, N, d)."""
    if _BACKEND == "xformers" and q.is_cuda:
        import xformers.ops as xops

        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    `extra_kv` appends keys/values from elsewhere (the reference image's tokens) to
    this layer's own, so every query also attends to them.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_kv(self, x: torch.Tensor) -> KV:
        """Keys and values of tokens `x` (B, N, D), as another layer would append them."""
        _, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: torch.Tensor, extra_kv: Optional[KV] = None, return_kv: bool = False):
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, N, d) each
        own_kv = (k, v)
        if extra_kv is not None:
            k = torch.cat([k, extra_kv[0]], dim=2)  # (B, H, N + M, d)
            v = torch.cat([v, extra_kv[1]], dim=2)
        out = self.proj(merge_heads(attention(q, k, v)))
        return (out, own_kv) if return_kv else out


class CrossAttention(nn.Module):
    """Queries from `x`, keys/values from a context sequence."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), context (B, M, C) -> (B, N, D).

        A context with batch 1 is shared by every sample: the batch is folded
        into the query sequence, so one attention call serves all of it.
        """
        b, n, d = x.shape
        if context.shape[0] == 1 and b > 1:
            return self.forward(x.reshape(1, b * n, d), context).view(b, n, d)
        q = split_heads(self.q(x), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.kv(context).chunk(2, dim=-1))
        return self.proj(merge_heads(attention(q, k, v)))
