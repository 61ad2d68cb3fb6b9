"""Settings of the curation pipeline (``data_processing/``), overridable as ``key=value``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megactor.config import ConfigError, load_config


@dataclass
class CurationConfig:
    # 1 pack
    clip_seconds: float = 8.0  # longer videos are cut into consecutive clips of at most this length
    min_clip_seconds: float = 2.0  # shorter videos and tail pieces are dropped ("too_short")
    shard_size_mb: float = 256.0  # shards are filled up to this size (a larger clip gets a shard of its own)
    # 2 face filter
    face_backend: str = "mediapipe"
    min_face_size: float = 64.0  # the face box's shorter side: pixels if >= 1, else a fraction of the frame's
    min_valid_fraction: float = 0.9  # frames with exactly one complete face of sufficient size
    # 3 audio filter
    min_sync_score: float = 0.2  # lip-sync correlation at the best lag (metrics/lipsync.py)
    max_sync_lag: int = 8  # |lag| in frames; the mouth naturally leads the voice by a few frames
    sync_search_frames: int = 15  # lags searched: -this ... +this
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
    if not 0 <= cfg.max_sync_lag <= cfg.sync_search_frames:
        raise ConfigError(f"max_sync_lag={cfg.max_sync_lag} must lie in [0, sync_search_frames={cfg.sync_search_frames}]")
    return cfg
