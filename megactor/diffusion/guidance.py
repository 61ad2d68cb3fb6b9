"""Multi-modal guidance ("amplitude adjustment" in the paper; README "Inference").

With per-modality scales s_a, s_v the prediction is

    eps = eps(0) + s_a * (eps(a) - eps(0)) + s_v * (eps(a,v) - eps(a))

i.e. a weighted sum of denoiser passes, each with some conditions on. The passes
with a non-zero weight go through the model as one batch. With one modality the
formula reduces to classifier-free guidance on that modality.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch


@dataclass(frozen=True)
class Branch:
    audio: bool  # audio condition on in this pass
    visual: bool  # visual condition on in this pass
    weight: float


def guidance_branches(use_audio: bool, use_visual: bool, audio_scale: float, visual_scale: float) -> List[Branch]:
    """The denoiser passes, and their weights, that the guidance formula needs."""
    if use_audio and use_visual:
        branches = [Branch(False, False, 1.0 - audio_scale), Branch(True, False, audio_scale - visual_scale),
                    Branch(True, True, visual_scale)]
    elif use_audio:
        branches = [Branch(False, False, 1.0 - audio_scale), Branch(True, False, audio_scale)]
    elif use_visual:
        branches = [Branch(False, False, 1.0 - visual_scale), Branch(False, True, visual_scale)]
    else:
        raise ValueError("guidance needs at least one of audio and visual driving")
    return [b for b in branches if b.weight != 0.0]


def combine(predictions: torch.Tensor, branches: List[Branch]) -> torch.Tensor:
    """predictions (len(branches) * B, ...) laid out branch-major -> the guided (B, ...)."""
    parts = predictions.chunk(len(branches))
    return sum(b.weight * p for b, p in zip(branches, parts))
