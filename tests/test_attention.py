"""The attention layers' fast paths compute what the plain formulation does."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from megactor.models.attention import CrossAttention, FrameAttention

ROOT = Path(__file__).resolve().parents[1]


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


def _outputs_and_grads(attn: FrameAttention, x: torch.Tensor, frames: int, grad: torch.Tensor, fused: bool,
                       compiled: bool = False):
    """FrameAttention's output and the gradients of x and its parameters, through the Triton kernel or
    through the torch path."""
    from megactor.models import attention

    kept = attention.fused_frame_attention
    attention.fused_frame_attention = kept if fused else None
    try:
        x = x.detach().requires_grad_()
        attn.zero_grad(set_to_none=True)
        out = (torch.compile(attn, fullgraph=True) if compiled else attn)(x, frames)
        out.backward(grad)
        return [out.detach(), x.grad] + [p.grad for p in attn.parameters()]
    finally:
        attention.fused_frame_attention = kept


def _max_error(got, want):
    return max(((g.float() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on CUDA")
@pytest.mark.parametrize("frames, compiled", [(16, False), (5, False), (16, True)])
def test_triton_frame_attention_matches_the_torch_path(frames, compiled):
    """fp32: the kernel equals the torch path; bf16: it is no further from the fp32 result than the torch path."""
    from megactor.models import attention

    if attention.fused_frame_attention is None:
        pytest.fail("Triton is missing: CUDA torch builds ship it")
    torch.manual_seed(0)
    b, n, d, heads = 2, 33, 1152, 16  # the xl model's heads of 72
    attn = _randomise(FrameAttention(d, heads)).cuda()
    for p in attn.parameters():
        p.data.mul_(0.1)
    x = torch.randn(b * frames, n, d, device="cuda")
    grad = torch.randn_like(x)
    want = _outputs_and_grads(attn, x, frames, grad, fused=False)
    got = _outputs_and_grads(attn, x, frames, grad, fused=True, compiled=compiled)
    assert _max_error(got, want) < 1e-5

    attn.to(torch.bfloat16)
    x, grad = x.bfloat16(), grad.bfloat16()
    fused_error = _max_error(_outputs_and_grads(attn, x, frames, grad, fused=True, compiled=compiled), want)
    torch_error = _max_error(_outputs_and_grads(attn, x, frames, grad, fused=False), want)
    assert fused_error < 1.5 * torch_error + 1e-3, (fused_error, torch_error)


def test_triton_frame_attention_kernels_in_the_interpreter():
    """The kernels, run by Triton's CPU interpreter, against the torch path (forward and qkv gradient)."""
    pytest.importorskip("triton")
    script = textwrap.dedent("""
        import torch
        from megactor.models.attention import torch_frame_attention
        from megactor.models.triton_frame_attention import frame_attention
        torch.manual_seed(0)
        for b, f, n, heads, d in [(2, 5, 3, 2, 72), (1, 20, 2, 2, 24)]:
            qkv = torch.randn(b * f, n, 3 * heads * d, requires_grad=True)
            grad = torch.randn(b * f, n, heads * d)
            out = frame_attention(qkv, f, heads)
            (fused_grad,) = torch.autograd.grad(out, qkv, grad)
            want = torch_frame_attention(qkv, f, heads)
            (want_grad,) = torch.autograd.grad(want, qkv, grad)
            torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fused_grad, want_grad, atol=1e-5, rtol=1e-5)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _backends(model):
    from megactor.models.attention import SelfAttention

    return {m.backend for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))}


def test_the_attention_backend_is_the_models_own_setting_in_training_and_inference(tmp_path, monkeypatch):
    """model.attention reaches every attention layer of the model it configures, and of no other model;
    a checkpoint loaded for inference takes the inference config's choice, not the training run's."""
    from conftest import tiny_config

    from megactor.animate import Animator
    from megactor.config import InferenceConfig
    from megactor.models import SigmaDiT, save_pretrained, sigma_dit

    monkeypatch.setattr(sigma_dit, "check_backend", lambda name: name)  # as if xformers were installed
    chosen, default = SigmaDiT(tiny_config(attention="xformers")), SigmaDiT(tiny_config())
    assert _backends(chosen) == {"xformers"} and _backends(default) == {"sdpa"}
    save_pretrained(default, tmp_path / "ckpt")  # trained with sdpa
    cfg = InferenceConfig(checkpoint=str(tmp_path / "ckpt"), model=tiny_config(attention="xformers"))
    animator = Animator.from_config(cfg, device="cpu")
    assert _backends(animator.model) == {"xformers"} and animator.model.config.attention == "xformers"


@pytest.mark.skipif(__import__("importlib").util.find_spec("xformers") is not None, reason="xformers is installed")
def test_asking_for_xformers_without_it_fails_when_the_model_is_built(tmp_path, capsys):
    from conftest import tiny_config

    from megactor.animate import Animator
    from megactor.config import InferenceConfig
    from megactor.models import SigmaDiT, save_pretrained

    with pytest.raises(ImportError, match="model.attention=xformers"):
        SigmaDiT(tiny_config(attention="xformers"))
    save_pretrained(SigmaDiT(tiny_config()), tmp_path / "ckpt")
    with pytest.raises(ImportError, match="model.attention=xformers"):
        Animator.from_config(InferenceConfig(checkpoint=str(tmp_path / "ckpt"), model=tiny_config(attention="xformers")),
                             device="cpu")
    sys.path.insert(0, str(ROOT))
    import eval_audio

    testcases = ROOT.parent / "shared" / "testcases"
    source, driver = testcases / "source" / "1.png", testcases / "driver" / "audio_CHTF_2.mp4"
    if not (source.is_file() and driver.is_file()):  # the inputs are checked first: real ones reach the model build
        pytest.skip("real test clips not found beside the checkout")
    code = eval_audio.main(["--config", str(ROOT / "configs/inference/tiny/inference.yaml"), "--source", str(source),
                            "--driver", str(driver), "--output-path", str(tmp_path / "o.mp4"), "checkpoint=",
                            "model.attention=xformers"])
    assert code == 2 and "model.attention=xformers needs the xformers package" in capsys.readouterr().err
