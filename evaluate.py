"""Score a folder of generated portrait videos against their drivers, the same way every time.

    python evaluate.py --results DIR --drivers DIR [--sources DIR] [--json OUT.json] [--csv OUT.csv] \\
        [--report DIR] [key=value ...]
    python evaluate.py --pairs triples.csv ...        (columns result, driver[, source])

Results are matched to their driver (and source) by name, as eval_audio.py names them:
<source>_<driver>.mp4. Weight-free metrics always run (lip sync with the driving audio, landmark distance,
mouth and eye opening correlation, head-pose error, jitter, colour and shape drift; PSNR/SSIM for
self-reenactment); SyncNet, FID, FVD and CSIM run when their weights are given as local files:
syncnet_weights=, inception_weights=, i3d_weights=, arcface_weights=. The drivers' face analyses are cached
(cache_dir=). See docs/evaluation.md for every metric's definition and what it was checked against.

Exit status: 0 when every result was scored, 1 when some could not be (their rows carry "error"), 2 for bad
input (a result without its driver, an unreadable file, a bad setting), with nothing written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from megactor.evaluation.config import EvaluationConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="settings (key=value): " + ", ".join(EvaluationConfig.__dataclass_fields__))
    ap.add_argument("--results", help="folder of result videos")
    ap.add_argument("--drivers", help="folder of the driver videos (or audio files) they were made from")
    ap.add_argument("--sources", help="folder of the source portraits (optional: drift against the source, CSIM, "
                                      "self-reenactment)")
    ap.add_argument("--pairs", help="CSV of result,driver[,source] paths instead of matching by name")
    ap.add_argument("--json", help="write the per-video metrics and the summary here")
    ap.add_argument("--csv", help="write one row per video here")
    ap.add_argument("--report", help="write a folder of plots and the summary here")
    ap.add_argument("overrides", nargs="*", help="key=value settings")
    args = ap.parse_args(argv)
    if not args.pairs and not (args.results and args.drivers):
        ap.error("give --results and --drivers, or --pairs")
    return args


def check_inputs(triples) -> None:
    """Every result and driver is readable media, every source a readable image: MediaError or
    EvaluationInputError naming the first that is not."""
    from PIL import Image

    from megactor.data.video_io import MediaError, probe
    from megactor.evaluation.matching import EvaluationInputError

    for t in triples:
        for path, role in ((t.result, "result"), (t.driver, "driver")):
            info = probe(path)
            if role == "result" and not info["has_video"]:
                raise MediaError(f"{path}: has no video track (the result)")
        if t.source:
            try:
                with Image.open(t.source) as im:
                    im.verify()
            except (OSError, ValueError) as e:
                raise EvaluationInputError(f"{t.source}: not a readable image (the source; {e})") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from megactor.config import ConfigError
    from megactor.data.video_io import MediaError
    from megactor.evaluation.config import load_evaluation_config
    from megactor.evaluation.matching import EvaluationInputError, match_by_name, read_triples
    from megactor.fileio import check_output_file

    try:
        cfg = load_evaluation_config(args.overrides)
        triples = read_triples(args.pairs) if args.pairs else match_by_name(args.results, args.drivers, args.sources)
        check_inputs(triples)
        for path in (args.json, args.csv):
            if path:
                check_output_file(path)
    except (ConfigError, EvaluationInputError, MediaError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from megactor.evaluation import report
    from megactor.evaluation.scorer import Scorer, ScoredVideo

    try:
        scorer = Scorer(cfg)
    except (OSError, ValueError) as e:  # weights missing or not loadable
        print(f"error: {e}", file=sys.stderr)
        return 2
    scored, failed = [], 0
    try:
        for triple in tqdm(triples, desc="scoring", unit="video"):
            try:
                scored.append(scorer.score(triple))
            except (MediaError, EvaluationInputError, ValueError) as e:
                failed += 1
                print(f"error: {triple.result}: {e}", file=sys.stderr)
                scored.append(ScoredVideo({"result": triple.result, "driver": triple.driver, "source": triple.source,
                                           "error": str(e)}))
        ok = [s.row for s in scored if "error" not in s.row]
        summary = scorer.summary(ok)
    finally:
        scorer.close()
    videos = report.video_entries(scored)
    if args.json:
        report.write_json(args.json, videos, summary)
    if args.csv:
        report.write_csv(args.csv, videos)
    if args.report:
        report.write_report(args.report, videos, scored, summary, cfg.contact_videos)
    print(report.summary_table(summary))
    if failed:
        print(f"{failed} of {len(triples)} results could not be scored", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
