"""Does the output follow the driver? Generated mouth opening vs the driver's ground truth.

    python bench/follow_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout

Each held-out synthetic clip (written by megactor.data.synthetic, its per-frame ground truth
beside it) drives its own first frame, in visual-only and in audio-only mode. The mouth
opening of each generated frame is measured from its pixels alone: the spread (standard
deviation) of the luma in a box around the mouth. An open mouth shows a dark cavity and
bright teeth, a closed one only lips, so the spread grows with the opening whatever the
skin tone (the mean darkness does not: on dark skin the teeth brighten the box).

The box is the source crop's outer-lip box (MediaPipe), stretched down to hold an open
jaw, placed per frame where the conditioning puts the face: in visual mode moved by the
similarity that takes the source's alignment points (eye corners, nose) onto the driver's
in that frame as the control aligns them; in audio mode nothing moves the head, so it
stays where the source has it. The table gives the Pearson correlation of the measure
with the true opening and, as the measure's ceiling, the same on the driver's own frames
aligned as the control aligns them (a perfect visual-mode result).
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.control import clip_alignment, similarity_transform, transform_points, warp_frames
from megactor.data.face import landmark_layout, mouth_box
from megactor.data.video_io import read_video
from megactor.visualisation import grid_png

MODES = ("visual", "audio")


def mouth_region(landmarks: np.ndarray, up: float = 0.1, down: float = 0.3) -> np.ndarray:
    """(N, k) landmarks -> (4,) x0, y0, x1, y1: the outer-lip box, grown by `up` and `down` times its width
    (a mouth opens mostly downwards, with the jaw)."""
    x0, y0, x1, y1 = mouth_box(landmarks)
    width = x1 - x0
    return np.array([x0, y0 - up * width, x1, y1 + down * width])


def follow_boxes(box: np.ndarray, source_landmarks: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """The source's (4,) box moved into each frame: (T, N, 2) aligned driver landmarks -> (T, 4) boxes
    (NaN where the driver has no face). Corners go through the frame's similarity of the alignment points."""
    align = landmark_layout(source_landmarks).align
    corners = box.reshape(2, 2)
    boxes = np.full((len(aligned), 4), np.nan)
    for t, points in enumerate(aligned):
        if np.isfinite(points[align]).all():
            m = similarity_transform(source_landmarks[align, :2], points[align])
            boxes[t] = (corners @ m[:, :2].T + m[:, 2]).reshape(-1)
    return boxes


def mouth_spread(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 frames, (T, 4) boxes -> (T,): the standard deviation of the luma over the pixels
    each box meets (NaN for a NaN box)."""
    out = np.full(len(frames), np.nan)
    for t, (frame, box) in enumerate(zip(frames, boxes)):
        if np.isfinite(box).all():
            c0, r0 = np.maximum(np.floor(box[:2]).astype(int), 0)
            c1, r1 = np.ceil(box[2:]).astype(int)
            luma = frame[r0:r1, c0:c1].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            out[t] = luma.std() if luma.size else np.nan
    return out


def correlation(measured: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation over the frames where both are finite (NaN when the measure is constant)."""
    n = min(len(measured), len(truth))
    measured, truth = measured[:n], truth[:n]
    ok = np.isfinite(measured) & np.isfinite(truth)
    if ok.sum() < 3 or measured[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(measured[ok], truth[ok])[0, 1])


def evaluate_clip(animator: Animator, path: str, limit: float | None, grid_dir: str | None) -> dict:
    """One clip driving its own first frame: {"clip", "visual", "audio", "ceiling"} correlations."""
    cfg = animator.cfg
    truth = np.asarray(json.load(open(path[:-4] + ".json"))["mouth_opening"], np.float64)
    clip = read_video(path, with_audio=False, max_seconds=limit)
    source = clip.frames[0]
    _, source_landmarks = animator.prepare_source(source)
    driver_landmarks = animator.track_driver(clip.frames, path)
    matrix = clip_alignment(driver_landmarks, source_landmarks)
    aligned = transform_points(driver_landmarks[..., :2], matrix)
    region = mouth_region(source_landmarks)
    boxes = {"visual": follow_boxes(region, source_landmarks, aligned), "audio": np.tile(region, (len(aligned), 1))}
    ideal = warp_frames(clip.frames, matrix, cfg.sample_size)
    row = {"clip": os.path.basename(path), "ceiling": correlation(mouth_spread(ideal, boxes["visual"]), truth)}
    for mode in MODES:
        result = animator.animate(source, path, mode=mode, limit=limit, progress=False)
        row[mode] = correlation(mouth_spread(result.frames, boxes[mode]), truth)
        if grid_dir:
            grid_png(os.path.join(grid_dir, f"{row['clip'][:-4]}_{mode}.png"), result.grid(), rows=6)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--clips", required=True, help="a folder of synthetic clip_*.mp4 with their .json")
    ap.add_argument("--num-steps", type=int, default=25, help="denoising steps (num_inference_steps)")
    ap.add_argument("--limit", type=float, default=None, help="seconds of each clip (default: all)")
    ap.add_argument("--grid", default=None, help="also write source | driver | control | result PNGs here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    # the measure reads the model's crop; audio-only is the audio alone, without idle motion's eye control
    fixed = [f"num_inference_steps={args.num_steps}", "paste_back=false", "idle_motion=false"]
    cfg = load_config(InferenceConfig, args.config, [*fixed, *args.overrides])
    animator = Animator.from_config(cfg)
    paths = sorted(glob.glob(os.path.join(args.clips, "*.mp4")))
    if not paths:
        raise SystemExit(f"{args.clips}: no clips (*.mp4)")
    if args.grid:
        os.makedirs(args.grid, exist_ok=True)
    rows = []
    for path in paths:
        rows.append(evaluate_clip(animator, path, args.limit, args.grid))
        print(rows[-1], flush=True)
    print(f"\ncorrelation of the measured mouth opening with the true one ({args.num_steps} steps)")
    print("| clip | visual-only | audio-only | driver's own frames (ceiling) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clip']} | {r['visual']:.2f} | {r['audio']:.2f} | {r['ceiling']:.2f} |")
    mean = {k: np.nanmean([r[k] for r in rows]) for k in ("visual", "audio", "ceiling")}
    print(f"| **mean** | **{mean['visual']:.2f}** | **{mean['audio']:.2f}** | {mean['ceiling']:.2f} |")


if __name__ == "__main__":
    main()
