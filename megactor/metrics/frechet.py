"""FID and FVD with feature networks loaded from local TorchScript files, through torchmetrics.

The Fréchet distance of the feature statistics is torchmetrics' ``FrechetInceptionDistance``, given the
network as its custom feature extractor; this module only loads the networks and feeds them as they were
exported to be fed:

- FID: StyleGAN2-ADA's Inception TorchScript (``inception-2015-12-05.pt``), called as
  ``net(images, return_features=True)`` on (N, 3, H, W) uint8-valued RGB images (it resizes to 299 itself)
  -> (N, 2048) pool features.
- FVD: StyleGAN-V's I3D TorchScript (``i3d_torchscript.pt``), called as
  ``net(videos, rescale=False, resize=False, return_features=True)`` on (N, 3, T, 224, 224) RGB in [-1, 1]
  -> (N, 400) features (the logits before the softmax).

No weights ship with the project; a missing or unloadable file is an error naming it.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

FVD_SIZE = 224


def load_torchscript(path: str, what: str) -> torch.jit.ScriptModule:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights not found: {path!r} (a TorchScript file; none ships with this project)")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: not a TorchScript {what} ({str(e).strip().splitlines()[0]})") from None


class ImageFeatures(nn.Module):
    """The Inception network as torchmetrics' feature extractor: (N, 3, H, W) uint8 -> (N, D) float."""

    def __init__(self, net: torch.jit.ScriptModule, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images, return_features=True)


class VideoFeatures(nn.Module):
    """The I3D network as torchmetrics' feature extractor: (N, 3, T, 224, 224) in [-1, 1] -> (N, D)."""

    def __init__(self, net: torch.jit.ScriptModule, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.net(videos, rescale=False, resize=False, return_features=True)


@torch.no_grad()
def fid_metric(path: str) -> FrechetInceptionDistance:
    """A torchmetrics FID over the Inception TorchScript at ``path``; feed it ``image_batch`` tensors."""
    net = load_torchscript(path, "Inception")
    dims = net(torch.zeros(1, 3, 299, 299, dtype=torch.uint8), return_features=True).shape[-1]
    return FrechetInceptionDistance(feature=ImageFeatures(net, int(dims)))


@torch.no_grad()
def fvd_metric(path: str, frames: int) -> FrechetInceptionDistance:
    """A torchmetrics Fréchet distance over the I3D TorchScript at ``path``; feed it ``video_batch`` tensors of
    ``frames`` frames."""
    net = load_torchscript(path, "I3D")
    dims = net(torch.zeros(1, 3, frames, FVD_SIZE, FVD_SIZE), rescale=False, resize=False, return_features=True).shape[-1]
    return FrechetInceptionDistance(feature=VideoFeatures(net, int(dims)))


def image_batch(frames: list) -> torch.Tensor:
    """(H, W, 3) uint8 frames -> (N, 3, H, W) uint8, as the Inception network takes them."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def video_clip(frames: list) -> torch.Tensor:
    """T (H, W, 3) uint8 frames -> (3, T, 224, 224) float in [-1, 1], as the I3D network takes them."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=(FVD_SIZE, FVD_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (x / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()
