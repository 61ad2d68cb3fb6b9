"""What the evaluation reads from a video's faces, frame by frame, and the on-disk cache of the drivers'.

A ``FaceTrack`` holds, per frame, the largest face's 468-point MediaPipe mesh, the mouth's appearance (the
lip signal of ``metrics.lipsync``, as the curation records it) and the mean CIE L*a*b* colour inside the face
oval. Frames are decoded and analysed one at a time (a long video's pixels never sit in memory), and a
callback sees each frame with its landmarks, so that other measures read the same decode. A driver's track
is cached under the SHA-256 of the file's bytes: a changed file is analysed afresh, a renamed one is not.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import cv2
import numpy as np
from mediapipe.python.solutions import face_mesh_connections as mp_conn

from megactor.data.control import mouth_patch
from megactor.data.face import FaceAnalyser
from megactor.data.shards import iter_frames
from megactor.fileio import atomic_path
from megactor.metrics.lipsync import mouth_components

FACE_OVAL = np.unique(np.array(sorted(mp_conn.FACEMESH_FACE_OVAL)))  # the face's outline, forehead to chin
CACHE_VERSION = "1"  # bump when what a track holds, or how it is measured, changes
FrameHook = Callable[[int, np.ndarray, Optional[np.ndarray]], None]  # (index, (H, W, 3) frame, (468, 3) or None)


@dataclass
class FaceTrack:
    fps: float
    height: int
    width: int
    landmarks: np.ndarray  # (T, 468, 3) float32 pixels, NaN where the frame shows no face
    mouth: np.ndarray  # (T, 3) mouth appearance components, NaN where no face
    colour: np.ndarray  # (T, 3) mean L*a*b* (L 0-100) inside the face oval, NaN where no face

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)


def face_colour(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8, (468, k) -> (3,) the mean L*a*b* of the pixels inside the face oval's hull."""
    hull = cv2.convexHull(np.round(landmarks[FACE_OVAL, :2]).astype(np.int32))
    x, y, w, h = cv2.boundingRect(hull)
    x0, y0 = max(x, 0), max(y, 0)
    crop = frame[y0:y + h, x0:x + w]
    if crop.size == 0:
        return np.full(3, np.nan)
    mask = np.zeros(crop.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, hull - [x0, y0], 1)
    lab = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)  # L 0-100, a and b about -127-127
    return lab[mask.astype(bool)].mean(0) if mask.any() else np.full(3, np.nan)


def track_faces(frames: Iterable[np.ndarray], fps: float, analyser: FaceAnalyser,
                on_frame: Optional[FrameHook] = None) -> FaceTrack:
    """Analyse a clip's frames as they come (``analyser.stream``) into a FaceTrack; ``on_frame`` sees each."""
    landmarks, patches, colours, shape = [], [], [], None
    for i, (frame, faces) in enumerate(analyser.stream(frames)):
        shape = frame.shape
        lm = faces[0].landmarks if faces else None
        if lm is not None and lm.shape != (468, 3):
            raise ValueError(f"the evaluation needs MediaPipe's 468-point mesh, got landmarks {lm.shape}")
        landmarks.append(lm if lm is not None else np.full((468, 3), np.nan, np.float32))
        patches.append(mouth_patch(frame, lm) if lm is not None else None)
        colours.append(face_colour(frame, lm) if lm is not None else np.full(3, np.nan))
        if on_frame is not None:
            on_frame(i, frame, lm)
    if shape is None:
        raise ValueError("no frames")
    return FaceTrack(fps, shape[0], shape[1], np.stack(landmarks).astype(np.float32), mouth_components(patches),
                     np.stack(colours))


def track_file(path: str, analyser: FaceAnalyser, on_frame: Optional[FrameHook] = None) -> FaceTrack:
    """A video file's FaceTrack; MediaError names an unreadable file."""
    fps, frames = iter_frames(path, path)
    return track_faces(frames, fps, analyser, on_frame)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_track(path: str, analyser: FaceAnalyser, cache_dir: str) -> FaceTrack:
    """``track_file(path)``, read from ``cache_dir`` when this file's bytes were analysed before, and written
    there (atomically) when not."""
    entry = os.path.join(cache_dir, f"{file_digest(path)}-v{CACHE_VERSION}.npz")
    if os.path.isfile(entry):
        try:
            with np.load(entry, allow_pickle=False) as z:
                height, width = (int(v) for v in z["size"])
                return FaceTrack(float(z["fps"]), height, width, z["landmarks"], z["mouth"], z["colour"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # a cache file from elsewhere, or damaged: analyse again
            pass
    track = track_file(path, analyser)
    with atomic_path(entry) as tmp:
        np.savez(tmp, fps=track.fps, size=np.array([track.height, track.width]), landmarks=track.landmarks,
                 mouth=track.mouth, colour=track.colour)
    return track
