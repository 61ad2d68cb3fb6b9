"""The MegActor-Σ demo's page: a source portrait + a driver video and/or an audio file -> an animated video.

`build_demo(animator, ...)` makes the gradio Blocks; `demo/run_gradio.py` serves it. One request runs at a time
(gradio's queue, concurrency 1); the others wait in line. Uploads are checked as they arrive and again at
Animate (file type, driver length, what the driving mode needs); an oversized source is scaled down. Errors stay
on the page, in its own words, until the next run. A run stops at its next step when Cancel is pressed or its
tab is closed. Two endpoints: "animate_ui", which the page uses (errors come back as the status text), and
"animate", for scripts (errors raise, as gradio's AppError in gradio_client).
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import gradio as gr
from PIL import Image, UnidentifiedImageError

from megactor.animate import Animation, Animator, InputError, MediaError, MODES, guidance_knobs
from megactor.config import InferenceConfig
from megactor.data.video_io import AUDIO_EXTS, VIDEO_EXTS, probe, write_video

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MODE_CHOICES = [("Mixed: eyes from the video, mouth from the audio", "mixed"),
                ("Visual only: eyes and mouth from the video", "visual"),
                ("Audio only: the audio drives the mouth", "audio")]
MODE_NAMES = {"mixed": "Mixed", "visual": "Visual-only", "audio": "Audio-only"}


@dataclass(frozen=True)
class Knob:
    """One slider: its label, one line on what it does, its range and step, and the modes it matters in."""
    label: str
    info: str
    lo: float
    hi: float
    step: float
    modes: Tuple[str, ...]


# config key (guidance.* or the inference config's own) -> its slider
KNOBS: Dict[str, Knob] = {
    "audio_scale": Knob("Audio guidance s_a", "How strongly the mouth follows the audio: 0 ignores it, 1 as "
                        "trained, 2-4 usual, higher exaggerates.", 0.0, 10.0, 0.1, ("mixed", "audio")),
    "visual_scale": Knob("Visual guidance s_v", "How strongly the face follows the driver video: 0 ignores it, "
                         "1 as trained, 2-4 usual.", 0.0, 10.0, 0.1, ("mixed", "visual")),
    "audio_amplitude": Knob("Audio amplitude a_a", "Scales the audio features the model sees: below 1 calmer "
                            "lips, above 1 livelier; 0.5-1.5 usual.", 0.0, 3.0, 0.05, ("mixed", "audio")),
    "visual_amplitude": Knob("Visual amplitude a_v", "Scales the driver's motion the model sees: below 1 "
                             "subtler, above 1 stronger; 0.5-1.5 usual.", 0.0, 3.0, 0.05, ("mixed", "visual")),
    "idle_motion_strength": Knob("Idle head motion", "Audio alone moves only the mouth; idle motion adds blinks "
                                 "and a little head motion. 0: blinks only, 1 natural, 2 lively.", 0.0, 3.0, 0.1,
                                 ("audio",)),
}
GUIDANCE_KEYS = ("audio_scale", "visual_scale", "audio_amplitude", "visual_amplitude")
MAX_STEPS = 200
GRID_HEIGHT = 256  # pixels: each grid panel, however small the model's crop
# what a user can do about an InputError, in the page's words (animate.CLI_REMEDIES has the command line's)
PAGE_REMEDIES = {
    "no_crop": "untick 'Crop around the face' under Advanced to animate the whole image",
    "audio_only": "pick audio-only driving",
    "give_audio": "upload an audio file, or pick visual-only driving",
}
STAGES = {  # Animation.timings keys -> what the progress bar says
    "read_inputs": "Reading the uploads", "face_analysis": "Face analysis (source and driver)",
    "idle_motion": "Drawing idle motion from the source's face", "control_frames": "Control frames",
    "audio_encoding": "Audio features (Whisper)", "reference": "Encoding the source",
    "denoising": "Denoising", "vae_decoding": "Decoding", "paste_back": "Pasting into the portrait",
}
PANEL_NAMES = {"source": "source crop", "driver": "driver", "control": "control", "result": "result",
               "pasted": "in the portrait"}
RANDOM_MODEL_BANNER = (
    "**No checkpoint loaded: this is a randomly initialised model.** Its visual and audio branches start at zero, "
    "so neither the driving mode nor any knob can change what it draws: every run gives the same noise-like face "
    "for a given seed. Train one (`bash scripts/quickstart.sh`, then serve without `checkpoint=`) to see the "
    "driving work; a real portrait needs the xl preset with pretrained weights.")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a shared server."""
    max_seconds: float = 60.0  # longest stretch of driver (video, or audio alone) animated per request
    max_image_pixels: int = 2048 * 2048  # source width * height; a larger source is scaled down to this


class Cancelled(Exception):
    """The run's client pressed Cancel or went away."""


def _reject(message: str) -> gr.Error:
    """A message for the user; no server traceback, since the request, not the server, is at fault."""
    return gr.Error(message, print_exception=False)


# ----------------------------------------------------------------------------------------------- input checks


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
    check_image(source)
    driver_info = check_media(driver, "video") if driver else None
    audio_info = check_media(audio, "audio") if audio else None
    if mode in ("mixed", "visual") and driver is None:
        raise _reject(f"{MODE_NAMES[mode]} driving needs a driver video: upload one, or pick audio-only driving.")
    if mode in ("mixed", "audio") and audio is None and not (driver_info and driver_info["has_audio"]):
        what = f"{Path(driver).name} has no audio track" if driver else "no audio was given"
        raise _reject(f"{MODE_NAMES[mode]} driving needs audio, but {what}: upload an audio file"
                      + (", or pick visual-only driving." if driver else "."))
    timed, info = (driver, driver_info) if driver else (audio, audio_info)
    duration = info.get("duration") or 0.0
    if min(duration, seconds or math.inf) > limits.max_seconds:
        raise _reject(f"{Path(timed).name} is {duration:.1f} s long, but this demo animates at most "
                      f"{limits.max_seconds:g} s: trim it, or set 'Seconds to animate' to {limits.max_seconds:g} "
                      "or less.")


def check_image(path: str) -> Tuple[int, int]:
    """(width, height) of an image upload; gr.Error naming it if it is not one."""
    name = Path(path).name
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except Image.DecompressionBombError:
        raise _reject(f"{name} is too large to open safely (a decompression bomb?).") from None
    except (UnidentifiedImageError, OSError):
        raise _reject(f"{name} is not an image (PNG, JPEG, WebP, ...).") from None


def check_media(path: str, track: str) -> dict:
    """probe() of a "video" (a driver) or an "audio" upload (an audio file, or a video's track)."""
    name, kind = Path(path).name, "a video" if track == "video" else "an audio file"
    exts = VIDEO_EXTS if track == "video" else AUDIO_EXTS + VIDEO_EXTS
    if Path(path).suffix.lower() not in exts:
        raise _reject(f"{name} is not {kind}: expected one of {', '.join(exts)}.")
    try:
        info = probe(path)
    except MediaError:
        raise _reject(f"{name} is not {kind} that can be read.") from None
    if not info[f"has_{track}"]:
        raise _reject(f"{name} has no {track} track.")
    return info


def fit_source(path: str, max_pixels: int, folder: str) -> Tuple[str, Optional[str]]:
    """The source to animate: `path`, or, when it has more than `max_pixels`, a copy scaled down to fit, written
    into `folder`; and a note saying so (None when unchanged)."""
    width, height = check_image(path)
    if width * height <= max_pixels:
        return path, None
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(int(width * scale), 1), max(int(height * scale), 1))
    os.makedirs(folder, exist_ok=True)
    fd, scaled = tempfile.mkstemp(prefix=Path(path).stem + "-", suffix=".png", dir=folder)
    os.close(fd)
    with Image.open(path) as image:
        image.convert("RGB").resize(size, Image.LANCZOS).save(scaled)
    return scaled, f"{Path(path).name} ({width}x{height}) was scaled down to {size[0]}x{size[1]} to fit this demo."


def _check_range(label: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _reject(f"{label} must lie in [{lo:g}, {hi:g}], got {value!r}.")
    return value


# ------------------------------------------------------------------------------------------------- one run


def _request_config(cfg: InferenceConfig, steps: int, seconds: Optional[float], knobs: dict, idle_motion: bool,
                    paste_back: bool) -> InferenceConfig:
    """A copy of the served config with this request's steps, seconds of driver (0: all) and knobs."""
    cfg = copy.deepcopy(cfg)
    cfg.num_inference_steps, cfg.limit = steps, seconds or None
    cfg.idle_motion, cfg.paste_back = idle_motion, paste_back
    cfg.idle_motion_strength = knobs["idle_motion_strength"]
    for key in GUIDANCE_KEYS:
        setattr(cfg.guidance, key, knobs[key])
    return cfg


@contextmanager
def _serving(animator: Animator, cfg: InferenceConfig, lock: threading.Lock):
    """Run the animator under `cfg` for one request, then restore its own. The lock keeps a cancelled run that
    has not yet reached its next step from sharing the animator with the next one."""
    with lock:
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
    write_video(grid_video, result.grid(height=GRID_HEIGHT), result.fps, result.audio)
    return video, grid_video


def grid_caption(result: Animation) -> str:
    return "Grid: " + " | ".join(PANEL_NAMES[p] for p in result.grid_panels())


class Runs:
    """Stop flags of the runs in progress, by session: Cancel or a closed tab sets one, and the run stops at its
    next stage or denoising step."""

    def __init__(self):
        self._flags: Dict[Optional[str], threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: Optional[str]) -> threading.Event:
        with self._lock:
            flag = self._flags[session] = threading.Event()
        return flag

    def stop(self, session: Optional[str]) -> bool:
        """Set the session's flag; True if a run of it was in progress."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, session: Optional[str], flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]


# ---------------------------------------------------------------------------------------------------- examples


def example_rows(folder: str) -> List[list]:
    """Examples from a folder of sources (images) and drivers (videos): each source with the next driver,
    the modes taken in turn (the audio-only rows drive with the video's audio track); at most 6 rows."""
    files = sorted(Path(folder).iterdir())
    sources = [str(p) for p in files if p.suffix.lower() in IMAGE_EXTS]
    drivers = [str(p) for p in files if p.suffix.lower() in VIDEO_EXTS]
    if not sources or not drivers:
        raise FileNotFoundError(f"{folder}: examples need at least one image (source) and one video (driver)")
    rows = []
    for i, source in enumerate(sources[:6]):
        driver, mode = drivers[(i + 1) % len(drivers)], MODES[i % len(MODES)]
        rows.append([source, None, driver, mode] if mode == "audio" else [source, driver, None, mode])
    return rows


def synthetic_examples(folder: str, seed: int = 7) -> str:
    """Draw three synthetic talking heads (megactor.data.synthetic) into `folder`, once: sources and drivers in
    the tiny model's own domain, for a fresh clone. Returns the folder."""
    from megactor.data.synthetic import generate_dataset

    if not (Path(folder) / "clip_0002.png").exists():
        generate_dataset(folder, clips=3, seconds=3.0, size=128, seed=seed)
    return folder


# -------------------------------------------------------------------------------------------------------- page


def build_demo(animator: Animator, limits: Limits = Limits(), output_dir: str = "outputs/demo",
               examples: Optional[str] = None) -> gr.Blocks:
    """The demo's page; its endpoints are "animate_ui" (the page's) and "animate" (scripts'). Results are written
    under `output_dir`; `examples` is a folder for `example_rows` (None: none shown)."""
    defaults = {**guidance_knobs(animator.cfg), "idle_motion_strength": animator.cfg.idle_motion_strength}
    runs, animator_lock = Runs(), threading.Lock()
    uploads = os.path.join(output_dir, "uploads")

    def animate(source, driver, audio, mode, audio_scale, visual_scale, audio_amplitude, visual_amplitude,
                idle_motion, idle_strength, steps, seed, seconds, crop, paste_back, grid,
                request: gr.Request = None, progress=gr.Progress()):
        # The events run with preprocess=False, so that an upload gradio cannot decode reaches check_inputs
        # (and gets a readable error) instead of failing inside gradio: files arrive as FileData dicts.
        source, driver, audio = (f["path"] if isinstance(f, dict) else f for f in (source, driver, audio))
        values = (audio_scale, visual_scale, audio_amplitude, visual_amplitude, idle_strength)
        knobs = {key: _check_range(KNOBS[key].label, value, KNOBS[key].lo, KNOBS[key].hi)
                 for key, value in zip(KNOBS, values)}
        steps = int(_check_range("Denoising steps", steps, 1, MAX_STEPS))
        seed = int(_check_range("Seed", seed, 0, 2**32 - 1))
        check_inputs(source, driver, audio, mode, seconds, limits)
        name = f"{Path(source).stem}_{Path(driver or audio).stem}_{mode}"  # the uploads' names
        source, note = fit_source(source, limits.max_image_pixels, uploads)

        session = request.session_hash if request is not None else None
        stop = runs.start(session)

        def on_stage(name: str) -> None:
            if stop.is_set():
                raise Cancelled()
            progress(None, desc=STAGES.get(name, name))

        def on_step(done: int, total: int) -> None:
            if stop.is_set():
                raise Cancelled()
            progress((done, total), desc="Denoising", unit="steps")

        cfg = _request_config(animator.cfg, steps, seconds, knobs, bool(idle_motion), bool(paste_back))
        try:
            with _serving(animator, cfg, animator_lock):
                result = animator.animate(source, driver, audio, mode=mode, seed=seed, crop=bool(crop),
                                          progress=False, callback=on_step, on_stage=on_stage)
        except (InputError, MediaError) as e:
            raise _reject(_page_words(e, (source, driver, audio))) from None
        finally:
            runs.finish(session, stop)

        progress(1.0, desc="Writing the video")
        video, grid_video = _save(result, output_dir, name, bool(grid))
        times = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        height, width = result.frames.shape[1:3]
        info = (f"{len(result.frames)} frames of {width}x{height} at {result.fps:g} fps, {mode} driving"
                + (" with idle motion" if "idle_motion" in result.timings else "") + f", {steps} steps. "
                + (f"{note} " if note else "") + f"Timings: {times}.")
        return video, gr.update(value=grid_video, label=grid_caption(result)), info

    def animate_ui(source, driver, audio, mode, audio_scale, visual_scale, audio_amplitude, visual_amplitude,
                   idle_motion, idle_strength, steps, seed, seconds, crop, paste_back, grid,
                   request: gr.Request = None, progress=gr.Progress()):
        """The page's endpoint: animate's outputs and a status line; an error or a cancel is the status."""
        try:
            video, grid_video, info = animate(source, driver, audio, mode, audio_scale, visual_scale, audio_amplitude,
                                              visual_amplitude, idle_motion, idle_strength, steps, seed, seconds,
                                              crop, paste_back, grid, request=request, progress=progress)
        except gr.Error as e:
            return None, None, "", _status(e.message, error=True)
        except Cancelled:
            return None, None, "", _status("Cancelled: the run stopped at its next step.")
        return video, grid_video, info, _status("")

    def cancel(request: gr.Request):
        running = runs.stop(request.session_hash if request is not None else None)
        return _status("Cancelling: the run stops at its next step." if running else "Nothing is running.")

    def closed(request: gr.Request) -> None:
        """A closed (or reloaded) tab: its run, if any, stops at its next step."""
        runs.stop(request.session_hash)

    def on_source_upload(source):
        """Check a source as it arrives; scale an oversized one down."""
        if source is None:
            return None, _status("")
        path = source["path"] if isinstance(source, dict) else source
        try:
            fitted, note = fit_source(path, limits.max_image_pixels, uploads)
        except gr.Error as e:
            return None, _status(e.message, error=True)
        return fitted, _status(note or "")

    def on_media_upload(path, track: str):
        if path is None:
            return _status("")
        path = path["path"] if isinstance(path, dict) else path
        try:
            info = check_media(path, track)
        except gr.Error as e:
            return _status(e.message, error=True)
        duration = info.get("duration") or 0.0
        if duration > limits.max_seconds:
            return _status(f"{Path(path).name} is {duration:.1f} s long; this demo animates at most "
                           f"{limits.max_seconds:g} s: set 'Seconds to animate' to {limits.max_seconds:g} or less.")
        return _status("")

    def show_mode(mode):
        """Each mode's inputs and knobs, the others hidden."""
        return ([gr.update(visible=mode in ("mixed", "visual")),
                 gr.update(visible=mode in ("mixed", "audio"),
                           label="Audio (optional: replaces the driver's track)" if mode == "mixed" else "Audio"),
                 gr.update(visible=mode == "audio")]
                + [gr.update(visible=mode in knob.modes) for knob in KNOBS.values()])

    with gr.Blocks(title="MegActor-Σ") as demo:
        gr.Markdown("# MegActor-Σ\nAnimate a portrait with a talking-head video, an audio track, or both. Pick a "
                    "mode, upload (or click an example below), press Animate.")
        if not animator.cfg.checkpoint:
            gr.Markdown(RANDOM_MODEL_BANNER, elem_id="random-model-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                mode = gr.Radio(MODE_CHOICES, value="mixed", label="Driving mode")
                with gr.Row():
                    source = gr.Image(label="Source portrait", type="filepath", image_mode=None, sources=["upload"],
                                      height=240)
                    driver = gr.Video(label="Driver video (face motion; its audio too)", sources=["upload"],
                                      height=240)
                audio = gr.Audio(label="Audio (optional: replaces the driver's track)", type="filepath",
                                 sources=["upload", "microphone"])
                idle_motion = gr.Checkbox(value=animator.cfg.idle_motion, label="Idle motion: blink and move a "
                                          "little", visible=False)
                sliders = {key: gr.Slider(k.lo, k.hi, value=defaults[key], step=k.step, label=k.label, info=k.info,
                                          visible="mixed" in k.modes) for key, k in KNOBS.items()}
                seconds = gr.Number(value=animator.cfg.limit or 0, minimum=0, label="Seconds to animate",
                                    info=f"0: the whole driver (at most {limits.max_seconds:g} s)")
                with gr.Accordion("Advanced", open=False):
                    steps = gr.Slider(1, MAX_STEPS, value=animator.cfg.num_inference_steps, step=1,
                                      label="Denoising steps", info="More steps: slower, finer; 15-50 usual.")
                    seed = gr.Number(value=animator.cfg.seed, precision=0, minimum=0, label="Seed",
                                     info="The same seed and inputs give the same video.")
                    crop = gr.Checkbox(value=True, label="Crop around the face",
                                       info="Off: animate a centred square of the whole image.")
                    paste_back = gr.Checkbox(value=animator.cfg.paste_back, label="Paste back into the portrait",
                                             info="Off: the square face crop the model works on.")
                    grid = gr.Checkbox(value=True, label="Also make a grid of what the model saw")
                with gr.Row():
                    button = gr.Button("Animate", variant="primary")
                    stop = gr.Button("Cancel", variant="stop")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="status")
                result = gr.Video(label="Result", height=360, autoplay=True)
                grid_result = gr.Video(label="Grid", height=GRID_HEIGHT + 40)
                info = gr.Markdown(elem_id="run-info")
        if examples:
            gr.Examples(example_rows(examples), [source, driver, audio, mode], label="Examples: click one, then "
                        "Animate")

        inputs = [source, driver, audio, mode, *(sliders[key] for key in GUIDANCE_KEYS), idle_motion,
                  sliders["idle_motion_strength"], steps, seed, seconds, crop, paste_back, grid]  # animate's order
        mode.change(show_mode, mode, [driver, audio, idle_motion, *sliders.values()], api_name=False)
        source.upload(on_source_upload, source, [source, status], preprocess=False, api_name=False)
        driver.upload(partial(on_media_upload, track="video"), driver, status, preprocess=False, api_name=False)
        audio.upload(partial(on_media_upload, track="audio"), audio, status, preprocess=False, api_name=False)
        button.click(lambda: _status("Running..."), None, status, api_name=False).then(
            animate_ui, inputs, [result, grid_result, info, status], api_name="animate_ui", preprocess=False,
            concurrency_limit=1, concurrency_id="animator")
        stop.click(cancel, None, status, api_name=False, concurrency_limit=None)
        gr.Button(visible=False).click(animate, inputs, [result, grid_result, info], api_name="animate",
                                       preprocess=False, concurrency_limit=1, concurrency_id="animator")
        demo.unload(closed)
    return demo.queue(default_concurrency_limit=1)


def _page_words(error: InputError | MediaError, paths) -> str:
    """An animation error as the page says it: upload names, not server paths; the page's remedy, not a flag."""
    message = error.reason if isinstance(error, InputError) else str(error)
    for path in filter(None, paths):
        message = message.replace(path, Path(path).name)
    remedy = PAGE_REMEDIES.get(getattr(error, "remedy", None))
    return message + (f": {remedy}." if remedy else ".")


def _status(text: str, error: bool = False) -> str:
    """The status line's Markdown; an error stays until the next run replaces it."""
    if not text:
        return ""
    return f"**Error:** {text}" if error else text
