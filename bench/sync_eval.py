"""Validate the curation's audio-visual sync filter on a folder of in-sync clips.

    python bench/sync_eval.py --clips DIR [--json OUT.json] [--plot OUT.png] [key=value ...]

Every video under DIR is taken as in sync and cut as ``pack`` cuts it (the fewest
equal pieces of at most ``clip_seconds``, ``pack.piece_lengths``; pieces shorter than
``min_clip_seconds`` dropped). Each piece is analysed once, as the
face filter analyses a clip (``analyse_clip``), and its lip signal is scored against:

- its own audio (in sync: should be kept),
- its audio delayed and advanced by 5, 10 and 15 frames (silence fills the gap;
  10 and more should be dropped, and the estimated lag should move by the shift),
- the audio of up to three other clips of the folder, trimmed or looped to length
  (should be dropped).

Each copy goes through the audio filter's own scoring and sync decision
(``curation.audio_filter.measure_sync`` and ``sync_reason``) with the curation
defaults (or the ``key=value`` settings given); the audio is the source's, read
at 16 kHz on the video's timeline, not re-encoded as ``pack`` does. Printed and
written to ``--json``: ``kept_in_sync``, ``dropped_shift_10``, ``dropped_swapped``,
``lag_tracks_shift`` (shares, see below), ``clips`` (the number of in-sync clips
scored) and ``copies`` (one row per scored copy: clip, kind, shift, score, lag, reason).
``--plot`` draws the confidence and lag of each group with the thresholds. A piece
too short for a verdict (``audio_filter.verdict_frames``) is kept by the curation
for visual training only: its audio counts as not kept, in sync or not (reason
"unverified").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from itertools import islice

import numpy as np

from megactor.curation.audio_filter import measure_sync, sync_reason, sync_signal
from megactor.curation.config import load_curation_config
from megactor.curation.face_filter import analyse_clip
from megactor.curation.pack import find_videos, piece_lengths
from megactor.data.face import face_analyser_from
from megactor.data.shards import iter_frames
from megactor.data.video_io import AUDIO_RATE, probe, read_audio

SHIFTS = (-15, -10, -5, 5, 10, 15)
SWAPS = 3


def shift_audio(audio: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """Delay (frames > 0) or advance (< 0) the audio by whole video frames, filling with silence."""
    n = min(int(round(abs(frames) * AUDIO_RATE / fps)), len(audio))
    if frames > 0:
        return np.concatenate([np.zeros(n, audio.dtype), audio[:len(audio) - n]])
    if frames < 0:
        return np.concatenate([audio[n:], np.zeros(n, audio.dtype)])
    return audio


def loop_to(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` trimmed, or repeated, to ``n`` samples."""
    return np.resize(audio, n) if len(audio) else np.zeros(n, np.float32)


def load_pieces(folder: str, cfg) -> list[dict]:
    """The clips of ``folder`` cut into pieces as ``pack`` cuts them, each analysed as the face filter
    analyses a clip: name, fps, its lip signal for the sync filter (``sync_signal``), its audio."""
    pieces = []
    with face_analyser_from(cfg) as analyser:
        for rel in find_videos(folder):
            path = os.path.join(folder, rel)
            fps, frames = iter_frames(path, path)
            audio = read_audio(path, AUDIO_RATE)
            clip_frames = max(1, int(round(cfg.clip_seconds * fps)))
            min_frames = int(np.ceil(cfg.min_clip_seconds * fps))
            start = 0
            for index, length in enumerate(piece_lengths(probe(path)["num_frames"], clip_frames, min_frames)):
                try:
                    faces, _ = analyse_clip(islice(frames, length), fps, analyser, cfg.min_face_size)
                except ValueError:  # no frames left
                    break
                T = len(faces["valid"])
                first, start = start, start + T
                if T < min_frames:  # a piece that pack drops
                    continue
                a0, n = int(round(first / fps * AUDIO_RATE)), int(round(T / fps * AUDIO_RATE))
                piece_audio = np.pad(audio[a0:a0 + n], (0, max(0, n - len(audio[a0:a0 + n]))))
                pieces.append({"name": f"{rel}#{index}", "fps": fps, "lips": sync_signal(faces), "audio": piece_audio})
    return pieces


def evaluate(pieces: list[dict], cfg) -> dict:
    rows = []
    for i, piece in enumerate(pieces):
        fps, lips, audio = piece["fps"], piece["lips"], piece["audio"]

        def score(kind: str, shift, audio_in, source=None):
            record = {"has_audio": True, "audio_rms": float(np.sqrt(np.mean(np.square(audio_in, dtype=np.float64)))),
                      **measure_sync(lips, audio_in, AUDIO_RATE, fps, cfg)}
            reason = "unverified" if record["audio_unverified"] else sync_reason(record, cfg)
            rows.append({"clip": piece["name"], "kind": kind, "shift": shift, "audio_from": source,
                         "score": record["sync_score"], "lag": record["sync_lag"], "lag_ms": record["sync_lag_ms"],
                         "reason": reason, "fps": fps})

        score("in_sync", 0, audio)
        for shift in SHIFTS:
            score("shifted", shift, shift_audio(audio, shift, fps))
        others = [p for p in pieces if p["name"].split("#")[0] != piece["name"].split("#")[0]]
        for k in range(min(SWAPS, len(others))):
            other = others[(i + k) % len(others)]
            score("swapped", None, loop_to(other["audio"], len(audio)), other["name"])
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    def share(selected, test) -> float:
        return float(np.mean([test(r) for r in selected])) if selected else float("nan")

    sync = {r["clip"]: r for r in rows if r["kind"] == "in_sync"}
    shifted = [r for r in rows if r["kind"] == "shifted"]

    def tracks(r) -> bool:
        base = sync[r["clip"]]["lag"]
        return r["lag"] is not None and base is not None and abs(r["lag"] - base - r["shift"]) <= 1

    return {
        "kept_in_sync": share(list(sync.values()), lambda r: r["reason"] is None),
        "dropped_shift_10": share([r for r in shifted if abs(r["shift"]) >= 10], lambda r: r["reason"] is not None),
        "dropped_swapped": share([r for r in rows if r["kind"] == "swapped"], lambda r: r["reason"] is not None),
        "lag_tracks_shift": share(shifted, tracks),
        "clips": len(sync),
        "copies": rows,
    }


def plot(result: dict, cfg, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["copies"]
    groups = {"in sync": [r for r in rows if r["kind"] == "in_sync"],
              "shifted 5": [r for r in rows if r["kind"] == "shifted" and abs(r["shift"]) == 5],
              "shifted >= 10": [r for r in rows if r["kind"] == "shifted" and abs(r["shift"]) >= 10],
              "swapped": [r for r in rows if r["kind"] == "swapped"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rng = np.random.default_rng(0)
    for g, (label, members) in enumerate(groups.items()):
        scores = np.array([r["score"] for r in members], float)
        lags = np.array([np.nan if r["lag_ms"] is None else r["lag_ms"] for r in members], float)
        dropped = np.array([r["reason"] is not None for r in members])
        x = g + rng.uniform(-0.2, 0.2, len(members))
        for ax, y in ((axes[0], scores), (axes[1], lags)):
            ax.scatter(x[~dropped], y[~dropped], s=14, c="tab:green", label="kept" if g == 0 else None)
            ax.scatter(x[dropped], y[dropped], s=14, c="tab:red", marker="x", label="dropped" if g == 0 else None)
    axes[0].axhline(cfg.min_sync_score, color="k", ls="--", lw=1, label=f"min_sync_score {cfg.min_sync_score}")
    axes[1].axhspan(cfg.min_sync_lag_ms, cfg.max_sync_lag_ms, color="tab:green", alpha=0.1,
                    label=f"lag window {cfg.min_sync_lag_ms:g} ... {cfg.max_sync_lag_ms:g} ms")
    for ax, title in ((axes[0], "confidence (z of the peak)"), (axes[1], "best lag, ms (> 0: audio late)")):
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"sync filter: kept in sync {result['kept_in_sync']:.2f}, dropped shift>=10 "
                 f"{result['dropped_shift_10']:.2f}, dropped swapped {result['dropped_swapped']:.2f}, "
                 f"lag tracks shift {result['lag_tracks_shift']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", required=True, action="append", help="folder of in-sync clips (repeatable)")
    parser.add_argument("--json", help="write the figures and every copy's row here")
    parser.add_argument("--plot", help="write the score/lag plot here (PNG)")
    parser.add_argument("overrides", nargs="*", help="curation settings, key=value")
    args = parser.parse_args(argv)
    cfg = load_curation_config(args.overrides)
    pieces = [p for folder in args.clips for p in load_pieces(folder, cfg)]
    if len(pieces) < 2:
        print(f"error: {args.clips}: need at least two clips with a face", file=sys.stderr)
        return 2
    result = evaluate(pieces, cfg)
    print(f"{'clip':34s} {'fps':>5s} {'score':>6s} {'lag':>4s} {'lag ms':>7s}  shifts: lag - lag(0) - shift  swapped")
    for name in dict.fromkeys(r["clip"] for r in result["copies"]):
        mine = [r for r in result["copies"] if r["clip"] == name]
        base = mine[0]
        drift = " ".join(f"{(r['lag'] - base['lag'] - r['shift']) if r['lag'] is not None and base['lag'] is not None else 'nan':>3}"
                         f"{'' if r['reason'] else '*'}" for r in mine if r["kind"] == "shifted")
        swaps = " ".join(f"{r['score']:.1f}{'' if r['reason'] else '*'}" for r in mine if r["kind"] == "swapped")
        print(f"{name:34s} {base['fps']:5.1f} {base['score']:6.2f} {base['lag'] if base['lag'] is not None else 'nan':>4} "
              f"{base['lag_ms'] if base['lag_ms'] is not None else float('nan'):7.0f} {base['reason'] or 'kept':>12s}  "
              f"{drift}   {swaps}")
    print("(* = kept)")
    print(f"\nclips {result['clips']}  kept_in_sync {result['kept_in_sync']:.3f}  dropped_shift_10 {result['dropped_shift_10']:.3f}  "
          f"dropped_swapped {result['dropped_swapped']:.3f}  lag_tracks_shift {result['lag_tracks_shift']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(result, cfg, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
