"""Float8 (e4m3) linear layers: the torch._scaled_mm path the GPU takes, run on the CPU."""
import copy

import torch
import torch.nn as nn
from conftest import tiny_config

from megactor.models import SigmaDiT
from megactor.models.audio_encoder import window_size
from megactor.models.fp8 import E4M3_MAX, Fp8Linear, convert_to_fp8, quantize_rows


def test_rows_quantize_to_e4m3_within_half_a_unit_of_the_last_place():
    x = torch.randn(64, 96) * torch.logspace(-3, 3, 64)[:, None]  # rows of very different magnitudes
    values, scale = quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert torch.allclose(values.float().abs().amax(1), torch.full((64,), E4M3_MAX))  # each row uses the range
    back = values.float() * scale
    normal = x.abs() > scale * 2.0**-6  # e4m3's smallest normal is 2^-6
    assert ((back - x).abs() <= x.abs() * 2.0**-4 + 1e-12)[normal].all()  # 3 mantissa bits: half-ulp <= 2^-4


def test_fp8_linear_is_the_dequantized_product():
    linear = nn.Linear(64, 48)
    fp8 = Fp8Linear(linear)
    x = torch.randn(3, 5, 64)
    xq, xs = quantize_rows(x.reshape(-1, 64))
    expected = (xq.float() * xs) @ (fp8.weight.float() * fp8.weight_scale.t()).t() + linear.bias
    out = fp8(x)
    assert out.shape == (3, 5, 48)
    assert torch.allclose(out.reshape(-1, 48), expected.detach(), rtol=1e-5, atol=1e-5)
    rel = (out - linear(x)).norm() / linear(x).norm()
    assert 1e-4 < rel < 0.06, rel  # the rounding of two e4m3 operands, no more


def test_converted_model_stays_close_to_the_float_model():
    model = SigmaDiT(tiny_config(depth=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    fp8 = copy.deepcopy(model)
    converted = convert_to_fp8(fp8.blocks)
    linears = sum(isinstance(m, nn.Linear) for m in model.blocks.modules())
    assert converted == linears  # the tiny preset's sizes are all multiples of 16
    assert not any(isinstance(m, nn.Linear) for m in fp8.blocks.modules())
    cfg = model.config
    latents = torch.randn(2, cfg.in_channels, 3, cfg.sample_size, cfg.sample_size)
    inputs = dict(control=torch.randn_like(latents), reference=torch.randn(1, *latents.shape[1:2], *latents.shape[3:]),
                  audio=torch.randn(2, 3, window_size(cfg.audio_window), cfg.audio_encoder.layers + 1,
                                    cfg.audio_encoder.d_model))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        want, got = model(latents, t, **inputs), fp8(latents, t, **inputs)
    rel = (got - want).norm() / want.norm()
    assert 1e-4 < rel < 0.05, rel
