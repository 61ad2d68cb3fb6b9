"""Attention across frames (the temporal layers) as fused Triton kernels.

A temporal layer attends over a sample's F frames at each of N token positions and H heads:
N*H problems of F x F scores (16 x 16 in training). As batched matmuls they need the tokens
copied from the spatial layers' (B*F, N, D) layout into (B*N*H, F, d) and back, and the copies,
not the arithmetic, set their pace. These kernels read the qkv projection where it lies,
(B*F, N, 3*H*d), and write the output as the output projection wants it, (B*F, N, H*d): one
program per (sample, token, head) holds that head's queries, keys and values of all frames.
The backward pass recomputes the scores and writes the qkv gradient in the same layout.

`frame_attention` is a torch custom op: differentiable, and opaque to torch.compile, which
calls it from its graphs (CUDA graphs included). attention.FrameAttention uses it on CUDA
and spells the same computation out in torch elsewhere.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_WARPS = 1  # per program: one head's F x d tile is small; bench/short_attention_bench.py --warps compares


@triton.jit
def _probabilities(q, k, key_valid, scale, PRECISION: tl.constexpr):
    """softmax(q k^T * scale) over the valid keys, fp32: (BLOCK_F, BLOCK_F)."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    scores = tl.where(key_valid[None, :], scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _tile(frames_total, tokens, heads, head_dim, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (sample, token, head) as a (frame, channel) tile: the token's row in each frame of a
    (B*F, N, width) tensor, the head's channels, the tile's mask and which frames are real."""
    pid = tl.program_id(0)
    head = pid % heads
    token = (pid // heads) % tokens
    sample = pid // (heads * tokens)
    frames = tl.arange(0, BLOCK_F)
    rows = ((sample * frames_total + frames) * tokens + token).to(tl.int64)
    channels = head * head_dim + tl.arange(0, BLOCK_D)
    valid = frames < frames_total
    mask = valid[:, None] & (tl.arange(0, BLOCK_D) < head_dim)[None, :]
    return rows, channels, mask, valid


@triton.jit
def _load_qkv(qkv, rows, channels, mask, dim):
    """This tile's queries, keys and values from qkv (B*F, N, 3*dim): (BLOCK_F, BLOCK_D) each."""
    at = qkv + rows[:, None] * (3 * dim) + channels[None, :]
    return (tl.load(at, mask=mask, other=0.0), tl.load(at + dim, mask=mask, other=0.0),
            tl.load(at + 2 * dim, mask=mask, other=0.0))


@triton.jit
def _forward_kernel(qkv, out, frames_total, tokens, heads, dim, head_dim, scale,
                    BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    rows, channels, mask, valid = _tile(frames_total, tokens, heads, head_dim, BLOCK_F, BLOCK_D)
    q, k, v = _load_qkv(qkv, rows, channels, mask, dim)
    p = _probabilities(q, k, valid, scale, PRECISION)
    o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    tl.store(out + rows[:, None] * dim + channels[None, :], o.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(qkv, grad_out, grad_qkv, frames_total, tokens, heads, dim, head_dim, scale,
                     BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    rows, channels, mask, valid = _tile(frames_total, tokens, heads, head_dim, BLOCK_F, BLOCK_D)
    q, k, v = _load_qkv(qkv, rows, channels, mask, dim)
    do = tl.load(grad_out + rows[:, None] * dim + channels[None, :], mask=mask, other=0.0)
    p = _probabilities(q, k, valid, scale, PRECISION)  # (BLOCK_F, BLOCK_F)
    dv = tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])  # softmax backward
    dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
    dk = tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION) * scale
    at = grad_qkv + rows[:, None] * (3 * dim) + channels[None, :]
    dtype = grad_qkv.dtype.element_ty
    tl.store(at, dq.to(dtype), mask=mask)
    tl.store(at + dim, dk.to(dtype), mask=mask)
    tl.store(at + 2 * dim, dv.to(dtype), mask=mask)


def _launch(kernel, qkv: torch.Tensor, num_frames: int, heads: int, *tensors: torch.Tensor) -> None:
    rows, tokens, width = qkv.shape
    dim = width // 3
    head_dim = dim // heads
    kernel[(rows // num_frames * tokens * heads,)](
        qkv, *tensors, num_frames, tokens, heads, dim, head_dim, head_dim**-0.5,
        BLOCK_F=max(16, triton.next_power_of_2(num_frames)), BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32", num_warps=NUM_WARPS,
    )


def _check(qkv: torch.Tensor, num_frames: int, heads: int) -> None:
    if qkv.ndim != 3 or qkv.shape[0] % num_frames or qkv.shape[2] % (3 * heads):
        raise ValueError(f"frame_attention wants qkv (B*F, N, 3*H*d) with F={num_frames}, H={heads}; "
                         f"got {tuple(qkv.shape)}")


@torch.library.custom_op("megactor::frame_attention", mutates_args=())
def frame_attention(qkv: torch.Tensor, num_frames: int, heads: int) -> torch.Tensor:
    """qkv (B*F, N, 3*H*d), each sample's F frames consecutive -> attention output (B*F, N, H*d)."""
    _check(qkv, num_frames, heads)
    qkv = qkv.contiguous()
    out = qkv.new_empty(*qkv.shape[:2], qkv.shape[2] // 3)
    _launch(_forward_kernel, qkv, num_frames, heads, out)
    return out


@frame_attention.register_fake
def _(qkv, num_frames, heads):
    return qkv.new_empty(*qkv.shape[:2], qkv.shape[2] // 3)


@torch.library.custom_op("megactor::frame_attention_backward", mutates_args=())
def frame_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, num_frames: int, heads: int) -> torch.Tensor:
    """The gradient of frame_attention with respect to qkv, (B*F, N, 3*H*d)."""
    qkv, grad_out = qkv.contiguous(), grad_out.contiguous()
    grad_qkv = torch.empty_like(qkv)
    _launch(_backward_kernel, qkv, num_frames, heads, grad_out, grad_qkv)
    return grad_qkv


@frame_attention_backward.register_fake
def _(grad_out, qkv, num_frames, heads):
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output):
    qkv, ctx.num_frames, ctx.heads = inputs
    ctx.save_for_backward(qkv)


def _backward(ctx, grad_out):
    (qkv,) = ctx.saved_tensors
    return frame_attention_backward(grad_out, qkv, ctx.num_frames, ctx.heads), None, None


frame_attention.register_autograd(_backward, setup_context=_setup_context)
