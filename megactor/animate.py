"""The inference pipeline: a source portrait + a driver (video and/or audio) -> a video.

    source image ─ face, square crop ─ codec ─ ReferenceNet ─ keys/values (once per run)
    driver video ─ face tracking ─ control frames (eyes [+ mouth]) aligned to the source ─ codec
    driver audio ─ Whisper ─ feature windows per video frame
    noise ─ windows of context_frames, guidance branches batched ─ scheduler ─ codec decode
    generated crops ─ pasted back into the whole source image (paste_back) ─ mp4

Driving modes: "mixed" (visual + audio: the control has the eyes only, the mouth
follows the audio), "visual" (eyes + mouth from the driver video), "audio" (the
mouth from the audio; with idle_motion, the eyes from a procedural driver made from
the source's own face, through the mixed path). Used by eval_audio.py, the demo and
training's validation alike.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .config import ConfigError, InferenceConfig, NoiseSchedulerConfig
from .data.control import control_frames, crop_and_resize, crop_matrix, face_crop_box, transform_points
from .data.face import FaceAnalyser, face_analyser_from
from .data.idle_motion import idle_driver
from .data.paste_back import face_mask, paste_back
from .data.video_io import AUDIO_RATE, Clip, MediaError, fit_audio, read_audio, read_video
from .diffusion.guidance import Branch, GuidanceSchedule, combine
from .diffusion.sampler import Distributed, sample_video
from .diffusion.schedulers import sampling_scheduler, schedule_mismatch
from .models import (SigmaDiT, WhisperAudioEncoder, build_codec, from_pretrained, gather_windows,
                     load_noise_schedule, window_indices)
from .models.attention import KV
from .models.audio_encoder import num_features
from .models.codec import LatentCodec
from .models.fp8 import convert_to_fp8

logger = logging.getLogger(__name__)

MODES = ("mixed", "visual", "audio")
AUDIO_ONLY_FPS = 25.0  # frame rate of a video driven by audio alone
IDLE_DRIVER_SIZE = 256  # pixels: the idle driver is drawn from a crop this large (or the model's, if larger)


# what a user can do about an InputError, in the command line's words; the demo has its page's words for each
CLI_REMEDIES = {
    "no_crop": "use --no-crop to animate the whole image",
    "audio_only": "use audio-only driving: --no-visual",
    "give_audio": "give --audio, or use --no-audio",
}


class InputError(ValueError):
    """Input that cannot drive an animation; the message says which input and why.

    ``reason`` is that alone; ``remedy`` (a key of CLI_REMEDIES, or None) what would work instead, which the
    message gives in the command line's words.
    """

    def __init__(self, reason: str, remedy: Optional[str] = None):
        self.reason, self.remedy = reason, remedy
        super().__init__(f"{reason} ({CLI_REMEDIES[remedy]})" if remedy else reason)


@dataclass
class SourceFace:
    """A source image and the square of it that the model animates."""
    image: np.ndarray  # (H, W, 3) uint8, the whole source
    box: np.ndarray  # (3,) x0, y0, side: the square, in image pixels (it may reach past the image)
    landmarks: Optional[np.ndarray]  # (468, 3) the largest face's landmarks in image pixels; None: no face found

    def crop(self, size: int) -> np.ndarray:
        """(size, size, 3) uint8: the square, resized."""
        return crop_and_resize(self.image, self.box, size)

    def crop_landmarks(self, size: int) -> Optional[np.ndarray]:
        """(468, 3) the landmarks in the pixels of ``crop(size)``, or None."""
        return None if self.landmarks is None else transform_points(self.landmarks, crop_matrix(self.box, size))


@dataclass
class Animation:
    frames: np.ndarray  # (T, H, W, 3) uint8: the video (the crops pasted into the source, or the crops)
    fps: float
    audio: Optional[np.ndarray]  # 16 kHz mono, the driving audio (or the driver's track), video-length
    source: np.ndarray  # (S, S, 3) the source crop
    crops: Optional[np.ndarray] = None  # (T, S, S, 3) uint8 the generated crops, when they were pasted back
    control: Optional[np.ndarray] = None  # (T, S, S) uint8
    driver: Optional[np.ndarray] = None  # (T, H, W, 3) driver frames (or the idle-motion driver's)
    timings: Dict[str, float] = field(default_factory=dict)

    def grid_panels(self) -> list:
        """The grid's panel names, left to right: those present of source, driver, control, result, pasted."""
        return (["source"] + ["driver"] * (self.driver is not None) + ["control"] * (self.control is not None)
                + ["result"] + ["pasted"] * (self.crops is not None))

    def grid(self, height: Optional[int] = None) -> np.ndarray:
        """(T, height, W, 3): ``grid_panels()`` side by side, each ``height`` tall (default: the crop's side);
        square panels but the pasted result, which keeps the source's aspect."""
        crops = self.frames if self.crops is None else self.crops
        size, t = crops.shape[1], len(crops)
        height = height or size

        def fit(frames: np.ndarray, width: int) -> np.ndarray:
            interp = Image.NEAREST if frames.shape[1] < height and frames.shape[1] == size else Image.BICUBIC
            return np.stack([np.asarray(Image.fromarray(f).resize((width, height), interp)) for f in frames])

        panels = [fit(np.broadcast_to(self.source, crops.shape)[:1], height).repeat(t, 0)]
        if self.driver is not None:
            panels.append(fit(self.driver[:t], height))
        if self.control is not None:
            panels.append(fit(np.repeat(self.control[..., None], 3, axis=-1), height))
        panels.append(fit(crops, height))
        if self.crops is not None:
            h, w = self.frames.shape[1:3]
            panels.append(fit(self.frames, max(2, int(round(w * height / h / 2)) * 2)))
        return np.concatenate(panels, axis=2)


@dataclass
class Conditions:
    """What drives one video, on the model's device: computed once per run, read at every step and window."""

    reference_kv: List[KV]  # per block, (1, N, D) each: the source's keys/values (SigmaDiT.encode_reference)
    context_kv: List[KV]  # per block, (1, T, D) each: the learned context's (SigmaDiT.encode_context)
    control: Optional[torch.Tensor] = None  # (1, C, T, h, w) control latents; None: no visual driving
    audio: Optional[torch.Tensor] = None  # (1, T, W, L+1, d) Whisper feature windows; None: no audio driving

    @property
    def use_visual(self) -> bool:
        return self.control is not None

    @property
    def use_audio(self) -> bool:
        return self.audio is not None


class Animator:
    def __init__(self, model: SigmaDiT, codec: LatentCodec, audio_encoder: WhisperAudioEncoder,
                 face_analyser: FaceAnalyser, cfg: InferenceConfig, device: torch.device, dtype: torch.dtype):
        self.model, self.codec, self.audio_encoder, self.faces = model, codec, audio_encoder, face_analyser
        self.cfg, self.device, self.dtype = cfg, device, dtype

    @classmethod
    def from_config(cls, cfg: InferenceConfig, device: Optional[str] = None) -> "Animator":
        """Load the checkpoint (or build a random model, loudly), the codec, Whisper and the face analyser."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
        if device.type == "cpu":
            dtype = torch.float32
        if cfg.checkpoint:
            model = from_pretrained(cfg.checkpoint, attention=cfg.model.attention)  # the kernel is this run's choice
            cfg.model = model.config
            cfg.noise_scheduler_kwargs = checkpoint_schedule(cfg.checkpoint, cfg.noise_scheduler_kwargs)
        else:
            logger.warning("=" * 70 + "\nNo checkpoint in the config: using a RANDOMLY INITIALISED model. "
                           "The output will be noise-like.\n" + "=" * 70)
            torch.manual_seed(cfg.seed)  # the same random model in every process
            model = SigmaDiT(cfg.model)
            cfg.noise_scheduler_kwargs = cfg.noise_scheduler_kwargs or NoiseSchedulerConfig()
        model = model.to(device, dtype).eval().requires_grad_(False)
        if cfg.fp8:
            if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
                raise ConfigError(f"fp8=true needs float8 matmuls (compute capability 8.9 or higher: Ada, Hopper); "
                                  f"{torch.cuda.get_device_name(device)} has none: set fp8=false")
            converted = convert_to_fp8(model.blocks)
            logger.info("fp8: %d linear layers of the denoiser's blocks run as e4m3 matmuls", converted)
        if cfg.compile:
            model.compile_blocks()
        codec = build_codec(cfg.model.codec).to(device, dtype)
        audio_encoder = WhisperAudioEncoder(cfg.model.audio_encoder).to(device, dtype)
        return cls(model, codec, audio_encoder, face_analyser_from(cfg), cfg, device, dtype)

    # ------------------------------------------------------------------ inputs

    def prepare_source(self, source, crop: bool = True):
        """Image path or RGB array -> (S x S crop, its landmarks (468, 3) in crop pixels or None)."""
        face = self.locate_source(source, crop)
        return face.crop(self.cfg.sample_size), face.crop_landmarks(self.cfg.sample_size)

    def locate_source(self, source, crop: bool = True) -> SourceFace:
        """Image path or RGB array -> the image, its largest face and the square around it (``crop``) or the
        centred square (not ``crop``)."""
        if isinstance(source, str):
            try:
                image = np.asarray(Image.open(source).convert("RGB"))
            except FileNotFoundError:
                raise InputError(f"{source}: no such file") from None
            except Exception as e:
                raise InputError(f"{source}: not a readable image ({e})") from None
        else:
            image = np.asarray(source)
        name = source if isinstance(source, str) else "source image"
        faces = self.faces.detect(image)
        if len(faces) > 1:
            logger.warning("%s: %d faces found; animating the largest", name, len(faces))
        if crop:
            if not faces:
                raise InputError(f"{name}: no face found", "no_crop")
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            box = face_crop_box(face.landmarks, image.shape[:2], self.cfg.crop_margin)
        else:
            side = min(image.shape[:2])
            box = np.array([(image.shape[1] - side) // 2, (image.shape[0] - side) // 2, side])
            face = faces[0] if faces else None
        return SourceFace(image, box, face.landmarks if face is not None else None)

    def track_driver(self, frames: np.ndarray, name: str) -> np.ndarray:
        """(T, H, W, 3) -> (T, 468, 3) landmarks of the driver's largest face; NaN where none was found."""
        tracked = self.faces.track(frames)
        found = [max(fs, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])) if fs else None for fs in tracked]
        if not any(f is not None for f in found):
            raise InputError(f"{name}: no face found in the driver video (visual driving needs one)")
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            logger.warning("%s: no face in %d of %d driver frames (from frame %d): their control is black", name,
                           len(missing), len(found), missing[0])
        shape = next(f for f in found if f is not None).landmarks.shape
        return np.stack([f.landmarks if f is not None else np.full(shape, np.nan, np.float32) for f in found])

    # ------------------------------------------------------------------ run

    def animate(self, source, driver: Optional[str] = None, audio: Optional[str] = None, mode: Optional[str] = None,
                limit: Optional[float] = None, seed: Optional[int] = None, crop: bool = True,
                progress: bool = True, callback: Optional[Callable[[int, int], None]] = None,
                on_stage: Optional[Callable[[str], None]] = None,
                dist: Distributed = Distributed()) -> Animation:
        """Animate `source` with a driver video and/or an audio file. `mode` None: mixed when there is audio.

        `callback(done, total)` follows the denoising steps; `on_stage(name)` is called as each stage starts
        (the keys of `Animation.timings`). Either may raise to abandon the run.
        """
        cfg, timings = self.cfg, {}
        timer = partial(self._timer, timings, on_stage=on_stage)  # timer(name): a context that times a stage
        limit = cfg.limit if limit is None else limit
        if limit is not None and limit < 0:
            raise InputError(f"limit={limit:g}: seconds of driver must be positive (0: the whole driver)")
        limit = limit or None  # 0 means the whole driver, as in the demo
        with timer("read_inputs"):
            clip = read_video(driver, max_seconds=limit) if driver else None
            if audio:
                speech = read_audio(audio, max_seconds=limit if clip is None else clip.duration)
            else:
                speech = clip.audio if clip is not None else None
        mode = mode or ("mixed" if speech is not None and clip is not None else "audio" if clip is None else "visual")
        use_visual, use_audio = mode in ("mixed", "visual"), mode in ("mixed", "audio")
        self._check_mode(mode, clip, speech, driver)
        idle = mode == "audio" and cfg.idle_motion

        fps = clip.fps if clip is not None else AUDIO_ONLY_FPS
        num_frames = clip.num_frames if clip is not None else max(1, int(len(speech) / AUDIO_RATE * fps))
        if speech is not None:
            speech = fit_audio(speech, int(round(num_frames / fps * AUDIO_RATE)))

        with timer("face_analysis"):
            source_face = self.locate_source(source, crop=crop)
            source_crop = source_face.crop(cfg.sample_size)
            source_landmarks = source_face.crop_landmarks(cfg.sample_size)  # (468, 3) in crop pixels, or None
            driver_landmarks = self.track_driver(clip.frames, driver) if use_visual else None
        if use_visual and source_landmarks is None:
            raise InputError(f"{source}: no face in the source image, so it cannot follow a driver's face",
                             "audio_only")
        driver_frames = clip.frames if clip is not None else None
        if idle and source_landmarks is not None:  # no face, no eyes to blink: plain audio-only driving
            with timer("idle_motion"):
                idle_size = max(IDLE_DRIVER_SIZE, cfg.sample_size)
                driver_frames, driver_landmarks, _ = idle_driver(
                    source_face.crop(idle_size), source_face.crop_landmarks(idle_size), num_frames, fps,
                    cfg.seed if seed is None else seed, cfg.idle_motion_strength)
            use_visual = True

        control = control_latents = None
        if use_visual:
            with timer("control_frames"):
                control_mode = cfg.control_mode or ("eyes" if use_audio else "eyes+mouth")
                control, _ = control_frames(driver_frames, driver_landmarks, source_landmarks, cfg.sample_size,
                                            mode=control_mode)
                control_latents = self._encode_control(np.repeat(control[..., None], 3, axis=-1))

        audio_windows = None
        if use_audio:
            with timer("audio_encoding"):
                features = self.audio_encoder([speech])  # (1, n, L+1, d)
                idx = window_indices(torch.arange(num_frames, device=self.device)[None], fps,
                                     num_features(len(speech)), self.model.config.audio_window)
                audio_windows = gather_windows(features, idx).to(self.dtype)  # (1, T, W, L+1, d)

        with timer("reference"), torch.no_grad():
            ref_latent = self.codec.encode(_to_tensor(source_crop[None], self.device, self.dtype))
            conditions = Conditions(self.model.encode_reference(ref_latent), self.model.encode_context(),
                                    control_latents, audio_windows)

        with timer("denoising"):
            latents = self._denoise(num_frames, ref_latent.shape[-2:], conditions, seed, progress, callback, dist)
        with timer("vae_decoding"):
            video = self.codec.decode_video(latents.to(self.dtype))  # (1, 3, T, S, S)
            crops = ((video[0].permute(1, 2, 3, 0).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        if not cfg.paste_back:
            return Animation(frames=crops, fps=fps, audio=speech, source=source_crop, control=control,
                             driver=driver_frames, timings=timings)
        with timer("paste_back"):
            frames = paste_back(source_face.image, crops, source_face.box, face_mask(source_landmarks, cfg.sample_size))
        return Animation(frames=frames, fps=fps, audio=speech, source=source_crop, crops=crops, control=control,
                         driver=driver_frames, timings=timings)

    @torch.no_grad()
    def _denoise(self, num_frames: int, latent_hw: Tuple[int, int], cond: Conditions, seed: Optional[int],
                 progress: bool, callback, dist: Distributed) -> torch.Tensor:
        """Sample the latent video (1, C, T, h, w): windows of frames, the guidance passes batched per window."""
        cfg, knobs = self.cfg, guidance_knobs(self.cfg)
        schedule = GuidanceSchedule(cond.use_audio, cond.use_visual, knobs["audio_scale"], knobs["visual_scale"],
                                    cfg.guidance.interval, cfg.noise_scheduler_kwargs.num_train_timesteps)

        def model_fn(window: torch.Tensor, t: torch.Tensor, frames: range) -> torch.Tensor:
            branches = schedule.branches(t)
            n, sl = len(branches), slice(frames.start, frames.stop)
            audio_amp, visual_amp = branch_amplitudes(branches, knobs, self.device)
            out = self.model(
                window.to(self.dtype).expand(n, -1, -1, -1, -1), t.expand(n),
                control=cond.control[:, :, sl].expand(n, -1, -1, -1, -1) if cond.use_visual else None,
                audio=cond.audio[:, sl].expand(n, -1, -1, -1, -1) if cond.use_audio else None,
                reference_kv=cond.reference_kv, context_kv=cond.context_kv,
                audio_amplitude=audio_amp, visual_amplitude=visual_amp,
            )
            return combine(out.float(), branches)

        generator = torch.Generator(self.device).manual_seed(cfg.seed if seed is None else seed)
        noise = torch.randn((1, self.model.config.in_channels, num_frames, *latent_hw), generator=generator,
                            device=self.device)
        scheduler = sampling_scheduler(cfg.scheduler, cfg.noise_scheduler_kwargs)
        return sample_video(model_fn, noise, scheduler, cfg.num_inference_steps, cfg.context, dist,
                            progress=progress, callback=callback)

    # ------------------------------------------------------------------ helpers

    def _check_mode(self, mode, clip: Optional[Clip], speech, driver) -> None:
        if mode not in MODES:
            raise InputError(f"unknown driving mode {mode!r}: choose one of {MODES}")
        if mode in ("mixed", "visual") and clip is None:
            raise InputError(f"{mode} driving needs a driver video")
        if mode in ("mixed", "audio") and speech is None:
            what = f"{driver} has no audio track" if driver else "no audio was given"
            raise InputError(f"{mode} driving needs audio, but {what}", "give_audio")

    def _encode_control(self, frames: np.ndarray) -> torch.Tensor:
        """(T, S, S, 3) uint8 control frames -> (1, C, T, h, w) control latents."""
        video = _to_tensor(frames, self.device, self.dtype).permute(1, 0, 2, 3)[None]
        return self.codec.encode_control(video)

    @contextmanager
    def _timer(self, timings: Dict[str, float], name: str, on_stage: Optional[Callable[[str], None]] = None):
        if on_stage is not None:
            on_stage(name)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def checkpoint_schedule(checkpoint: str, asked: Optional[NoiseSchedulerConfig]) -> NoiseSchedulerConfig:
    """The noise schedule to sample `checkpoint` with: the one it was trained with, unless `asked` differs from it
    (ConfigError: sampling with another prediction type or beta schedule than training's gives noise)."""
    trained = load_noise_schedule(checkpoint)
    if trained is None:
        logger.warning("%s records no noise schedule (written before noise_scheduler.json was saved): sampling "
                       "with %s", checkpoint, "the config's noise_scheduler_kwargs" if asked else "the defaults")
        return asked or NoiseSchedulerConfig()
    if asked is None:
        return trained
    wrong = schedule_mismatch(trained, asked)
    if wrong:
        raise ConfigError(f"noise_scheduler_kwargs departs from the schedule {checkpoint} was trained with "
                          f"({'; '.join(wrong)}): drop noise_scheduler_kwargs from the inference config to use "
                          "the checkpoint's")
    return asked


def guidance_knobs(cfg: InferenceConfig) -> Dict[str, float]:
    """The four knobs; audio/visual scales default to the single guidance_scale."""
    g = cfg.guidance
    return {
        "audio_scale": g.guidance_scale if g.audio_scale is None else g.audio_scale,
        "visual_scale": g.guidance_scale if g.visual_scale is None else g.visual_scale,
        "audio_amplitude": g.audio_amplitude, "visual_amplitude": g.visual_amplitude,
    }


def branch_amplitudes(branches: List[Branch], knobs: Dict[str, float], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per guidance pass (n,), the audio and visual amplitudes: the knob where the pass has that condition, else 0."""
    audio = torch.tensor([knobs["audio_amplitude"] if b.audio else 0.0 for b in branches], device=device)
    visual = torch.tensor([knobs["visual_amplitude"] if b.visual else 0.0 for b in branches], device=device)
    return audio, visual


def _to_tensor(images: np.ndarray, device, dtype) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return (x.to(dtype) / 127.5 - 1.0)


__all__ = ["Animator", "Animation", "CLI_REMEDIES", "InputError", "MediaError", "MODES", "SourceFace", "guidance_knobs",
           "checkpoint_schedule"]
