"""Settings of the curation pipeline (``data_processing/``), overridable as ``key=value``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megactor.config import ConfigError, check_face_backend, load_config


@dataclass
class CurationConfig:
    # 1 pack
    clip_seconds: float = 8.0  # longer videos are cut into consecutive clips of at most this length
    min_clip_seconds: float = 2.0  # shorter videos and tail pieces are dropped ("too_short")
    shard_size_mb: float = 256.0  # shards are filled up to this size (a larger clip gets a shard of its own)
    require_audio: bool = False  # True: a video without an audio track is dropped ("no_audio"); False: kept visual-only
    # 2 face filter
    face_backend: str = "mediapipe"  # or "dwpose" (needs dwpose_det_model and dwpose_pose_model)
    dwpose_det_model: Optional[str] = None  # DWPose's YOLOX person detector, ONNX (e.g. yolox_l.onnx)
    dwpose_pose_model: Optional[str] = None  # DWPose's RTMPose whole-body model, ONNX (e.g. dw-ll_ucoco_384.onnx)
    min_face_size: float = 64.0  # the face box's shorter side: pixels if >= 1, else a fraction of the frame's
    min_valid_fraction: float = 0.9  # frames with exactly one complete face of sufficient size
    # 3 audio filter
    syncnet_weights: Optional[str] = None  # SyncNet state dict (syncnet_v2.model): score with SyncNet instead
    min_sync_score: float = 2.0  # lip_sync's confidence: the best lag's z-score over the lags searched
    min_syncnet_confidence: float = 3.0  # SyncNet's confidence (median - min distance), with syncnet_weights
    min_sync_lag_ms: float = -100.0  # the best lag must lie in this window; > 0: the audio is late. The mouth
    max_sync_lag_ms: float = 300.0  # leads the voice by 100-300 ms in natural speech (metrics/lipsync.py)
    sync_search_frames: int = 25  # lags searched: -this ... +this (covers a 15-frame shift plus the natural lead)
    min_audio_rms: float = 1e-3  # quieter audio is "silent_audio"
    max_yaw: float = 45.0  # degrees, robust extent (95th percentile of |angle| over valid frames)
    max_pitch: float = 35.0
    max_roll: float = 30.0
    max_motion: float = 3.0  # face sizes (inter-ocular distances) per second, 95th percentile
    # running
    workers: int = 1


def load_curation_config(overrides: Sequence[str] = (), path: Optional[str] = None) -> CurationConfig:
    """Defaults, then the YAML ``path``, then ``key=value`` overrides; unknown keys raise ConfigError."""
    cfg = load_config(CurationConfig, path, overrides)
    for key in ("clip_seconds", "min_clip_seconds", "shard_size_mb", "min_face_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{path or 'command line'}: {key}={getattr(cfg, key)!r} must be > 0")
    if cfg.min_clip_seconds > cfg.clip_seconds:
        raise ConfigError(f"min_clip_seconds={cfg.min_clip_seconds} exceeds clip_seconds={cfg.clip_seconds}")
    if not 0.0 <= cfg.min_valid_fraction <= 1.0:
        raise ConfigError(f"min_valid_fraction={cfg.min_valid_fraction!r} must lie in [0, 1]")
    if cfg.workers < 1:
        raise ConfigError(f"workers={cfg.workers!r} must be >= 1")
    if cfg.min_sync_lag_ms > cfg.max_sync_lag_ms:
        raise ConfigError(f"min_sync_lag_ms={cfg.min_sync_lag_ms} exceeds max_sync_lag_ms={cfg.max_sync_lag_ms}")
    if cfg.sync_search_frames < 1:
        raise ConfigError(f"sync_search_frames={cfg.sync_search_frames!r} must be >= 1")
    check_face_backend(path or "command line", cfg)
    return cfg
