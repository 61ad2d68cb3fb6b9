"""Context windows: long videos are denoised in overlapping windows of frames.

At each step the frames are covered by windows of `context_frames` that overlap
by at least `context_overlap`; predictions of overlapping windows are averaged.
The windows' offset moves from step to step so that no seam stays in one place.
"""
from __future__ import annotations

from typing import List, Sequence

import torch


def context_windows(num_frames: int, context_frames: int, context_overlap: int, step: int = 0) -> List[range]:
    """Windows (ranges of frame indices) covering all `num_frames` at denoising step `step`."""
    if num_frames <= context_frames:
        return [range(num_frames)]
    if not 0 <= context_overlap < context_frames:
        raise ValueError(f"context_overlap={context_overlap} must be in [0, context_frames={context_frames})")
    stride = context_frames - context_overlap
    shift = stride // 2 + 1 if stride > 2 else 1
    offset = (step * shift) % stride  # moves the seams between steps
    last = num_frames - context_frames
    starts = sorted({min(max(s, 0), last) for s in range(offset - stride, num_frames, stride)})
    return [range(s, s + context_frames) for s in starts]


def window_weights(windows: Sequence[range], num_frames: int) -> torch.Tensor:
    """(len(windows), num_frames) averaging weights: per frame, the windows covering it share 1 equally."""
    cover = torch.zeros(len(windows), num_frames)
    for i, w in enumerate(windows):
        cover[i, w.start:w.stop] = 1.0
    counts = cover.sum(0)
    if (counts == 0).any():
        raise ValueError(f"windows leave frames {torch.nonzero(counts == 0).flatten().tolist()} uncovered")
    return cover / counts
