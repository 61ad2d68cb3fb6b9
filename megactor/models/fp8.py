"""Float8 (e4m3) linear layers, for inference on Hopper GPUs.

A weight is quantized once, per output channel; the activations per row (token)
at every call. Each scale maps the largest magnitude of its row to e4m3's largest
finite value, 448. The product is one `torch._scaled_mm`, which applies both scales
and the bias and returns the activations' dtype: on an H200 the matmul runs at up to
1.6x the bf16 rate (docs/benchmarks.md). Attention stays in bf16.

The same call runs on the CPU, slowly: the tests check there the path the GPU takes.
torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())` computes
the same thing; this module keeps the project free of torchao's torch-version pins.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (M, K) e4m3 values and (M, 1) float32 scales, x ~ values * scales."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


class Fp8Linear(nn.Module):
    """An `nn.Linear` (frozen) whose matmul runs in e4m3 with per-row activation and per-channel weight scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())  # (N, K), (N, 1)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, N)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (M, K)
        values, scale = quantize_rows(rows)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias,
                               out_dtype=x.dtype)  # (M, N)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3"


def convert_to_fp8(module: nn.Module) -> int:
    """Replace, in place, every `nn.Linear` under `module` whose sizes the fp8 kernels take (multiples of 16)
    by an `Fp8Linear`; returns how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(module, name, Fp8Linear(child))
            count += 1
        else:
            count += convert_to_fp8(child)
    return count
