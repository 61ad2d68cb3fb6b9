"""What ``evaluate.py`` writes: the per-video CSV, the JSON, the printed summary table, and a report folder of
plots (metric distributions, drift curves, a contact sheet of the worst and best results by lip sync).

Every file is written atomically (``fileio``): a CSV or JSON appears complete or not at all, and the report
folder replaces an old one only once all of it is written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from megactor.fileio import atomic_folder, write_bytes

HISTOGRAM_KEYS = ("sync_score", "sync_offset", "lmd", "mouth_corr", "eye_corr", "pose_error", "jitter", "drift_slope",
                  "psnr", "ssim", "sync_c", "csim")


def _clean(value):
    """NaN and infinity -> None (JSON has neither); numpy scalars -> Python's."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def video_entries(scored: list) -> list:
    """The JSON's "videos": each row, its NaN metrics left out (absent, not zero), and its drift curves."""
    out = []
    for s in scored:
        row = {k: v for k, v in s.row.items() if not (isinstance(v, float) and not math.isfinite(v))}
        out.append(_clean({**row, **s.curves}))
    return out


def write_json(path: str, videos: list, summary: dict) -> None:
    write_bytes(path, json.dumps({"videos": videos, "summary": _clean(summary)}, indent=1).encode())


def write_csv(path: str, videos: list) -> None:
    """One row per video, one column per scalar metric any video has (empty where it has none)."""
    columns = []
    for v in videos:
        columns += [k for k, x in v.items() if not isinstance(x, list) and k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(videos)
    write_bytes(path, buf.getvalue().encode())


def summary_table(summary: dict) -> str:
    """The printed table: mean, median and the number of videos of each metric, then the set metrics."""
    lines = [f"{summary['videos']} videos", "| metric | mean | median | videos |", "| --- | ---: | ---: | ---: |"]
    for key, mean in summary["mean"].items():
        lines.append(f"| {key} | {mean:.3f} | {summary['median'][key]:.3f} | {summary['count'][key]} |")
    for key in ("fid", "fvd"):
        if key in summary:
            lines.append(f"| {key} | {summary[key]:.3f} | | {summary['videos']} |")
    return "\n".join(lines)


def write_report(folder: str, videos: list, scored: list, summary: dict, contact_videos: int) -> None:
    """The report folder: summary.md, distributions.png, drift.png, contact_sheet.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_folder(folder) as tmp:
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(summary_table(summary) + "\n")
        keys = [k for k in HISTOGRAM_KEYS if any(k in v for v in videos)]
        if keys:
            cols = min(4, len(keys))
            rows = -(-len(keys) // cols)
            fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
            for ax, key in zip(axes.flat, keys):
                ax.hist([v[key] for v in videos if key in v], bins=20, color="tab:blue")
                ax.set_title(key, fontsize=9)
            for ax in axes.flat[len(keys):]:
                ax.axis("off")
            fig.tight_layout()
            fig.savefig(os.path.join(tmp, "distributions.png"), dpi=80)
            plt.close(fig)
        plot_drift(os.path.join(tmp, "drift.png"), videos, plt)
        sheet = contact_sheet(videos, scored, contact_videos)
        if sheet is not None:
            sheet.save(os.path.join(tmp, "contact_sheet.png"))


def plot_drift(path: str, videos: list, plt) -> None:
    """Each video's colour and shape drift curve, one line each."""
    with_curves = [v for v in videos if "colour_curve" in v]
    if not with_curves:
        return
    fig, (ax_c, ax_s) = plt.subplots(1, 2, figsize=(11, 3.6))
    for v in with_curves:
        label = os.path.basename(v["result"]) if len(with_curves) <= 8 else None
        ax_c.plot([np.nan if x is None else x for x in v["colour_curve"]], label=label)
        ax_s.plot([np.nan if x is None else x for x in v["shape_curve"]], label=label)
    ax_c.set(xlabel="second", ylabel="face colour delta E (CIE76)", title="colour drift")
    ax_s.set(xlabel="second", ylabel="shape distance (inter-ocular)", title="identity shape drift")
    if len(with_curves) <= 8:
        ax_c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def contact_sheet(videos: list, scored: list, count: int) -> Optional[Image.Image]:
    """The ``count`` worst and ``count`` best results by ``sync_score``: a row each of its first, middle and last
    frame, labelled with its name and score. None when no result has a sync score."""
    ranked = sorted((i for i, v in enumerate(videos) if "sync_score" in v), key=lambda i: videos[i]["sync_score"])
    if not ranked:
        return None
    worst, best = ranked[:count], [i for i in ranked[-count:] if i not in ranked[:count]]
    rows = []
    for i in worst + best:
        strip = np.concatenate(scored[i].thumbnails, 1) if scored[i].thumbnails else np.zeros((128, 128, 3), np.uint8)
        label = Image.new("RGB", (300, strip.shape[0]), "white")
        draw = ImageDraw.Draw(label)
        draw.text((6, 6), f"#{ranked.index(i) + 1} of {len(ranked)} by sync_score (1: worst)", fill="black")
        draw.text((6, 24), os.path.basename(videos[i]["result"])[:44], fill="black")
        draw.text((6, 42), f"sync_score {videos[i]['sync_score']:.2f}", fill="black")
        if "sync_offset" in videos[i]:
            draw.text((6, 60), f"sync_offset {videos[i]['sync_offset']} frames", fill="black")
        if "lmd" in videos[i]:
            draw.text((6, 78), f"lmd {videos[i]['lmd']:.3f}", fill="black")
        rows.append(np.concatenate([np.asarray(label), strip], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return Image.fromarray(np.concatenate(rows, 0))
