"""Validation during training: animate the config's pairs with the current (EMA) weights.

Writes `output_dir/validation/step-XXXXXXX/<source>_<driver>.mp4` and a PNG grid
(source | driver | control | result, a few frames down the rows).
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch

from ..animate import Animator
from ..config import InferenceConfig
from ..data.face import build_face_analyser
from ..data.video_io import write_video
from ..models import WhisperAudioEncoder
from ..visualisation import grid_png

logger = logging.getLogger(__name__)


def inference_config(trainer) -> InferenceConfig:
    cfg, v = trainer.cfg, trainer.cfg.validation
    return InferenceConfig(model=copy.deepcopy(cfg.model), sample_size=cfg.train_data.sample_size,
                           crop_margin=cfg.train_data.crop_margin, num_inference_steps=v.num_inference_steps,
                           guidance=copy.deepcopy(v.guidance), context=copy.deepcopy(cfg.context),
                           noise_scheduler_kwargs=copy.deepcopy(cfg.noise_scheduler_kwargs), seed=cfg.seed,
                           limit=v.limit)


def _animator(trainer) -> Animator:
    if getattr(trainer, "_validation_animator", None) is None:
        audio_encoder = trainer.audio_encoder or WhisperAudioEncoder(trainer.cfg.model.audio_encoder).to(trainer.device)
        trainer._validation_animator = Animator(
            trainer.unwrapped, trainer.codec, audio_encoder, build_face_analyser("mediapipe"),
            inference_config(trainer), trainer.device, next(trainer.unwrapped.parameters()).dtype)
    return trainer._validation_animator


@torch.no_grad()
def run_validation(trainer) -> None:
    v = trainer.cfg.validation
    animator = _animator(trainer)
    folder = os.path.join(trainer.cfg.output_dir, "validation", f"step-{trainer.step:07d}")
    os.makedirs(folder, exist_ok=True)
    model = trainer.unwrapped
    if trainer.ema is not None:
        trainer.ema.store(trainer.params)
        trainer.ema.copy_to(trainer.params)
    model.eval()
    try:
        drivers = v.video_path or [None] * len(v.source_image)
        audios = v.audio_path or [None] * len(v.source_image)
        for source, driver, audio in zip(v.source_image, drivers, audios):
            name = f"{Path(source).stem}_{Path(driver or audio).stem}"
            try:
                result = animator.animate(source, driver, audio, progress=False)
            except ValueError as e:
                logger.warning("validation %s failed: %s", name, e)
                continue
            write_video(os.path.join(folder, name + ".mp4"), result.frames, result.fps, result.audio)
            grid_png(os.path.join(folder, name + ".png"), result.grid())
        logger.info("validation samples written to %s", folder)
    finally:
        if trainer.ema is not None:
            trainer.ema.restore(trainer.params)
        model.train()
