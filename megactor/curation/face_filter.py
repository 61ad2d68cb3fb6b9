"""Step 2, face filter: one complete face of sufficient size on (nearly) every frame.

Every frame of a clip is analysed (``FaceAnalyser.stream``, one decoded frame at a time). A frame is valid
when it shows exactly one face, whose box's shorter side reaches
``min_face_size`` and whose landmarks all lie inside the frame. Per-frame
validity, boxes, landmarks (x, y; packed float32, see shards.pack_array), mouth opening, the mouth's
appearance (``metrics.lipsync.mouth_components`` of a grayscale patch cut around the lips) and head
pose go into the clip's json (``json["faces"]``), with clip statistics in
``json["metrics"]``. A clip with fewer than ``min_valid_fraction`` valid frames
is dropped, with the most common fault of its invalid frames as the reason.

``min_face_size`` takes effect when a clip is analysed; ``min_valid_fraction``
when the step assembles its shards (changing it re-runs no analysis).
"""
from __future__ import annotations

import io
import os
from collections import Counter
from itertools import chain
from typing import Iterable, Optional

import numpy as np

from megactor.curation.config import CurationConfig
from megactor.curation.runner import Item, Step, shard_items
from megactor.curation.pack import Pack
from megactor.data.control import mouth_patch
from megactor.data.face import Face, FaceAnalyser, face_analyser_from, face_size, head_pose, mouth_opening
from megactor.data.shards import iter_frames, pack_array
from megactor.data.video_io import MediaError
from megactor.metrics.dataset import abs_extent, head_speed, valid_fraction
from megactor.metrics.lipsync import mouth_components


def frame_fault(faces: list[Face], height: int, width: int, min_side: float) -> Optional[str]:
    """Why a frame is not valid ("no_face", "multiple_faces", "small_face", "face_cut_off"), or None."""
    if not faces:
        return "no_face"
    if len(faces) > 1:
        return "multiple_faces"
    x0, y0, x1, y1 = faces[0].box
    if min(x1 - x0, y1 - y0) < min_side:
        return "small_face"
    xy = faces[0].landmarks[:, :2]
    if (xy < 0).any() or (xy[:, 0] >= width).any() or (xy[:, 1] >= height).any():
        return "face_cut_off"
    return None


def _rounded(a: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(a, np.float64), decimals).tolist()


def analyse_clip(frames: Iterable[np.ndarray], fps: float, analyser: FaceAnalyser,
                 min_face_size: float) -> tuple[dict, dict]:
    """(H, W, 3) frames, one at a time -> (per-frame "faces" json, clip metrics incl. "fault" of the invalid frames).

    Only one decoded frame is held at a time: memory follows the clip's frame count (its landmarks), not its
    pixels. Head pose needs the 3D mesh: with 2D landmarks (DWPose) it is NaN and its limits do not apply.
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("no frames to analyse")
    H, W = first.shape[:2]
    min_side = min_face_size if min_face_size >= 1 else min_face_size * min(H, W)
    tracked, patches = [], []
    for frame, faces in analyser.stream(chain([first], frames)):  # one decoded frame at a time
        tracked.append(faces)
        patches.append(mouth_patch(frame, faces[0].landmarks) if len(faces) == 1 else None)
    T = len(tracked)
    faults = [frame_fault(faces, H, W, min_side) for faces in tracked]
    valid = np.array([f is None for f in faults])
    single = [faces[0] if len(faces) == 1 else None for faces in tracked]
    shape = next((f.landmarks.shape for f in single if f is not None), (468, 3))
    missing = np.full(shape, np.nan, np.float32)
    lm = np.stack([f.landmarks if f is not None else missing for f in single])  # (T, N, k), NaN without one face
    boxes = np.stack([f.box if f is not None else np.full(4, np.nan, np.float32) for f in single])  # (T, 4)
    found = np.array([f is not None for f in single])
    mouth = mouth_opening(lm)  # (T,)
    pose = np.full((T, 3), np.nan)
    if found.any() and shape == (468, 3):
        pose[found] = np.stack(head_pose(lm[found]), -1)  # (F, 3) yaw, pitch, roll
    faces_json = {
        "valid": valid.tolist(),
        "boxes": [_rounded(b, 1) if f is not None else None for b, f in zip(boxes, single)],
        "landmarks": pack_array(lm[:, :, :2]),  # (T, N, 2) pixels, NaN where not exactly one face
        "mouth_appearance": pack_array(mouth_components(patches)),  # (T, 3) the sync filter's lip signal
        "mouth_opening": [round(float(m), 4) if f is not None else None for m, f in zip(mouth, single)],
        "pose": [_rounded(p, 2) if f is not None else None for p, f in zip(pose, single)],
    }
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    extent = abs_extent(pose, valid)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    counts = Counter(f for f in faults if f is not None)
    metrics = {
        "valid_fraction": valid_fraction(valid),
        "face_size": float(np.nanmedian(sides)) if np.isfinite(sides).any() else float("nan"),
        "yaw": float(extent[0]), "pitch": float(extent[1]), "roll": float(extent[2]),
        "motion": head_speed(centres, face_size(lm), valid, fps),
        "frames_no_face": counts["no_face"], "frames_multiple_faces": counts["multiple_faces"],
        "fault": counts.most_common(1)[0][0] if counts else None,
    }
    return faces_json, metrics


class FaceFilter(Step):
    name, folder = "face", "2_face"

    def __init__(self):
        self.analyser: Optional[FaceAnalyser] = None

    def items(self, in_dir: str, out_dir: str) -> list[Item]:
        return shard_items(Pack().shard_dir(out_dir), "1_pack.py")

    def setup(self, cfg: CurationConfig) -> None:
        self.analyser = face_analyser_from(cfg)

    def teardown(self) -> None:
        if self.analyser is not None:
            self.analyser.close()
            self.analyser = None

    def process(self, item: Item, cfg: CurationConfig, item_dir: str) -> list[dict]:
        ref = item.source
        name = f"{ref.shard}:{ref.key}"
        try:
            sample = ref.read_json()
            fps, frames = iter_frames(io.BytesIO(ref.read("mp4")), name)
            faces, metrics = analyse_clip(frames, fps, self.analyser, cfg.min_face_size)
        except (MediaError, ValueError, KeyError, OSError) as e:
            return [{"record": {"key": ref.key, "source": name, "reason": "unreadable", "error": str(e)},
                     "json": None, "mp4": None}]
        sample["faces"] = faces
        sample["metrics"] = {**sample.get("metrics", {}), **{k: v for k, v in metrics.items() if k != "fault"}}
        record = {"key": ref.key, "source": sample.get("source", name), **metrics, "reason": None}
        offset, size = ref.members["mp4"]
        return [{"record": record, "json": sample, "mp4": {"path": os.path.abspath(ref.shard), "offset": offset, "size": size}}]

    def decide(self, record: dict, cfg: CurationConfig) -> Optional[str]:
        if record["valid_fraction"] < cfg.min_valid_fraction:
            return record["fault"] or "few_valid_frames"
        return None
