"""The curation's metrics table (one row per clip, or per input that failed before clipping) and report."""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from megactor.curation.config import CurationConfig  # noqa: E402
from megactor.curation.runner import Step, iter_records  # noqa: E402
from megactor.fileio import write_bytes  # noqa: E402

# metric -> its filter limits (lower, upper) under a config, drawn on its histogram
HISTOGRAMS = {
    "duration": lambda c: (c.min_clip_seconds, c.clip_seconds),
    "valid_fraction": lambda c: (c.min_valid_fraction, None),
    "face_size": lambda c: (c.min_face_size if c.min_face_size >= 1 else None, None),
    "sync_score": lambda c: (c.min_syncnet_confidence if c.syncnet_weights else c.min_sync_score, None),
    "sync_lag_ms": lambda c: (c.min_sync_lag_ms, c.max_sync_lag_ms),
    "audio_rms": lambda c: (c.min_audio_rms, None),
    "yaw": lambda c: (None, c.max_yaw),
    "pitch": lambda c: (None, c.max_pitch),
    "roll": lambda c: (None, c.max_roll),
    "motion": lambda c: (None, c.max_motion),
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_BOOKKEEPING = {"step", "key", "source", "reason", "kept", "error", "fault"}


def build_table(out_dir: str, steps: list[Step]) -> pd.DataFrame:
    """Merge the steps' records: a row per clip (or failed input) with every metric, kept, dropped_at, reason."""
    rows: dict[str, dict] = {}
    for step, records in iter_records(out_dir, steps):
        for i, rec in enumerate(records):
            row_id = rec["key"] if rec["key"] is not None else f"{step.name}:{rec['source']}:{i}"
            row = rows.setdefault(row_id, {"key": rec["key"], "source": rec["source"], "kept": True,
                                           "dropped_at": None, "reason": None, "error": None})
            row.update({k: v for k, v in rec.items() if k not in _BOOKKEEPING})
            if not rec["kept"] and row["kept"]:
                row.update(kept=False, dropped_at=step.name, reason=rec["reason"], error=rec.get("error"))
    return pd.DataFrame(list(rows.values()))


def write_table(table: pd.DataFrame, out_dir: str) -> list[str]:
    """metrics.csv, plus metrics.parquet when pyarrow is installed; atomically."""
    paths = [os.path.join(out_dir, "metrics.csv")]
    write_bytes(paths[0], table.to_csv(index=False).encode())
    if importlib.util.find_spec("pyarrow") is None:
        return paths
    paths.append(os.path.join(out_dir, "metrics.parquet"))
    write_bytes(paths[1], table.to_parquet(index=False))
    return paths


def summary(table: pd.DataFrame) -> str:
    """Markdown: counts kept and dropped by step and reason."""
    clips = table[table["key"].notna()]
    lines = [f"- inputs that failed before clipping: {int(table['key'].isna().sum())}",
             f"- clips: {len(clips)}, kept: {int(clips['kept'].sum())}"]
    if "sync_scorer" in clips and clips["sync_scorer"].notna().any():
        scorers = clips["sync_scorer"].dropna().value_counts().sort_index()
        lines.append("- sync scored by: " + ", ".join(f"{name} ({n} clips)" for name, n in scorers.items()))
    if "has_audio" in clips:
        lines.append(f"- visual-only clips (no audio track): {int(clips['has_audio'].eq(False).sum())}")
    if "audio_unverified" in clips:
        unverified = int(clips["audio_unverified"].eq(True).sum())
        lines.append(f"- clips too short for a sync verdict (kept, trained as visual-only): {unverified}")
    dropped = table[~table["kept"]].groupby(["dropped_at", "reason"], sort=True).size()
    if len(dropped):
        lines += ["", "| dropped at | reason | count |", "| --- | --- | --- |"]
        lines += [f"| {step} | {reason} | {n} |" for (step, reason), n in dropped.items()]
    return "\n".join(lines)


def quantile_table(table: pd.DataFrame) -> str:
    """Markdown: quantiles of each histogram metric over the clips that have it."""
    head = "| metric | clips | " + " | ".join(f"p{int(q * 100)}" for q in QUANTILES) + " |"
    lines = [head, "|" + " --- |" * (len(QUANTILES) + 2)]
    for metric in HISTOGRAMS:
        if metric not in table:
            continue
        values = pd.to_numeric(table[metric], errors="coerce").dropna()
        if len(values):
            qs = " | ".join(f"{v:.3g}" for v in values.quantile(QUANTILES))
            lines.append(f"| {metric} | {len(values)} | {qs} |")
    return "\n".join(lines)


def histogram(table: pd.DataFrame, metric: str, limits: tuple[Optional[float], Optional[float]], path: str) -> None:
    """Kept and dropped clips stacked, with the filter's limits as dashed lines; written atomically."""
    values = pd.to_numeric(table[metric], errors="coerce")
    kept = values[table["kept"]].dropna().to_numpy()
    dropped = values[~table["kept"]].dropna().to_numpy()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    both = np.concatenate([kept, dropped])
    bins = np.histogram_bin_edges(both, bins=min(30, max(5, len(both))))
    ax.hist([kept, dropped], bins=bins, stacked=True, label=["kept", "dropped"], color=["tab:green", "tab:red"])
    for limit in limits:
        if limit is not None:
            ax.axvline(limit, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel(metric)
    ax.set_ylabel("clips")
    ax.legend()
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_report(out_dir: str, cfg: CurationConfig, steps: list[Step]) -> str:
    """metrics.csv(/parquet), report.md and report/*.png from the finished steps; returns the summary."""
    table = build_table(out_dir, steps)
    if table.empty:
        text = "- no input found"
        write_bytes(os.path.join(out_dir, "report.md"), f"# Curation report\n\n{text}\n".encode())
        return text
    write_table(table, out_dir)
    os.makedirs(os.path.join(out_dir, "report"), exist_ok=True)
    figures = []
    for metric, limits in HISTOGRAMS.items():
        if metric in table and pd.to_numeric(table[metric], errors="coerce").notna().any():
            histogram(table, metric, limits(cfg), os.path.join(out_dir, "report", f"{metric}.png"))
            figures.append(f"![{metric}](report/{metric}.png)")
    text = summary(table)
    body = "\n\n".join(["# Curation report", text, "## Metrics", quantile_table(table), "## Histograms",
                        "\n".join(figures)])
    write_bytes(os.path.join(out_dir, "report.md"), (body + "\n").encode())
    return text
