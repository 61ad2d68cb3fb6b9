"""Step 3, audio filter: the voice must match the mouth, and the head must stay within limits.

Per clip: the lip-sync score and lag (``metrics.lipsync.lip_sync``: mouth
opening from step 2 against the audio's speech envelope), the audio's RMS, and
the head-pose extent and motion measured in step 2. Clips are dropped, in this
order of reasons, for: "silent_audio", "low_sync" (score < min_sync_score),
"sync_lag" (|lag| > max_sync_lag), "head_pose" (yaw/pitch/roll beyond their
limits), "motion" (faster than max_motion). Every threshold applies when the
step assembles its shards. The kept clips are the pipeline's final shards.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from megactor.curation.config import CurationConfig
from megactor.curation.face_filter import FaceFilter
from megactor.curation.runner import Item, Step, shard_items
from megactor.data.shards import decode_audio
from megactor.data.video_io import MediaError, fit_audio
from megactor.metrics.lipsync import lip_sync


class AudioFilter(Step):
    name, folder = "audio", "3_audio"

    def shard_dir(self, out_dir: str) -> str:
        return os.path.join(out_dir, "shards")

    def items(self, in_dir: str, out_dir: str) -> list[Item]:
        return shard_items(FaceFilter().shard_dir(out_dir), "2_face_filter.py")

    def process(self, item: Item, cfg: CurationConfig, item_dir: str) -> list[dict]:
        ref = item.source
        name = f"{ref.shard}:{ref.key}"
        try:
            sample = ref.read_json()
            fps, rate = float(sample["fps"]), int(sample["sample_rate"])
            audio = fit_audio(decode_audio(ref.read("mp4"), name, rate), int(round(sample["num_frames"] / fps * rate)))
            mouth = np.array([np.nan if m is None else m for m in sample["faces"]["mouth_opening"]])
        except (MediaError, ValueError, KeyError, OSError) as e:
            return [{"record": {"key": ref.key, "source": name, "reason": "unreadable", "error": str(e)},
                     "json": None, "mp4": None}]
        metrics = {"audio_rms": float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0}
        try:
            sync = lip_sync(mouth, audio, rate, fps, cfg.sync_search_frames)
            metrics.update(sync_score=sync.score, sync_lag=sync.lag)
        except ValueError as e:  # too short, or no mouth measured
            metrics.update(sync_score=float("nan"), sync_lag=None, sync_error=str(e))
        sample["metrics"] = {**sample["metrics"], **metrics}
        record = {"key": ref.key, "source": sample.get("source", name), **sample["metrics"], "reason": None}
        offset, size = ref.members["mp4"]
        return [{"record": record, "json": sample, "mp4": {"path": os.path.abspath(ref.shard), "offset": offset, "size": size}}]

    def decide(self, record: dict, cfg: CurationConfig) -> Optional[str]:
        if record["audio_rms"] < cfg.min_audio_rms:
            return "silent_audio"
        if not record["sync_score"] >= cfg.min_sync_score:  # NaN (not scorable) fails too
            return "low_sync"
        if abs(record["sync_lag"]) > cfg.max_sync_lag:
            return "sync_lag"
        if record["yaw"] > cfg.max_yaw or record["pitch"] > cfg.max_pitch or record["roll"] > cfg.max_roll:
            return "head_pose"
        if record["motion"] > cfg.max_motion:
            return "motion"
        return None
