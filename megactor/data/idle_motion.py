"""Idle motion: a driver clip made from the source's own face, for audio-only driving.

Audio alone drives only the mouth: the eyes never blink and the head never moves. ``idle_driver`` draws a
driver from the source crop itself: blinks at natural intervals (``synthetic.blinks``: one every 1.5-4.5 s,
0.2 s long, so at least one in any 6 s) and small smooth head motion (``synthetic.head_motion``: slow sums of
sinusoids, about 1-2% of the crop in x and y and 2 degrees of roll at strength 1). A blink slides the upper
lid's skin down over the eye (and the lower lid's up) by a vertical remap of each eye's columns, so the lash
line moves with the lid; the landmarks move with the pixels, so the driver needs no face tracking. It drives
the visual branch with eye patches only while the audio drives the mouth: the pipeline's mixed path.
"""
from __future__ import annotations

import cv2
import numpy as np

from megactor.data.control import centre_matrix, transform_points
from megactor.data.face import landmark_layout
from megactor.data.synthetic import blinks, head_motion

LIDS_MEET = 0.7  # where the lids meet when shut: this far from the upper lid towards the lower
UPPER_SKIN, LOWER_SKIN = 0.4, 0.25  # eyelid skin stretched over the eye, above and below it, in eye widths
LID_REACH = 1.3  # the lids close over this multiple of the mesh's eye contour (it lies inside the lash line)


def idle_driver(image: np.ndarray, landmarks: np.ndarray, num_frames: int, fps: float, seed: int,
                strength: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A procedural driver from one face image: (T, H, W, 3) frames, (T, N, k) landmarks and (T,) eye openness.

    ``image`` (H, W, 3) uint8 and its face's ``landmarks`` (N, k) in its pixels (the source crop). ``strength``
    scales the head motion (0: blinks alone). The same seed gives the same frames.
    """
    if num_frames < 1 or fps <= 0 or strength < 0:
        raise ValueError(f"idle_driver: need num_frames >= 1, fps > 0, strength >= 0; got {num_frames}, {fps}, "
                         f"{strength}")
    rng = np.random.default_rng(seed)
    openness = blinks(rng, num_frames, fps)  # (T,)
    motion = head_motion(rng, num_frames, fps) * strength  # (T, 3): dx, dy (fractions of the frame), roll (deg)
    height, width = image.shape[:2]
    centre = np.asarray(landmarks, np.float64)[landmark_layout(landmarks).align, :2].mean(0)
    frames, moved = [], []
    for eye_open, (dx, dy, roll) in zip(openness, motion):
        frame, lm = close_eyes(image, landmarks, eye_open)
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(roll), 1.0)
        matrix[:, 2] += (dx * width, dy * height)
        frames.append(cv2.warpAffine(frame, centre_matrix(matrix), (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE))
        moved.append(transform_points(lm, matrix))
    return np.stack(frames), np.stack(moved), openness


def close_eyes(image: np.ndarray, landmarks: np.ndarray, openness: float) -> tuple[np.ndarray, np.ndarray]:
    """The face with both eyes ``openness`` (1 as in the image, 0 shut) open, and its moved landmarks.

    In each column of an eye, the rows from the upper-lid skin to the lower-lid skin are remapped piecewise
    linearly: the skin above the eye stretches down to the lowered upper lid, the eye between the lids is
    squashed to the new gap, the skin below stretches up to the raised lower lid.
    """
    openness = float(np.clip(openness, 0.02, 1.0))  # a gap of a hair keeps the remap monotonic
    landmarks = np.asarray(landmarks, np.float32)
    if openness >= 1.0:
        return image.copy(), landmarks.copy()
    height, width = image.shape[:2]
    map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    moved = landmarks.copy()
    layout = landmark_layout(landmarks)
    for contour in (layout.left_eye, layout.right_eye):
        upper, lower, eye_width = _lid_curves(landmarks[contour, :2])
        x0, x1 = max(int(np.floor(upper[0, 0])), 0), min(int(np.ceil(upper[-1, 0])), width)
        for x in range(x0, x1):  # pixel columns, sampled at their centres
            y_up, y_low = np.interp(x + 0.5, upper[:, 0], upper[:, 1]), np.interp(x + 0.5, lower[:, 0], lower[:, 1])
            src, dst = _lid_knots(y_up, y_low, eye_width, openness)
            r0, r1 = max(int(np.floor(src[0])), 0), min(int(np.ceil(src[-1])), height)
            rows = np.arange(r0, r1) + 0.5
            map_y[r0:r1, x] = np.interp(rows, dst, src) - 0.5
        # landmarks of the eye region: each moved as the pixels under it were
        xs, ys = moved[:, 0], moved[:, 1]
        for i in np.flatnonzero((xs >= upper[0, 0]) & (xs <= upper[-1, 0])):
            y_up, y_low = np.interp(xs[i], upper[:, 0], upper[:, 1]), np.interp(xs[i], lower[:, 0], lower[:, 1])
            src, dst = _lid_knots(y_up, y_low, eye_width, openness)
            if src[0] <= ys[i] <= src[-1]:
                ys[i] = np.interp(ys[i], src, dst)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), moved


def _lid_curves(contour: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """An eye contour (P, 2) -> its upper and lower lid as (Q, 2) points sorted by x, corner to corner, and the
    eye's width. Points above the line through the corners are the upper lid's; each lid reaches ``LID_REACH``
    times as far from that line as the contour does."""
    left, right = contour[np.argmin(contour[:, 0])], contour[np.argmax(contour[:, 0])]
    t = (contour[:, 0] - left[0]) / max(right[0] - left[0], 1e-6)
    line = left[1] + t * (right[1] - left[1])
    contour = np.stack([contour[:, 0], line + LID_REACH * (contour[:, 1] - line)], 1)
    corners = np.stack([left, right])
    upper = np.concatenate([corners, contour[contour[:, 1] < line]])
    lower = np.concatenate([corners, contour[contour[:, 1] >= line]])
    upper, lower = (np.unique(c, axis=0) for c in (upper, lower))  # unique sorts by x
    return upper, lower, float(right[0] - left[0])


def _lid_knots(y_up: float, y_low: float, eye_width: float, openness: float) -> tuple[np.ndarray, np.ndarray]:
    """Source and destination rows (4,) of one column's piecewise-linear lid map."""
    meet = y_up + LIDS_MEET * (y_low - y_up)
    top, bottom = y_up - UPPER_SKIN * eye_width, y_low + LOWER_SKIN * eye_width
    src = np.array([top, y_up, y_low, bottom])
    dst = np.array([top, meet + openness * (y_up - meet), meet + openness * (y_low - meet), bottom])
    return src, dst
