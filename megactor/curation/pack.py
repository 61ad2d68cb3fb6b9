"""Step 1, pack: videos found under the input folder -> clips of at most ``clip_seconds`` in shards.

Each clip is re-encoded (H.264 + AAC, audio 16 kHz mono) and described by a
json: its source, start, fps, frame count, size, and the source's sidecar
``<video>.json`` if there is one, with per-frame lists cut to the clip.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from itertools import chain, islice
from typing import Any, Iterator

import numpy as np

from megactor.curation.config import CurationConfig
from megactor.curation.runner import Item, Step
from megactor.data.shards import iter_frames
from megactor.data.video_io import AUDIO_RATE, VIDEO_EXTS, MediaError, fit_audio, probe, read_audio, write_video


def item_key(rel_path: str) -> str:
    """A unique, file-name and webdataset safe key for a relative path: readable stem + path hash."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(rel_path)[0]).strip("_")[-60:]
    return f"{stem}-{hashlib.sha1(rel_path.encode()).hexdigest()[:8]}"


def find_videos(folder: str, exclude: str | None = None) -> list[str]:
    """Video files under ``folder`` (recursively, by extension, case-insensitive), sorted relative paths; the
    folder ``exclude`` (the curation's own output, when it lies inside the input) is not entered."""
    found = []
    skip = os.path.realpath(exclude) if exclude else None
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip)
        found += [os.path.relpath(os.path.join(root, n), folder) for n in files
                  if os.path.splitext(n)[1].lower() in VIDEO_EXTS and not n.startswith(".")]
    return sorted(found)


def slice_per_frame(meta: Any, total: int, start: int, stop: int) -> Any:
    """Cut every list of length ``total`` (a per-frame list) in ``meta`` to [start, stop), recursively."""
    if isinstance(meta, dict):
        return {k: slice_per_frame(v, total, start, stop) for k, v in meta.items()}
    if isinstance(meta, list):
        return meta[start:stop] if len(meta) == total else [slice_per_frame(v, total, start, stop) for v in meta]
    return meta


def chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive (<= size, H, W, 3) stacks of ``frames``."""
    while chunk := list(islice(frames, size)):
        yield np.stack(chunk)


class Pack(Step):
    name, folder = "pack", "1_pack"

    def items(self, in_dir: str, out_dir: str) -> list[Item]:
        if not os.path.isdir(in_dir):
            raise FileNotFoundError(f"input folder {in_dir} does not exist")
        videos = [Item(item_key(rel), (rel, os.path.join(in_dir, rel))) for rel in find_videos(in_dir, out_dir)]
        return sorted(videos, key=lambda it: it.key)

    def process(self, item: Item, cfg: CurationConfig, item_dir: str) -> list[dict]:
        rel, path = item.source

        def failed(reason: str, error: str = "") -> list[dict]:
            return [{"record": {"key": None, "source": rel, "reason": reason, "error": error}, "json": None, "mp4": None}]

        try:
            info = probe(path)
            if not info["has_video"]:
                return failed("no_video")
            if not info["has_audio"]:
                return failed("no_audio")
            audio = read_audio(path, AUDIO_RATE)
            fps, frames = iter_frames(path, path)
            first = next(frames, None)
        except MediaError as e:
            return failed("unreadable", str(e))
        if first is None:
            return failed("unreadable", f"{path}: contains no video frames")
        sidecar = os.path.splitext(path)[0] + ".json"
        try:
            meta = json.load(open(sidecar)) if os.path.isfile(sidecar) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return failed("bad_sidecar", f"{sidecar}: {e}")

        clip_frames = max(1, int(round(cfg.clip_seconds * fps)))
        min_frames = math.ceil(cfg.min_clip_seconds * fps)
        clips, starts = [], []
        for index, clip in enumerate(chunks(chain([first], frames), clip_frames)):
            start = index * clip_frames
            key = f"{item.key}_{index:03d}"
            record = {"key": key, "source": rel, "clip_index": index, "clip_start": start / fps,
                      "num_frames": len(clip), "fps": fps, "duration": len(clip) / fps,
                      "height": clip.shape[1], "width": clip.shape[2], "reason": None}
            if len(clip) < min_frames:
                clips.append({"record": {**record, "reason": "too_short"}, "json": None, "mp4": None})
                continue
            a0 = int(round(start / fps * AUDIO_RATE))
            n = int(round(len(clip) / fps * AUDIO_RATE))
            mp4 = os.path.join(item_dir, key + ".mp4")
            write_video(mp4, clip, fps, fit_audio(audio[a0:a0 + n], n), AUDIO_RATE)
            sample = {"key": key, "source": rel, "clip_index": index, "start_frame": start, "clip_start": start / fps,
                      "fps": fps, "sample_rate": AUDIO_RATE, "num_frames": len(clip),
                      "height": int(clip.shape[1]), "width": int(clip.shape[2]), "metrics": {}}
            clips.append({"record": record, "json": sample,
                          "mp4": {"path": mp4, "offset": 0, "size": os.path.getsize(mp4)}})
            starts.append((len(clips) - 1, start, start + len(clip)))
        total = sum(c["record"]["num_frames"] for c in clips)
        if meta is not None:
            for i, start, stop in starts:
                clips[i]["json"]["source_meta"] = slice_per_frame(meta, total, start, stop)
        return clips
