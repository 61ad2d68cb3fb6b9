"""Context windows: long videos are denoised in overlapping windows of frames.

At each step the frames are covered by windows of `context_frames` that overlap
by at least `context_overlap`; predictions of overlapping windows are averaged.
The windows move from step to step so that no seam stays in one place.

Two layouts:
- "fewest": the fewest windows that cover the video, n = ceil((F - o) / (L - o)).
  Their spare frames (the slack, n*L - (n-1)*o - F) are what the seams can move by:
  the interior windows shift together by 0..slack frames, a different shift each step.
- "shifted": windows on a stride of L - o whose offset moves by about half a stride
  each step, clamped to the video; the clamped ends duplicate windows, so a step runs
  up to one window more than "fewest" (bench/infer_bench.py measures both).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

LAYOUTS = ("fewest", "shifted")
_GOLDEN = (math.sqrt(5) - 1) / 2  # successive multiples mod 1 spread evenly over [0, 1)


def context_windows(num_frames: int, context_frames: int, context_overlap: int, step: int = 0,
                    layout: str = "fewest") -> List[range]:
    """Windows (ranges of frame indices) covering all `num_frames` at denoising step `step`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown context layout {layout!r}: choose one of {LAYOUTS}")
    if num_frames <= context_frames:
        return [range(num_frames)]
    if not 0 <= context_overlap < context_frames:
        raise ValueError(f"context_overlap={context_overlap} must be in [0, context_frames={context_frames})")
    stride = context_frames - context_overlap
    last = num_frames - context_frames
    if layout == "fewest":
        n = math.ceil((num_frames - context_overlap) / stride)
        slack = n * stride + context_overlap - num_frames
        shift = int((step * _GOLDEN) % 1.0 * (slack + 1))  # 0..slack
        starts = [0] + [k * stride - shift for k in range(1, n - 1)] + [last]
    else:
        shift = stride // 2 + 1 if stride > 2 else 1
        offset = (step * shift) % stride
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
