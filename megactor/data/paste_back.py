"""Paste-back: the generated face crops warped back into the whole source image.

The model animates the square face crop ``box`` (x0, y0, side) of the source (``control.crop_and_resize``).
Each generated S x S crop is mapped back into the source by the inverse of ``crop_matrix(box, S)`` and blended
under a feathered mask of the face region: the convex hull of the source face's landmarks, grown about its
centre so that a head that moves a little stays inside it, and blurred so that no seam shows. The mask falls
to zero before the crop's own edge, so the crop's square never shows either. Pixels the mask does not reach
are the source's own, exactly; the video has the source's size, rounded down to even (H.264 needs it).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from megactor.data.control import centre_matrix, crop_matrix


def face_mask(landmarks: Optional[np.ndarray], size: int, grow: float = 0.25, feather: float = 0.06) -> np.ndarray:
    """(size, size) float32 in [0, 1]: where a generated crop replaces the source.

    ``landmarks`` (N, 2|3) in crop pixels: their hull, scaled by 1 + ``grow`` about its centroid; None (no face
    found, e.g. an uncropped source) takes the whole crop. The edge is blurred over ``feather`` * size pixels
    each side, and the mask is zero within that distance of the crop's border.
    """
    radius = max(int(round(feather * size)), 1)
    inner = np.zeros((size, size), np.float32)
    inner[radius + 1:size - radius - 1, radius + 1:size - radius - 1] = 1.0  # zero near the border, after the blur
    if landmarks is None:
        region = inner
    else:
        points = np.asarray(landmarks, np.float64)[:, :2]
        hull = cv2.convexHull(points.astype(np.float32))[:, 0]  # (P, 2)
        centre = hull.mean(0)
        hull = centre + (hull - centre) * (1 + grow)
        region = np.zeros((size, size), np.float32)
        cv2.fillPoly(region, [np.round(hull - 0.5).astype(np.int32)], 1.0, cv2.LINE_AA)
        region *= inner
    # a finite kernel: the blur reaches exactly `radius` pixels, so the mask stays zero at the border
    blurred = cv2.GaussianBlur(region, (2 * radius + 1, 2 * radius + 1), radius / 2, borderType=cv2.BORDER_CONSTANT)
    return np.clip(blurred, 0.0, 1.0)


def even_size(height: int, width: int) -> tuple[int, int]:
    """The video size of an image: each side rounded down to even, at least 2."""
    return max(height - height % 2, 2), max(width - width % 2, 2)


def paste_back(image: np.ndarray, crops: np.ndarray, box: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) source, (T, S, S, 3) generated crops of ``box`` and their (S, S) ``face_mask`` ->
    (T, H', W', 3) uint8 frames of the source with each crop pasted in; H', W' = ``even_size(H, W)``."""
    image, crops = np.asarray(image), np.asarray(crops)
    size = crops.shape[1]
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or mask.shape != (size, size):
        raise ValueError(f"paste_back: crops {crops.shape} must be (T, S, S, 3) and the mask {mask.shape} (S, S)")
    height, width = even_size(*image.shape[:2])
    x0, y0, side = (int(v) for v in box)
    # the crop's square, clipped to the video: the only region a crop can change
    rx0, ry0 = max(x0, 0), max(y0, 0)
    rx1, ry1 = min(x0 + side, width), min(y0 + side, height)
    frames = np.repeat(image[None, :height, :width], len(crops), axis=0)
    if rx0 >= rx1 or ry0 >= ry1:
        return frames
    to_crop = crop_matrix(box, size)  # image pixels -> crop pixels
    to_crop[:, 2] += to_crop[:, :2] @ np.array([rx0, ry0], np.float64)  # region pixels -> crop pixels
    region_size = (rx1 - rx0, ry1 - ry0)
    alpha = cv2.warpAffine(mask, centre_matrix(to_crop), region_size, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # (h, w)
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if not len(rows):
        return frames
    # from here on, only the rectangle the mask reaches
    (top, bottom), (left, right) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
    alpha = np.ascontiguousarray(alpha[top:bottom, left:right])
    to_crop[:, 2] += to_crop[:, :2] @ np.array([left, top], np.float64)
    inverse, reach = centre_matrix(to_crop), (right - left, bottom - top)
    ry0, rx0 = ry0 + top, rx0 + left
    base = np.ascontiguousarray(image[ry0:ry0 + reach[1], rx0:rx0 + reach[0]])
    for frame, crop in zip(frames, crops):
        face = cv2.warpAffine(crop, inverse, reach, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        # alpha * face + (1 - alpha) * base, rounded: exactly the source's pixels where alpha is 0
        frame[ry0:ry0 + reach[1], rx0:rx0 + reach[0]] = cv2.blendLinear(face, base, alpha, 1 - alpha)
    return frames
