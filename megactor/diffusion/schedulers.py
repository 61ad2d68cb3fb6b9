"""Noise schedulers from diffusers, built from one `NoiseSchedulerConfig`."""
from __future__ import annotations

from dataclasses import fields
from typing import List

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ..config import NoiseSchedulerConfig

SAMPLERS = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
SAMPLING_ONLY = ("timestep_spacing",)  # free to differ between training and sampling


def _kwargs(cfg: NoiseSchedulerConfig) -> dict:
    return dict(
        num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.rescale_betas_zero_snr, timestep_spacing=cfg.timestep_spacing,
    )


def training_scheduler(cfg: NoiseSchedulerConfig) -> DDPMScheduler:
    return DDPMScheduler(**_kwargs(cfg))


def sampling_scheduler(name: str, cfg: NoiseSchedulerConfig):
    if name not in SAMPLERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {sorted(SAMPLERS)}")
    kwargs = _kwargs(cfg)
    if name == "ddim":
        kwargs.update(clip_sample=False, set_alpha_to_one=cfg.rescale_betas_zero_snr)
    else:
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2,
                      final_sigmas_type="zero" if cfg.rescale_betas_zero_snr else "sigma_min")
    return SAMPLERS[name](**kwargs)


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the model learns to predict: the noise, or v = alpha_t * noise - sigma_t * x0."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(latents, noise, timesteps)


def schedule_mismatch(trained: NoiseSchedulerConfig, asked: NoiseSchedulerConfig) -> List[str]:
    """The fields (all but the sampling-only ones) on which a sampling schedule departs from the one a model was
    trained with, as "name: trained X, asked Y"; sampling with any of them different gives noise."""
    return [f"{f.name}: trained {getattr(trained, f.name)!r}, asked {getattr(asked, f.name)!r}"
            for f in fields(NoiseSchedulerConfig)
            if f.name not in SAMPLING_ONLY and getattr(trained, f.name) != getattr(asked, f.name)]
