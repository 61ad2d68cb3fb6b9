"""The denoising loop over a long latent video, in context windows.

`model_fn(latents_window, t, frames)` returns the (already guided) prediction for
one window; each step averages the windows' predictions per frame and steps the
scheduler on the whole video. With several processes, each takes every
world_size-th window and `all_reduce` sums the partial averages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from tqdm.auto import tqdm

from ..config import ContextConfig
from .context import context_windows, window_weights

ModelFn = Callable[[torch.Tensor, torch.Tensor, range], torch.Tensor]


@dataclass(frozen=True)
class Distributed:
    """This process's place among the processes that share the windows of one video."""

    rank: int = 0
    world_size: int = 1
    all_reduce: Optional[Callable[[torch.Tensor], None]] = None  # in-place sum over the processes


def windowed_prediction(model_fn: ModelFn, latents: torch.Tensor, t: torch.Tensor, windows: List[range],
                        rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the per-frame average of the windows' predictions, (B, C, F, h, w).

    Summed over all ranks it is the average over all windows.
    """
    weights = window_weights(windows, latents.shape[2]).to(latents.device, latents.dtype)  # (n_windows, F)
    prediction = torch.zeros_like(latents)
    for j in range(rank, len(windows), world_size):
        sl = slice(windows[j].start, windows[j].stop)
        prediction[:, :, sl] += model_fn(latents[:, :, sl], t, windows[j]) * weights[j, sl].view(1, 1, -1, 1, 1)
    return prediction


def sample_video(
    model_fn: ModelFn,
    noise: torch.Tensor,  # (B, C, F, h, w) initial noise (unit variance)
    scheduler,
    num_steps: int,
    context: ContextConfig,
    dist: Distributed = Distributed(),
    progress: bool = True,
    callback: Optional[Callable[[int, int], None]] = None,
) -> torch.Tensor:
    scheduler.set_timesteps(num_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps.cpu()  # read on the host (guidance interval, scheduler lookups): no device sync
    for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
        windows = context_windows(latents.shape[2], context.context_frames, context.context_overlap, step=i,
                                  layout=context.layout)
        prediction = windowed_prediction(model_fn, scheduler.scale_model_input(latents, t), t, windows,
                                         dist.rank, dist.world_size)
        if dist.world_size > 1:
            dist.all_reduce(prediction)
        latents = scheduler.step(prediction, t, latents).prev_sample
        if callback is not None:
            callback(i + 1, len(timesteps))
    return latents
