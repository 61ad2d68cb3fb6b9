"""MegActor-Σ web demo: a source portrait + a driver video and/or an audio file -> an animated video.

    python demo/run_gradio.py                                   # configs/inference/tiny/inference.yaml
    python demo/run_gradio.py checkpoint=                       # no checkpoint yet: a random model, said so on the page
    python demo/run_gradio.py --config CFG --host 0.0.0.0 --port 7860 --examples DIR [key=value ...]

The page is demo/app.py. The config and the checkpoint's folder are checked before gradio and torch are
imported, so a wrong path fails at once. Examples come from --examples DIR (images and videos), or are drawn
at start-up by the synthetic generator (three talking heads in the tiny model's domain, kept under the
output folder). Every result is kept under --output-dir.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from megactor.config import ConfigError, InferenceConfig, load_config, missing_checkpoint  # noqa: E402

DEFAULT_CONFIG = "configs/inference/tiny/inference.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / DEFAULT_CONFIG), help="inference config (YAML)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--output-dir", help="where results are kept (default: the config's output_dir/demo)")
    ap.add_argument("--examples", help="folder of example sources (images) and drivers (videos); default: three "
                    "synthetic talking heads drawn at start-up")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="longest driver a request may animate")
    ap.add_argument("--max-image-pixels", type=int, default=2048 * 2048,
                    help="largest source (width * height); a larger one is scaled down to it")
    ap.add_argument("--max-file-size", default="200mb", help="largest upload, e.g. 200mb")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(InferenceConfig, args.config, args.overrides)
        if missing_checkpoint(cfg):
            raise ConfigError(missing_checkpoint(cfg))
        if args.examples and not os.path.isdir(args.examples):
            raise ConfigError(f"--examples {args.examples}: no such folder")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from app import Limits, build_demo, synthetic_examples  # gradio and torch: seconds to import
    from megactor.animate import Animator

    output_dir = args.output_dir or os.path.join(cfg.output_dir, "demo")
    try:
        animator = Animator.from_config(cfg, device=args.device)
    except (ConfigError, OSError) as e:  # an unreadable checkpoint, or noise_scheduler_kwargs other than its own
        print(f"error: {e}", file=sys.stderr)
        return 2
    examples = args.examples or synthetic_examples(os.path.join(output_dir, "examples"))
    demo = build_demo(animator, Limits(args.max_seconds, args.max_image_pixels), output_dir, examples)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                allowed_paths=[os.path.abspath(output_dir), os.path.abspath(examples)],
                max_file_size=args.max_file_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
