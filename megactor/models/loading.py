"""Building, loading and saving SigmaDiT.

- `build_sigma_dit(cfg)`: a model from a ModelConfig; if `cfg.transformer_path` is
  set, the denoiser and the reference net both start from that PixArt-α model.
- `load_pixart_weights(model, path)`: a diffusers `PixArtTransformer2DModel`
  (local folder or hub id) mapped into SigmaDiT's layout.
- `save_pretrained` / `from_pretrained`: a folder with `config.json` (the
  ModelConfig) and `model.safetensors`, and `noise_scheduler.json` (the noise
  schedule and prediction type it was trained with) when the trainer wrote it;
  `load_noise_schedule` reads that back.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ..config import ModelConfig, NoiseSchedulerConfig, config_from_dict
from ..fileio import atomic_folder, load_named
from .sigma_dit import SigmaDiT

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SCHEDULE_NAME = "noise_scheduler.json"

# diffusers PixArt block key -> SigmaBlock key (q/k/v are fused separately, below)
_BLOCK_KEYS = {
    "scale_shift_table": "scale_shift_table",
    "attn1.to_out.0": "attn.proj",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_out.0": "cross_attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}


def _check_pixart_config(pc, cfg: ModelConfig, path: str) -> None:
    ours = {"num_layers": cfg.depth, "inner dim": cfg.width, "num_attention_heads": cfg.num_heads,
            "patch_size": cfg.patch_size, "reference_patch_size": cfg.reference_patch_size or cfg.patch_size,
            "in_channels": cfg.in_channels, "caption_channels": cfg.caption_channels}
    theirs = {"num_layers": pc.num_layers, "inner dim": pc.num_attention_heads * pc.attention_head_dim,
              "num_attention_heads": pc.num_attention_heads, "patch_size": pc.patch_size,
              "reference_patch_size": pc.patch_size,
              "in_channels": pc.in_channels, "caption_channels": pc.caption_channels}
    wrong = [f"{k}: PixArt {theirs[k]} vs model {ours[k]}" for k in ours if ours[k] != theirs[k]]
    if wrong:
        raise ValueError(f"{path}: the PixArt transformer does not fit model config ({'; '.join(wrong)})")
    if pc.sample_size == 128 or pc.use_additional_conditions:
        raise ValueError(f"{path}: PixArt models with resolution/aspect-ratio conditions (the 1024-px ones) "
                         "are not supported; use a 256/512-px PixArt-α")


def pixart_to_sigma(pixart: Dict[str, torch.Tensor], cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """Map a PixArtTransformer2DModel state dict onto SigmaDiT keys, for the denoiser and the reference net.

    The control half of the denoiser's patch embedding is zero; PixArt's learned-sigma
    output channels are dropped.
    """
    c, p = cfg.in_channels, cfg.patch_size
    out: Dict[str, torch.Tensor] = {}
    for prefix, depth in (("", cfg.depth), ("reference_net.", cfg.depth - 1)):
        for key in ("adaln_single", "caption_projection"):
            out.update({f"{prefix}{k}": v for k, v in pixart.items() if k.startswith(key + ".")})
        out[f"{prefix}patch_embed.proj.bias"] = pixart["pos_embed.proj.bias"]
        for i in range(depth):
            src, dst = f"transformer_blocks.{i}.", f"{prefix}blocks.{i}."
            for a, b in _BLOCK_KEYS.items():
                for suffix in ((".weight", ".bias") if a != "scale_shift_table" else ("",)):
                    out[dst + b + suffix] = pixart[src + a + suffix]
            for suffix in (".weight", ".bias"):
                out[dst + "attn.qkv" + suffix] = torch.cat([pixart[f"{src}attn1.to_{n}{suffix}"] for n in "qkv"])
                out[dst + "cross_attn.kv" + suffix] = torch.cat([pixart[f"{src}attn2.to_{n}{suffix}"] for n in "kv"])
    last = f"transformer_blocks.{cfg.depth - 1}."
    out["reference_net.last_kv.scale_shift_table"] = pixart[last + "scale_shift_table"][:2]
    for suffix in (".weight", ".bias"):
        out["reference_net.last_kv.kv" + suffix] = torch.cat([pixart[f"{last}attn1.to_{n}{suffix}"] for n in "kv"])
    w = pixart["pos_embed.proj.weight"]  # (D, C, p, p)
    out["reference_net.patch_embed.proj.weight"] = w
    out["patch_embed.proj.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)  # (D, 2C, p, p)

    out["final_layer.scale_shift_table"] = pixart["scale_shift_table"]
    pixart_out = pixart["proj_out.weight"].shape[0] // (p * p)  # 2C with learned sigma
    out["final_layer.proj.weight"] = pixart["proj_out.weight"].view(p, p, pixart_out, -1)[:, :, :c].reshape(p * p * c, -1)
    out["final_layer.proj.bias"] = pixart["proj_out.bias"].view(p, p, pixart_out)[:, :, :c].reshape(-1)
    return out


def load_pixart_weights(model: SigmaDiT, path: str, subfolder: Optional[str] = None) -> None:
    """Initialise the backbone and the reference net from a PixArt-α transformer; new branches stay at zero."""
    from diffusers import PixArtTransformer2DModel

    pixart = PixArtTransformer2DModel.from_pretrained(path, subfolder=subfolder or "")
    _check_pixart_config(pixart.config, model.config, path)
    mapped = pixart_to_sigma(pixart.state_dict(), model.config)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    model.zero_new_branches()
    # What PixArt has no weights for: the learned context, the audio projection and the new branches.
    new = ("context", "audio_proj.", "audio_attn.", "audio_norm.", "temporal.")
    leftover = [k for k in missing if not any(k.startswith(n) or f".{n}" in k for n in new)]
    if leftover:
        raise RuntimeError(f"{path}: PixArt weights left SigmaDiT parameters unset: {leftover[:8]}")


def build_sigma_dit(cfg: ModelConfig, load_pretrained: bool = True) -> SigmaDiT:
    model = SigmaDiT(cfg)
    if load_pretrained and cfg.transformer_path:
        load_pixart_weights(model, cfg.transformer_path, cfg.transformer_subfolder)
    return model


def save_pretrained(model: SigmaDiT, folder: str, state_dict: Optional[Dict[str, torch.Tensor]] = None,
                    noise_schedule: Optional[NoiseSchedulerConfig] = None) -> None:
    """Write config.json + model.safetensors (+ noise_scheduler.json, the schedule the weights were trained
    with, when given) into `folder`, atomically (a half-written folder never appears)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    with atomic_folder(folder) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME))
        _write_json(os.path.join(tmp, CONFIG_NAME), model.config)
        if noise_schedule is not None:
            _write_json(os.path.join(tmp, SCHEDULE_NAME), noise_schedule)


def _write_json(path: str, cfg) -> None:
    with open(path, "w") as f:
        json.dump(OmegaConf.to_container(OmegaConf.structured(cfg)), f, indent=2)


def load_model_config(folder: str) -> ModelConfig:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: not a SigmaDiT checkpoint folder (no {CONFIG_NAME})")
    with open(path) as f:
        return config_from_dict(ModelConfig, json.load(f), where=path)


def load_noise_schedule(folder: str) -> Optional[NoiseSchedulerConfig]:
    """The noise schedule a checkpoint folder was trained with; None if it records none."""
    path = os.path.join(folder, SCHEDULE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return config_from_dict(NoiseSchedulerConfig, json.load(f), where=path)


def from_pretrained(folder: str, map_location: str | torch.device = "cpu", **overrides) -> SigmaDiT:
    """Rebuild a SigmaDiT saved with `save_pretrained`. `overrides` replace ModelConfig fields
    that do not change the weights' shapes (e.g. gradient_checkpointing)."""
    cfg = load_model_config(folder)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = SigmaDiT(cfg)
    weights = load_named(os.path.join(folder, WEIGHTS_NAME), lambda p: load_file(p, device=str(map_location)))
    model.load_state_dict(weights)
    return model.to(map_location)
