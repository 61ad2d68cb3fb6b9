"""Structured configs: dataclasses checked by OmegaConf.

A YAML file is merged onto the schema, then ``key=value`` overrides from the
command line. Every merge runs in struct mode, so an unknown key or a value of
the wrong type fails at load time with a ``ConfigError`` that names the key and
where it came from (the file or the command line).

The ``model`` section starts from a named preset (``model.preset``), so a config
only lists what it changes. A file may also name another in ``base:`` (a path
relative to itself): that file is read first, and this one changes its keys, so
a preset's three stage configs share one ``base.yaml``.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and its source."""


# --------------------------------------------------------------------------- model


@dataclass
class CodecConfig:
    type: str = "pixel"  # "pixel" (no weights, lossless pixel-unshuffle) or "vae" (diffusers AutoencoderKL)
    path: Optional[str] = None  # VAE folder or hub id
    subfolder: Optional[str] = None
    factor: int = 2  # pixel codec only: latent = pixel_unshuffle(image, factor)


@dataclass
class AudioEncoderConfig:
    path: Optional[str] = None  # Whisper folder or hub id; None builds a seeded random encoder
    subfolder: Optional[str] = None
    # Used only when path is None (the tiny preset, tests):
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    seed: int = 0


@dataclass
class ModelConfig:
    preset: str = "tiny"
    sample_size: int = 32  # latent height/width the positional embedding is built for
    patch_size: int = 2
    # The reference net's patch size (None: patch_size). Twice patch_size encodes the reference in a quarter of
    # the tokens, which every denoiser self-attention also reads as keys: a cheaper step (the tiny preset's).
    reference_patch_size: Optional[int] = None
    in_channels: int = 12  # latent channels; control latents have as many
    width: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    caption_channels: int = 32  # the learned context lives in PixArt's caption (T5) space
    context_tokens: int = 8
    audio_tokens: int = 32  # tokens per video frame after the audio projection
    audio_window: int = 2  # +- video frames of audio features per frame
    audio_hidden: int = 256  # width of the audio projection MLP
    temporal_layers: bool = True
    max_frames: int = 64  # longest clip the temporal positional encoding covers
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # "sdpa" or "xformers"
    transformer_path: Optional[str] = None  # PixArt-alpha diffusers folder or hub id to start from
    transformer_subfolder: Optional[str] = None
    codec: CodecConfig = field(default_factory=CodecConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)


def _preset(**kw) -> ModelConfig:
    codec = kw.pop("codec", CodecConfig())
    audio = kw.pop("audio_encoder", AudioEncoderConfig())
    return ModelConfig(codec=codec, audio_encoder=audio, **kw)


PRESETS = {
    # CPU-trainable: 64x64 pixels -> 32x32x12 pixel latents -> 256 tokens per frame, the reference in 64; two heads
    # of 48. On 2 cores the coarse reference and the two heads cut a stage-1 step by 36% and a stage-2 step by
    # 46% against 256 reference tokens and four heads, for the same control figures (docs/control.md).
    "tiny": _preset(preset="tiny", num_heads=2, reference_patch_size=4),
    # 128x128 pixels -> 32x32x48 pixel latents -> 256 tokens per frame.
    "small": _preset(
        preset="small", sample_size=32, in_channels=48, width=384, depth=12, num_heads=6,
        caption_channels=64, context_tokens=8, audio_hidden=512, codec=CodecConfig(factor=4),
        audio_encoder=AudioEncoderConfig(d_model=128, layers=2, heads=2),
    ),
    # PixArt-XL-2 at 512x512: SD VAE latents 64x64x4, 28 blocks of width 1152, 16 heads.
    "xl": _preset(
        preset="xl", sample_size=64, in_channels=4, width=1152, depth=28, num_heads=16,
        caption_channels=4096, context_tokens=120, audio_hidden=1024, max_frames=64,
        codec=CodecConfig(type="vae"),
        audio_encoder=AudioEncoderConfig(d_model=384, layers=4, heads=6),
    ),
}


# --------------------------------------------------------------------------- diffusion


@dataclass
class NoiseSchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"  # or "v_prediction"
    rescale_betas_zero_snr: bool = False
    timestep_spacing: str = "trailing"


@dataclass
class ContextConfig:
    context_frames: int = 16
    context_overlap: int = 4
    layout: str = "fewest"  # "fewest" windows that cover the video, or "shifted" (diffusion/context.py)


# --------------------------------------------------------------------------- data


@dataclass
class AugmentConfig:
    affine_prob: float = 0.8
    max_rotate: float = 8.0  # degrees
    max_scale: float = 0.08  # relative
    max_translate: float = 0.04  # relative to the image size
    color_jitter: float = 0.3  # brightness/contrast/saturation strength


@dataclass
class TrainDataConfig:
    data_dirs: List[str] = field(default_factory=list)
    video_length: int = 16
    frame_stride: int = 1
    sample_size: int = 64  # pixels, square
    use_audio_ratio: float = 0.5
    use_both_ratio: float = 0.2
    uncond_ratio: float = 0.0  # neither modality (the reference alone): what guidance's unconditional branch needs
    ref_min_distance: int = 8  # the reference frame is at least this many frames from the clip
    crop_margin: float = 0.6  # face-centred square: box side * (1 + margin)
    num_workers: int = 2
    # keep decoded clips (frames and audio) in memory up to this size, per loading process (0: decode each time)
    frame_cache_mb: int = 0
    audio_cache_mb: int = 256  # keep each clip's Whisper features (frozen, so exact) up to this size (0: encode each step)
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)


# --------------------------------------------------------------------------- inference


@dataclass
class GuidanceConfig:
    guidance_scale: float = 2.0  # the original's single knob: default for both scales below
    audio_scale: Optional[float] = None
    visual_scale: Optional[float] = None
    audio_amplitude: float = 1.0
    visual_amplitude: float = 1.0
    # [lo, hi]: the guidance passes run only at noise levels t / num_train_timesteps within it, one conditioned
    # pass elsewhere (diffusion/guidance.py); None: at every step
    interval: Optional[List[float]] = None


@dataclass
class ValidationConfig:
    source_image: List[str] = field(default_factory=list)
    video_path: List[str] = field(default_factory=list)
    audio_path: List[Optional[str]] = field(default_factory=list)
    num_inference_steps: int = 10
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    limit: Optional[float] = 2.0  # seconds of driver per validation pair


@dataclass
class InferenceConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: Optional[str] = None  # SigmaDiT folder (save_pretrained); empty = random init
    source_image: List[str] = field(default_factory=list)
    video_path: List[str] = field(default_factory=list)
    audio_path: List[Optional[str]] = field(default_factory=list)
    output_dir: str = "outputs"
    sample_size: int = 64  # pixels, square
    crop_margin: float = 0.6
    num_inference_steps: int = 25
    scheduler: str = "ddim"  # "ddim" or "dpmsolver++"
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    # None: the schedule the checkpoint was trained with (its noise_scheduler.json; the defaults for a checkpoint
    # without one or a random model). Set, it must match the checkpoint's in all but timestep_spacing.
    noise_scheduler_kwargs: Optional[NoiseSchedulerConfig] = None
    control_mode: Optional[str] = None  # "eyes+mouth" or "eyes"; None picks by the driving mode
    seed: int = 42
    limit: Optional[float] = None  # seconds of driver; None = all of it
    dtype: str = "bf16"  # on CUDA; CPU runs in float32
    fp8: bool = False  # the denoiser blocks' linear layers as float8 e4m3 matmuls (models/fp8.py)
    compile: bool = False
    face_backend: str = "mediapipe"  # or "dwpose" (needs dwpose_det_model and dwpose_pose_model)
    dwpose_det_model: Optional[str] = None  # DWPose's YOLOX person detector, ONNX (e.g. yolox_l.onnx)
    dwpose_pose_model: Optional[str] = None  # DWPose's RTMPose whole-body model, ONNX (e.g. dw-ll_ucoco_384.onnx)
    grid: bool = False
    paste_back: bool = True  # the result in the whole source image; False: the square face crop the model animates
    idle_motion: bool = True  # audio-only driving: blinks and head motion drawn from the source's own face
    idle_motion_strength: float = 1.0  # scales the idle head motion (0: blinks alone)


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    output_dir: str = "runs/tiny"
    stage: int = 1  # 1 image, 2 audio, 3 motion: sets which frames and branches run
    init_checkpoint: Optional[str] = None  # previous stage's checkpoint folder
    resume: Optional[str] = None  # "latest" or a checkpoint folder of this run
    seed: int = 0
    train_data: TrainDataConfig = field(default_factory=TrainDataConfig)
    trainable_modules: Optional[List[str]] = None  # groups or name regexes; None: stages.DEFAULT_TRAINABLE
    learning_rate: float = 1e-4
    # group or name regex -> factor on learning_rate for the trainable parameters it matches, e.g. {audio: 10}:
    # a zero-initialised branch that is new in this stage starts slower than the pretrained weights around it
    learning_rate_multipliers: Dict[str, float] = field(default_factory=dict)
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1000
    max_train_minutes: Optional[float] = None  # also stop (checkpoint + export) after this much wall time
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    validation_steps: int = 500
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    mixed_precision_training: bool = True
    mixed_precision_dtype: str = "bf16"  # "bf16" or "fp16"; CPU always trains in float32
    noise_scheduler_kwargs: NoiseSchedulerConfig = field(default_factory=NoiseSchedulerConfig)
    noise_offset: float = 0.0
    face_parts_loss_weight: float = 0.0  # extra loss weight on the eye and mouth patches (0: plain MSE)
    use_ema: bool = True
    ema_decay: float = 0.999
    compile: bool = False
    max_nan_steps: int = 5  # this many non-finite losses in a row stop the run
    log_every: int = 10
    context: ContextConfig = field(default_factory=ContextConfig)


# --------------------------------------------------------------------------- loading


def _schema_with_preset(schema_cls, preset: str, where: str) -> DictConfig:
    if preset not in PRESETS:
        raise ConfigError(f"{where}: model.preset={preset!r} is not one of {sorted(PRESETS)}")
    base = OmegaConf.structured(schema_cls)
    if "model" in base:
        OmegaConf.set_struct(base, False)
        base.model = OmegaConf.structured(copy.deepcopy(PRESETS[preset]))
    OmegaConf.set_struct(base, True)
    for f in fields(schema_cls):  # a mapping field's keys are the user's to choose (types are strings here)
        if str(f.type).startswith("Dict["):
            OmegaConf.set_struct(base[f.name], False)
    return base


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{where}: bad key '{key}': {reason}") from None


BASE_KEY = "base"  # a config file's parent: a path relative to the file, whose keys this file changes


def _read_yaml(path: str, included_by: Sequence[str] = ()) -> list:
    """``path`` and the chain of ``base:`` files under it -> [(file, its keys)], the root base first.

    A relative ``base`` is resolved against the including file's folder; a file that includes
    itself, directly or through others, is an error naming the cycle.
    """
    real = os.path.realpath(path)
    if real in included_by:
        chain = " -> ".join([*included_by[included_by.index(real):], real])
        raise ConfigError(f"{path}: `{BASE_KEY}:` includes form a cycle: {chain}")
    if not os.path.isfile(path):
        where = f" (the `{BASE_KEY}:` of {included_by[-1]})" if included_by else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = cfg.pop(BASE_KEY, None)
    if base is None:
        return [(path, cfg)]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: `{BASE_KEY}:` must be the path of another config file, got {base!r}")
    return _read_yaml(os.path.join(os.path.dirname(path), base), [*included_by, real]) + [(path, cfg)]


def load_config(schema_cls, path: Optional[str] = None, overrides: Sequence[str] = ()) -> Any:
    """Load ``path`` (YAML, and the files its ``base:`` keys name) onto ``schema_cls``, then ``key=value``
    overrides; return the dataclass.

    Raises ``ConfigError`` naming the file (or "command line") and the key at fault.
    """
    layers = _read_yaml(path) if path is not None else []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
    try:
        cli_cfg = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"command line: {e}") from None

    presets = [OmegaConf.select(c, "model.preset") for c in [*(c for _, c in layers), cli_cfg]]
    preset = next((p for p in reversed(presets) if p), "tiny")
    cfg = _schema_with_preset(schema_cls, preset, path or "command line")
    for file, file_cfg in layers:
        cfg = _merge(cfg, file_cfg, file)
    cfg = _merge(cfg, cli_cfg, "command line")
    obj = OmegaConf.to_object(cfg)

    def where(*keys: str) -> str:  # a value set on the command line is blamed there, not on the file
        return "command line" if any(OmegaConf.select(cli_cfg, k) is not None for k in keys) else path or "config"

    validate(obj, where)
    return obj


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(schema_cls, data: dict, where: str = "dict") -> Any:
    """Rebuild a dataclass from a plain dict (e.g. a checkpoint's saved config), strictly."""
    base = OmegaConf.structured(schema_cls)
    OmegaConf.set_struct(base, True)
    return OmegaConf.to_object(_merge(base, data, where))


# --------------------------------------------------------------------------- validation


Where = Callable[..., str]  # the keys a check reads -> where their values came from ("command line" or a file)


def _where(where: Union[str, Where]) -> Where:
    return where if callable(where) else (lambda *keys: where)


def _check_choice(where: Where, key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{where(key)}: {key}={value!r} must be one of {list(choices)}")


def _check_range(where: Where, key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{where(key)}: {key}={value!r} must lie in [{lo}, {hi}]")


def _check_at_least(where: Where, key: str, value: Optional[float], lo: float, meaning: str = "") -> None:
    if value is not None and value < lo:
        raise ConfigError(f"{where(key)}: {key}={value!r} must be at least {lo:g}{meaning}")


def check_face_backend(where: Union[str, Where], cfg: Any) -> None:
    """``cfg.face_backend`` is known, and DWPose has both its model paths (``dwpose_det_model``, ``dwpose_pose_model``)."""
    where = _where(where)
    _check_choice(where, "face_backend", cfg.face_backend, ["mediapipe", "dwpose"])
    if cfg.face_backend == "dwpose":
        missing = [k for k in ("dwpose_det_model", "dwpose_pose_model") if not getattr(cfg, k)]
        if missing:
            raise ConfigError(f"{where(*missing)}: face_backend=dwpose needs {' and '.join(missing)} "
                              "(paths to DWPose's ONNX models)")


def validate_model(m: ModelConfig, where: Union[str, Where]) -> None:
    where = _where(where)
    _check_choice(where, "model.codec.type", m.codec.type, ["pixel", "vae"])
    _check_choice(where, "model.attention", m.attention, ["sdpa", "xformers"])
    if m.width % m.num_heads:
        raise ConfigError(f"{where('model.width', 'model.num_heads')}: model.width={m.width} is not divisible by "
                          f"model.num_heads={m.num_heads}")
    ref = m.reference_patch_size
    if ref is not None and (ref < m.patch_size or ref % m.patch_size or m.sample_size % ref):
        raise ConfigError(f"{where('model.reference_patch_size', 'model.patch_size', 'model.sample_size')}: "
                          f"model.reference_patch_size={ref} must be a multiple of model.patch_size={m.patch_size} "
                          f"that divides model.sample_size={m.sample_size}")
    if m.codec.type == "pixel" and m.in_channels != 3 * m.codec.factor**2:
        raise ConfigError(
            f"{where('model.in_channels', 'model.codec.factor')}: model.in_channels={m.in_channels} must be "
            f"3*factor^2={3 * m.codec.factor**2} for the pixel codec (model.codec.factor={m.codec.factor})"
        )


def validate_schedule(ns: NoiseSchedulerConfig, where: Union[str, Where],
                      prefix: str = "noise_scheduler_kwargs.") -> None:
    where = _where(where)
    _check_choice(where, prefix + "prediction_type", ns.prediction_type, ["epsilon", "v_prediction"])
    if ns.prediction_type == "epsilon" and ns.rescale_betas_zero_snr:
        keys = (prefix + "prediction_type", prefix + "rescale_betas_zero_snr")
        raise ConfigError(f"{where(*keys)}: {keys[0]}=epsilon cannot be sampled with {keys[1]}=true (at the last "
                          "step the signal's share is 0 and DDIM divides by it): use v_prediction, or set "
                          f"{keys[1]}=false")


def validate(cfg: Any, where: Union[str, Where]) -> None:
    """Checks that types alone cannot express. Existence of files is checked by the entry points.

    ``where`` names the config's source, or maps the keys a check reads to theirs (``load_config``).
    """
    where = _where(where)
    if hasattr(cfg, "model"):
        validate_model(cfg.model, where)
    ns = getattr(cfg, "noise_scheduler_kwargs", None)
    if ns is not None:
        validate_schedule(ns, where)
    if isinstance(cfg, TrainConfig):
        _check_choice(where, "stage", cfg.stage, [1, 2, 3])
        _check_choice(where, "mixed_precision_dtype", cfg.mixed_precision_dtype, ["bf16", "fp16"])
        d = cfg.train_data
        _check_range(where, "train_data.use_audio_ratio", d.use_audio_ratio, 0.0, 1.0)
        _check_range(where, "train_data.use_both_ratio", d.use_both_ratio, 0.0, 1.0)
        _check_range(where, "train_data.uncond_ratio", d.uncond_ratio, 0.0, 1.0)
        if d.use_audio_ratio + d.use_both_ratio + d.uncond_ratio > 1.0 + 1e-9:
            keys = ("train_data.use_audio_ratio", "train_data.use_both_ratio", "train_data.uncond_ratio")
            raise ConfigError(f"{where(*keys)}: {' + '.join(keys)} must not exceed 1")
        if d.video_length < 1 or d.frame_stride < 1:
            raise ConfigError(f"{where('train_data.video_length', 'train_data.frame_stride')}: "
                              "train_data.video_length and train_data.frame_stride must be >= 1")
        if cfg.trainable_modules is not None and not cfg.trainable_modules:
            raise ConfigError(f"{where('trainable_modules')}: trainable_modules is empty (leave it out for the "
                              "stage's default)")
        _check_at_least(where, "validation.num_inference_steps", cfg.validation.num_inference_steps, 1)
        _check_at_least(where, "validation.limit", cfg.validation.limit, 0, " (0 or null: the whole driver)")
    if isinstance(cfg, InferenceConfig):
        _check_choice(where, "scheduler", cfg.scheduler, ["ddim", "dpmsolver++"])
        check_face_backend(where, cfg)
        _check_choice(where, "dtype", cfg.dtype, ["fp32", "bf16", "fp16"])
        _check_range(where, "idle_motion_strength", cfg.idle_motion_strength, 0.0, 5.0)
        _check_at_least(where, "num_inference_steps", cfg.num_inference_steps, 1)
        _check_at_least(where, "limit", cfg.limit, 0, " (0 or null: the whole driver)")
        c = cfg.context
        if not 0 <= c.context_overlap < c.context_frames:
            raise ConfigError(
                f"{where('context.context_overlap', 'context.context_frames')}: context.context_overlap="
                f"{c.context_overlap} must be in [0, context.context_frames)"
            )
        _check_choice(where, "context.layout", c.layout, ["fewest", "shifted"])
        interval = cfg.guidance.interval
        if interval is not None and (len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0):
            raise ConfigError(f"{where}: guidance.interval={list(interval)} must be [lo, hi] with "
                              "0 <= lo <= hi <= 1 (noise levels as fractions of the training schedule)")
        n = len(cfg.source_image)
        if len(cfg.video_path) not in (0, n) or len(cfg.audio_path) not in (0, n):
            raise ConfigError(
                f"{where('source_image', 'video_path', 'audio_path')}: source_image ({n}), video_path "
                f"({len(cfg.video_path)}) and audio_path ({len(cfg.audio_path)}) must list the same number of "
                "entries (or none)"
            )


def missing_checkpoint(cfg: InferenceConfig) -> Optional[str]:
    """Why ``cfg.checkpoint`` cannot be loaded because it is not there (None: it is, or none is asked for).

    Checked by the entry points before their slow imports, so a wrong path fails at once. A relative path is
    relative to the working directory; the message names both, and what to do instead.
    """
    if not cfg.checkpoint or os.path.isdir(cfg.checkpoint):
        return None
    looked = os.path.abspath(cfg.checkpoint)
    if not os.path.isabs(cfg.checkpoint):
        looked += f", relative to the working directory {os.getcwd()}"
    return (f"checkpoint {cfg.checkpoint}: no such folder (looked for {looked}). Train it first (the tiny preset's "
            "is what bash scripts/quickstart.sh leaves in runs/tiny/stage3/model, run from the repository root), "
            "or add checkpoint= to run a randomly initialised model")
