"""The attention layers' fast paths compute what the plain formulation does."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from megactor.models.attention import CrossAttention, FrameAttention


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return module


def test_frame_attention_equals_attention_over_each_positions_frames():
    torch.manual_seed(0)
    b, f, n, d, heads = 2, 5, 7, 32, 4
    attn = _randomise(FrameAttention(d, heads))
    x = torch.randn(b * f, n, d)
    # reference: each (sample, position) is a sequence of f frames, through the fused kernel
    seq = rearrange(x, "(b f) n d -> (b n) f d", f=f)
    q, k, v = (rearrange(t, "r f (h e) -> r h f e", h=heads) for t in attn.qkv(seq).chunk(3, dim=-1))
    expected = attn.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "r h f e -> r f (h e)"))
    expected = rearrange(expected, "(b n) f d -> (b f) n d", n=n)
    torch.testing.assert_close(attn(x, f), expected, atol=1e-5, rtol=1e-5)


def test_frame_attention_keeps_samples_apart():
    torch.manual_seed(0)
    attn = _randomise(FrameAttention(16, 2))
    x = torch.randn(2 * 3, 4, 16)
    changed = x.clone()
    changed[3:] += 1.0  # the second sample's frames only
    torch.testing.assert_close(attn(changed, 3)[:3], attn(x, 3)[:3])
    assert not torch.allclose(attn(changed, 3)[3:], attn(x, 3)[3:])


@pytest.mark.parametrize("context_rows", [1, 6])
def test_cross_attention_no_grad_path_equals_training_path(context_rows):
    """Without autograd a shared context folds all rows' queries into one sequence; the result is the same."""
    torch.manual_seed(0)
    attn = _randomise(CrossAttention(24, 3, context_dim=10))
    x, context = torch.randn(6, 9, 24), torch.randn(context_rows, 5, 10)
    with torch.no_grad():
        folded = attn(x, context)
    per_row = attn(x, context)
    assert per_row.requires_grad
    torch.testing.assert_close(folded, per_row.detach(), atol=1e-5, rtol=1e-5)
