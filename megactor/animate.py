"""The inference pipeline: a source portrait + a driver (video and/or audio) -> a video.

    source image ─ face, square crop ─ codec ─ ReferenceNet ─ keys/values (once per run)
    driver video ─ face tracking ─ control frames (eyes [+ mouth]) aligned to the source ─ codec
    driver audio ─ Whisper ─ feature windows per video frame
    noise ─ windows of context_frames, guidance branches batched ─ scheduler ─ codec decode ─ mp4

Driving modes: "mixed" (visual + audio: the control has the eyes only, the mouth
follows the audio), "visual" (eyes + mouth from the driver video), "audio" (no
control). Used by eval_audio.py, the demo and training's validation alike.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np
import torch
from PIL import Image

from .config import ConfigError, InferenceConfig, NoiseSchedulerConfig
from .data.control import control_frames, crop_and_resize, crop_matrix, face_crop_box, transform_points
from .data.face import FaceAnalyser, face_analyser_from
from .data.video_io import AUDIO_RATE, Clip, MediaError, fit_audio, read_audio, read_video
from .diffusion.guidance import combine, guidance_branches
from .diffusion.sampler import sample_video
from .diffusion.schedulers import sampling_scheduler, schedule_mismatch
from .models import (SigmaDiT, WhisperAudioEncoder, build_codec, from_pretrained, gather_windows,
                     load_noise_schedule, window_indices)
from .models.audio_encoder import num_features
from .models.codec import LatentCodec

logger = logging.getLogger(__name__)

MODES = ("mixed", "visual", "audio")
AUDIO_ONLY_FPS = 25.0  # frame rate of a video driven by audio alone


class InputError(ValueError):
    """Input that cannot drive an animation; the message says which input and why."""


@dataclass
class Animation:
    frames: np.ndarray  # (T, S, S, 3) uint8
    fps: float
    audio: Optional[np.ndarray]  # 16 kHz mono, the driving audio (or the driver's track), video-length
    source: np.ndarray  # (S, S, 3) the source crop
    control: Optional[np.ndarray] = None  # (T, S, S) uint8
    driver: Optional[np.ndarray] = None  # (T, H, W, 3) driver frames
    timings: Dict[str, float] = field(default_factory=dict)

    def grid(self) -> np.ndarray:
        """(T, S, k*S, 3): source | driver | control | result side by side (those present)."""
        size = self.frames.shape[1]
        t = len(self.frames)
        panels = [np.broadcast_to(self.source, self.frames.shape)]
        if self.driver is not None:
            panels.append(np.stack([np.asarray(Image.fromarray(f).resize((size, size))) for f in self.driver[:t]]))
        if self.control is not None:
            panels.append(np.repeat(self.control[..., None], 3, axis=-1))
        panels.append(self.frames)
        return np.concatenate(panels, axis=2)


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
            model = from_pretrained(cfg.checkpoint)
            cfg.model = model.config
            cfg.noise_scheduler_kwargs = checkpoint_schedule(cfg.checkpoint, cfg.noise_scheduler_kwargs)
        else:
            logger.warning("=" * 70 + "\nNo checkpoint in the config: using a RANDOMLY INITIALISED model. "
                           "The output will be noise-like.\n" + "=" * 70)
            torch.manual_seed(cfg.seed)  # the same random model in every process
            model = SigmaDiT(cfg.model)
            cfg.noise_scheduler_kwargs = cfg.noise_scheduler_kwargs or NoiseSchedulerConfig()
        model = model.to(device, dtype).eval().requires_grad_(False)
        if cfg.compile:
            model.compile_model(cudagraphs=False)  # each call, 16 frames per branch, is long enough to hide its launches
        codec = build_codec(cfg.model.codec).to(device, dtype)
        audio_encoder = WhisperAudioEncoder(cfg.model.audio_encoder).to(device, dtype)
        return cls(model, codec, audio_encoder, face_analyser_from(cfg), cfg, device, dtype)

    # ------------------------------------------------------------------ inputs

    def prepare_source(self, source, crop: bool = True):
        """Image path or RGB array -> (S x S crop, its landmarks (468, 3) in crop pixels or None)."""
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
        size = self.cfg.sample_size
        faces = self.faces.detect(image)
        if crop:
            if not faces:
                raise InputError(f"{name}: no face found (use --no-crop to animate the whole image)")
            face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            box = face_crop_box(face.landmarks, image.shape[:2], self.cfg.crop_margin)
        else:
            side = min(image.shape[:2])
            box = np.array([(image.shape[1] - side) // 2, (image.shape[0] - side) // 2, side])
            face = faces[0] if faces else None
        landmarks = transform_points(face.landmarks, crop_matrix(box, size)) if face is not None else None
        return crop_and_resize(image, box, size), landmarks

    def track_driver(self, frames: np.ndarray, name: str) -> np.ndarray:
        """(T, H, W, 3) -> (T, 468, 3) landmarks of the driver's largest face; NaN where none was found."""
        tracked = self.faces.track(frames)
        found = [max(fs, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])) if fs else None for fs in tracked]
        if not any(f is not None for f in found):
            raise InputError(f"{name}: no face found in the driver video (visual driving needs one)")
        shape = next(f for f in found if f is not None).landmarks.shape
        return np.stack([f.landmarks if f is not None else np.full(shape, np.nan, np.float32) for f in found])

    # ------------------------------------------------------------------ run

    def animate(self, source, driver: Optional[str] = None, audio: Optional[str] = None, mode: Optional[str] = None,
                limit: Optional[float] = None, seed: Optional[int] = None, crop: bool = True,
                progress: bool = True, callback: Optional[Callable[[int, int], None]] = None,
                rank: int = 0, world_size: int = 1, all_reduce=None) -> Animation:
        """Animate `source` with a driver video and/or an audio file. `mode` None: mixed when there is audio."""
        cfg, timings = self.cfg, {}
        limit = cfg.limit if limit is None else limit
        with self._timer(timings, "read_inputs"):
            clip = read_video(driver, max_seconds=limit) if driver else None
            if audio:
                speech = read_audio(audio, max_seconds=limit if clip is None else clip.duration)
            else:
                speech = clip.audio if clip is not None else None
        mode = mode or ("mixed" if speech is not None and clip is not None else "audio" if clip is None else "visual")
        use_visual, use_audio = mode in ("mixed", "visual"), mode in ("mixed", "audio")
        self._check_mode(mode, clip, speech, driver)

        fps = clip.fps if clip is not None else AUDIO_ONLY_FPS
        num_frames = clip.num_frames if clip is not None else max(1, int(len(speech) / AUDIO_RATE * fps))
        if speech is not None:
            speech = fit_audio(speech, int(round(num_frames / fps * AUDIO_RATE)))

        with self._timer(timings, "face_analysis"):
            source_crop, source_landmarks = self.prepare_source(source, crop=crop)
            driver_landmarks = self.track_driver(clip.frames, driver) if use_visual else None
        if use_visual and source_landmarks is None:
            raise InputError(f"{source}: no face in the source image, so it cannot follow a driver's face; "
                             "use audio-only driving (--no-visual)")

        control = control_latents = None
        if use_visual:
            with self._timer(timings, "control_frames"):
                control_mode = cfg.control_mode or ("eyes" if use_audio else "eyes+mouth")
                control, _ = control_frames(clip.frames, driver_landmarks, source_landmarks, cfg.sample_size,
                                            mode=control_mode)
                control_latents = self._encode_control(np.repeat(control[..., None], 3, axis=-1))

        audio_windows = None
        if use_audio:
            with self._timer(timings, "audio_encoding"):
                features = self.audio_encoder([speech])  # (1, n, L+1, d)
                idx = window_indices(torch.arange(num_frames, device=self.device)[None], fps,
                                     num_features(len(speech)), self.model.config.audio_window)
                audio_windows = gather_windows(features, idx).to(self.dtype)  # (1, T, W, L+1, d)

        with self._timer(timings, "reference"):
            ref_latent = self.codec.encode(_to_tensor(source_crop[None], self.device, self.dtype))
            reference_kv = self.model.encode_reference(ref_latent)

        with self._timer(timings, "denoising"):
            latents = self._denoise(num_frames, ref_latent.shape[-2:], reference_kv, control_latents, audio_windows,
                                    use_audio, use_visual, seed, progress, callback, rank, world_size, all_reduce)
        with self._timer(timings, "vae_decoding"):
            video = self.codec.decode_video(latents.to(self.dtype))  # (1, 3, T, S, S)
            frames = ((video[0].permute(1, 2, 3, 0).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        return Animation(frames=frames, fps=fps, audio=speech, source=source_crop, control=control,
                         driver=clip.frames if clip is not None else None, timings=timings)

    @torch.no_grad()
    def _denoise(self, num_frames, latent_hw, reference_kv, control, audio, use_audio, use_visual, seed,
                 progress, callback, rank, world_size, all_reduce) -> torch.Tensor:
        cfg, g = self.cfg, cfg_guidance(self.cfg)
        branches = guidance_branches(use_audio, use_visual, g["audio_scale"], g["visual_scale"])
        n = len(branches)
        audio_amp = torch.tensor([g["audio_amplitude"] if b.audio else 0.0 for b in branches], device=self.device)
        visual_amp = torch.tensor([g["visual_amplitude"] if b.visual else 0.0 for b in branches], device=self.device)

        def model_fn(window: torch.Tensor, t: torch.Tensor, frames: range) -> torch.Tensor:
            sl = slice(frames.start, frames.stop)
            out = self.model(
                window.to(self.dtype).expand(n, -1, -1, -1, -1), t.expand(n),
                control=control[:, :, sl].expand(n, -1, -1, -1, -1) if control is not None else None,
                audio=audio[:, sl].expand(n, -1, -1, -1, -1) if audio is not None else None,
                reference_kv=reference_kv, audio_amplitude=audio_amp, visual_amplitude=visual_amp,
            )
            return combine(out.float(), branches)

        generator = torch.Generator(self.device).manual_seed(cfg.seed if seed is None else seed)
        noise = torch.randn((1, self.model.config.in_channels, num_frames, *latent_hw), generator=generator,
                            device=self.device)
        scheduler = sampling_scheduler(cfg.scheduler, cfg.noise_scheduler_kwargs)
        return sample_video(model_fn, noise, scheduler, cfg.num_inference_steps, cfg.context.context_frames,
                            cfg.context.context_overlap, rank=rank, world_size=world_size, all_reduce=all_reduce,
                            progress=progress, callback=callback)

    # ------------------------------------------------------------------ helpers

    def _check_mode(self, mode, clip: Optional[Clip], speech, driver) -> None:
        if mode not in MODES:
            raise InputError(f"unknown driving mode {mode!r}: choose one of {MODES}")
        if mode in ("mixed", "visual") and clip is None:
            raise InputError(f"{mode} driving needs a driver video")
        if mode in ("mixed", "audio") and speech is None:
            what = f"{driver} has no audio track" if driver else "no audio was given"
            raise InputError(f"{mode} driving needs audio, but {what} (give --audio, or use --no-audio)")

    def _encode_control(self, frames: np.ndarray) -> torch.Tensor:
        """(T, S, S, 3) uint8 control frames -> (1, C, T, h, w) control latents."""
        video = _to_tensor(frames, self.device, self.dtype).permute(1, 0, 2, 3)[None]
        return self.codec.encode_control(video)

    @contextmanager
    def _timer(self, timings: Dict[str, float], name: str):
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


def cfg_guidance(cfg: InferenceConfig) -> Dict[str, float]:
    """The four knobs; audio/visual scales default to the single guidance_scale."""
    g = cfg.guidance
    return {
        "audio_scale": g.guidance_scale if g.audio_scale is None else g.audio_scale,
        "visual_scale": g.guidance_scale if g.visual_scale is None else g.visual_scale,
        "audio_amplitude": g.audio_amplitude, "visual_amplitude": g.visual_amplitude,
    }


def _to_tensor(images: np.ndarray, device, dtype) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return (x.to(dtype) / 127.5 - 1.0)


__all__ = ["Animator", "Animation", "InputError", "MediaError", "MODES", "cfg_guidance", "checkpoint_schedule"]
