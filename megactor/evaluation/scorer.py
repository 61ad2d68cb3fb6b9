"""Score one result against its driver (and source), and a set of results: the per-video rows and the summary.

Per video (a key is absent when its metric did not run: no weights, no source, no face, no audio):

- ``sync_score``: the weight-free lip-sync confidence of the result's mouth with the driving audio (the
  driver's audio track; ``metrics.lipsync.sync_columns``, as the curation scores clips), a z-score, higher is
  better. ``sync_offset``: the best lag in video frames (> 0: the audio is late) minus the driver's own lag,
  so that the mouth's natural lead over the voice (0 to +300 ms, ``metrics/lipsync.py``) cancels and the
  driver scored as its own result reads 0; ``sync_lag`` is the lag itself, ``driver_sync_score`` the driver's
  own confidence (the ceiling for this audio). A driver without video reads its lag as the offset.
- ``lmd``, ``mouth_corr``, ``eye_corr``, ``pose_error`` (and ``yaw_error``, ``pitch_error``, ``roll_error``),
  ``jitter``: ``evaluation.motion``; LMD in the driver's inter-ocular distances, pose in degrees.
- ``drift_slope`` (colour, delta E per second), ``shape_drift_slope`` (inter-ocular distances per second) and
  the curves behind them (``colour_curve``, ``shape_curve``, one value a second): ``evaluation.drift``.
- ``psnr``, ``ssim``: for self-reenactment only (the source is the driver's first frame, or
  ``self_reenactment=true``), against the driver frame shown at the same time; PSNR over every frame, SSIM
  over ``ssim_frames`` evenly spaced ones (``evaluation.pixels``).
- with weights: ``sync_c``, ``sync_d``, ``syncnet_offset`` (SyncNet: confidence, minimum mean distance, lag
  in 25 fps frames), ``csim`` (ArcFace cosine to the source). FID and FVD are set metrics: summary only,
  results' frames and clips against the drivers'.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from PIL import Image

from megactor.data.control import syncnet_crop
from megactor.data.face import LEFT_EYE, RIGHT_EYE, landmark_box, MediaPipeFaceAnalyser
from megactor.data.shards import iter_frames
from megactor.data.video_io import AUDIO_RATE, probe, read_audio
from megactor.evaluation import drift, motion, pixels
from megactor.evaluation.config import EvaluationConfig
from megactor.evaluation.matching import EvaluationInputError, Triple
from megactor.evaluation.tracks import FaceTrack, cached_track, face_colour, track_file
from megactor.metrics import frechet
from megactor.metrics.csim import ArcFace, align_face, cosine_to
from megactor.metrics.lipsync import sync_columns
from megactor.metrics.syncnet import SyncNetScorer

SELF_REENACTMENT_PSNR = 30.0  # dB: a source this close to the driver's first frame is that frame
THUMB_HEIGHT = 128  # contact sheet frames


@dataclass
class Source:
    image: np.ndarray  # (H, W, 3) RGB uint8
    landmarks: Optional[np.ndarray]  # (468, 3), None when no face was found


@dataclass
class ScoredVideo:
    row: dict  # the metrics (the JSON entry, less the curves)
    curves: dict = field(default_factory=dict)  # name -> per-second list
    thumbnails: list = field(default_factory=list)  # (h, w, 3) frames at the start, middle and end


def five_points(lm: np.ndarray) -> np.ndarray:
    """(468, k) mesh -> (5, 2) ArcFace's points in the image's left-to-right order: eye centres, nose tip, mouth
    corners (the subject's right eye and mouth corner are on the image's left)."""
    lm = np.asarray(lm, np.float64)[:, :2]
    return np.stack([lm[RIGHT_EYE].mean(0), lm[LEFT_EYE].mean(0), lm[1], lm[61], lm[291]])


def evenly(count: int, picks: int) -> set:
    return set(np.linspace(0, count - 1, min(picks, count)).round().astype(int).tolist()) if count > 0 else set()


def _thumb(frame: np.ndarray) -> np.ndarray:
    width = max(1, round(frame.shape[1] * THUMB_HEIGHT / frame.shape[0]))
    return np.asarray(Image.fromarray(frame).resize((width, THUMB_HEIGHT), Image.BILINEAR))


class Scorer:
    """Holds the face analyser and the weight metrics' models; ``score`` one triple, then ``summary``."""

    def __init__(self, cfg: EvaluationConfig):
        self.cfg = cfg
        self.cache_dir = cfg.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "megactor", "evaluate")
        self.analyser = MediaPipeFaceAnalyser(max_num_faces=1)
        self.syncnet = SyncNetScorer(cfg.syncnet_weights) if cfg.syncnet_weights else None
        self.arcface = ArcFace(cfg.arcface_weights) if cfg.arcface_weights else None
        self.fid = frechet.fid_metric(cfg.inception_weights) if cfg.inception_weights else None
        self.fvd = frechet.fvd_metric(cfg.i3d_weights, cfg.fvd_frames) if cfg.i3d_weights else None
        self._real_added: set = set()  # drivers whose frames FID/FVD already hold

    def close(self) -> None:
        self.analyser.close()

    # ------------------------------------------------------------------ inputs

    def read_source(self, path: str) -> Source:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as e:
            raise EvaluationInputError(f"{path}: not a readable image (the source; {e})") from None
        faces = self.analyser.detect(image)
        return Source(image, faces[0].landmarks if faces else None)

    def is_self_reenactment(self, source: Optional[Source], driver: str) -> bool:
        if self.cfg.self_reenactment is not None:
            return self.cfg.self_reenactment
        if source is None:
            return False
        _, frames = iter_frames(driver, driver)
        first = next(frames)
        frames.close()
        return first.shape == source.image.shape and pixels.frame_psnr(source.image, first) >= SELF_REENACTMENT_PSNR

    # ------------------------------------------------------------------ one video

    def score(self, triple: Triple) -> ScoredVideo:
        cfg = self.cfg
        info = probe(triple.driver)
        driver = cached_track(triple.driver, self.analyser, self.cache_dir) if info["has_video"] else None
        audio = read_audio(triple.driver, AUDIO_RATE) if info["has_audio"] else None
        source = self.read_source(triple.source) if triple.source else None
        self_reenactment = driver is not None and self.is_self_reenactment(source, triple.driver)
        result_info = probe(triple.result)
        hooks = FrameHooks(self, result_info.get("num_frames", 0), result_info.get("fps", 0.0),
                           triple.driver if self_reenactment else None)
        result = track_file(triple.result, self.analyser, hooks)
        row = {"result": triple.result, "driver": triple.driver, "source": triple.source,
               "frames": result.num_frames, "fps": result.fps,
               "face_frames": float(np.isfinite(result.landmarks).all((1, 2)).mean())}
        scored = ScoredVideo(row, thumbnails=hooks.thumbnails)
        if audio is not None:
            row.update(self.sync_metrics(result, driver, audio))
        if driver is not None:
            row.update(self.motion_metrics(result, driver))
        self.drift_metrics(result, source, scored)
        row.update(hooks.finish(result, audio, source))
        if driver is not None and (self.fid is not None or self.fvd is not None):
            self.add_real(triple.driver, driver.num_frames)
        return scored

    def sync_metrics(self, result: FaceTrack, driver: Optional[FaceTrack], audio: np.ndarray) -> dict:
        n = int(round(result.num_frames / result.fps * AUDIO_RATE))
        heard = np.pad(audio[:n], (0, max(0, n - len(audio))))
        cols = sync_columns(result.mouth, heard, AUDIO_RATE, result.fps, self.cfg.sync_search_frames)
        if cols["sync_lag"] is None:
            return {"sync_error": cols["sync_error"]}
        out = {"sync_score": cols["sync_score"], "sync_lag": cols["sync_lag"], "sync_offset": cols["sync_lag"]}
        if driver is not None:
            own = sync_columns(driver.mouth, audio, AUDIO_RATE, driver.fps, self.cfg.sync_search_frames)
            if own["sync_lag"] is not None:
                out["driver_sync_score"] = own["sync_score"]
                out["sync_offset"] = cols["sync_lag"] - int(round(own["sync_lag"] * result.fps / driver.fps))
        return out

    def motion_metrics(self, result: FaceTrack, driver: FaceTrack) -> dict:
        r_idx, d_idx = motion.paired_frames(result.num_frames, result.fps, driver.num_frames, driver.fps)
        r, d = result.landmarks[r_idx], driver.landmarks[d_idx]
        yaw, pitch, roll = motion.pose_error(r, d)
        return {"lmd": motion.mean_lmd(r, d),
                "mouth_corr": motion.opening_correlation(r, d, "mouth"),
                "eye_corr": motion.opening_correlation(r, d, "eye"),
                "pose_error": float(np.mean([yaw, pitch, roll])), "yaw_error": yaw, "pitch_error": pitch,
                "roll_error": roll, "jitter": motion.jitter(r, d, result.fps)}

    def drift_metrics(self, result: FaceTrack, source: Optional[Source], scored: ScoredVideo) -> None:
        reference = None
        if source is not None and source.landmarks is not None:
            reference = (face_colour(source.image, source.landmarks), source.landmarks)
        try:
            curves, slopes = drift.drift(result.colour, result.landmarks, result.fps, reference)
        except ValueError:  # no face in the result's first second
            return
        scored.curves.update({k: v.tolist() for k, v in curves.items()})
        scored.row.update(slopes)
        scored.row["drift_reference"] = "source" if reference is not None else "first_second"

    @torch.no_grad()
    def add_real(self, path: str, count: int) -> None:
        """The driver's frames (FID) and clips (FVD) as the real side, once per driver."""
        if path in self._real_added:
            return
        self._real_added.add(path)
        collect = FrechetSamples(self.cfg, count, self.fid is not None, self.fvd is not None)
        _, frames = iter_frames(path, path)
        for i, frame in enumerate(frames):
            collect.add(i, frame)
        collect.feed(self.fid, self.fvd, real=True)

    # ------------------------------------------------------------------ the set

    def summary(self, rows: list) -> dict:
        """Mean, median and count over the videos where each metric has a value; FID and FVD over the set."""
        values = {k: [r[k] for r in rows if isinstance(r.get(k), (int, float)) and np.isfinite(r[k])]
                  for k in SUMMARY_KEYS}
        values = {k: v for k, v in values.items() if v}
        out = {"videos": len(rows), "mean": {k: float(np.mean(v)) for k, v in values.items()},
               "median": {k: float(np.median(v)) for k, v in values.items()},
               "count": {k: len(v) for k, v in values.items()}}
        for name, metric in (("fid", self.fid), ("fvd", self.fvd)):
            if metric is not None:
                try:
                    out[name] = float(metric.compute())
                except RuntimeError as e:  # fewer than two samples on a side
                    out[f"{name}_error"] = str(e)
        return out


SUMMARY_KEYS = ("sync_score", "sync_offset", "lmd", "mouth_corr", "eye_corr", "pose_error", "jitter", "drift_slope",
                "shape_drift_slope", "psnr", "ssim", "sync_c", "sync_d", "csim", "face_frames")


class FrechetSamples:
    """Frames (FID) and clips (FVD) of one video, picked evenly over its ``count`` frames as they stream by."""

    def __init__(self, cfg: EvaluationConfig, count: int, fid: bool, fvd: bool):
        self.fid_picks = evenly(count, cfg.fid_frames) if fid else set()
        length = cfg.fvd_frames
        starts = evenly(max(count - length + 1, 0), cfg.fvd_clips) if fvd else set()
        self.clip_of = {s + k: s for s in starts for k in range(length)}
        self.length, self.images, self.clips = length, [], {}

    def add(self, i: int, frame: np.ndarray) -> None:
        if i in self.fid_picks:
            self.images.append(frame)
        if i in self.clip_of:
            self.clips.setdefault(self.clip_of[i], []).append(frame)

    @torch.no_grad()
    def feed(self, fid, fvd, real: bool) -> None:
        if fid is not None and self.images:
            fid.update(frechet.image_batch(self.images), real=real)
        clips = [frechet.video_clip(c) for c in self.clips.values() if len(c) == self.length]
        if fvd is not None and clips:
            fvd.update(torch.stack(clips), real=real)


class FrameHooks:
    """What reads the result's frames as they are decoded: thumbnails, PSNR/SSIM against the driver frame shown
    at the same time, SyncNet's face crops, ArcFace's aligned faces, FID/FVD samples."""

    def __init__(self, scorer: Scorer, count: int, fps: float, reenacted: Optional[str]):
        cfg = scorer.cfg
        self.scorer, self.fps = scorer, fps
        self.thumb_picks = evenly(count, 3)
        self.thumbnails: list = []
        self.driver_frames = iter_frames(reenacted, reenacted) if reenacted else None  # (fps, frames)
        self.driver_at, self.driver_frame = -1, None
        self.psnr, self.ssim = [], []
        self.ssim_picks = evenly(count, cfg.ssim_frames)
        self.crops, self.last_box = [], None
        self.csim_picks = evenly(count, cfg.csim_frames) if scorer.arcface is not None else set()
        self.faces = []
        self.frechet = FrechetSamples(cfg, count, scorer.fid is not None, scorer.fvd is not None)

    def __call__(self, i: int, frame: np.ndarray, lm: Optional[np.ndarray]) -> None:
        if i in self.thumb_picks:
            self.thumbnails.append(_thumb(frame))
        if self.driver_frames is not None:
            self.compare(i, frame)
        if self.scorer.syncnet is not None:
            self.last_box = landmark_box(lm) if lm is not None else self.last_box
            if self.last_box is not None:
                self.crops.append(syncnet_crop(frame, self.last_box))
        if i in self.csim_picks and lm is not None:
            self.faces.append(align_face(frame, five_points(lm)))
        self.frechet.add(i, frame)

    def compare(self, i: int, frame: np.ndarray) -> None:
        """PSNR and SSIM of result frame ``i`` against the driver frame shown at its time."""
        fps, frames = self.driver_frames
        want = int(round(i * fps / self.fps))
        while self.driver_at < want:
            self.driver_frame = next(frames, None)
            self.driver_at += 1
            if self.driver_frame is None:
                self.driver_frames = None
                return
        if self.driver_frame.shape == frame.shape:
            self.psnr.append(pixels.frame_psnr(frame, self.driver_frame))
            if i in self.ssim_picks:
                self.ssim.append(pixels.frame_ssim(frame, self.driver_frame))

    def finish(self, result: FaceTrack, audio: Optional[np.ndarray], source: Optional[Source]) -> dict:
        out = {}
        if self.psnr:
            out["psnr"] = float(np.mean(self.psnr))
        if self.ssim:
            out["ssim"] = float(np.mean(self.ssim))
        if self.scorer.syncnet is not None and audio is not None and len(self.crops) == result.num_frames:
            try:
                sync = self.scorer.syncnet.score(np.stack(self.crops), audio, result.fps, AUDIO_RATE,
                                                 self.scorer.cfg.sync_search_frames)
                out.update(sync_c=sync.score, sync_d=float(-sync.correlations.max()), syncnet_offset=sync.lag)
            except ValueError as e:
                out["syncnet_error"] = str(e)
        if self.faces and source is not None and source.landmarks is not None:
            arcface = self.scorer.arcface
            reference = arcface.embed(align_face(source.image, five_points(source.landmarks))[None])[0]
            out["csim"] = cosine_to(reference, arcface.embed(np.stack(self.faces)))
        self.frechet.feed(self.scorer.fid, self.scorer.fvd, real=False)
        return out
