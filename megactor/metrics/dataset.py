"""Per-clip statistics the curation pipeline filters on and reports.

Inputs are per-frame arrays with a ``valid`` mask (frames where exactly one
usable face was found); statistics read valid frames only. Robust extremes
(a high quantile instead of the maximum) keep one mis-fitted frame from
deciding the fate of a clip.
"""
from __future__ import annotations

import numpy as np

ROBUST_QUANTILE = 0.95


def valid_fraction(valid: np.ndarray) -> float:
    """(T,) bool -> the fraction of valid frames (0 for an empty clip)."""
    valid = np.asarray(valid, bool)
    return float(valid.mean()) if valid.size else 0.0


def abs_extent(values: np.ndarray, valid: np.ndarray, q: float = ROBUST_QUANTILE) -> np.ndarray:
    """(T, K) per-frame values (e.g. yaw, pitch, roll) -> (K,) the q-quantile of |value| over valid frames.

    NaN where no frame is valid.
    """
    values = np.abs(np.asarray(values, np.float64))[np.asarray(valid, bool)]
    if not len(values):
        return np.full(values.shape[1:], np.nan)
    return np.quantile(values, q, axis=0)


def head_speed(centres: np.ndarray, scale: np.ndarray, valid: np.ndarray, fps: float,
               q: float = ROBUST_QUANTILE) -> float:
    """How fast the face moves across the frame, in face sizes per second.

    centres (T, 2) face centre in pixels, scale (T,) face size in pixels (e.g. the
    inter-ocular distance). Speeds are taken between consecutive valid frames,
    divided by the clip's median face size; the q-quantile is returned (NaN with
    fewer than two consecutive valid frames).
    """
    valid = np.asarray(valid, bool)
    pairs = valid[1:] & valid[:-1]
    if not pairs.any():
        return float("nan")
    step = np.linalg.norm(np.diff(np.asarray(centres, np.float64), axis=0), axis=1)[pairs]  # (P,) pixels
    return float(np.quantile(step, q) * fps / np.median(np.asarray(scale, np.float64)[valid]))
