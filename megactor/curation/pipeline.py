"""The curation pipeline's steps and command line (``data_processing/*.py`` are thin entry points).

    python data_processing/curate.py --input-dir IN --output-dir OUT [--workers N] [key=value ...]

runs every step; ``1_pack.py``, ``2_face_filter.py`` and ``3_audio_filter.py``
run one each, with the same arguments. Output layout:

    OUT/shards/*.tar          the training data (webdataset: <key>.mp4 + <key>.json)
    OUT/metrics.csv           one row per clip (or failed input): every metric, kept, dropped_at, reason
    OUT/report.md, report/    counts by reason, metric quantiles, histograms
    OUT/1_pack, 2_face, 3_audio   each step's work (resumable), records and plan; 1 and 2 hold their shards
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from megactor.config import ConfigError
from megactor.curation.audio_filter import AudioFilter
from megactor.curation.config import CurationConfig, load_curation_config
from megactor.curation.face_filter import FaceFilter
from megactor.curation.pack import Pack
from megactor.curation.report import write_report
from megactor.curation.runner import Step, run_step

STEPS: dict[str, type[Step]] = {"pack": Pack, "face": FaceFilter, "audio": AudioFilter}


def curate(in_dir: str, out_dir: str, cfg: CurationConfig, steps: Sequence[str] = tuple(STEPS)) -> str:
    """Run ``steps`` (resuming finished work), then write the table and report; returns the report summary."""
    for name in steps:
        run_step(STEPS[name](), in_dir, out_dir, cfg)
    return write_report(out_dir, cfg, [cls() for cls in STEPS.values()])


def main(steps: Sequence[str], argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=f"curation: {', '.join(steps)}",
                                     epilog="settings (key=value): " + ", ".join(CurationConfig.__dataclass_fields__))
    parser.add_argument("--input-dir", required=True, help="folder searched recursively for videos")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--workers", type=int, help="worker processes (the 'workers' setting)")
    parser.add_argument("--config", help="YAML file of settings")
    parser.add_argument("overrides", nargs="*", help="key=value settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"workers={args.workers}"] if args.workers is not None else [])
    try:
        cfg = load_curation_config(overrides, args.config)
        text = curate(args.input_dir, args.output_dir, cfg, steps)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0
