"""Visual control frames and the face-centred source crop.

A control frame is the driver's face aligned to the source crop, in grayscale, with
everything zeroed except boxes around the eyes (and the mouth). One similarity
transform serves a whole clip, so the driver's head motion relative to its average
pose survives the alignment while its face shape and position are mapped onto the
source's.

Points are in continuous pixel coordinates: pixel (i, j) covers [j, j+1) x [i, i+1),
as MediaPipe's landmarks (normalised coordinates times the image size) are. cv2's
warps address pixel centres, so matrices are shifted by half a pixel before warping.
"""
from __future__ import annotations

import cv2
import numpy as np

from megactor.data.face import eye_boxes, landmark_box, landmark_layout, mouth_box

CONTROL_MODES = ("eyes+mouth", "eyes")


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """(N, >=2), (N, >=2) -> (2, 3) rotation + uniform scale + translation mapping src onto dst
    in the least-squares sense (Umeyama 1991)."""
    src = np.asarray(src_pts, np.float64)[:, :2]
    dst = np.asarray(dst_pts, np.float64)[:, :2]
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_transform needs matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, sig, vt = np.linalg.svd(dst_c.T @ src_c / len(src))  # cross-covariance
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])  # no reflections
    rot = u @ d @ vt
    scale = (sig * d.diagonal()).sum() / max(src_c.var(0).sum(), 1e-12)
    return np.concatenate([scale * rot, (dst_mean - scale * rot @ src_mean)[:, None]], 1)


def mouth_patch(image: np.ndarray, lm: np.ndarray, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """(H, W, 3) RGB uint8 and its face's (N, 2|3) landmarks -> (h, w) float32 grayscale patch of the mouth.

    The patch is upright on the eye axis, centred on the outer lip contour, and ``1.3 * face_size`` wide
    (the mouth and a margin around it), so that it shows the same part of every face at every distance.
    """
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float64)[:, :2]
    width, height = size
    centre = lm[layout.mouth_outer].mean(0)
    axis = lm[layout.left_eye].mean(0) - lm[layout.right_eye].mean(0)
    angle = np.arctan2(axis[1], axis[0])
    scale = width / max(1.3 * float(np.linalg.norm(axis)), 1e-6)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # rotates the eye axis onto +x, scaled
    matrix = np.concatenate([rot, (np.array([width / 2, height / 2]) - rot @ centre)[:, None]], 1)
    matrix[:, 2] += matrix[:, :2].sum(1) * 0.5 - 0.5  # continuous coordinates -> cv2's pixel centres
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.warpAffine(gray, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE).astype(np.float32)


def transform_points(pts: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) similarity to (..., N, 2|3) points; z (if given) is scaled by its scale."""
    pts = np.asarray(pts, np.float64)
    out = pts.copy()
    out[..., :2] = pts[..., :2] @ matrix[:, :2].T + matrix[:, 2]
    if pts.shape[-1] == 3:
        out[..., 2] *= np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    return out.astype(np.float32)


def face_crop_box(lm_or_box: np.ndarray, image_hw: tuple[int, int], margin: float) -> np.ndarray:
    """A square (x0, y0, side) of whole pixels centred on the face, side = max box side * (1 + margin).

    ``lm_or_box``: (N, 2|3) landmarks or a (4,) x0, y0, x1, y1 box. The square may reach past
    the image; ``crop_and_resize`` pads there. A face box outside the image is an error (the
    landmarks are then in some other image's pixels).
    """
    arr = np.asarray(lm_or_box, np.float64)
    box = arr if arr.shape == (4,) else landmark_box(arr).astype(np.float64)
    height, width = image_hw
    if not (box[0] < box[2] and box[1] < box[3]) or box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
        raise ValueError(f"face box {box.round(1).tolist()} is empty or outside the {width}x{height} image")
    side = max(int(round(max(box[2] - box[0], box[3] - box[1]) * (1 + margin))), 1)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return np.array([round(cx - side / 2), round(cy - side / 2), side], np.int64)


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) affine from image pixels to the pixels of the ``size`` x ``size`` crop of ``box``."""
    x0, y0, side = box
    s = size / side
    return np.array([[s, 0.0, -s * x0], [0.0, s, -s * y0]])


def crop_and_resize(image: np.ndarray, box: np.ndarray, size: int, pad: str = "edge") -> np.ndarray:
    """(H, W, C) -> (size, size, C): the square ``box`` (x0, y0, side), padded where it leaves the image
    by repeating the edge ("edge") or with zeros ("black"); area-averaged when shrinking."""
    if pad not in ("edge", "black"):
        raise ValueError(f"pad must be 'edge' or 'black', got {pad!r}")
    x0, y0, side = (int(v) for v in box)
    height, width = image.shape[:2]
    left, top = max(0, -x0), max(0, -y0)
    right, bottom = max(0, x0 + side - width), max(0, y0 + side - height)
    if left or top or right or bottom:
        border = cv2.BORDER_REPLICATE if pad == "edge" else cv2.BORDER_CONSTANT
        image = cv2.copyMakeBorder(image, top, bottom, left, right, border, value=0)
    crop = image[y0 + top:y0 + top + side, x0 + left:x0 + left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)


SYNCNET_CROP_SCALE = 0.4  # SyncNet's reference pipeline's crop_scale: a square 1.4 x the face box, centred 0.2 x lower


def syncnet_crop(frame: np.ndarray, box, size: int = 224) -> np.ndarray:
    """(H, W, 3) frame and its face's (4,) box -> (size, size, 3): the face crop SyncNet's reference pipeline
    cuts (``SYNCNET_CROP_SCALE``), edge-padded where it leaves the frame."""
    box = np.asarray(box, np.float64).copy()
    box[[1, 3]] += SYNCNET_CROP_SCALE / 2 * max(box[2] - box[0], box[3] - box[1])
    return crop_and_resize(frame, face_crop_box(box, frame.shape[:2], SYNCNET_CROP_SCALE), size)


def centre_matrix(matrix: np.ndarray) -> np.ndarray:
    """The same map in cv2's pixel-centre coordinates: x_c = x - 0.5."""
    out = np.array(matrix, np.float64)
    out[:, 2] += out[:, :2].sum(1) * 0.5 - 0.5
    return out


def clip_alignment(driver_landmarks: np.ndarray, source_landmarks: np.ndarray) -> np.ndarray:
    """(T, N, k), (N, k) -> (2, 3): the one similarity for a clip.

    Fitted from the per-clip median of the driver's alignment points (eye corners, nose)
    to the source's: robust to a blink, a turned head or a missed face (NaN) in any one
    frame, and the same for every frame, so the driver's head motion about its median pose
    is kept.
    """
    layout = landmark_layout(source_landmarks)
    driver = np.nanmedian(np.asarray(driver_landmarks, np.float64)[:, layout.align, :2], axis=0)  # (P, 2)
    if np.isnan(driver).any():
        raise ValueError("clip_alignment: the driver has no frame with landmarks")
    return similarity_transform(driver, np.asarray(source_landmarks)[layout.align, :2])


def warp_frames(frames: np.ndarray, matrix: np.ndarray, out_size: int) -> np.ndarray:
    """(T, H, W, C) -> (T, out_size, out_size, C) by the (2, 3) ``matrix``, black outside."""
    m = centre_matrix(matrix)
    return np.stack([cv2.warpAffine(f, m, (out_size, out_size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for f in frames])


def control_patches(landmarks: np.ndarray, mode: str, patch_margin: float) -> np.ndarray:
    """(..., N, k) -> (..., P, 4) patch boxes: both eyes, then the mouth in "eyes+mouth" mode.

    Each landmark box grows by ``patch_margin`` times its longer side on every side.
    """
    if mode not in CONTROL_MODES:
        raise ValueError(f"unknown control mode {mode!r}; choose one of {CONTROL_MODES}")
    boxes = eye_boxes(landmarks)  # (..., 2, 4)
    if mode == "eyes+mouth":
        boxes = np.concatenate([boxes, mouth_box(landmarks)[..., None, :]], -2)
    grow = patch_margin * np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    return boxes + grow[..., None] * np.array([-1, -1, 1, 1], np.float32)


def control_frames(driver_frames: np.ndarray, driver_landmarks: np.ndarray, source_landmarks: np.ndarray,
                   out_size: int, mode: str = "eyes+mouth",
                   patch_margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """The driver's eyes (and mouth), aligned to the source crop, grayscale, zero elsewhere.

    driver_frames (T, H, W, 3) uint8 and driver_landmarks (T, N, k) in driver pixels;
    source_landmarks (N, k) in the out_size x out_size source crop. Frames whose landmarks
    are NaN (no face) give an all-zero control.
    Returns control (T, out_size, out_size) uint8 and the aligned landmarks (T, N, 2).
    """
    driver_frames, driver_landmarks = np.asarray(driver_frames), np.asarray(driver_landmarks)
    if driver_frames.ndim != 4 or driver_frames.shape[-1] != 3 or driver_landmarks.ndim != 3 \
            or len(driver_frames) != len(driver_landmarks):
        raise ValueError(f"control_frames: driver frames {driver_frames.shape} and landmarks "
                         f"{driver_landmarks.shape} must be (T, H, W, 3) and (T, N, k) with the same T")
    if driver_landmarks.shape[1] != np.shape(source_landmarks)[0]:
        raise ValueError(f"control_frames: driver landmarks have {driver_landmarks.shape[1]} points, "
                         f"source landmarks {np.shape(source_landmarks)[0]}")
    matrix = clip_alignment(driver_landmarks, source_landmarks)
    aligned = transform_points(driver_landmarks[..., :2], matrix)  # (T, N, 2)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in warp_frames(driver_frames, matrix, out_size)])
    mask = patch_mask(aligned, out_size, mode, patch_margin)
    return np.where(mask, gray, 0).astype(np.uint8), aligned


def measure_boxes(source_landmarks: np.ndarray, eye_grow: float = 0.15, mouth_up: float = 0.1,
                  mouth_down: float = 0.3) -> np.ndarray:
    """(N, k) source landmarks -> (3, 4) boxes x0, y0, x1, y1 to read face motion in: the left and right eye
    contour boxes grown by ``eye_grow`` times their width above and below (room for the open lids), and the
    outer-lip box grown by ``mouth_up`` and ``mouth_down`` times its width (a mouth opens downwards, with the jaw)."""
    eyes = eye_boxes(source_landmarks).astype(np.float64)  # (2, 4)
    eyes += eye_grow * (eyes[:, 2:3] - eyes[:, 0:1]) * np.array([0, -1, 0, 1])
    x0, y0, x1, y1 = mouth_box(source_landmarks).astype(np.float64)
    mouth = np.array([x0, y0 - mouth_up * (x1 - x0), x1, y1 + mouth_down * (x1 - x0)])
    return np.concatenate([eyes, mouth[None]])


def placed_boxes(boxes: np.ndarray, source_landmarks: np.ndarray, aligned: np.ndarray | None,
                 num_frames: int) -> np.ndarray:
    """(P, 4) boxes in the source crop -> (T, P, 4): where the conditioning puts them in each output frame.

    ``aligned`` (T, N, 2): the driver's landmarks aligned as the control aligns them (``control_frames``);
    each frame's boxes go through the similarity that takes the source's alignment points onto that
    frame's (NaN where the driver has no face). None (no visual driving): nothing moves the head, so the
    boxes stay where the source has them.
    """
    boxes = np.asarray(boxes, np.float64)
    if aligned is None:
        return np.broadcast_to(boxes, (num_frames, *boxes.shape)).copy()
    align = landmark_layout(source_landmarks).align
    corners = boxes.reshape(-1, 2)  # (2P, 2)
    out = np.full((len(aligned), *boxes.shape), np.nan)
    for t, points in enumerate(np.asarray(aligned)):
        if np.isfinite(points[align]).all():
            m = similarity_transform(source_landmarks[align, :2], points[align])
            out[t] = (corners @ m[:, :2].T + m[:, 2]).reshape(boxes.shape)
    return out


def patch_mask(landmarks: np.ndarray, out_size: int, mode: str = "eyes+mouth", patch_margin: float = 0.25) -> np.ndarray:
    """(T, N, k) landmarks in out_size x out_size pixels -> (T, S, S) bool: the pixels whose area meets a control
    patch (``control_patches``); none for frames whose landmarks are NaN."""
    mask = np.zeros((len(landmarks), out_size, out_size), bool)
    for t, frame_patches in enumerate(control_patches(landmarks, mode, patch_margin)):  # (P, 4)
        for x0, y0, x1, y1 in frame_patches:
            if np.isfinite([x0, y0, x1, y1]).all():
                # pixels whose area meets the box: [floor(x0), ceil(x1)), clipped to the frame
                c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
                c1, r1 = min(int(np.ceil(x1)), out_size), min(int(np.ceil(y1)), out_size)
                mask[t, r0:r1, c0:c1] = True
    return mask
