"""Settings of ``evaluate.py``, overridable as ``key=value``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megactor.config import ConfigError, load_config


@dataclass
class EvaluationConfig:
    cache_dir: Optional[str] = None  # drivers' face analyses (default ~/.cache/megactor/evaluate)
    sync_search_frames: int = 25  # lip-sync lags searched: -this ... +this video frames
    self_reenactment: Optional[bool] = None  # PSNR/SSIM against the driver's frames; null: when the source is
    #                                           the driver's first frame (it reads >= 30 dB PSNR against it)
    ssim_frames: int = 16  # frames per video, evenly spaced, for SSIM (PSNR reads every frame)
    # metrics that need weights: each runs when its local file is given
    syncnet_weights: Optional[str] = None  # SyncNet state dict (syncnet_v2.model): Sync-C, Sync-D
    inception_weights: Optional[str] = None  # Inception TorchScript (StyleGAN2-ADA's inception-2015-12-05.pt): FID
    i3d_weights: Optional[str] = None  # I3D TorchScript (StyleGAN-V's i3d_torchscript.pt): FVD
    arcface_weights: Optional[str] = None  # ArcFace ONNX (insightface's w600k_r50.onnx or the like): CSIM
    fid_frames: int = 25  # frames per video, evenly spaced, for FID (and per driver)
    fvd_frames: int = 16  # frames per FVD clip
    fvd_clips: int = 4  # FVD clips per video, evenly spaced
    csim_frames: int = 16  # frames per video, evenly spaced, for CSIM
    contact_videos: int = 4  # the contact sheet shows this many worst and as many best results by lip sync


def load_evaluation_config(overrides: Sequence[str] = ()) -> EvaluationConfig:
    """Defaults, then ``key=value`` overrides; unknown keys and bad values raise ConfigError naming them."""
    cfg = load_config(EvaluationConfig, None, overrides)
    for key in ("sync_search_frames", "ssim_frames", "fid_frames", "fvd_frames", "fvd_clips", "csim_frames", "contact_videos"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"command line: {key}={getattr(cfg, key)!r} must be >= 1")
    return cfg
