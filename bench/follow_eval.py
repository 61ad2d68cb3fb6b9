"""Does the output follow the driver? Generated mouth opening vs the driver's ground truth.

    python bench/follow_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout

For each held-out synthetic clip (written by megactor.data.synthetic, with its per-frame
ground truth beside it), the clip drives its own first frame, in visual-only and in
audio-only mode. The mouth opening of each frame is measured from its pixels: the darkness
(255 - mean luma) of the mouth box, which MediaPipe's face mesh places once, on the source
crop (frames upscaled 4x; the generated frames share that crop, and at 64 px MediaPipe
finds no face in most of them). The table gives its Pearson correlation with the
ground-truth opening and, as the measure's ceiling, the same on the driver's own frames
cropped the same way.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import cv2
import numpy as np

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.control import crop_and_resize, face_crop_box
from megactor.data.face import mouth_box
from megactor.data.video_io import read_video


def mouth_region(analyser, crop: np.ndarray, upscale: int = 4) -> tuple[slice, slice]:
    """Rows and columns of the mouth box in the (S, S, 3) source crop."""
    big = cv2.resize(crop, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    faces = analyser.detect(big)
    if not faces:
        raise SystemExit("no face found in the source crop")
    x0, y0, x1, y1 = mouth_box(faces[0].landmarks) / upscale
    half = max(y1 - y0, 0.6 * (x1 - x0)) / 2  # room for the mouth to open below a closed one's lips
    cy = (y0 + y1) / 2
    rows, cols = np.round([cy - half, cy + half]).astype(int), np.round([x0, x1]).astype(int)
    return slice(max(rows[0], 0), rows[1] + 1), slice(max(cols[0], 0), cols[1] + 1)


def mouth_darkness(frames: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
    """(T, S, S, 3) -> (T,): 255 - the mean luma of the mouth box; an open mouth shows its dark inside."""
    luma = frames[:, region[0], region[1]].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return 255 - luma.mean(axis=(1, 2))


def correlation(measured: np.ndarray, truth: np.ndarray) -> float:
    if measured.std() == 0:
        return float("nan")
    return float(np.corrcoef(measured, truth)[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--clips", required=True, help="a folder of synthetic clip_*.mp4 with their .json")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(InferenceConfig, args.config, [f"num_inference_steps={args.steps}", *args.overrides])
    animator = Animator.from_config(cfg)
    rows = []
    for path in sorted(glob.glob(os.path.join(args.clips, "*.mp4"))):
        truth = np.asarray(json.load(open(path[:-4] + ".json"))["mouth_opening"], np.float64)
        clip = read_video(path, with_audio=False)
        source = clip.frames[0]
        box = face_crop_box(animator.faces.detect(source)[0].landmarks, source.shape[:2], cfg.crop_margin)
        driver_crops = np.stack([crop_and_resize(f, box, cfg.sample_size) for f in clip.frames])
        region = mouth_region(animator.faces, driver_crops[0])
        row = {"clip": os.path.basename(path), "ceiling": correlation(mouth_darkness(driver_crops, region), truth)}
        for mode in ("visual", "audio"):
            frames = animator.animate(source, path, mode=mode, progress=False).frames
            n = min(len(frames), len(truth))
            row[mode] = correlation(mouth_darkness(frames[:n], region), truth[:n])
        rows.append(row)
        print(row, flush=True)
    print(f"\ncorrelation of the measured mouth opening with the true one ({args.steps} steps)")
    print("| clip | visual-only | audio-only | driver's own frames (ceiling) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clip']} | {r['visual']:.2f} | {r['audio']:.2f} | {r['ceiling']:.2f} |")
    mean = {k: np.nanmean([r[k] for r in rows]) for k in ("visual", "audio", "ceiling")}
    print(f"| **mean** | **{mean['visual']:.2f}** | **{mean['audio']:.2f}** | {mean['ceiling']:.2f} |")


if __name__ == "__main__":
    main()
