"""The denoising loop over a long latent video, in context windows.

`model_fn(latents_window, t, frames)` returns the (already guided) prediction for
one window; each step averages the windows' predictions per frame and steps the
scheduler on the whole video. With several processes, each takes every
world_size-th window and `all_reduce` sums the partial averages.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from tqdm.auto import tqdm

from .context import context_windows, window_weights

ModelFn = Callable[[torch.Tensor, torch.Tensor, range], torch.Tensor]


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
    context_frames: int,
    context_overlap: int,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Optional[Callable[[torch.Tensor], None]] = None,
    progress: bool = True,
    callback: Optional[Callable[[int, int], None]] = None,
) -> torch.Tensor:
    scheduler.set_timesteps(num_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    steps = tqdm(scheduler.timesteps, desc="denoising", disable=not progress)
    for i, t in enumerate(steps):
        windows = context_windows(latents.shape[2], context_frames, context_overlap, step=i)
        prediction = windowed_prediction(model_fn, scheduler.scale_model_input(latents, t), t, windows,
                                         rank, world_size)
        if world_size > 1:
            all_reduce(prediction)
        latents = scheduler.step(prediction, t, latents).prev_sample
        if callback is not None:
            callback(i + 1, len(scheduler.timesteps))
    return latents
