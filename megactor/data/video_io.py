"""Video and audio IO through PyAV.

Frames are RGB uint8 arrays ``(T, H, W, 3)``; audio is mono float32 in [-1, 1]
at ``sample_rate`` (16 kHz unless asked otherwise, Whisper's rate), on the video's
timeline: sample 0 plays with the first frame, whatever the streams' start times.
Writing is atomic: a temporary file next to the target is renamed over it on success.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain
from typing import Iterable, Iterator, Optional, Union

import av
import numpy as np

from megactor.fileio import atomic_path

AUDIO_RATE = 16000
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
AUDIO_EXTS = (".wav", ".mp3", ".m4a", ".flac", ".aac", ".ogg")


class MediaError(ValueError):
    """A media file that cannot be read or written; the message names the file."""


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    audio: Optional[np.ndarray]  # (S,) float32 mono, or None when there is no audio track
    sample_rate: int = AUDIO_RATE

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _open(path: str):
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: not a readable media file ({e})") from None
    check_not_still(container, path)
    return container


def check_not_still(container, name: str) -> None:
    """MediaError (closing ``container``) when FFmpeg read the file as a still image (PNG, JPEG, ... whatever its
    extension says): one picture is not a video of one frame."""
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):
        container.close()
        raise MediaError(f"{name}: is a still image ({fmt.removesuffix('_pipe')}), not a video")


def probe(path: str) -> dict:
    """Stream facts without decoding: fps, frame count (estimated), size, duration, audio presence."""
    with _open(path) as c:
        info = {"has_video": bool(c.streams.video), "has_audio": bool(c.streams.audio)}
        if c.streams.video:
            v = c.streams.video[0]
            fps = float(v.average_rate or v.guessed_rate or 0)
            dur = float(v.duration * v.time_base) if v.duration else (c.duration or 0) / av.time_base
            info.update(fps=fps, width=v.width, height=v.height, duration=dur,
                        num_frames=v.frames or int(round(dur * fps)))
        if c.streams.audio:
            a = c.streams.audio[0]
            info.update(sample_rate=a.rate, channels=a.channels)
            info.setdefault("duration", (c.duration or 0) / av.time_base)
    return info


def _audio_chunks(container, sample_rate: int) -> Iterator[np.ndarray]:
    """The first audio track as consecutive (n,) float32 mono chunks at ``sample_rate``, on the video's timeline.

    Sample 0 is the time of the first video frame (the video stream's start time): an audio track that
    starts later is preceded by silence, one that starts earlier loses what comes before. The first
    decoded audio frame's time is the audio's start (the decoder has already dropped any encoder
    priming it was told to skip). Without a video stream the audio starts at its own first sample.
    """
    stream = container.streams.audio[0]
    video = container.streams.video[0] if container.streams.video else None
    origin = None
    if video is not None and video.start_time is not None:
        origin = float(video.start_time * video.time_base)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    skip, started = 0, False
    for frame in chain(container.decode(stream), [None]):
        if frame is not None and not started:
            started = True
            if origin is not None and frame.time is not None:
                offset = int(round((frame.time - origin) * sample_rate))
                if offset > 0:
                    yield np.zeros(offset, np.float32)
                skip = max(0, -offset)
        if frame is not None:
            frame.pts = None  # let the resampler run on sample counts, not on possibly broken timestamps
        for out in resampler.resample(frame):  # None flushes
            chunk = out.to_ndarray().reshape(-1)
            cut = min(skip, chunk.size)
            skip -= cut
            if chunk.size > cut:
                yield chunk[cut:]


def decode_audio_stream(container, sample_rate: int = AUDIO_RATE, max_seconds: Optional[float] = None) -> np.ndarray:
    """An open PyAV container's first audio track -> (S,) mono at `sample_rate` on the video's timeline
    (``_audio_chunks``), its first `max_seconds` and no more than the track's declared length (decoders also
    return the codec's end padding). For callers that open the media themselves (in-memory shard samples);
    files go through read_audio."""
    stream = container.streams.audio[0]
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
        max_seconds = declared if max_seconds is None else min(max_seconds, declared)
    limit = None if max_seconds is None else int(round(max_seconds * sample_rate))
    chunks, total = [], 0
    for chunk in _audio_chunks(container, sample_rate):
        chunks.append(chunk)
        total += chunk.size
        if limit is not None and total >= limit:
            break
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio[:limit] if limit is not None else audio


def iter_audio(path: str, sample_rate: int = AUDIO_RATE) -> Iterator[np.ndarray]:
    """The first audio track of ``path`` as consecutive float32 mono chunks on the video's timeline, decoded as
    they are asked for (a long file's audio need not fit in memory). MediaError names the file."""
    container = _open(path)
    if not container.streams.audio:
        container.close()
        raise MediaError(f"{path}: has no audio track")

    def chunks() -> Iterator[np.ndarray]:
        try:
            yield from _audio_chunks(container, sample_rate)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: audio could not be decoded ({e})") from None
        finally:
            container.close()

    return chunks()


def read_audio(path: str, sample_rate: int = AUDIO_RATE, max_seconds: Optional[float] = None) -> np.ndarray:
    """The first audio track of any file PyAV reads (wav/mp3/m4a/flac or a video), mono, resampled."""
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: has no audio track")
        try:
            return decode_audio_stream(c, sample_rate, max_seconds).astype(np.float32)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: audio could not be decoded ({e})") from None


def read_video(path: str, max_seconds: Optional[float] = None, with_audio: bool = True,
               sample_rate: int = AUDIO_RATE) -> Clip:
    """Decode RGB frames, fps and (if present and asked for) the audio track, resampled to mono."""
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: has no video track")
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        fps = float(v.average_rate or v.guessed_rate or 0)
        if fps <= 0:
            raise MediaError(f"{path}: unknown frame rate")
        max_frames = None if max_seconds is None else max(1, int(round(max_seconds * fps)))
        frames = []
        try:
            for frame in c.decode(v):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.FFmpegError as e:
            if not frames:
                raise MediaError(f"{path}: video could not be decoded ({e})") from None
            # A truncated file: keep what decoded.
        if not frames:
            raise MediaError(f"{path}: contains no video frames")
    audio = None
    if with_audio and probe(path)["has_audio"]:
        audio = read_audio(path, sample_rate, max_seconds=len(frames) / fps)
    return Clip(np.stack(frames), fps, audio, sample_rate)


def fit_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim or zero-pad ``audio`` to exactly ``num_samples``."""
    if audio.size >= num_samples:
        return audio[:num_samples]
    return np.pad(audio, (0, num_samples - audio.size))


def _even_frame(img: np.ndarray, path: str) -> np.ndarray:
    """A (H, W, 3) uint8 frame padded by one edge pixel where H or W is odd (yuv420p needs even sizes)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"write_video({path}): frames must be uint8 (T, H, W, 3), got {img.dtype} {img.shape} frames")
    if img.shape[0] % 2 or img.shape[1] % 2:
        img = np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0)), mode="edge")
    return img


def write_video(path: str, frames: Union[np.ndarray, Iterable[np.ndarray]], fps: float,
                audio: Optional[np.ndarray] = None, sample_rate: int = AUDIO_RATE, crf: int = 18) -> None:
    """Write H.264 (yuv420p) mp4 with an optional mono AAC track, atomically.

    ``frames``: a (T, H, W, 3) uint8 array, or an iterable of (H, W, 3) frames, encoded as they come (a
    stream need not fit in memory). The audio is trimmed or padded to the video's duration. Odd sizes are
    padded by one edge pixel, as yuv420p needs even ones.
    """
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise ValueError(f"write_video({path}): frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"write_video({path}): no frames")
    first = _even_frame(first, path)
    with atomic_path(path) as tmp:
        with av.open(tmp, "w", format="mp4") as c:
            vs = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vs.width, vs.height = first.shape[1], first.shape[0]
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(crf)}
            astream = None
            if audio is not None:
                astream = c.add_stream("aac", rate=sample_rate)
                astream.layout = "mono"
            count = 0
            for img in chain([first], frames):
                img = _even_frame(img, path) if count else img
                if img.shape != first.shape:
                    raise ValueError(f"write_video({path}): frame {count} is {img.shape}, the first {first.shape}")
                c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
                count += 1
            c.mux(vs.encode())
            if astream is not None:
                n = int(round(count / fps * sample_rate))
                samples = np.clip(fit_audio(np.asarray(audio, np.float32), n), -1.0, 1.0)
                block = 1024
                for start in range(0, n, block):
                    af = av.AudioFrame.from_ndarray(samples[None, start:start + block], format="flt", layout="mono")
                    af.sample_rate = sample_rate
                    af.pts = start
                    c.mux(astream.encode(af))
                c.mux(astream.encode())
