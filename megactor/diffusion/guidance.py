"""Multi-modal guidance ("amplitude adjustment" in the paper; README "Inference").

With per-modality scales s_a, s_v the prediction is

    eps = eps(0) + s_a * (eps(a) - eps(0)) + s_v * (eps(a,v) - eps(a))

i.e. a weighted sum of denoiser passes, each with some conditions on. The passes
with a non-zero weight go through the model as one batch. With one modality the
formula reduces to classifier-free guidance on that modality.

Guidance in a limited interval (Kynkäänniemi et al., 2024, "Applying Guidance in a
Limited Interval Improves Sample and Distribution Quality in Diffusion Models"): outside
a range of noise levels each scale above 0 counts as 1, so the step runs one
conditioned pass instead of two or three.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

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


@dataclass(frozen=True)
class GuidanceSchedule:
    """The passes to run at each step: all of them inside `interval`, the conditioned one elsewhere."""

    use_audio: bool
    use_visual: bool
    audio_scale: float
    visual_scale: float
    interval: Optional[Sequence[float]] = None  # (lo, hi) noise levels t / num_train_timesteps; None: every step
    num_train_timesteps: int = 1000

    def __post_init__(self):
        if self.interval is not None:
            lo, hi = self.interval
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"guidance interval {list(self.interval)} must be [lo, hi] with 0 <= lo <= hi <= 1")

    def guided(self, t: float) -> bool:
        """Whether the step at timestep `t` applies the full guidance."""
        if self.interval is None:
            return True
        lo, hi = self.interval
        return lo <= float(t) / self.num_train_timesteps <= hi

    def branches(self, t: float) -> List[Branch]:
        if self.guided(t):
            return guidance_branches(self.use_audio, self.use_visual, self.audio_scale, self.visual_scale)
        return guidance_branches(self.use_audio, self.use_visual, float(self.audio_scale > 0),
                                 float(self.visual_scale > 0))
