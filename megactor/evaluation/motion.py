"""How closely a result's face moves as its driver's: landmark distance, eye and mouth opening, head pose,
jitter. Every measure compares the two MediaPipe meshes frame by frame (frames paired by time,
``paired_frames``) and ignores frames where either has no face.

- ``landmark_distance`` (LMD): each result frame's mesh is mapped onto the driver frame's by the similarity
  (rotation, scale, shift) of the points that expressions do not move (eye corners, nose); the distance of
  the mouth and eye contour points is then averaged and divided by the driver frame's inter-ocular distance
  (between the eye centres). A result that reproduces its driver reads 0; one whose lips lag or lead reads
  more, as does another face shape (cross-identity results do not reach 0).
- ``opening_correlation``: Pearson correlation of the result's mouth (inner-lip gap) or eye (lid gap) opening
  with the driver's, frame by frame (``data.face.mouth_opening``, ``eye_opening``).
- ``pose_error``: mean absolute difference, in degrees, of yaw, pitch and roll, each taken about its clip's
  median: the model reproduces the driver's head motion about the source's own pose, not the driver's pose.
- ``jitter``: the mean landmark acceleration (second difference per frame, in inter-ocular distances per
  second squared) of the result over the driver's: 1 moves as smoothly as the driver, above 1 shakes.

Checked against (``tests/test_evaluate.py``): a driver scored as its own result reads LMD 0, correlations 1,
pose error 0, jitter 1; the same frames shuffled in time read far worse on each.
"""
from __future__ import annotations

import numpy as np

from megactor.data.control import similarity_transform, transform_points
from megactor.data.face import MESH_468, eye_opening, head_pose, mouth_opening
from megactor.metrics.face_motion import pooled_correlation

LMD_POINTS = np.concatenate([MESH_468.mouth_outer, MESH_468.mouth_inner, MESH_468.left_eye, MESH_468.right_eye])


def paired_frames(n_result: int, fps_result: float, n_driver: int, fps_driver: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices (result, driver) shown at the same time, as far as both last."""
    result = np.arange(n_result)
    driver = np.round(result * fps_driver / fps_result).astype(np.int64)
    keep = driver < n_driver
    return result[keep], driver[keep]


def inter_ocular(lm: np.ndarray) -> np.ndarray:
    """(..., 468, k) -> (...): the 2D distance between the eye contours' centres, in pixels."""
    lm = np.asarray(lm, np.float64)[..., :2]
    return np.linalg.norm(lm[..., MESH_468.left_eye, :].mean(-2) - lm[..., MESH_468.right_eye, :].mean(-2), axis=-1)


def _found(*lms: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([np.isfinite(lm).all((-1, -2)) for lm in lms])


def mean_lmd(result: np.ndarray, driver: np.ndarray) -> float:
    """The mean of ``landmark_distance`` over the frames where both have a face (NaN without one)."""
    per_frame = landmark_distance(result, driver)
    known = per_frame[np.isfinite(per_frame)]
    return float(known.mean()) if known.size else float("nan")


def landmark_distance(result: np.ndarray, driver: np.ndarray) -> np.ndarray:
    """(T, 468, k) result and driver meshes, frames paired -> (T,) LMD in the driver's inter-ocular distances
    (NaN where either has no face)."""
    out = np.full(len(result), np.nan)
    for t in np.flatnonzero(_found(result, driver)):
        m = similarity_transform(result[t, MESH_468.align, :2], driver[t, MESH_468.align, :2])
        moved = transform_points(result[t, LMD_POINTS, :2], m)
        out[t] = np.linalg.norm(moved - driver[t, LMD_POINTS, :2], axis=-1).mean() / inter_ocular(driver[t])
    return out


def opening_correlation(result: np.ndarray, driver: np.ndarray, part: str) -> float:
    """Pearson correlation of the result's "mouth" or "eye" opening with the driver's (NaN under 3 frames)."""
    measure = {"mouth": mouth_opening, "eye": eye_opening}[part]
    return pooled_correlation([(measure(result), measure(driver))])


def pose_error(result: np.ndarray, driver: np.ndarray) -> np.ndarray:
    """(T, 468, 3) meshes, frames paired -> (3,) mean |yaw|, |pitch|, |roll| difference in degrees, each angle
    about its clip's median (NaN without a frame where both have a face)."""
    found = _found(result, driver)
    if not found.any():
        return np.full(3, np.nan)
    r = np.stack(head_pose(result[found]), -1)  # (F, 3)
    d = np.stack(head_pose(driver[found]), -1)
    return np.abs((r - np.median(r, 0)) - (d - np.median(d, 0))).mean(0)


def acceleration(lm: np.ndarray, fps: float) -> float:
    """(T, 468, k) mesh -> the mean landmark acceleration in inter-ocular distances per second squared, over
    runs of three consecutive frames with a face (NaN without one)."""
    xy = np.asarray(lm, np.float64)[..., :2]
    second = xy[2:] - 2 * xy[1:-1] + xy[:-2]  # (T - 2, 468, 2)
    ok = _found(second)
    if not ok.any():
        return float("nan")
    second = second / np.median(inter_ocular(xy[_found(xy)]))
    return float(np.linalg.norm(second[ok], axis=-1).mean() * fps ** 2)


def jitter(result: np.ndarray, driver: np.ndarray, fps: float) -> float:
    """The result's landmark acceleration over the driver's (frames paired, at the result's ``fps``)."""
    reference = acceleration(driver, fps)
    return acceleration(result, fps) / reference if reference > 0 else float("nan")
