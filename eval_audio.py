"""Animate portraits with MegActor-Σ.

One pair:
    python eval_audio.py --config configs/inference/tiny/inference.yaml --output-path outputs \\
        --num-steps 25 --guidance-scale 2 --source face.png --driver talk.mp4
Every pair the config lists (source_image / video_path / audio_path):
    python eval_audio.py --config configs/inference/tiny/inference.yaml --output-path outputs

Modes: mixed (default when the driver has audio), --no-audio (visual only),
--no-visual (audio only), --audio PATH (audio from another file than the driver video).

Several GPUs (or CPU processes): each takes its share of the context windows at every step,
    torchrun --nproc_per_node 2 eval_audio.py --config ... --source S --driver D
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional, Tuple

from megactor.config import ConfigError, InferenceConfig, load_config, missing_checkpoint

Pair = Tuple[str, Optional[str], Optional[str]]  # source, driver video, audio


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="inference config (YAML)")
    ap.add_argument("--output-path", default=None, help="a folder, or a .mp4 file for a single pair")
    ap.add_argument("--source", help="source portrait image")
    ap.add_argument("--driver", help="driver video (face motion, and audio unless --audio/--no-audio)")
    ap.add_argument("--audio", help="driving audio file (wav/mp3/m4a/flac or a video's track)")
    modes = ap.add_mutually_exclusive_group()
    modes.add_argument("--no-audio", action="store_true",
                       help="visual-only driving (the output still carries the driver's audio track)")
    modes.add_argument("--no-visual", action="store_true", help="audio-only driving")
    ap.add_argument("--num-steps", type=int, help="denoising steps (num_inference_steps)")
    ap.add_argument("--guidance-scale", type=float, help="one knob for both modalities' guidance")
    ap.add_argument("--audio-scale", type=float, help="audio guidance scale s_a (default: --guidance-scale)")
    ap.add_argument("--visual-scale", type=float, help="visual guidance scale s_v (default: --guidance-scale)")
    ap.add_argument("--audio-amplitude", type=float, help="scale on the audio branch's injected features")
    ap.add_argument("--visual-amplitude", type=float, help="scale on the visual branch's injected features")
    ap.add_argument("--scheduler", choices=["ddim", "dpmsolver++"])
    ap.add_argument("--limit", type=float, help="seconds of driver to animate (default, or 0: all of it)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--no-crop", action="store_true", help="use the whole source image, not a face crop")
    ap.add_argument("--crop-only", action="store_true",
                    help="write the square face crop the model animates, not the crop pasted back into the source")
    ap.add_argument("--idle-motion", action=argparse.BooleanOptionalAction, default=None,
                    help="audio-only driving: blinks and small head motion drawn from the source's face (default: on)")
    ap.add_argument("--idle-motion-strength", type=float, help="scales the idle head motion, 0-5 (default 1)")
    ap.add_argument("--grid", action="store_true", help="also write source | driver | control | result")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    return ap.parse_args(argv)


def config_overrides(args) -> List[str]:
    """CLI flags -> config keys (the flags win over the YAML)."""
    pairs = {
        "num_inference_steps": args.num_steps, "guidance.guidance_scale": args.guidance_scale,
        "guidance.audio_scale": args.audio_scale, "guidance.visual_scale": args.visual_scale,
        "guidance.audio_amplitude": args.audio_amplitude, "guidance.visual_amplitude": args.visual_amplitude,
        "scheduler": args.scheduler, "limit": args.limit, "seed": args.seed,
        "paste_back": False if args.crop_only else None, "idle_motion": args.idle_motion,
        "idle_motion_strength": args.idle_motion_strength,
    }
    return [f"{k}={v}" for k, v in pairs.items() if v is not None] + list(args.overrides)


def list_pairs(args, cfg: InferenceConfig) -> List[Pair]:
    if args.source or args.driver or args.audio:
        if not args.source:
            raise ConfigError("command line: --source is required with --driver/--audio")
        return [(args.source, args.driver, args.audio)]
    if not cfg.source_image:
        raise ConfigError(f"{args.config}: lists no source_image, and no --source was given")
    drivers = cfg.video_path or [None] * len(cfg.source_image)
    audios = cfg.audio_path or [None] * len(cfg.source_image)
    return list(zip(cfg.source_image, drivers, audios))


def output_file(output_path: str, pair: Pair, single: bool) -> str:
    if output_path.endswith(".mp4"):
        if not single:
            raise ConfigError(f"--output-path {output_path} is a file, but the config lists several pairs")
        return output_path
    source, driver, audio = pair
    return os.path.join(output_path, f"{Path(source).stem}_{Path(driver or audio).stem}.mp4")


def check_pair(pair: Pair, out: str, grid: bool) -> bool:
    """The pair's files exist and are media, and its outputs can be written: checked before anything loads (a
    second, not the models' minute); False, with one line on stderr, when not."""
    from megactor.data.video_io import MediaError, probe
    from megactor.fileio import check_input_file, check_output_file

    source, driver, audio = pair
    try:
        check_input_file(source, "source image")
        for path, role in ((driver, "driver video"), (audio, "audio")):
            if path:
                check_input_file(path, role)
                probe(path)  # not media, or a still image
        check_output_file(out)
        if grid:
            check_output_file(out[:-4] + "_grid.mp4")
    except (OSError, MediaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def init_distributed(device: Optional[str]):
    """(this process's share of the windows, its device) under torchrun / accelerate launch; one process otherwise."""
    from megactor.diffusion.sampler import Distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(), device
    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and device != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if use_cuda:
        torch.cuda.set_device(local)
    return Distributed(dist.get_rank(), world, dist.all_reduce), f"cuda:{local}" if use_cuda else "cpu"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(InferenceConfig, args.config, config_overrides(args))
        pairs = list_pairs(args, cfg)
        outputs = [output_file(args.output_path or cfg.output_dir, p, len(pairs) == 1) for p in pairs]
        if missing_checkpoint(cfg):  # before the slow imports below
            raise ConfigError(missing_checkpoint(cfg))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runnable = [(pair, out) for pair, out in zip(pairs, outputs) if check_pair(pair, out, args.grid)]
    failed = len(pairs) - len(runnable)
    if not runnable:
        return 2
    from megactor.animate import Animator, InputError, MediaError
    from megactor.data.video_io import write_video

    dist, device = init_distributed(args.device)
    rank = dist.rank
    try:
        animator = Animator.from_config(cfg, device=device)
    except (ConfigError, OSError, ImportError) as e:  # a bad checkpoint, or a kernel whose package is missing
        print(f"error: {e}", file=sys.stderr)
        return 2
    mode = "visual" if args.no_audio else "audio" if args.no_visual else None
    for (source, driver, audio), out in runnable:
        try:
            result = animator.animate(source, driver, audio, mode=mode, crop=not args.no_crop, progress=rank == 0,
                                      dist=dist)
        except (InputError, MediaError, ValueError) as e:
            failed += 1
            if rank == 0:
                print(f"error: {source} + {driver or audio}: {e}", file=sys.stderr)
            continue
        except Exception:
            failed += 1
            print(f"error: {source} + {driver or audio}: unexpected failure", file=sys.stderr)
            traceback.print_exc()
            continue
        if rank != 0:  # every process holds the same frames; one writes them
            continue
        try:
            write_video(out, result.frames, result.fps, result.audio)
            if args.grid:
                write_video(out[:-4] + "_grid.mp4", result.grid(), result.fps, result.audio)
        except Exception as e:  # OSError, or PyAV's own errors: a full disk, a folder gone read-only
            failed += 1
            print(f"error: {out}: could not be written ({e})", file=sys.stderr)
            continue
        times = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        print(f"wrote {out} ({len(result.frames)} frames at {result.fps:g} fps; {times})")
    if failed and rank == 0:
        print(f"{failed} of {len(pairs)} pairs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
