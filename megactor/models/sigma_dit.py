"""SigmaDiT: the MegActor-Σ denoiser.

A PixArt-α transformer over video latents with three conditions:
- the reference image: `ReferenceNet`, a copy of the backbone run once at t=0,
  whose per-block self-attention keys/values every frame's self-attention also
  attends to (computed once per sample, reused at every denoising step);
- visual face motion: control latents (zero where the control frame is empty)
  concatenated channel-wise with the noisy latents (patch embedding 2C inputs;
  the control half zero-initialised);
- audio: Whisper feature windows -> `AudioProjection` -> 32 tokens per frame,
  attended to by each block's audio cross-attention (see blocks.SigmaBlock);
plus temporal attention across frames in each block.

The PixArt text cross-attention stays, over a learned context (there is no prompt).
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn as nn
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.normalization import AdaLayerNormSingle
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import KV, CrossAttention, SelfAttention, check_backend
from .audio_encoder import feature_shape, window_size
from .blocks import FinalLayer, SigmaBlock, expand_batch, modulate

Amplitude = Union[float, torch.Tensor]  # a scalar, or one value per sample (B,)


class AudioProjection(nn.Module):
    """Whisper feature windows (B, F, W, L, d) -> audio tokens (B*F, tokens, D)."""

    def __init__(self, in_dim: int, hidden: int, tokens: int, dim: int):
        super().__init__()
        self.tokens = tokens
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, tokens * dim),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        x = self.net(windows.flatten(2).flatten(0, 1))  # (B*F, W*L*d) -> (B*F, tokens*D)
        return self.norm(x.view(x.shape[0], self.tokens, -1))


def _patch_embed(cfg: ModelConfig, in_channels: int, patch_size: Optional[int] = None) -> PatchEmbed:
    """Patches -> tokens with sin-cos positions. A coarser ``patch_size`` (the reference net's) puts its tokens'
    positions on the denoiser's grid: a token covering k x k of the denoiser's patches sits at k times its index."""
    patch_size = patch_size or cfg.patch_size
    return PatchEmbed(
        height=cfg.sample_size, width=cfg.sample_size, patch_size=patch_size, in_channels=in_channels,
        embed_dim=cfg.width, interpolation_scale=max(cfg.sample_size // 64, 1) * cfg.patch_size / patch_size,
    )


def _run(block: nn.Module, use_checkpoint: bool, *args, **kwargs):
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


class ReferenceKV(nn.Module):
    """The last reference block's share: only its self-attention keys/values are ever read."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)  # shift, scale of the attention input
        self.kv = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> KV:
        shift, scale = (self.scale_shift_table[None] + modulation[:, :2]).chunk(2, dim=1)
        return self.kv(modulate(self.norm(x), shift, scale)).chunk(2, dim=-1)  # (B, N, D) each


class ReferenceNet(nn.Module):
    """A copy of the backbone (same init as the denoiser) that encodes the reference latent at t=0.

    Its last block is cut to what is read of it (the keys/values), so that every parameter
    takes part in the forward pass, as DistributedDataParallel requires.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_embed = _patch_embed(cfg, cfg.in_channels, cfg.reference_patch_size)  # (B, M, D) tokens
        self.adaln_single = AdaLayerNormSingle(cfg.width)
        self.caption_projection = PixArtAlphaTextProjection(cfg.caption_channels, cfg.width)
        self.blocks = nn.ModuleList(SigmaBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth - 1))
        self.last_kv = ReferenceKV(cfg.width)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(self, reference: torch.Tensor, context: torch.Tensor) -> List[KV]:
        """reference (B, C, h, w), context (T, caption_channels) -> per block (keys, values), (B, N, D) each."""
        x = self.patch_embed(reference).to(self.caption_projection.linear_1.weight.dtype)  # (B, N, D), params' dtype
        t = torch.zeros(reference.shape[0], device=reference.device)
        modulation, _ = self.adaln_single(t, batch_size=reference.shape[0], hidden_dtype=x.dtype)
        modulation = modulation.view(x.shape[0], 6, -1)
        ctx = self.caption_projection(context[None].to(x.dtype))  # (1, T, D)
        kvs = []
        for block in self.blocks:
            x, kv = _run(block, self.gradient_checkpointing, x, modulation, block.cross_attn.project_context(ctx),
                         return_kv=True)
            kvs.append(kv)
        return kvs + [self.last_kv(x, modulation)]


class SigmaDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        c, d = cfg.in_channels, cfg.width
        layers, feat_dim = feature_shape(cfg.audio_encoder)
        self.patch_embed = _patch_embed(cfg, 2 * c)  # noisy latents + control latents
        self.adaln_single = AdaLayerNormSingle(d)
        self.context = nn.Parameter(torch.empty(cfg.context_tokens, cfg.caption_channels))  # replaces the prompt
        self.caption_projection = PixArtAlphaTextProjection(cfg.caption_channels, d)
        self.audio_proj = AudioProjection(window_size(cfg.audio_window) * layers * feat_dim, cfg.audio_hidden,
                                          cfg.audio_tokens, d)
        self.blocks = nn.ModuleList(
            SigmaBlock(d, cfg.num_heads, cfg.mlp_ratio, temporal=cfg.temporal_layers, audio=True,
                       max_frames=cfg.max_frames)
            for _ in range(cfg.depth)
        )
        self.final_layer = FinalLayer(d, cfg.patch_size, c)
        self.reference_net = ReferenceNet(cfg)
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.initialize_weights()
        self.set_attention_backend(cfg.attention)

    def initialize_weights(self) -> None:
        """PixArt/DiT init for a model trained from scratch; the new branches' outputs start at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for net in (self, self.reference_net):
            w = net.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            for linear in (net.adaln_single.emb.timestep_embedder.linear_1, net.adaln_single.emb.timestep_embedder.linear_2,
                           net.caption_projection.linear_1, net.caption_projection.linear_2):
                nn.init.normal_(linear.weight, std=0.02)
            for blk in net.blocks:
                zero_module(blk.cross_attn.proj)
        nn.init.normal_(self.context, std=0.02)  # not zero: identical tokens would leave cross-attention no gradient
        zero_module(self.final_layer.proj)
        self.zero_new_branches()

    def zero_new_branches(self) -> None:
        """Visual, audio and temporal branches start with zero output: a loaded PixArt is unchanged."""
        with torch.no_grad():
            self.patch_embed.proj.weight[:, self.config.in_channels:].zero_()
        for blk in self.blocks:
            zero_module(blk.audio_attn.proj)
            if blk.temporal is not None:
                zero_module(blk.temporal.attn.proj)

    def compile_model(self, cudagraphs: bool = True) -> None:
        """torch.compile the forward pass, the reference net's included, as one graph (and its backward as one).

        One graph rather than one per block: between per-block graphs the GPU waits on Python and autograd
        (docs/benchmarks.md, "Model"). The blocks are unrolled, so the first call compiles for a few minutes
        at xl. Call it with the model on its device.
        cudagraphs: also replay the graphs as CUDA graphs ("reduce-overhead"), so that the CPU's kernel
        launches stop setting the pace; each call then starts a new step, whose outputs overwrite the
        last call's. Left out off CUDA and under gradient checkpointing.
        """
        cudagraphs = cudagraphs and self.context.is_cuda and not self.gradient_checkpointing
        compiled = torch.compile(type(self).forward.__get__(self), mode="reduce-overhead" if cudagraphs else None)

        def forward(*args, **kwargs):
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs)

        self.forward = forward

    def compile_blocks(self) -> None:
        """torch.compile the denoiser's blocks for inference: one compiled graph, shared by every block.

        Without an autograd graph to tie the blocks together, one graph per block costs little, and the
        model compiles in the time of one block instead of compile_model's unrolled whole (minutes at xl),
        once per input shape: the guidance passes batched, the window length. Shapes stay static.
        """
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, 64)  # a compiled entry per input shape
        for block in self.blocks:
            block.compile(dynamic=False)

    def set_attention_backend(self, name: str) -> None:
        """The kernel every spatial, reference and cross-attention layer of this model calls: "sdpa" or
        "xformers" (model.attention). A setting of the model, not of the process, so that training and
        inference honour their configs alike and two models in one process may differ."""
        check_backend(name)
        for m in self.modules():
            if isinstance(m, (SelfAttention, CrossAttention)):
                m.backend = name
        self.config.attention = name

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = self.reference_net.gradient_checkpointing = enabled

    def encode_reference(self, reference: torch.Tensor) -> List[KV]:
        """Reference latent (B, C, h, w) -> per-block keys/values; compute once, reuse at every step."""
        self._check_spatial("reference", reference.shape[-2:])
        return self.reference_net(reference, self.context)

    def encode_context(self) -> List[KV]:
        """Per block, the cross-attention keys/values of the learned context, (1, T, D) each. They depend on
        no input: inference computes them once per run instead of at every call."""
        context = self.caption_projection(self.context[None])  # (1, T, D)
        return [block.cross_attn.project_context(context) for block in self.blocks]

    def forward(
        self,
        latents: torch.Tensor,  # (B, C, F, h, w) noisy latents
        timestep: torch.Tensor,  # (B,) or scalar
        control: Optional[torch.Tensor] = None,  # (B, C, F, h, w) codec.encode_control latents (0: none)
        audio: Optional[torch.Tensor] = None,  # (B, F, W, L, d) Whisper feature windows
        reference: Optional[torch.Tensor] = None,  # (B, C, h, w) reference latent ...
        reference_kv: Optional[List[KV]] = None,  # ... or its keys/values from encode_reference
        context_kv: Optional[List[KV]] = None,  # encode_context(), if computed already
        audio_amplitude: Amplitude = 1.0,
        visual_amplitude: Amplitude = 1.0,
        temporal: bool = True,  # False bypasses the temporal layers (image and audio stages)
    ) -> torch.Tensor:
        """Noise (or v) prediction, (B, C, F, h, w)."""
        b, c, f, h, w = latents.shape
        self._check_inputs(latents, control, audio, reference, reference_kv)
        rows = b * f
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(b)

        if control is None:
            control = torch.zeros_like(latents)
        control = control * _per_sample(visual_amplitude, b, latents).view(b, 1, 1, 1, 1)
        x = rearrange(torch.cat([latents, control], dim=1), "b c f h w -> (b f) c h w")
        x = self.patch_embed(x).to(self.context.dtype)  # (B*F, N, D); the residual stream keeps the params' dtype

        modulation, t_emb = self.adaln_single(timestep, batch_size=b, hidden_dtype=x.dtype)  # (B, 6D), (B, D)
        modulation = expand_batch(modulation.view(b, 6, -1), rows)  # (B*F, 6, D)
        if context_kv is None:
            context_kv = self.encode_context()

        if reference_kv is None and reference is not None:
            reference_kv = self.encode_reference(reference)
        audio_tokens = amplitude = None
        if audio is not None:
            audio_tokens = self.audio_proj(audio.to(x.dtype))  # (B*F, A, D)
            amplitude = expand_batch(_per_sample(audio_amplitude, b, x), rows).view(rows, 1, 1)

        for i, block in enumerate(self.blocks):
            x = _run(block, self.gradient_checkpointing, x, modulation, context_kv[i], num_frames=f,
                     reference_kv=reference_kv[i] if reference_kv is not None else None,
                     audio=audio_tokens, audio_amplitude=amplitude, use_temporal=temporal)

        x = self.final_layer(x, expand_batch(t_emb, rows))  # (B*F, N, p*p*C)
        p = self.config.patch_size
        return rearrange(x, "(b f) (h w) (p q c) -> b c f (h p) (w q)", b=b, h=h // p, p=p, q=p)

    # ------------------------------------------------------------------ shape checks

    def _check_spatial(self, name: str, hw) -> None:
        p = self.config.patch_size
        if hw[0] % p or hw[1] % p:
            raise ValueError(f"{name} latent size {tuple(hw)} is not divisible by the patch size {p}")

    def _check_inputs(self, latents, control, audio, reference, reference_kv) -> None:
        b, c, f, h, w = latents.shape
        if c != self.config.in_channels:
            raise ValueError(f"latents have {c} channels, the model expects {self.config.in_channels}: {tuple(latents.shape)}")
        self._check_spatial("latents", (h, w))
        if control is not None and control.shape != latents.shape:
            what = "frames" if control.ndim == 5 and control.shape[2] != f else "shape"
            raise ValueError(f"control {what} differ from the latents': control {tuple(control.shape)} vs "
                             f"latents {tuple(latents.shape)}")
        if audio is not None and (audio.ndim != 5 or audio.shape[:2] != (b, f)):
            raise ValueError(f"audio windows must be (B={b}, F={f}, W, L, d) to match the latents "
                             f"{tuple(latents.shape)}, got {tuple(audio.shape)}")
        if reference is not None and (reference.shape[0] not in (1, b) or reference.shape[1:] != (c, h, w)):
            raise ValueError(f"reference latent {tuple(reference.shape)} does not match the latents "
                             f"{tuple(latents.shape)}: expected ({b} or 1, {c}, {h}, {w})")
        if reference_kv is not None:
            p = self.reference_net.patch_embed.patch_size
            tokens, expected = reference_kv[0][0].shape[1], (h // p) * (w // p)
            if tokens != expected:
                raise ValueError(f"reference keys/values hold {tokens} tokens per block, but latents "
                                 f"{tuple(latents.shape)} have {expected}: the reference was encoded at another size")


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _per_sample(value: Amplitude, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) amplitude as a (B,) tensor on `like`'s device and dtype."""
    t = torch.as_tensor(value, device=like.device, dtype=like.dtype).reshape(-1)
    if t.numel() not in (1, batch):
        raise ValueError(f"an amplitude must be a scalar or have one value per sample ({batch}), got {t.numel()}")
    return t.expand(batch)
