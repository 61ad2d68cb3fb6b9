"""Training clips from curated shards: an endless, shuffled, exactly resumable stream.

Stream. The samples of every shard under ``cfg.data_dirs`` are listed once,
sorted by (shard path, key), from the tar headers (``shards.index_shard``).
Epoch ``e`` shuffles them with a permutation drawn from ``(seed, e)``. The
DataLoader worker ``w`` of ``W`` on rank ``r`` of ``R`` is stream ``g = r * W + w``
of ``G = R * W`` and takes every G-th sample of the permutation, starting at
``g``; its stream is its share of epoch 0, then of epoch 1, and so on. Within
an epoch the shares are disjoint and cover the data set (up to the last
``N mod G`` samples' being spread unevenly).

Position -> sample. Everything random about the sample at position ``p`` of
stream ``g`` comes from a generator seeded with ``(seed, epoch, sample index)``
and drawn in a fixed order: clip start, reference frame, mode, augmentation.
No state passes between samples, so the stream is a pure function of
``(seed, R, W, position)``.

Exact resume. The DataLoader takes batch ``b`` from worker ``b % W``, each
batch being that worker's next ``batch_size`` samples; after ``n`` batches,
worker ``w`` has delivered ``ceil((n - w) / W)`` of them. A new DataLoader
starts again at worker 0, so with ``skip_batches=n`` worker ``w`` takes over
the stream of worker ``(w + n) % W`` and starts at that stream's first
undelivered position, ``batch_size * ceil((n - (w + n) % W) / W)``: batch ``j``
of the resumed run is batch ``n + j`` of a fresh one, and nothing before it
is read or decoded (plan first, decode later). With ``frame_cache_mb``, each
loading process keeps decoded clips in memory (`FrameCache`); samples are the
same with it or without.

Corrupt samples (undecodable video, bad json, too few valid frames) are
skipped and counted (``skipped``, with a warning giving the running total),
and the position is filled with another sample of the same share, picked
from ``(seed, epoch, stream, position, attempt)``; positions never depend on
what decoded, so resuming stays exact. The replacement is the one way a
sample can appear twice in an epoch.

Iterating in the main process and then forking DataLoader workers from it can
deadlock the workers in OpenCV's thread pool; a DataLoader alone (the trainer's
use) or ``multiprocessing_context="forkserver"`` is safe.

A visual-only clip (``has_audio`` false in its json: its video had no audio
track) gives only visual and undriven samples, with silence as their "audio";
so does a clip whose audio the curation could not verify (``audio_unverified``
true: too short for a sync verdict), its audio left unused.

Per sample: ``video_length`` frames at ``frame_stride`` (a start drawn
uniformly among those whose frames are all valid), a reference frame of the
same clip at least ``ref_min_distance`` frames from every sampled frame (else
the farthest valid frame), one face-centred square crop around the union of
these frames' face boxes, resized to ``sample_size``; the mode (visual,
audio, both, or none: the reference alone, for guidance's unconditional
branch) drawn with the configured ratios; control frames from
``control.control_frames``: eyes+mouth for visual, eyes for both, black for
audio and none. The driver is the augmented crops; the pose it is aligned onto
is the clip's own (the per-point median of the sampled frames' landmarks), so
that every part in the control lies where the target frame has it. (Aligned
onto the reference instead, as inference aligns a driver onto its source, the
control would sit off the target by the head's motion between the reference
and the target frames: in a one-frame sample, by all of it. The model then
cannot tell where the parts go, and learns to ignore the control.)

Augmentation (one draw per sample, on the driver crops before control
extraction, against identity leakage through the control): an affine warp
with rotation, independent x/y scales and translation, and brightness and
contrast jitter. The alignment is a similarity, which absorbs rotation,
uniform scale and translation, so what reaches the control is
the change of aspect (x vs y scale) of eyes and mouth and of their contrast;
colour and saturation do not survive the grayscale control and are not drawn.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from collections import OrderedDict
from itertools import count
from typing import Any, Iterator, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from megactor.config import AugmentConfig, ConfigError, TrainDataConfig
from megactor.data.control import (control_frames, crop_and_resize, crop_matrix, face_crop_box, patch_mask,
                                   transform_points, warp_frames)
from megactor.data.shards import (SampleRef, data_dir_shards, decode_audio, decode_frames, decode_selected_frames,
                                  index_shard, unpack_array)
from megactor.data.video_io import MediaError, fit_audio

log = logging.getLogger(__name__)

MODES = ("visual", "audio", "both", "none")
CONTROL_MODE = {"visual": "eyes+mouth", "both": "eyes"}  # the others have a black control
MAX_ATTEMPTS = 16


def _fork_safe_opencv() -> None:
    """OpenCV's pthreads pool does not survive fork(): a DataLoader worker that touches it (cv2.setNumThreads,
    any parallel cv2 call) waits forever on threads that exist only in the parent. Shrink the pool to one
    thread while each fork happens, and give the parent its threads back after."""
    saved = []
    os.register_at_fork(before=lambda: (saved.append(cv2.getNumThreads()), cv2.setNumThreads(1)),
                        after_in_parent=lambda: cv2.setNumThreads(saved.pop()))


_fork_safe_opencv()


class CorruptSample(ValueError):
    """A sample that cannot be used; the message names it and why."""


def require_face_data(ref: SampleRef) -> None:
    """ConfigError when the shard of ``ref`` holds no face records: a shard of the pack step alone (1_pack.py),
    which the face step (2_face_filter.py, or curate.py) turns into training shards."""
    try:
        meta = ref.read_json()
    except (OSError, ValueError, KeyError):
        return  # a corrupt first sample: skipped and counted when it is drawn
    if "faces" not in meta:
        raise ConfigError(f"{ref.shard}: its samples hold no face data (a shard of 1_pack.py alone): run "
                         "data_processing/2_face_filter.py on this curation folder (or curate.py, every step) and "
                         "train on the shards of its 2_face/shards folder (or the last step's)")


def batches_before(skip_batches: int, worker: int, num_workers: int) -> int:
    """How many of the first ``skip_batches`` round-robin batches came from ``worker``."""
    return max(0, math.ceil((skip_batches - worker) / num_workers))


def valid_starts(valid: np.ndarray, length: int, stride: int) -> np.ndarray:
    """(T,) bool -> the starts s whose frames s, s + stride, ..., s + (length - 1) * stride are all valid."""
    span = (length - 1) * stride + 1
    if len(valid) < span:
        return np.zeros(0, np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(valid, span)[:, ::stride]  # (T - span + 1, length)
    return np.flatnonzero(windows.all(1))


def pick_reference(valid: np.ndarray, frames: np.ndarray, min_distance: int, rng: np.random.Generator) -> int:
    """A valid frame at least ``min_distance`` from every frame in ``frames``; else the farthest valid one."""
    candidates = np.flatnonzero(valid)
    distance = np.abs(candidates[:, None] - frames[None, :]).min(1)
    far = candidates[distance >= min_distance]
    if len(far):
        return int(rng.choice(far))
    return int(candidates[np.argmax(distance)])


def draw_mode(u: float, audio_ratio: float, both_ratio: float, uncond_ratio: float = 0.0) -> str:
    """A uniform draw ``u`` in [0, 1) -> the sample's mode; "visual" takes what the ratios leave."""
    for mode, bound in (("audio", audio_ratio), ("both", audio_ratio + both_ratio),
                        ("none", audio_ratio + both_ratio + uncond_ratio)):
        if u < bound:
            return mode
    return "visual"


def plan_sample(valid: np.ndarray, cfg: TrainDataConfig, rng: np.random.Generator,
                has_audio: bool = True) -> tuple[np.ndarray, int, str]:
    """(T,) per-frame validity -> (frame indices (L,), reference frame, mode), drawn in this order from ``rng``.

    A clip without audio gives only visual and undriven ("none") samples: the audio and both modes' shares
    go to visual. Raises CorruptSample when no run of ``video_length`` valid frames at ``frame_stride`` exists.
    """
    starts = valid_starts(valid, cfg.video_length, cfg.frame_stride)
    if not len(starts):
        raise CorruptSample(f"no {cfg.video_length} valid frames at stride {cfg.frame_stride} in {len(valid)}")
    indices = int(rng.choice(starts)) + np.arange(cfg.video_length) * cfg.frame_stride  # (L,)
    ref_index = pick_reference(valid, indices, cfg.ref_min_distance, rng)
    u = rng.random()
    if not has_audio:
        return indices, ref_index, draw_mode(u, 0.0, 0.0, cfg.uncond_ratio)
    return indices, ref_index, draw_mode(u, cfg.use_audio_ratio, cfg.use_both_ratio, cfg.uncond_ratio)


def augment(frames: np.ndarray, landmarks: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, S, S, 3) uint8 crops and (T, N, 2) landmarks -> the same after one random affine and brightness/contrast.

    Draws, in this order: affine? (affine_prob), rotation, x scale, y scale, x/y
    translation, brightness, contrast; all draws happen whether used or not, so
    every sample consumes the generator alike.
    """
    size = frames.shape[1]
    apply_affine = rng.random() < cfg.affine_prob
    angle = np.deg2rad(rng.uniform(-cfg.max_rotate, cfg.max_rotate))
    sx, sy = rng.uniform(1 - cfg.max_scale, 1 + cfg.max_scale, 2)
    shift = rng.uniform(-cfg.max_translate, cfg.max_translate, 2) * size
    brightness, contrast = rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter, 2)
    if apply_affine:
        c, s = np.cos(angle), np.sin(angle)
        linear = np.array([[c, -s], [s, c]]) @ np.diag([sx, sy])
        centre = np.full(2, size / 2)
        matrix = np.concatenate([linear, (centre + shift - linear @ centre)[:, None]], 1)  # (2, 3) about the centre
        frames = warp_frames(frames, matrix, size)
        landmarks = transform_points(landmarks, matrix)
    x = frames.astype(np.float32) * brightness
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    frames = np.clip((x - mean) * contrast + mean, 0, 255).astype(np.uint8)
    return frames, landmarks


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, C) uint8 -> (C, ..., H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, 0)


class FrameCache:
    """Decoded clips: their frames (T, H, W, 3) uint8, audio tracks (S,) float32, json records and landmarks,
    kept up to ``max_bytes`` in all; the least recently used go first.

    Small data sets are read for many epochs: decoding each clip once saves most of a sample's loading time
    (an audio track costs as much to decode as a clip's 50 small frames, its json and landmarks a third of that).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()  # (what, clip) -> (decoded, bytes)

    def frames(self, key: str, read) -> np.ndarray:
        """The frames of clip ``key`` (its name in errors); on a miss, ``read()`` gives its video bytes to decode."""
        return self._get(("frames", key), lambda: decode_frames(read(), key)[0])

    def audio(self, key: str, read, sample_rate: int) -> np.ndarray:
        """The audio track of clip ``key`` at ``sample_rate``, decoded from ``read()``'s bytes on a miss."""
        return self._get((f"audio@{sample_rate}", key), lambda: decode_audio(read(), key, sample_rate))

    def record(self, key: str, read_json, nbytes: int) -> dict:
        """The json record of clip ``key`` (``nbytes`` long), from ``read_json()`` on a miss; shared, never changed."""
        return self._get(("json", key), read_json, lambda _: nbytes)

    def landmarks(self, key: str, unpack) -> np.ndarray:
        """The landmarks (T, N, 2) of clip ``key``, from ``unpack()`` on a miss."""
        return self._get(("landmarks", key), unpack)

    def _get(self, entry: tuple[str, str], decode, size=lambda value: value.nbytes):
        if entry in self.entries:
            self.entries.move_to_end(entry)
            return self.entries[entry][0]
        value = decode()
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every sample of the clip
        nbytes = size(value)
        if nbytes <= self.max_bytes:
            self.entries[entry] = value, nbytes
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self.entries.popitem(last=False)[1][1]
        return value


def frame_cache_for(cfg: TrainDataConfig, shared: Optional[FrameCache] = None) -> Optional[FrameCache]:
    """The decoded-clip cache a data set of ``cfg`` reads through: ``shared`` (an earlier stage's in this process,
    train.py's several --config) when its budget is ``cfg.frame_cache_mb``, else a new one (None at 0 MB)."""
    budget = cfg.frame_cache_mb << 20
    if shared is not None and shared.max_bytes == budget:
        return shared
    return FrameCache(budget) if budget else None


class ClipDataset(IterableDataset):
    """Endless stream of training samples from the shards under ``cfg.data_dirs`` (see the module docstring).

    Each sample is a dict: "pixel_values" (3, L, S, S), "reference" (3, S, S), "control" (3, L, S, S),
    all float32 in [-1, 1]; "face_parts" (L, S, S) uint8 1 on the eye and mouth patches of the clip's
    own frames, 0 elsewhere (whatever the mode); "use_visual", "use_audio" float32 0/1; "audio" (A,)
    float32 16 kHz mono, the clip's whole track (empty with ``with_audio=False``); "frame_indices" (L,)
    int64; "fps" float32; "key" str.
    """

    def __init__(self, cfg: TrainDataConfig, seed: int, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1, skip_batches: int = 0, with_audio: bool = True,
                 frame_cache: Optional[FrameCache] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.cfg, self.seed = cfg, seed
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.skip_batches = batch_size, skip_batches
        self.with_audio = with_audio  # False: "audio" is empty (a stage without the audio branch skips its decoding)
        self.cache = frame_cache_for(cfg, frame_cache)
        shards = []
        for folder in cfg.data_dirs:
            found = data_dir_shards(folder)
            if not found:
                raise FileNotFoundError(f"train_data.data_dirs: no *.tar shards in {folder} (nor in {folder}/shards)")
            shards += found
        self.samples: list[SampleRef] = []
        self.skipped_shards: list[str] = []  # shards that could not be read: skipped, like corrupt samples
        for path in sorted(shards):
            try:
                refs = index_shard(path)
            except OSError as e:
                self.skipped_shards.append(path)
                log.warning("skipped an unreadable shard (%s); %d skipped", e, len(self.skipped_shards))
                continue
            if refs:
                require_face_data(refs[0])
            self.samples += refs
        if not self.samples:
            raise FileNotFoundError(f"train_data.data_dirs: no readable sample in {len(shards)} shard(s) under "
                                    f"{list(cfg.data_dirs)}")
        self.skipped = 0
        self._epoch_order: tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        """Samples in one epoch (the stream itself is endless)."""
        return len(self.samples)

    # ------------------------------------------------------------------ the plan

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.samples)))
        return self._epoch_order[1]

    def plan(self, stream: int, streams: int, position: int, attempt: int = 0) -> tuple[int, int]:
        """(epoch, sample index) at ``position`` of ``stream`` (of ``streams``); attempt > 0 picks a replacement."""
        share = len(range(stream, len(self.samples), streams))
        if share == 0:
            raise ValueError(f"{len(self.samples)} samples cannot feed {streams} streams (ranks x workers)")
        epoch, i = divmod(position, share)
        if attempt:
            i = int(np.random.default_rng([self.seed, epoch, stream, position, attempt]).integers(share))
        return epoch, int(self._order(epoch)[stream + i * streams])

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if info is not None:
            cv2.setNumThreads(1)  # parallelism comes from the workers
        role = (worker + self.skip_batches) % num_workers  # the worker whose batch comes next in a fresh run
        stream, streams = self.rank * num_workers + role, self.world_size * num_workers
        start = self.batch_size * batches_before(self.skip_batches, role, num_workers)
        for position in count(start):
            yield self.sample_at(stream, streams, position)

    def sample_at(self, stream: int, streams: int, position: int) -> dict:
        """The sample at ``position`` of ``stream``, replacing corrupt ones (counted in ``skipped``)."""
        for attempt in range(MAX_ATTEMPTS):
            epoch, index = self.plan(stream, streams, position, attempt)
            try:
                return self.load(index, np.random.default_rng([self.seed, epoch, index, attempt]))
            except (CorruptSample, MediaError, OSError, KeyError) as e:
                self.skipped += 1
                log.warning("skipped a corrupt sample (%s); %d skipped so far in this process", e, self.skipped)
        raise RuntimeError(f"{MAX_ATTEMPTS} corrupt samples in a row at position {position} of stream {stream}")

    # ------------------------------------------------------------------ one sample

    def load(self, index: int, rng: np.random.Generator) -> dict:
        """Read, crop, augment and convert sample ``index`` with the draws of ``rng``."""
        cfg, ref = self.cfg, self.samples[index]
        name, cached = f"{ref.shard}:{ref.key}", self.cache is not None
        try:
            meta = self.cache.record(name, ref.read_json, ref.members["json"][1]) if cached else ref.read_json()
            faces, fps = meta["faces"], float(meta["fps"])
            valid = np.asarray(faces["valid"], bool)
            has_audio = bool(meta.get("has_audio", True)) and not meta.get("audio_unverified", False)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptSample(f"{name}: bad json ({e})") from None
        try:
            indices, ref_index, mode = plan_sample(valid, cfg, rng, has_audio)
        except CorruptSample as e:
            raise CorruptSample(f"{name}: {e}") from None

        video_bytes = functools.cache(lambda: ref.read("mp4"))  # read once, and only when something decodes
        wanted = [*indices.tolist(), ref_index]
        if cached:
            decoded = self.cache.frames(name, video_bytes)
            frames = {i: decoded[i] for i in wanted if i < len(decoded)}
        else:
            frames = decode_selected_frames(video_bytes(), name, wanted)
        if len(frames) < len(set(wanted)):
            raise CorruptSample(f"{name}: frame {max(wanted)} missing, the json lists {len(valid)}")
        audio = np.zeros(0, np.float32)
        if self.with_audio:
            rate = int(meta.get("sample_rate", 16000))
            if has_audio:
                audio = self.cache.audio(name, video_bytes, rate) if cached else decode_audio(video_bytes(), name, rate)
            audio = fit_audio(audio, int(round(len(valid) / fps * rate)))  # drop AAC padding; silence without audio
        try:
            unpack = functools.partial(unpack_array, faces["landmarks"])
            all_landmarks = self.cache.landmarks(name, unpack) if cached else unpack()  # (T, N, 2)
            landmarks = all_landmarks[indices]  # (L, N, 2)
            boxes = np.array([faces["boxes"][i] for i in [*indices, ref_index]], np.float64)  # (L + 1, 4)
        except (IndexError, TypeError, ValueError) as e:
            raise CorruptSample(f"{name}: bad face records ({e})") from None

        union = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
        box = face_crop_box(union, frames[ref_index].shape[:2], cfg.crop_margin)
        size = cfg.sample_size
        clip = np.stack([crop_and_resize(frames[i], box, size) for i in indices])  # (L, S, S, 3)
        reference = crop_and_resize(frames[ref_index], box, size)  # (S, S, 3)
        to_crop = crop_matrix(box, size)
        clip_landmarks = transform_points(landmarks, to_crop)  # (L, N, 2) in crop pixels
        driver, driver_landmarks = augment(clip, clip_landmarks, cfg.augmentation, rng)
        if mode not in CONTROL_MODE:
            control = np.zeros(clip.shape[:3], np.uint8)
        else:  # aligned onto the clip's own median pose: each part lands where the target frame has it
            control, _ = control_frames(driver, driver_landmarks, np.median(clip_landmarks, axis=0), size,
                                        CONTROL_MODE[mode])  # (L, S, S)
        return {
            "pixel_values": to_tensor(clip),  # (3, L, S, S)
            "reference": to_tensor(reference),  # (3, S, S)
            "control": to_tensor(np.repeat(control[..., None], 3, -1)),  # (3, L, S, S)
            "face_parts": torch.from_numpy(patch_mask(clip_landmarks, size).astype(np.uint8)),  # (L, S, S) eyes, mouth
            "use_visual": torch.tensor(float(mode in ("visual", "both"))),
            "use_audio": torch.tensor(float(mode in ("audio", "both"))),
            "audio": torch.tensor(audio),  # a copy: the cache's track is read-only
            "frame_indices": torch.from_numpy(indices.astype(np.int64)),
            "fps": torch.tensor(fps, dtype=torch.float32),
            "noise_seed": torch.tensor(int(rng.integers(2**62)), dtype=torch.int64),  # the trainer's noise and t
            "key": ref.key,
        }


def collate_clips(batch: list[dict]) -> dict:
    """Stack a list of samples; "audio" is zero-padded to the longest, with "audio_lengths" (B,) int64."""
    out = {k: torch.stack([s[k] for s in batch]) for k in batch[0] if k not in ("audio", "key")}
    lengths = torch.tensor([len(s["audio"]) for s in batch], dtype=torch.int64)
    audio = torch.zeros(len(batch), int(lengths.max()))
    for i, s in enumerate(batch):
        audio[i, :len(s["audio"])] = s["audio"]
    out.update(audio=audio, audio_lengths=lengths, key=[s["key"] for s in batch])
    return out
