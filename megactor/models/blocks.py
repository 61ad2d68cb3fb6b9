"""The transformer block of SigmaDiT: a PixArt-α block plus the MegActor-Σ branches.

    x ─ adaLN ─ self-attention (+ reference keys/values) ─ gate ─┐
      ─ temporal attention across frames (zero-initialised)        │ residuals
      ─ cross-attention to the learned context                     │
      ─ audio cross-attention (zero-initialised, × amplitude)      │
      ─ adaLN ─ MLP ─ gate ────────────────────────────────────────┘

Token tensors are (B*F, N, D): every frame of every sample is a row, so spatial
layers see frames independently and only the temporal attention mixes them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .attention import KV, CrossAttention, FrameAttention, SelfAttention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sin/cos table, as in "Attention is all you need"."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def expand_batch(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Repeat a per-sample tensor (b, ...) to `rows` = b * k rows laid out (b k): per frame, or per guidance branch."""
    if t.shape[0] == rows:
        return t
    if rows % t.shape[0]:
        raise ValueError(f"cannot spread a batch of {t.shape[0]} over {rows} rows")
    return t.repeat_interleave(rows // t.shape[0], dim=0)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TemporalAttention(nn.Module):
    """Self-attention across the frames at each spatial position (the motion module)."""

    def __init__(self, dim: int, heads: int, max_frames: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = FrameAttention(dim, heads)
        self.register_buffer("positions", sinusoidal_positions(max_frames, dim), persistent=False)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x (B*F, N, D): rows are the frames of each sample in order."""
        if num_frames > len(self.positions):
            raise ValueError(f"{num_frames} frames exceed the temporal layers' max_frames={len(self.positions)}")
        positions = self.positions[:num_frames].to(x.dtype).repeat(x.shape[0] // num_frames, 1)  # (B*F, D)
        return x + self.attn(self.norm(x) + positions[:, None], num_frames)


class SigmaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, temporal: bool = False, audio: bool = False,
                 max_frames: int = 64):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.temporal = TemporalAttention(dim, heads, max_frames) if temporal else None
        self.cross_attn = CrossAttention(dim, heads)
        if audio:
            self.audio_norm = nn.LayerNorm(dim)
            self.audio_attn = CrossAttention(dim, heads)
            nn.init.zeros_(self.audio_attn.proj.weight)
            nn.init.zeros_(self.audio_attn.proj.bias)
        else:
            self.audio_norm = self.audio_attn = None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,  # (B*F, N, D)
        modulation: torch.Tensor,  # (B*F, 6, D): adaLN-single, from the timestep
        context_kv: KV,  # (1, T, D) each: cross_attn.project_context of the learned context, shared by all rows
        num_frames: int = 1,
        reference_kv: Optional[KV] = None,  # (B or 1, M, D) each: this block's reference keys/values
        audio: Optional[torch.Tensor] = None,  # (B*F, A, D) audio tokens
        audio_amplitude: Optional[torch.Tensor] = None,  # (B*F, 1, 1)
        use_temporal: bool = True,
        return_kv: bool = False,
    ):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + modulation
        ).chunk(6, dim=1)  # (B*F, 1, D) each

        h = modulate(self.norm1(x), shift_msa, scale_msa)
        out = self.attn(h, extra_kv=reference_kv, return_kv=return_kv)
        out, own_kv = out if return_kv else (out, None)
        x = x + gate_msa * out

        if self.temporal is not None and use_temporal and num_frames > 1:
            x = self.temporal(x, num_frames)

        x = x + self.cross_attn(x, context_kv=context_kv)

        if self.audio_attn is not None and audio is not None:
            x = x + audio_amplitude * self.audio_attn(self.audio_norm(x), audio)

        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return (x, own_kv) if return_kv else x


class FinalLayer(nn.Module):
    """adaLN-single output head: tokens -> patches of the prediction."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x (B*F, N, D), t_emb (B*F, D) -> (B*F, N, p*p*C)."""
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)
        return self.proj(modulate(self.norm(x), shift, scale))
