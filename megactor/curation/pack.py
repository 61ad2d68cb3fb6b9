"""Step 1, pack: videos found under the input folder -> clips of at most ``clip_seconds`` in shards.

A video is cut into the fewest equal pieces that keep each within ``clip_seconds``
(``piece_lengths``): a 10 s video gives two clips of 5 s, not 8 s and a 2 s tail.
No clip is then shorter than half of ``clip_seconds`` unless its video is, which
gives the sync filter enough syllables to judge every piece, and training clips
of even length. Where equal pieces would fall under ``min_clip_seconds`` (a
minimum near ``clip_seconds``), the video is cut into full clips and a tail.

Each clip is re-encoded (H.264 + AAC, audio 16 kHz mono, on the video's
timeline) and described by a json: its source, start, fps, frame count, size,
whether it has audio, and the source's sidecar ``<video>.json`` if there is
one, with per-frame lists cut to the clip. Frames go from the decoder to the
encoder one at a time and the audio is decoded as the clips need it, so a
worker's memory does not grow with the video's length. A video without an
audio track is packed visual-only (``has_audio: false``) unless
``require_audio`` is set, which drops it ("no_audio").
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from itertools import chain, count, islice
from typing import Any, Iterable, Iterator

import numpy as np

from megactor.curation.config import CurationConfig
from megactor.curation.runner import Item, Step
from megactor.data.shards import iter_frames
from megactor.data.video_io import AUDIO_RATE, VIDEO_EXTS, MediaError, fit_audio, iter_audio, probe, write_video


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


def piece_lengths(num_frames: int, clip_frames: int, min_frames: int) -> Iterator[int]:
    """Frame counts of the consecutive pieces of a video of ``num_frames`` (probe's estimate): the fewest
    equal pieces of at most ``clip_frames``; where those would be shorter than ``min_frames`` (and dropped),
    pieces of ``clip_frames`` and a tail. Frames beyond the estimate come in pieces of ``clip_frames``."""
    n = math.ceil(num_frames / clip_frames)
    if n > 0 and num_frames // n >= min_frames:
        bounds = [i * num_frames // n for i in range(n + 1)]
        yield from (stop - start for start, stop in zip(bounds, bounds[1:]))
    while True:
        yield clip_frames


class Counted:
    """Passes the items of an iterable through, counting them."""

    def __init__(self, items: Iterable):
        self.items, self.count = iter(items), 0

    def __iter__(self) -> Iterator:
        for item in self.items:
            self.count += 1
            yield item


class SampleStream:
    """Consecutive pieces of an audio track, by sample count, from a stream of decoded chunks."""

    def __init__(self, chunks: Iterator[np.ndarray]):
        self.chunks, self.buffer = chunks, np.zeros(0, np.float32)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples (zero-padded past the track's end)."""
        parts, have = [self.buffer], self.buffer.size
        while have < n and (chunk := next(self.chunks, None)) is not None:
            parts.append(chunk)
            have += chunk.size
        data = np.concatenate(parts)
        self.buffer = data[n:]
        return fit_audio(data[:n], n)


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
            if not info["has_audio"] and cfg.require_audio:
                return failed("no_audio")
            audio = SampleStream(iter_audio(path, AUDIO_RATE)) if info["has_audio"] else None
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
        frames = chain([first], frames)
        clips, starts, stop = [], [], 0
        for index, length in enumerate(piece_lengths(info["num_frames"], clip_frames, min_frames)):
            head = next(frames, None)  # one frame ahead: is there another clip?
            if head is None:
                break
            start, stop = stop, stop + length
            key = f"{item.key}_{index:03d}"
            n = int(round(stop / fps * AUDIO_RATE)) - int(round(start / fps * AUDIO_RATE))
            try:
                clip_audio = audio.take(n) if audio is not None else None
            except MediaError as e:
                return failed("unreadable", str(e))
            mp4 = os.path.join(item_dir, key + ".mp4")
            written = Counted(chain([head], islice(frames, length - 1)))
            write_video(mp4, written, fps, clip_audio, AUDIO_RATE)  # frames go to the encoder one at a time
            record = {"key": key, "source": rel, "clip_index": index, "clip_start": start / fps,
                      "num_frames": written.count, "fps": fps, "duration": written.count / fps,
                      "height": int(head.shape[0]), "width": int(head.shape[1]), "has_audio": audio is not None,
                      "reason": None}
            if written.count < min_frames:
                os.remove(mp4)
                clips.append({"record": {**record, "reason": "too_short"}, "json": None, "mp4": None})
                continue
            sample = {"key": key, "source": rel, "clip_index": index, "start_frame": start, "clip_start": start / fps,
                      "fps": fps, "sample_rate": AUDIO_RATE, "num_frames": written.count,
                      "height": int(head.shape[0]), "width": int(head.shape[1]), "has_audio": audio is not None,
                      "metrics": {}}
            clips.append({"record": record, "json": sample,
                          "mp4": {"path": mp4, "offset": 0, "size": os.path.getsize(mp4)}})
            starts.append((len(clips) - 1, start, start + written.count))
        total = sum(c["record"]["num_frames"] for c in clips)
        if meta is not None:
            for i, start, stop in starts:
                clips[i]["json"]["source_meta"] = slice_per_frame(meta, total, start, stop)
        return clips
