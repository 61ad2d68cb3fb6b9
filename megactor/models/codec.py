"""Latent codecs: images in [-1, 1] <-> the latents SigmaDiT denoises.

`VaeCodec` wraps diffusers' AutoencoderKL (the SD VAE); `PixelCodec` is a
weight-free, lossless stand-in (pixel-unshuffle) so that the tiny preset and the
tests need no VAE weights. Both map (B, 3, H, W) <-> (B, C, H/f, W/f).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..config import CodecConfig


class LatentCodec(nn.Module):
    channels: int
    factor: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_video(self, video: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(B, 3, F, H, W) -> (B, C, F, h, w), `chunk` frames at a time."""
        b = video.shape[0]
        frames = rearrange(video, "b c f h w -> (b f) c h w")
        latents = torch.cat([self.encode(x) for x in frames.split(chunk)])
        return rearrange(latents, "(b f) c h w -> b c f h w", b=b)

    def encode_control(self, video: torch.Tensor) -> torch.Tensor:
        """Control frames (B, 3, F, H, W) -> (B, C, F, h, w) latents relative to an empty (black) control frame.

        Zero wherever the frame has nothing to follow, so the model's control input carries only the face
        parts, an undriven sample's control is zero, and an amplitude scales the parts alone.
        """
        blank = self.encode(torch.full_like(video[:1, :, 0], -1.0))  # (1, C, h, w)
        return self.encode_video(video) - blank[:, :, None]

    def decode_video(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """(B, C, F, h, w) -> (B, 3, F, H, W), `chunk` frames at a time."""
        b = latents.shape[0]
        flat = rearrange(latents, "b c f h w -> (b f) c h w")
        images = torch.cat([self.decode(z) for z in flat.split(chunk)])
        return rearrange(images, "(b f) c h w -> b c f h w", b=b)


class PixelCodec(LatentCodec):
    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.channels = 3 * factor * factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.factor)


class VaeCodec(LatentCodec):
    """AutoencoderKL with its config's scaling (and shift) factor. Frozen."""

    def __init__(self, path: str, subfolder: str | None = None):
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder or "")
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.channels = self.vae.config.latent_channels
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scale = self.vae.config.scaling_factor
        self.shift = getattr(self.vae.config, "shift_factor", None) or 0.0

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return (latents - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scale + self.shift).sample.clamp(-1, 1)


def build_codec(cfg: CodecConfig) -> LatentCodec:
    if cfg.type == "pixel":
        return PixelCodec(cfg.factor)
    if not cfg.path:
        raise ValueError("model.codec.type=vae needs model.codec.path (a diffusers AutoencoderKL folder or hub id)")
    return VaeCodec(cfg.path, cfg.subfolder)
