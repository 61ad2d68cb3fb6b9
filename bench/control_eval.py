"""Mixed-modal control across identities: does each modality drive the portrait, alone, mixed and scaled?

    python bench/control_eval.py --config configs/inference/tiny/inference.yaml --clips data/synthetic/heldout \\
        [--pairs 8 --limit S --num-steps 15 --json control.json --grid DIR]

On held-out synthetic clips (``megactor.data.synthetic``, each with its per-frame truth), pair p takes
the first frame of clip i as the source and clip j != i as the driver; unpaired mixed driving takes the
audio of a third clip k. Every measure is read from the generated pixels alone
(``megactor.metrics.face_motion``: mouth opening, eye opening, head position, identity), in boxes placed
where the conditioning puts the face (``megactor.data.control.placed_boxes``). Correlations are Pearson,
over all frames of all pairs, each pair's measure and truth z-scored first.

JSON keys:
    visual_mouth, visual_eyes, visual_head  visual-only driving by j, against j's truth (head: mean of x and y)
    audio_mouth                             audio-only driving by j's audio, against j's mouth
    mixed_eyes, mixed_mouth, mixed_mouth_leak
                                            video from j, audio from k: eyes against j, mouth against k,
                                            and mouth against j (the leak, should be about 0)
    identity_kept                           share of visual and mixed output frames whose colour layout is
                                            closer to the source's than to the aligned driver frame's
    amplitude_rho                           per knob, the Spearman correlation of its level (4+ levels, 0
                                            included) with the output's motion from that modality (the
                                            standard deviation over time of the measured mouth opening,
                                            averaged over the sweep's pairs); at 0 the branch is off
    self_visual_mouth, ceiling_visual_mouth clip i driving its own first frame, and
                                            the measure on the drivers' own frames aligned as the control
                                            aligns them (what a perfect visual result scores)
    pairs, steps, seconds, checkpoint
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from megactor.animate import Animator, guidance_knobs
from megactor.config import InferenceConfig, load_config
from megactor.data.control import clip_alignment, measure_boxes, placed_boxes, transform_points, warp_frames
from megactor.data.video_io import read_video
from megactor.fileio import atomic_path
from megactor.metrics import face_motion

KNOBS = {  # knob -> (driving mode, levels)
    "audio_scale": ("audio", (0.0, 1.0, 2.0, 3.0)),
    "visual_scale": ("visual", (0.0, 1.0, 2.0, 3.0)),
    "audio_amplitude": ("audio", (0.0, 0.5, 1.0, 1.5)),
    "visual_amplitude": ("visual", (0.0, 0.5, 1.0, 1.5)),
}
CORRELATIONS = ("visual_mouth", "visual_eyes", "visual_head", "audio_mouth", "mixed_eyes", "mixed_mouth",
                "mixed_mouth_leak")
HEAD_MARGIN = 6  # pixels around the eyes and mouth boxes that the head measure reads


@dataclass
class HeldOutClip:
    path: str
    truth: dict  # the generator's per-frame truth (mouth_opening, eye_opening, head_x, head_y, ...)


def load_clips(folder: str) -> list[HeldOutClip]:
    """The synthetic clips in ``folder`` (clip_*.mp4 with their .json truth); SystemExit naming what is missing."""
    paths = sorted(glob.glob(os.path.join(folder, "*.mp4")))
    if len(paths) < 3:
        raise SystemExit(f"{folder}: {len(paths)} clips (*.mp4); unpaired mixed driving needs at least 3")
    clips = []
    for path in paths:
        truth_path = path[:-4] + ".json"
        if not os.path.exists(truth_path):
            raise SystemExit(f"{truth_path}: missing (each clip needs the truth megactor.data.synthetic writes)")
        truth = json.load(open(truth_path))
        missing = [k for k in ("mouth_opening", "eye_opening", "head_x", "head_y") if k not in truth]
        if missing:
            raise SystemExit(f"{truth_path}: no {', '.join(missing)} (not a synthetic clip's truth)")
        clips.append(HeldOutClip(path, truth))
    return clips


def pair_indices(num_clips: int, num_pairs: int) -> list[tuple[int, int, int]]:
    """(i, j, k) per pair: source i, video driver j != i, audio k not in (i, j); every clip a source in turn,
    the driver offset growing each round so that no pair repeats before num_clips * (num_clips - 2)."""
    out = []
    for p in range(num_pairs):
        i, offset = p % num_clips, 1 + (p // num_clips) % (num_clips - 2)
        j = (i + offset) % num_clips
        out.append((i, j, (j + 1) % num_clips if (j + 1) % num_clips != i else (j + 2) % num_clips))
    return out


def truth(clip: HeldOutClip, key: str, frames: int) -> np.ndarray:
    return np.asarray(clip.truth[key][:frames], np.float64)


class PairMeasure:
    """One source and driver: where the conditioning puts the face, and the measures read there."""

    def __init__(self, animator: Animator, source_clip: HeldOutClip, driver_clip: HeldOutClip, limit):
        self.source_frame = read_video(source_clip.path, with_audio=False, max_seconds=0.2).frames[0]
        self.source, source_landmarks = animator.prepare_source(self.source_frame)
        driver = read_video(driver_clip.path, with_audio=False, max_seconds=limit).frames
        driver_landmarks = animator.track_driver(driver, driver_clip.path)
        matrix = clip_alignment(driver_landmarks, source_landmarks)
        aligned = transform_points(driver_landmarks[..., :2], matrix)
        self.frames = len(driver)
        self.driver_aligned = warp_frames(driver, matrix, animator.cfg.sample_size)  # the ideal visual result
        boxes = measure_boxes(source_landmarks)  # (3, 4): eyes, mouth
        self.moved = placed_boxes(boxes, source_landmarks, aligned, self.frames)  # (T, 3, 4) video-driven
        self.still = placed_boxes(boxes, source_landmarks, None, self.frames)  # (T, 3, 4) audio only
        self.face_box = np.r_[boxes[:, :2].min(0) - HEAD_MARGIN, boxes[:, 2:].max(0) + HEAD_MARGIN]

    def mouth(self, frames: np.ndarray, moved: bool) -> np.ndarray:
        return face_motion.mouth_opening(frames, (self.moved if moved else self.still)[:, 2])

    def eyes(self, frames: np.ndarray) -> np.ndarray:
        return face_motion.eye_opening(frames, self.moved[:, :2])

    def head(self, frames: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """(T, 2) x, y shift of the face against ``reference`` (default: the source crop)."""
        return face_motion.head_offset(frames, self.source if reference is None else reference, self.face_box)


@contextmanager
def knob(animator: Animator, name: str, level: float):
    """The animator's guidance with one knob set to ``level`` (both scales pinned to their current values)."""
    g = animator.cfg.guidance
    saved = {k: getattr(g, k) for k in ("audio_scale", "visual_scale", "audio_amplitude", "visual_amplitude")}
    current = guidance_knobs(animator.cfg)
    g.audio_scale, g.visual_scale = current["audio_scale"], current["visual_scale"]
    setattr(g, name, level)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(g, k, v)


def evaluate(animator: Animator, clips: list[HeldOutClip], num_pairs: int, limit, seed: int = 0,
             sweep_pairs: int = 2, grid_dir: str | None = None) -> dict:
    """Every key of the module docstring but checkpoint, steps and seconds."""
    series = {k: [] for k in CORRELATIONS + ("self_visual_mouth", "ceiling_visual_mouth")}
    kept, sweeps = [], {name: np.zeros(len(levels)) for name, (_, levels) in KNOBS.items()}
    for p, (i, j, k) in enumerate(pair_indices(len(clips), num_pairs)):
        pm = PairMeasure(animator, clips[i], clips[j], limit)
        n, src, drv, aud = pm.frames, clips[i].path, clips[j].path, clips[k].path

        def run(mode, driver=drv, audio=None):
            return animator.animate(pm.source_frame, driver, audio=audio, mode=mode, limit=limit, seed=seed + p,
                                    progress=False)

        visual = run("visual")
        series["visual_mouth"].append((pm.mouth(visual.frames, True), truth(clips[j], "mouth_opening", n)))
        series["visual_eyes"].append((pm.eyes(visual.frames), truth(clips[j], "eye_opening", n)))
        head = pm.head(visual.frames)
        series["visual_head"] += [(head[:, 0], truth(clips[j], "head_x", n)), (head[:, 1], truth(clips[j], "head_y", n))]
        audio = run("audio")
        series["audio_mouth"].append((pm.mouth(audio.frames, False), truth(clips[j], "mouth_opening", n)))
        mixed = run("mixed", audio=aud)
        series["mixed_eyes"].append((pm.eyes(mixed.frames), truth(clips[j], "eye_opening", n)))
        series["mixed_mouth"].append((pm.mouth(mixed.frames, True), truth(clips[k], "mouth_opening", n)))
        series["mixed_mouth_leak"].append((pm.mouth(mixed.frames, True), truth(clips[j], "mouth_opening", n)))
        for out in (visual, mixed):
            kept.append(face_motion.identity_kept(out.frames, pm.source, pm.driver_aligned[:len(out.frames)]))
        series["ceiling_visual_mouth"].append((pm.mouth(pm.driver_aligned, True), truth(clips[j], "mouth_opening", n)))
        own = PairMeasure(animator, clips[i], clips[i], limit)
        own_visual = run("visual", driver=src)
        series["self_visual_mouth"].append((own.mouth(own_visual.frames, True), truth(clips[i], "mouth_opening", own.frames)))
        if grid_dir:
            write_grids(grid_dir, p, mixed, audio, pm, truth(clips[k], "mouth_opening", n),
                        truth(clips[j], "mouth_opening", n))
        print(f"pair {p + 1}/{num_pairs}: source {i}, video {j}, audio {k}", flush=True)
        if p < sweep_pairs:
            for name, (mode, levels) in KNOBS.items():
                for li, level in enumerate(levels):
                    with knob(animator, name, level):
                        out = run(mode)
                    sweeps[name][li] += np.nanstd(pm.mouth(out.frames, mode == "visual")) / min(sweep_pairs, num_pairs)
    result = {key: face_motion.pooled_correlation(pairs) for key, pairs in series.items()}
    result["identity_kept"] = float(np.concatenate(kept).mean())
    swept = min(sweep_pairs, num_pairs) > 0  # else the knobs were not measured: None
    result["amplitude_rho"] = {name: face_motion.spearman(KNOBS[name][1], motion) if swept else None
                               for name, motion in sweeps.items()}
    result["amplitude_motion"] = {name: [round(float(v), 3) for v in motion] for name, motion in sweeps.items()}
    result["pairs"] = num_pairs
    return result


def write_grids(folder: str, p: int, mixed, audio, pm: PairMeasure, mixed_audio_truth: np.ndarray,
                driver_truth: np.ndarray) -> None:
    """pair{p}_mixed.png: source | video driver | control | result at 8 frames, each with the audio clip's mouth
    truth (clip k's) under it, a bar per frame, the shown frame's in red; pair{p}_audio_trace.png: the mouth
    opening measured in audio-only mode (driven by clip j's audio) against j's truth, over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = mixed.grid()  # (T, S, 4S, 3)
    width, bars = grid.shape[2], 24
    picks = np.linspace(0, len(grid) - 1, 8).round().astype(int)
    scale = bars / max(mixed_audio_truth.max(), 1e-6)
    rows = []
    for t in picks:
        under = np.full((bars, width, 3), 255, np.uint8)
        xs = np.linspace(0, width, len(mixed_audio_truth) + 1).astype(int)
        for f, (x0, x1) in enumerate(zip(xs[:-1], xs[1:])):
            colour = (220, 30, 30) if f == t else (90, 90, 90)
            cv2.rectangle(under, (x0, bars - 1), (max(x1 - 1, x0), bars - 1 - int(mixed_audio_truth[f] * scale)), colour, -1)
        rows += [grid[t], under]
    with atomic_path(os.path.join(folder, f"pair{p}_mixed.png")) as tmp:
        cv2.imwrite(tmp, cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR))
    measured = pm.mouth(audio.frames, False)
    fig, ax = plt.subplots(figsize=(7, 2.5))
    ax.plot(_unit(driver_truth), label="truth", color="0.3")
    ax.plot(_unit(measured), label="output, measured", color="tab:red")
    ax.set(xlabel="frame", ylabel="mouth opening (z-score)", title=f"pair {p}, audio only")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(os.path.join(folder, f"pair{p}_audio_trace.png")) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v - np.nanmean(v)) / max(np.nanstd(v), 1e-9)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--clips", required=True, help="a folder of synthetic clip_*.mp4 with their .json truth")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--limit", type=float, default=None, help="seconds of each driver (default: all)")
    ap.add_argument("--num-steps", type=int, default=15, help="denoising steps (num_inference_steps)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of pair 0 (pair p: seed + p)")
    ap.add_argument("--sweep-pairs", type=int, default=2, help="pairs each knob's sweep runs on (0: no sweeps, "
                    "amplitude_rho null)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None, help="also write each pair's mixed grid and audio mouth trace here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error(f"--pairs must be >= 1, got {args.pairs}")
    # the measures read the model's crop; audio-only driving is the audio alone, without idle motion's eye control
    fixed = [f"num_inference_steps={args.num_steps}", "paste_back=false", "idle_motion=false"]
    cfg = load_config(InferenceConfig, args.config, [*fixed, *args.overrides])
    clips = load_clips(args.clips)
    animator = Animator.from_config(cfg)
    if args.grid:
        os.makedirs(args.grid, exist_ok=True)
    start = time.perf_counter()
    result = evaluate(animator, clips, args.pairs, args.limit, args.seed, args.sweep_pairs, args.grid)
    result.update(steps=args.num_steps, seconds=round(time.perf_counter() - start, 1), checkpoint=cfg.checkpoint)
    print_table(result)
    if args.json:
        result.pop("amplitude_motion")
        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=2)


def print_table(r: dict) -> None:
    print(f"\ncross-identity control, {r['pairs']} pairs, {r['steps']} steps, {r['seconds']} s ({r['checkpoint']})")
    print("| key | value |\n|---|---:|")
    for key in CORRELATIONS + ("identity_kept", "self_visual_mouth", "ceiling_visual_mouth"):
        print(f"| `{key}` | {r[key]:.2f} |")
    for name, rho in r["amplitude_rho"].items():
        shown = "not measured (--sweep-pairs 0)" if rho is None else f"{rho:.2f} (motion {r['amplitude_motion'][name]})"
        print(f"| `amplitude_rho.{name}` | {shown} |")


if __name__ == "__main__":
    main()
