"""Identity and colour drift over a long result: per-second curves against a reference face, and their slope.

- colour: the distance (CIE76 delta E, in L*a*b* units; about 2.3 is a just-noticeable difference) of each
  second's mean face-oval colour from the reference's.
- shape: each frame's face outline and nose (the points that carry identity, not expression) mapped onto the
  reference's by the best similarity, their mean distance in the reference's inter-ocular distances; the
  median over the second.

The reference is the source portrait when it is given, else the result's own first second. A slope is the
least-squares line through a curve, per second (0: no drift). Checked against
(``tests/test_evaluate.py``): a real driver's frames read a colour slope under 0.6 delta E per second, the same
frames brightened by 6 more levels each second one more than 1.5 higher.
"""
from __future__ import annotations

import numpy as np

from megactor.data.control import similarity_transform, transform_points
from megactor.evaluation.motion import inter_ocular
from megactor.evaluation.tracks import FACE_OVAL

SHAPE_POINTS = np.unique(np.concatenate([FACE_OVAL, [1, 2, 4, 5, 6, 168, 197, 195, 98, 327]]))


def seconds(num_frames: int, fps: float) -> np.ndarray:
    """(T,) the second each frame falls in; -1 for the frames of a last second that is less than half full
    (a few frames' mean is noise, not drift)."""
    sec = np.floor(np.arange(num_frames) / fps).astype(np.int64)
    return np.where(sec < round(num_frames / fps), sec, -1)


def colour_curve(colour: np.ndarray, fps: float, reference: np.ndarray) -> np.ndarray:
    """(T, 3) per-frame L*a*b*, (3,) reference -> (S,) delta E of each second's mean colour (NaN: no face)."""
    sec = seconds(len(colour), fps)
    out = np.full(sec.max() + 1 if len(sec) else 0, np.nan)
    for s in range(len(out)):
        part = colour[sec == s]
        part = part[np.isfinite(part).all(1)]
        if len(part):
            out[s] = np.linalg.norm(part.mean(0) - reference)
    return out


def shape_distance(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, 468, k), (468, k) reference -> (T,) identity-shape distance in the reference's inter-ocular distances."""
    out = np.full(len(landmarks), np.nan)
    ref = np.asarray(reference, np.float64)[SHAPE_POINTS, :2]
    for t, lm in enumerate(np.asarray(landmarks, np.float64)):
        if np.isfinite(lm).all():
            moved = transform_points(lm[SHAPE_POINTS, :2], similarity_transform(lm[SHAPE_POINTS, :2], ref))
            out[t] = np.linalg.norm(moved - ref, axis=-1).mean()
    return out / inter_ocular(reference)


def shape_curve(landmarks: np.ndarray, fps: float, reference: np.ndarray) -> np.ndarray:
    """(T, 468, k), (468, k) -> (S,) each second's median ``shape_distance``."""
    dist, sec = shape_distance(landmarks, reference), seconds(len(landmarks), fps)
    out = np.full(sec.max() + 1 if len(sec) else 0, np.nan)
    for s in range(len(out)):
        part = dist[sec == s]
        if np.isfinite(part).any():
            out[s] = np.nanmedian(part)
    return out


def first_second_reference(colour: np.ndarray, landmarks: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """The result's own first second as the reference: its mean colour and the mesh of its median frame."""
    first = np.flatnonzero(seconds(len(colour), fps) == 0)
    found = [t for t in first if np.isfinite(landmarks[t]).all()]
    if not found:
        raise ValueError("no face in the first second")
    return np.nanmean(colour[found], 0), landmarks[found[len(found) // 2]]


def slope(curve: np.ndarray) -> float:
    """The least-squares slope of a per-second curve, per second (NaN with fewer than 2 known seconds)."""
    known = np.flatnonzero(np.isfinite(curve))
    if len(known) < 2:
        return float("nan")
    return float(np.polyfit(known.astype(np.float64), curve[known], 1)[0])


def drift(colour: np.ndarray, landmarks: np.ndarray, fps: float, reference: tuple[np.ndarray, np.ndarray] | None):
    """A result's drift: {"colour_curve", "shape_curve"} (per second) and {"drift_slope", "shape_drift_slope"}
    (their slopes, delta E and inter-ocular distances per second), against ``reference`` (colour, mesh) or,
    None, the result's first second."""
    ref_colour, ref_mesh = reference if reference is not None else first_second_reference(colour, landmarks, fps)
    curves = {"colour_curve": colour_curve(colour, fps, ref_colour), "shape_curve": shape_curve(landmarks, fps, ref_mesh)}
    return curves, {"drift_slope": slope(curves["colour_curve"]), "shape_drift_slope": slope(curves["shape_curve"])}
