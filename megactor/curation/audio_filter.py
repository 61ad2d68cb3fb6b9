"""Step 3, audio filter: the voice must match the mouth, and the head must stay within limits.

Per clip: the audio's RMS, the lip-sync confidence and lag, and the head-pose
extent and motion measured in step 2. The scorer is ``metrics.lipsync.lip_sync``
(canonical correlation of the mouth's appearance recorded in step 2 with five
audio bands; no weights), or SyncNet when ``syncnet_weights`` names its state
dict (on face crops cut around step 2's boxes); the "sync_scorer" column says
which ran. Clips are dropped, in this order of reasons, for: "silent_audio",
"low_sync" (confidence under ``min_sync_score``, or ``min_syncnet_confidence``
for SyncNet), "sync_lag" (the best lag outside ``min_sync_lag_ms`` ...
``max_sync_lag_ms``), "head_pose" (yaw/pitch/roll beyond their limits),
"motion" (faster than ``max_motion``). A visual-only clip (``has_audio`` false
in its json) skips the audio reasons. A clip too short for a verdict of the
weight-free scorer (``verdict_frames``: ``sync_search_frames`` plus a second)
is not scored and not dropped for its audio: it is
kept with ``audio_unverified`` true, and training uses it as it uses a
visual-only clip (visual and undriven samples). Every threshold applies when
the step assembles its shards. The kept clips are the pipeline's final shards.
"""
from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np

from megactor.curation.config import CurationConfig
from megactor.curation.face_filter import FaceFilter
from megactor.curation.runner import Item, Step, shard_items
from megactor.data.control import syncnet_crop
from megactor.data.face import lip_measures
from megactor.data.shards import decode_audio, iter_frames, unpack_array
from megactor.data.video_io import MediaError, fit_audio
from megactor.metrics.lipsync import sync_columns
from megactor.metrics.syncnet import FPS as SYNCNET_FPS
from megactor.metrics.syncnet import SyncNetScorer

def audio_rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def sync_signal(faces: dict) -> np.ndarray:
    """A clip's per-frame lip signal for ``lip_sync`` from its "faces" json: the mouth's appearance
    components, or (shards made before those were recorded) the lip measures of its landmarks."""
    if "mouth_appearance" in faces:
        return unpack_array(faces["mouth_appearance"])  # (T, 3), NaN without one face
    return lip_measures(unpack_array(faces["landmarks"]))  # (T, 2)


def verdict_frames(fps: float, cfg: CurationConfig) -> int:
    """The fewest frames on which the weight-free scorer gives a verdict. ``lip_sync`` searches a clip of T
    frames at lags up to +-(T - fps) / 2 (at most ``sync_search_frames``), so at this length it searches half
    the configured range: +-12 frames at 25 fps with the default 25, beyond the widest lag the filter accepts
    (+300 ms). The full range would need 2 x ``sync_search_frames`` + fps frames (75 at 25 fps), and would
    make every 2-s clip, the quickstart's synthetic ones included, visual-only. On a shorter clip the search
    ends inside or near the accepted window and a verdict would be a guess."""
    return cfg.sync_search_frames + int(np.ceil(fps))


def measure_sync(lips: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, cfg: CurationConfig) -> dict:
    """(T, K) lip signal (``sync_signal``; NaN where no face) and the clip's audio -> the weight-free scorer's
    sync columns (``metrics.lipsync.sync_columns``); ``audio_unverified`` for a clip shorter than
    ``verdict_frames``."""
    if len(lips) < verdict_frames(fps, cfg):
        return {"sync_scorer": "lipsync", "sync_score": float("nan"), "sync_lag": None, "sync_lag_ms": None,
                "audio_unverified": True,
                "sync_error": f"{len(lips)} frames: a verdict needs {verdict_frames(fps, cfg)} at {fps:g} fps"}
    return {"sync_scorer": "lipsync", **sync_columns(lips, audio, sample_rate, fps, cfg.sync_search_frames),
            "audio_unverified": False}


def face_crops(video: bytes, name: str, boxes: list, size: int = 224) -> np.ndarray:
    """(T, size, size, 3) face crops as SyncNet's reference pipeline cuts them around each frame's face box
    (missing boxes take the nearest frame's; ``data.control.syncnet_crop``), decoded one frame at a time."""
    known = [i for i, b in enumerate(boxes) if b is not None]
    if not known:
        raise ValueError(f"{name}: no face box to crop")
    nearest = np.asarray(known)
    crops = []
    _, frames = iter_frames(io.BytesIO(video), name)
    for i, frame in enumerate(frames):
        if i >= len(boxes):
            frames.close()
            break
        crops.append(syncnet_crop(frame, boxes[int(nearest[np.abs(nearest - i).argmin()])], size))
    return np.stack(crops)


def sync_reason(record: dict, cfg: CurationConfig) -> Optional[str]:
    """The audio reason to drop a clip ("silent_audio", "low_sync", "sync_lag"), or None; none for visual-only
    clips and clips too short for a verdict (their audio is not used)."""
    if not record.get("has_audio", True) or record.get("audio_unverified", False):
        return None
    if record["audio_rms"] < cfg.min_audio_rms:
        return "silent_audio"
    threshold = cfg.min_syncnet_confidence if record["sync_scorer"] == "syncnet" else cfg.min_sync_score
    if not record["sync_score"] >= threshold:  # NaN (not scorable) fails too
        return "low_sync"
    if not cfg.min_sync_lag_ms <= record["sync_lag_ms"] <= cfg.max_sync_lag_ms:
        return "sync_lag"
    return None


class AudioFilter(Step):
    name, folder = "audio", "3_audio"

    def __init__(self):
        self.syncnet: Optional[SyncNetScorer] = None

    def shard_dir(self, out_dir: str) -> str:
        return os.path.join(out_dir, "shards")

    def items(self, in_dir: str, out_dir: str) -> list[Item]:
        return shard_items(FaceFilter().shard_dir(out_dir), "2_face_filter.py")

    def setup(self, cfg: CurationConfig) -> None:
        if cfg.syncnet_weights:
            self.syncnet = SyncNetScorer(cfg.syncnet_weights)

    def teardown(self) -> None:
        self.syncnet = None

    def process(self, item: Item, cfg: CurationConfig, item_dir: str) -> list[dict]:
        ref = item.source
        name = f"{ref.shard}:{ref.key}"
        try:
            sample = ref.read_json()
            fps, has_audio = float(sample["fps"]), bool(sample.get("has_audio", True))
            if has_audio:
                rate = int(sample["sample_rate"])
                audio = fit_audio(decode_audio(ref.read("mp4"), name, rate), int(round(sample["num_frames"] / fps * rate)))
            lips = sync_signal(sample["faces"])
        except (MediaError, ValueError, KeyError, OSError) as e:
            return [{"record": {"key": ref.key, "source": name, "reason": "unreadable", "error": str(e)},
                     "json": None, "mp4": None}]
        if not has_audio:
            metrics = {"has_audio": False, "audio_rms": float("nan"), "sync_scorer": None,
                       "sync_score": float("nan"), "sync_lag": None, "sync_lag_ms": None}
        elif self.syncnet is not None:
            metrics = {"has_audio": True, "audio_rms": audio_rms(audio), **self.syncnet_metrics(ref.read("mp4"), name, sample["faces"]["boxes"], audio, rate, fps, cfg)}
        else:
            metrics = {"has_audio": True, "audio_rms": audio_rms(audio), **measure_sync(lips, audio, rate, fps, cfg)}
        sample["metrics"] = {**sample["metrics"], **metrics}
        sample["audio_unverified"] = bool(metrics.get("audio_unverified", False))
        record = {"key": ref.key, "source": sample.get("source", name), **sample["metrics"], "reason": None}
        offset, size = ref.members["mp4"]
        return [{"record": record, "json": sample, "mp4": {"path": os.path.abspath(ref.shard), "offset": offset, "size": size}}]

    def syncnet_metrics(self, video: bytes, name: str, boxes: list, audio: np.ndarray, rate: int, fps: float,
                        cfg: CurationConfig) -> dict:
        """SyncNet's sync columns for one clip (its lag in SyncNet's 25 fps frames)."""
        try:
            crops = face_crops(video, name, boxes)
            sync = self.syncnet.score(crops, audio, fps, rate, cfg.sync_search_frames)
        except ValueError as e:
            return {"sync_scorer": "syncnet", "sync_score": float("nan"), "sync_lag": None, "sync_lag_ms": None,
                    "sync_error": str(e)}
        return {"sync_scorer": "syncnet", "sync_score": sync.score, "sync_lag": sync.lag,
                "sync_lag_ms": sync.lag * 1000.0 / SYNCNET_FPS}

    def decide(self, record: dict, cfg: CurationConfig) -> Optional[str]:
        reason = sync_reason(record, cfg)
        if reason is not None:
            return reason
        if record["yaw"] > cfg.max_yaw or record["pitch"] > cfg.max_pitch or record["roll"] > cfg.max_roll:
            return "head_pose"
        if record["motion"] > cfg.max_motion:
            return "motion"
        return None
