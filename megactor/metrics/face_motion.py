"""Face motion read from generated pixels: mouth opening, eye opening, head position, identity.

Every measure reads the frames alone, inside boxes placed where the conditioning puts the face
(``megactor.data.control.placed_boxes``): the model's inputs never enter. They are meant for the
synthetic talking heads (``megactor.data.synthetic``), whose per-frame truth they are correlated with.

- mouth: the spread (standard deviation) of the luma in a box around the mouth. An open mouth shows a
  dark cavity and bright teeth between the lips, a closed one lips only, so the spread grows with the
  opening whatever the skin tone.
- eyes: the darkness of the middle third of each eye's box, averaged over both: an open eye shows a dark
  iris and pupil between the lids, a shut one the skin of the lid.
- head: the shift of each frame against a reference frame of the same face (the translation that
  registers the luma inside the face's box), in pixels.
- identity: whether a frame's colour layout (a coarse grid of mean colours: hair, skin, background) is
  closer to the source's than to the driver's, and than the driver's is to the source's.

Every measure is checked in ``tests/test_face_motion.py`` on synthetic clips it was not tuned on: on a
driver's own frames aligned as the control aligns them it follows the driver's truth (its ceiling), and
against an unrelated clip's truth it is about 0.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import scipy.stats

LUMA = np.array([0.299, 0.587, 0.114])


def _box_pixels(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(S, S, 3) frame, (4,) x0, y0, x1, y1 -> (n,) luma of the pixels the box meets (empty for a NaN box)."""
    if not np.isfinite(box).all():
        return np.empty(0)
    c0, r0 = np.maximum(np.floor(box[:2]).astype(int), 0)
    c1, r1 = np.ceil(box[2:]).astype(int)
    return (frame[r0:r1, c0:c1].astype(np.float64) @ LUMA).reshape(-1)


def mouth_opening(frames: np.ndarray, mouth_boxes: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 frames, (T, 4) boxes -> (T,): the mouth's opening as the standard deviation of the
    luma in its box (arbitrary units; NaN where the box is NaN or empty)."""
    out = np.full(len(frames), np.nan)
    for t, (frame, box) in enumerate(zip(frames, np.asarray(mouth_boxes, np.float64))):
        luma = _box_pixels(frame, box)
        out[t] = luma.std() if luma.size else np.nan
    return out


def eye_opening(frames: np.ndarray, eye_boxes: np.ndarray) -> np.ndarray:
    """(T, S, S, 3), (T, 2, 4) -> (T,): the lid gap as the darkness (255 - mean luma) of the middle third of
    each eye box, where iris and pupil sit, averaged over both eyes (arbitrary units): the lids uncover them
    as they open, and a shut lid shows skin. The box's outer thirds, sclera and corners, change little with
    the gap and add noise (on aligned drivers the whole box scored 0.73, the middle third 0.85)."""
    boxes = np.asarray(eye_boxes, np.float64).copy()
    third = (boxes[..., 2] - boxes[..., 0]) / 3
    boxes[..., 0] += third
    boxes[..., 2] -= third
    out = np.full(len(frames), np.nan)
    for t, (frame, frame_boxes) in enumerate(zip(frames, boxes)):
        means = [p.mean() if p.size else np.nan for p in (_box_pixels(frame, b) for b in frame_boxes)]
        out[t] = 255.0 - np.mean(means)
    return out


def head_offset(frames: np.ndarray, reference: np.ndarray, face_box: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) frames, (S, S, 3) reference, (4,) box -> (T, 2): each frame's x, y shift against the
    reference in pixels, the translation that best registers the luma inside ``face_box`` (the face moves
    there, the backdrop around it does not; ECC, cv2.findTransformECC). NaN where it does not converge."""
    height, width = reference.shape[:2]
    x0, y0 = np.maximum(np.floor(face_box[:2]).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(face_box[2:]).astype(int), (width, height))
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    ref = reference.astype(np.float32) @ LUMA.astype(np.float32)
    stop = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    out = np.full((len(frames), 2), np.nan)
    for t, frame in enumerate(frames):
        warp = np.eye(2, 3, dtype=np.float32)
        try:
            _, warp = cv2.findTransformECC(ref, frame.astype(np.float32) @ LUMA.astype(np.float32), warp,
                                           cv2.MOTION_TRANSLATION, stop, mask, 1)
            out[t] = warp[:, 2]
        except cv2.error:  # a flat frame (noise-free output, all one colour) has nothing to register
            pass
    return out


def colour_layout(frames: np.ndarray, cells: int = 4) -> np.ndarray:
    """(..., S, S, 3) uint8 -> (..., cells * cells * 3): the mean colour of each cell of a cells x cells grid."""
    frames = np.asarray(frames, np.float64)
    lead, (s, _, c) = frames.shape[:-3], frames.shape[-3:]
    k = s // cells
    grid = frames[..., :k * cells, :k * cells, :].reshape(*lead, cells, k, cells, k, c).mean((-4, -2))
    return grid.reshape(*lead, -1)


def identity_kept(frames: np.ndarray, source: np.ndarray, driver_frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) output, (S, S, 3) source, (T, S, S, 3) driver frames aligned onto the output ->
    (T,) bool: the frame's colour layout is closer to the source's than to the driver frame's, and closer to
    the source's than the driver's is (a frame like neither, a black or a noise frame, keeps nothing)."""
    out, src, drv = colour_layout(frames), colour_layout(source), colour_layout(driver_frames)
    to_source = np.linalg.norm(out - src, axis=-1)
    return (to_source < np.linalg.norm(out - drv, axis=-1)) & (to_source < np.linalg.norm(drv - src, axis=-1))


def pooled_correlation(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Pearson correlation over the frames of all (measured, truth) pairs, each z-scored within its pair
    first (a measure's scale depends on the face's colours, so only its changes within a clip compare).
    Frames where either is NaN are left out; a pair whose measure or truth does not change adds nothing
    but its frames (its z-scores are 0), so a constant output scores 0. NaN with fewer than 3 frames."""
    xs, ys = [], []
    for measured, truth in pairs:
        n = min(len(measured), len(truth))
        m, t = np.asarray(measured[:n], np.float64), np.asarray(truth[:n], np.float64)
        ok = np.isfinite(m) & np.isfinite(t)
        if ok.sum() < 3:
            continue
        xs.append(_zscore(m[ok]))
        ys.append(_zscore(t[ok]))
    if not xs:
        return float("nan")
    x, y = np.concatenate(xs), np.concatenate(ys)
    denom = np.sqrt((x ** 2).sum() * (y ** 2).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _zscore(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 1e-9 else np.zeros_like(v)


def spearman(levels: Sequence[float], values: Sequence[float]) -> float:
    """Spearman rank correlation of a knob's levels with a response (0 when the response does not change)."""
    values = np.asarray(values, np.float64)
    if np.ptp(values) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(levels, values).statistic)
