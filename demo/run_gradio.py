"""MegActor-Σ web demo: a source portrait + a driver video and/or an audio file -> an animated video.

    python demo/run_gradio.py                                   # configs/inference/tiny/inference.yaml
    python demo/run_gradio.py --config CFG --host 0.0.0.0 --port 7860 --share
    python demo/run_gradio.py checkpoint=                       # key=value overrides; empty checkpoint: random model

One request runs at a time (gradio's queue, concurrency 1); the others wait in line.
Uploads are checked before any work starts (file type, image size, driver length,
what the driving mode needs) and every result is kept under --output-dir.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import gradio as gr
from PIL import Image, UnidentifiedImageError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from megactor.animate import Animation, Animator, InputError, MediaError, MODES, guidance_knobs  # noqa: E402
from megactor.config import ConfigError, InferenceConfig, load_config  # noqa: E402
from megactor.data.video_io import AUDIO_EXTS, VIDEO_EXTS, probe, write_video  # noqa: E402

DEFAULT_CONFIG = "configs/inference/tiny/inference.yaml"
MODE_CHOICES = [("Mixed: eyes from the video, mouth from the audio", "mixed"),
                ("Visual only: eyes and mouth from the video", "visual"),
                ("Audio only: the audio drives the face", "audio")]
# config key -> (label, minimum, maximum, step): the sliders, and the bounds a request is checked against
GUIDANCE_RANGES = {
    "audio_scale": ("Audio guidance scale s_a", 0.0, 10.0, 0.1),
    "visual_scale": ("Visual guidance scale s_v", 0.0, 10.0, 0.1),
    "audio_amplitude": ("Audio amplitude a_a", 0.0, 3.0, 0.05),
    "visual_amplitude": ("Visual amplitude a_v", 0.0, 3.0, 0.05),
}
MAX_STEPS = 200


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a shared server."""
    max_seconds: float = 60.0  # longest stretch of driver (video, or audio alone) animated per request
    max_image_pixels: int = 4096 * 4096  # source width * height


def check_inputs(source: Optional[str], driver: Optional[str], audio: Optional[str], mode: str,
                 seconds: Optional[float], limits: Limits = Limits()) -> None:
    """Raise gr.Error, naming the file at fault, for uploads that cannot make a video in `mode`.

    Reads headers only (PIL, PyAV probe): nothing is decoded, so a bad request costs nothing.
    `seconds` is the requested stretch of driver (0 or None: all of it).
    """
    if mode not in MODES:
        raise _reject(f"Unknown driving mode {mode!r}: choose one of {', '.join(MODES)}.")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds >= 0):
        raise _reject(f"Seconds to animate must be a number, 0 for the whole driver, got {seconds!r}.")
    if source is None:
        raise _reject("Upload a source portrait image.")
    _check_image(source, limits.max_image_pixels)

    driver_info = _probe(driver, VIDEO_EXTS, "a video", "video") if driver else None
    audio_info = _probe(audio, AUDIO_EXTS + VIDEO_EXTS, "an audio file", "audio") if audio else None
    if mode in ("mixed", "visual") and driver is None:
        raise _reject(f"{_label(mode)} driving needs a driver video: upload one, or pick audio-only driving.")
    if mode in ("mixed", "audio") and audio is None and not (driver_info and driver_info["has_audio"]):
        what = f"{Path(driver).name} has no audio track" if driver else "no audio was given"
        raise _reject(f"{_label(mode)} driving needs audio, but {what}: upload an audio file"
                       + (", or pick visual-only driving." if driver else "."))

    timed, info = (driver, driver_info) if driver else (audio, audio_info)
    duration = info.get("duration") or 0.0
    if min(duration, seconds or math.inf) > limits.max_seconds:
        raise _reject(f"{Path(timed).name} is {duration:.1f} s long, but this demo animates at most "
                       f"{limits.max_seconds:g} s: trim it, or set 'Seconds to animate' to {limits.max_seconds:g} "
                       "or less.")


def _reject(message: str) -> gr.Error:
    """A message for the user; no server traceback, since the request, not the server, is at fault."""
    return gr.Error(message, print_exception=False)


def _check_image(path: str, max_pixels: int) -> None:
    name = Path(path).name
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        raise _reject(f"{name} is not an image (PNG, JPEG, WebP, ...).") from None
    except Image.DecompressionBombError:
        raise _reject(f"{name} is too large: over {max_pixels / 1e6:.1f} MP.") from None
    if width * height > max_pixels:
        raise _reject(f"{name} is too large: {width}x{height} pixels ({width * height / 1e6:.1f} MP); this demo "
                       f"takes at most {max_pixels / 1e6:.1f} MP: downscale or crop it.")


def _probe(path: str, exts, kind: str, track: str) -> dict:
    """probe() of a media upload that must have a `track` ("video"/"audio") stream; `kind` names it for the user."""
    name = Path(path).name
    if Path(path).suffix.lower() not in exts:
        raise _reject(f"{name} is not {kind}: expected one of {', '.join(exts)}.")
    try:
        info = probe(path)
    except MediaError:
        raise _reject(f"{name} is not {kind} that can be read.") from None
    if not info[f"has_{track}"]:
        raise _reject(f"{name} has no {track} track.")
    return info


def _label(mode: str) -> str:
    return {"mixed": "Mixed", "visual": "Visual-only", "audio": "Audio-only"}[mode]


def _check_range(label: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _reject(f"{label} must lie in [{lo:g}, {hi:g}], got {value!r}.")
    return value


def _request_config(cfg: InferenceConfig, steps: int, seconds: Optional[float], guidance: dict) -> InferenceConfig:
    """A copy of the served config with this request's steps, seconds of driver (0: all) and four guidance knobs."""
    cfg = copy.deepcopy(cfg)
    cfg.num_inference_steps, cfg.limit = steps, seconds or None
    for key, value in guidance.items():
        setattr(cfg.guidance, key, value)
    return cfg


@contextmanager
def _serving(animator: Animator, cfg: InferenceConfig):
    """Run the animator under `cfg` for one request (the queue runs one at a time), then restore its own."""
    served, animator.cfg = animator.cfg, cfg
    try:
        yield animator
    finally:
        animator.cfg = served


def _save(result: Animation, output_dir: str, name: str, grid: bool) -> Tuple[str, Optional[str]]:
    """Write name.mp4 (and name_grid.mp4) into a new folder of `output_dir`, named by the time; return the paths."""
    os.makedirs(output_dir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=output_dir)
    video = os.path.join(folder, f"{name}.mp4")
    write_video(video, result.frames, result.fps, result.audio)
    if not grid:
        return video, None
    grid_video = os.path.join(folder, f"{name}_grid.mp4")
    write_video(grid_video, result.grid(), result.fps, result.audio)
    return video, grid_video


def build_demo(animator: Animator, limits: Limits = Limits(), output_dir: str = "outputs/demo") -> gr.Blocks:
    """The demo's page and its one endpoint, api_name "animate"; results are written under `output_dir`."""
    defaults = guidance_knobs(animator.cfg)

    def animate(source, driver, audio, mode, audio_scale, visual_scale, audio_amplitude, visual_amplitude,
                steps, seed, seconds, crop, grid, progress=gr.Progress()):
        # The event runs with preprocess=False, so that an upload gradio cannot decode reaches check_inputs
        # (and gets a readable error) instead of failing inside gradio: files arrive as FileData dicts.
        source, driver, audio = (f["path"] if f else None for f in (source, driver, audio))
        knobs = (audio_scale, visual_scale, audio_amplitude, visual_amplitude)
        guidance = {key: _check_range(label, value, lo, hi)
                    for (key, (label, lo, hi, _)), value in zip(GUIDANCE_RANGES.items(), knobs)}
        steps = int(_check_range("Denoising steps", steps, 1, MAX_STEPS))
        seed = int(_check_range("Seed", seed, 0, 2**32 - 1))
        check_inputs(source, driver, audio, mode, seconds, limits)

        progress(0.0, desc="Face analysis, control frames, audio features")
        with _serving(animator, _request_config(animator.cfg, steps, seconds, guidance)):
            try:
                result = animator.animate(source, driver, audio, mode=mode, seed=seed,
                                          crop=bool(crop), progress=False,
                                          callback=lambda done, total: progress((done, total), desc="Denoising"))
            except (InputError, MediaError) as e:
                message = str(e)
                for path in filter(None, (source, driver, audio)):
                    message = message.replace(path, Path(path).name)  # the upload's name, not its server path
                raise _reject(message) from None

        progress(1.0, desc="Writing the video")
        video, grid_video = _save(result, output_dir, f"{Path(source).stem}_{Path(driver or audio).stem}_{mode}", grid)
        times = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        info = f"{len(result.frames)} frames at {result.fps:g} fps, {mode} driving, {steps} steps. Timings: {times}."
        return video, grid_video, info

    with gr.Blocks(title="MegActor-Σ") as demo:
        gr.Markdown("# MegActor-Σ\nAnimate a portrait with a talking-head video, an audio track, or both.")
        if not animator.cfg.checkpoint:
            gr.Markdown("**No checkpoint loaded: this is a randomly initialised model, its output is noise.**")
        with gr.Row():
            with gr.Column():
                source = gr.Image(label="Source portrait", type="filepath", image_mode=None, sources=["upload"])
                driver = gr.Video(label="Driver video (face motion; its audio unless an audio file is given)",
                                  sources=["upload"])
                audio = gr.Audio(label="Audio (optional: replaces the driver's track)", type="filepath",
                                 sources=["upload", "microphone"])
            with gr.Column():
                mode = gr.Radio(MODE_CHOICES, value="mixed", label="Driving mode")
                sliders = [gr.Slider(lo, hi, value=defaults[key], step=step, label=label)
                           for key, (label, lo, hi, step) in GUIDANCE_RANGES.items()]
                steps = gr.Slider(1, MAX_STEPS, value=animator.cfg.num_inference_steps, step=1,
                                  label="Denoising steps")
                seed = gr.Number(value=animator.cfg.seed, precision=0, minimum=0, label="Seed")
                seconds = gr.Number(value=animator.cfg.limit or 0, minimum=0, label="Seconds to animate",
                                    info=f"0: the whole driver (at most {limits.max_seconds:g} s)")
                crop = gr.Checkbox(value=True, label="Crop the source around its face")
                grid = gr.Checkbox(value=animator.cfg.grid,
                                   label="Also make a grid: source | driver | control | result")
                button = gr.Button("Animate", variant="primary")
            with gr.Column():
                result = gr.Video(label="Result")
                grid_result = gr.Video(label="Grid")
                info = gr.Markdown(label="Run")
        button.click(animate, [source, driver, audio, mode, *sliders, steps, seed, seconds, crop, grid],
                     [result, grid_result, info], api_name="animate", preprocess=False, concurrency_limit=1)
    return demo.queue(default_concurrency_limit=1)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / DEFAULT_CONFIG), help="inference config (YAML)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--output-dir", help="where results are kept (default: the config's output_dir/demo)")
    ap.add_argument("--max-seconds", type=float, default=Limits.max_seconds,
                    help="longest driver a request may animate")
    ap.add_argument("--max-image-pixels", type=int, default=Limits.max_image_pixels,
                    help="largest source image (width * height)")
    ap.add_argument("--max-file-size", default="200mb", help="largest upload, e.g. 200mb")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(InferenceConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output_dir = args.output_dir or os.path.join(cfg.output_dir, "demo")
    try:
        animator = Animator.from_config(cfg, device=args.device)
    except OSError as e:  # no checkpoint (or an unreadable one) at cfg.checkpoint
        print(f"error: {e}\n(override checkpoint= to serve a randomly initialised model)", file=sys.stderr)
        return 2
    except ConfigError as e:  # noise_scheduler_kwargs other than the checkpoint's
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_demo(animator, Limits(args.max_seconds, args.max_image_pixels), output_dir)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                allowed_paths=[os.path.abspath(output_dir)], max_file_size=args.max_file_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
