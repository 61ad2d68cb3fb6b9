"""The trainer that train.py drives: one stage per run, on accelerate (one process or many).

Per optimizer step: `gradient_accumulation_steps` batches -> latents, control
latents, reference latent and Whisper windows (frozen encoders, no grad) ->
noise at uniform timesteps -> SigmaDiT -> MSE to the noise (or v), weighted up
on the eye and mouth patches by face_parts_loss_weight -> AdamW, LR schedule,
EMA. Checkpoints hold what an exact resume needs (checkpoint.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..data.dataset import ClipDataset, FrameCache, collate_clips, frame_cache_for
from ..data.shards import data_dir_shards
from ..diffusion.schedulers import schedule_mismatch, training_scheduler, training_target
from ..fileio import load_named, remove_stale_temporaries
from ..models import SigmaDiT, WhisperAudioEncoder, build_codec, build_sigma_dit, save_pretrained
from ..models.audio_encoder import gather_windows, num_features, window_indices
from ..models.loading import WEIGHTS_NAME, load_noise_schedule
from . import checkpoint as ckpt
from .stages import parameter_groups, select_trainable, uses_audio, uses_temporal

logger = logging.getLogger(__name__)

MODE_NAMES = {(1, 0): "visual", (0, 1): "audio", (1, 1): "both", (0, 0): "none"}


def check_paths(cfg: TrainConfig, where: str) -> None:
    """Fail before any work on folders and checkpoints that do not exist."""
    if not cfg.train_data.data_dirs:
        raise ConfigError(f"{where}: train_data.data_dirs is empty")
    for d in cfg.train_data.data_dirs:
        if not os.path.isdir(d):
            raise ConfigError(f"{where}: train_data.data_dirs entry {d!r} is not a folder")
        if not data_dir_shards(d):
            raise ConfigError(f"{where}: train_data.data_dirs entry {d!r} holds no .tar shards (nor does {d}/shards)")
    if cfg.init_checkpoint and not os.path.isfile(os.path.join(cfg.init_checkpoint, WEIGHTS_NAME)):
        raise ConfigError(f"{where}: init_checkpoint {cfg.init_checkpoint!r} is not a SigmaDiT folder "
                          f"(no {WEIGHTS_NAME}); run the previous stage first")
    if cfg.resume and cfg.resume != "latest" and not os.path.isfile(os.path.join(cfg.resume, "state.pt")):
        raise ConfigError(f"{where}: resume={cfg.resume!r} is not a training checkpoint folder")
    if cfg.stage == 1 and (cfg.train_data.use_audio_ratio or cfg.train_data.use_both_ratio):
        raise ConfigError(f"{where}: stage 1 feeds no audio, so train_data.use_audio_ratio and "
                          "train_data.use_both_ratio must be 0")


class Trainer:
    def __init__(self, cfg: TrainConfig, where: str = "config", frame_cache: Optional[FrameCache] = None):
        """frame_cache: the decoded clips of an earlier stage in this process (train.py's several --config), reused
        when its budget is this stage's (dataset.frame_cache_for)."""
        check_paths(cfg, where)
        self.cfg = cfg
        self.frame_cache = frame_cache_for(cfg.train_data, frame_cache)
        on_gpu = torch.cuda.is_available()
        precision = cfg.mixed_precision_dtype if cfg.mixed_precision_training and on_gpu else "no"
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not on_gpu, log_with="tensorboard",
                                       project_dir=cfg.output_dir, step_scheduler_with_optimizer=False)
        self.device = self.accelerator.device
        set_seed(cfg.seed)  # the same initialisation on every process

        model = self._build_model(where)
        self.trainable_names = select_trainable(model, cfg.trainable_modules, cfg.stage, where)
        params = [p for p in model.parameters() if p.requires_grad]
        frozen_dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else None
        self.autocast_dtype = frozen_dtype
        self.codec = build_codec(cfg.model.codec).to(self.device, frozen_dtype)
        self.audio_encoder = (WhisperAudioEncoder(cfg.model.audio_encoder).to(self.device, frozen_dtype)
                              if uses_audio(cfg.stage) else None)
        self.noise_scheduler = training_scheduler(cfg.noise_scheduler_kwargs)
        groups = parameter_groups(model, cfg.learning_rate, dict(cfg.learning_rate_multipliers), where)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon, fused=True)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_train_steps)
        self.ema = EMAModel(params, decay=cfg.ema_decay, foreach=True) if cfg.use_ema else None
        self.step = self.batches_seen = self.nan_streak = self.nan_total = 0
        self.cut_short: Optional[str] = None  # why the stage stopped before max_train_steps, if it did
        self.audio_cache: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()  # clip samples' digest -> features

        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise ConfigError(f"{where}: FSDP is not supported by this trainer (its EMA, checkpoints and validation "
                              "assume whole parameters on every process): use DDP, or DeepSpeed ZeRO-2 "
                              "(configs/accelerate/deepspeed_zero2.yaml) to shard the optimizer state")
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed:
            self._configure_deepspeed(where)
        resumed = cfg.resume and ckpt.resolve_resume(cfg.resume, cfg.output_dir, self.accelerator.process_index)
        self.resumed_from = resumed[0] if resumed else None
        if self.resumed_from and self.deepspeed:
            raise ConfigError(f"{where}: resume under {self.accelerator.distributed_type} is not supported (the "
                              "optimizer state is sharded across processes): train under DDP to resume, or start a new "
                              "run from an exported model (output_dir/model) with init_checkpoint")
        if resumed:
            self._load_checkpoint(model, *resumed)
        if cfg.compile:
            model.to(self.device).compile_model()  # on its device: CUDA graphs are decided there
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if self.ema is not None:
            self.ema.to(self.device)
        self.params = params

    # ------------------------------------------------------------------ setup

    def _build_model(self, where: str) -> SigmaDiT:
        cfg = self.cfg
        if not cfg.init_checkpoint:
            return build_sigma_dit(cfg.model)  # from PixArt when model.transformer_path is set, else random
        model = build_sigma_dit(cfg.model, load_pretrained=False)
        trained = load_noise_schedule(cfg.init_checkpoint)
        changed = schedule_mismatch(trained, cfg.noise_scheduler_kwargs) if trained is not None else []
        if changed:
            logger.warning("%s: init_checkpoint %s was trained with another noise schedule (%s): this stage "
                           "retrains it to its own", where, cfg.init_checkpoint, "; ".join(changed))
        weights = load_named(os.path.join(cfg.init_checkpoint, WEIGHTS_NAME), load_file)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise ConfigError(f"{where}: init_checkpoint {cfg.init_checkpoint!r} does not fit this config's "
                              f"model section: {str(e).splitlines()[0]} ...") from None
        return model

    def _configure_deepspeed(self, where: str) -> None:
        """Batch size and clipping from this config; DeepSpeed's engine then runs backward, clipping and the step."""
        cfg = self.cfg
        if cfg.gradient_accumulation_steps != 1:
            raise ConfigError(f"{where}: gradient_accumulation_steps {cfg.gradient_accumulation_steps} under DeepSpeed: "
                              "use 1 (scale the batch with train_batch_size or more GPUs), or train with DDP")
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        ds.update(train_micro_batch_size_per_gpu=cfg.train_batch_size, gradient_accumulation_steps=1,
                  gradient_clipping=cfg.max_grad_norm, zero_allow_untested_optimizer=True)  # torch's AdamW
        if ds.get("bf16", {}).get("enabled"):  # skip a step on a non-finite gradient, as fp16's loss scaler does
            ds["bf16"]["check_grad_overflow"] = True

    @property
    def unwrapped(self) -> SigmaDiT:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ one step

    @torch.no_grad()
    def prepare_inputs(self, batch: Dict) -> Dict[str, torch.Tensor]:
        """A data batch -> the model's inputs: latents, control latents, reference latent, audio windows."""
        dev = self.device
        use_visual = batch["use_visual"].to(dev)
        use_audio = batch["use_audio"].to(dev)
        inputs = {
            "latents": self.codec.encode_video(batch["pixel_values"].to(dev, self.codec_dtype)).float(),
            "control": self.codec.encode_control(batch["control"].to(dev, self.codec_dtype)).float(),
            "reference": self.codec.encode(batch["reference"].to(dev, self.codec_dtype)).float(),
            "visual_amplitude": use_visual, "audio_amplitude": use_audio, "noise_seed": batch["noise_seed"],
        }
        if self.cfg.face_parts_loss_weight:
            inputs["loss_weight"] = self.loss_weight(batch["face_parts"].to(dev, torch.float32),
                                                     inputs["latents"].shape[-2:])
        if self.audio_encoder is not None:
            lengths = batch["audio_lengths"].tolist()
            waves = [a[:n].numpy() for a, n in zip(batch["audio"], lengths)]
            features = self.audio_features(waves)  # (B, n, L+1, d)
            valid = torch.tensor([num_features(n) for n in lengths], device=dev)
            idx = window_indices(batch["frame_indices"].to(dev), batch["fps"].to(dev), valid,
                                 self.cfg.model.audio_window)
            inputs["audio"] = gather_windows(features, idx)  # (B, F, W, L+1, d)
        return inputs

    def audio_features(self, waves: List[np.ndarray]) -> torch.Tensor:
        """B waveforms -> (B, n, L+1, d) Whisper features, zero past each clip's own n. Each clip's features are
        kept (up to train_data.audio_cache_mb), keyed by its samples: the encoder is frozen, so they never change,
        and encoding pads every clip to Whisper's 30 s, which costs more than a tiny model's training step."""
        keys = [hashlib.sha1(w.tobytes()).digest() for w in waves]
        missing = {k: w for k, w in zip(keys, waves) if k not in self.audio_cache}
        if missing:
            encoded = self.audio_encoder(list(missing.values())).float()
            for (key, wave), feats in zip(missing.items(), encoded):
                self.audio_cache[key] = feats[:num_features(len(wave))].clone()
        features = torch.nn.utils.rnn.pad_sequence([self.audio_cache[k] for k in keys], batch_first=True)
        budget = self.cfg.train_data.audio_cache_mb * 2**20
        while self.audio_cache and sum(f.nbytes for f in self.audio_cache.values()) > budget:
            self.audio_cache.popitem(last=False)  # the oldest first
        return features

    def loss_weight(self, face_parts: torch.Tensor, latent_hw) -> torch.Tensor:
        """(B, F, S, S) eye and mouth masks -> (B, 1, F, h, w) per-latent loss weights, 1 + w * (share of the latent
        pixel's area on a face part)."""
        b, f = face_parts.shape[:2]
        share = F.interpolate(face_parts.flatten(0, 1)[:, None], size=tuple(latent_hw), mode="area")
        return 1 + self.cfg.face_parts_loss_weight * share.view(b, f, 1, *latent_hw).transpose(1, 2)

    @property
    def codec_dtype(self) -> torch.dtype:
        return next(iter(self.codec.parameters()), torch.empty(0)).dtype

    def draw_noise(self, latents: torch.Tensor, seeds: torch.Tensor):
        """Noise and timesteps, each sample's from its own seed (set by the dataset): the same sample gets the
        same draw whatever the batch, rank or resume it lands in."""
        noise, timesteps = [], []
        for seed in seeds.tolist():
            g = torch.Generator(self.device).manual_seed(seed)
            n = torch.randn(latents.shape[1:], generator=g, device=self.device)
            if self.cfg.noise_offset:
                n = n + self.cfg.noise_offset * torch.randn((latents.shape[1], 1, 1, 1), generator=g, device=self.device)
            noise.append(n)
            timesteps.append(torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=g,
                                           device=self.device))
        return torch.stack(noise), torch.cat(timesteps)

    def compute_loss(self, inputs: Dict[str, torch.Tensor]):
        """-> (mean loss, per-sample losses (B,))."""
        latents = inputs["latents"]
        noise, timesteps = self.draw_noise(latents, inputs["noise_seed"])
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = training_target(self.noise_scheduler, latents, noise, timesteps)
        control, audio, reference = inputs["control"], inputs.get("audio"), inputs["reference"]
        if self.deepspeed and self.autocast_dtype is not None:  # its engine holds bf16 weights, runs with autocast off
            noisy, control, reference = (t.to(self.autocast_dtype) for t in (noisy, control, reference))
            audio = audio.to(self.autocast_dtype) if audio is not None else None
        with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            prediction = self.model(noisy, timesteps, control=control, audio=audio,
                                    reference=reference, audio_amplitude=inputs["audio_amplitude"],
                                    visual_amplitude=inputs["visual_amplitude"], temporal=uses_temporal(self.cfg.stage))
        squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
        weight = inputs.get("loss_weight")
        if weight is None:
            per_sample = squared.mean(dim=(1, 2, 3, 4))
        else:  # a weighted mean: the loss keeps its scale
            per_sample = (squared * weight).mean(dim=(1, 2, 3, 4)) / weight.mean(dim=(1, 2, 3, 4))
        return per_sample.mean(), per_sample

    def _all_finite(self, value: torch.Tensor) -> bool:
        flags = self.accelerator.gather(torch.isfinite(value.detach()).float().reshape(1))
        return bool(flags.min() > 0)

    def _optimizer_step(self):
        """Clip and step after a finite loss's backward -> (whether the step was taken, the gradient norm).

        The framework decides, and says so in ``optimizer.step_was_skipped``: under fp16, accelerate's grad
        scaler steps on every call (skipping the update, and lowering its scale, on an overflow); under DeepSpeed
        the engine already clipped and stepped inside ``backward``, skipping on a non-finite gradient (its
        overflow check, on under bf16 too: ``_configure_deepspeed``). Without either, a non-finite norm skips
        the step here. A non-finite norm that DeepSpeed reports applied is fatal: the weights hold it now.
        """
        norm = self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        grad_norm = float("nan") if norm is None else float(norm)
        if self.deepspeed:
            skipped = self.optimizer.step_was_skipped
            if not skipped and norm is not None and not math.isfinite(grad_norm):
                raise RuntimeError(f"step {self.step + 1}: DeepSpeed applied a non-finite gradient (norm {grad_norm}) "
                                   "without skipping the step; the weights are no longer finite")
            return not skipped, grad_norm
        if math.isfinite(grad_norm) or self.accelerator.scaler is not None:
            self.optimizer.step()
            return not self.optimizer.step_was_skipped and math.isfinite(grad_norm), grad_norm
        return False, grad_norm

    def train_step(self, batches: List[Dict]) -> Dict[str, float]:
        """One optimizer step over `batches` (gradient accumulation). Skips it on a non-finite loss or gradient."""
        cfg, acc = self.cfg, self.accelerator
        logs: Dict[str, List[float]] = {"loss": []}
        finite = True
        for i, batch in enumerate(batches):
            inputs = self.prepare_inputs(batch)
            sync = i == len(batches) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                loss, per_sample = self.compute_loss(inputs)
                finite = finite and self._all_finite(loss)
                if not finite:
                    break
                acc.backward(loss / len(batches))
            logs["loss"].append(loss.item())
            modes = zip(inputs["visual_amplitude"].tolist(), inputs["audio_amplitude"].tolist())
            for (v, a), l in zip(modes, per_sample.tolist()):
                logs.setdefault(f"loss/{MODE_NAMES[(round(v), round(a))]}", []).append(l)
        loss_finite, grad_norm = finite, float("nan")
        if loss_finite:
            finite, grad_norm = self._optimizer_step()
        scaler = acc.scaler
        if finite:
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.params)
            self.nan_streak = 0
        elif loss_finite and scaler is not None and scaler.get_scale() >= 1:  # fp16's scaler still finding its scale
            self.nan_total += 1
            logger.info("step %d: fp16 gradient overflow, step skipped; loss scale lowered to %g", self.step + 1,
                        scaler.get_scale())
        else:
            self.nan_streak += 1
            self.nan_total += 1
            logger.warning("step %d: non-finite loss or gradient, step skipped (%d in a row, %d in all)",
                           self.step + 1, self.nan_streak, self.nan_total)
            if self.nan_streak >= cfg.max_nan_steps:
                raise RuntimeError(f"{self.nan_streak} non-finite losses in a row, the last at step {self.step + 1}: "
                                   "stopping (lower the learning rate, or check the data)")
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        out = {k: sum(v) / len(v) for k, v in logs.items() if v}
        out.update(grad_norm=grad_norm, lr=self.lr_scheduler.get_last_lr()[0], nan_skipped=float(self.nan_total))
        return out

    # ------------------------------------------------------------------ the loop

    def train(self) -> str:
        """Run to max_train_steps; return the folder of the exported model (output_dir/model)."""
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            os.makedirs(cfg.output_dir, exist_ok=True)
            for folder in (cfg.output_dir, os.path.join(cfg.output_dir, "checkpoints")):
                remove_stale_temporaries(folder)  # what a killed run was writing: gigabytes of checkpoint at xl
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
                f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        acc.init_trackers("tensorboard")
        if acc.is_main_process:
            logger.info("stage %d on %d process(es) (%s, mixed precision %s): %d trainable parameters", cfg.stage,
                        acc.num_processes, acc.distributed_type, acc.mixed_precision,
                        sum(p.numel() for p in self.params))
        dataset = ClipDataset(cfg.train_data, seed=cfg.seed, rank=acc.process_index, world_size=acc.num_processes,
                              batch_size=cfg.train_batch_size, skip_batches=self.batches_seen,
                              with_audio=self.audio_encoder is not None, frame_cache=self.frame_cache)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.train_batch_size, num_workers=cfg.train_data.num_workers,
            collate_fn=collate_clips, pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.train_data.num_workers > 0,
        )
        batches = iter(loader)
        self.model.train()
        bar = tqdm(total=cfg.max_train_steps, initial=self.step, desc=f"stage {cfg.stage}",
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        window: Dict[str, List[float]] = {}
        tick = started = time.perf_counter()
        while self.step < cfg.max_train_steps and not self._out_of_time(started):
            group = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
            self.batches_seen += len(group)
            logs = self.train_step(group)
            for k, v in logs.items():
                window.setdefault(k, []).append(v)
            samples = cfg.train_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_train_steps:
                elapsed = time.perf_counter() - tick
                means = {k: sum(v) / len(v) for k, v in window.items()}
                means["samples_per_s"] = samples * len(window["lr"]) / elapsed
                if self.device.type == "cuda":
                    means["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                acc.log(means, step=self.step)
                bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", sps=f"{means['samples_per_s']:.2f}")
                window, tick = {}, time.perf_counter()
            if self.step % cfg.checkpointing_steps == 0 or self.step == cfg.max_train_steps \
                    or self._out_of_time(started):
                self.save_checkpoint()
            if cfg.validation.source_image and (self.step % cfg.validation_steps == 0):
                self.validate()
        bar.close()
        if self.step < cfg.max_train_steps:
            self.cut_short = (f"STAGE {cfg.stage} CUT SHORT by max_train_minutes={cfg.max_train_minutes}: "
                              f"{self.step} of {cfg.max_train_steps} steps; the model is not the recipe's "
                              "(resume=latest goes on)")
            if acc.is_main_process:
                logger.warning("!" * 70 + "\n%s\n" + "!" * 70, self.cut_short)
        exported = self.export(os.path.join(cfg.output_dir, "model"))
        acc.end_training()
        return exported

    def _out_of_time(self, started: float) -> bool:
        """max_train_minutes reached, as the main process sees it (every process stops at the same step)."""
        if self.cfg.max_train_minutes is None:
            return False
        late = torch.tensor(float(time.perf_counter() - started > 60 * self.cfg.max_train_minutes), device=self.device)
        return bool(self.accelerator.reduce(late, "max") > 0)

    # ------------------------------------------------------------------ state

    def _named_trainable(self, params) -> Dict[str, torch.Tensor]:
        return dict(zip(self.trainable_names, params))

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        rank_state = {"rng": ckpt.rng_state()}
        folder = ckpt.checkpoint_dir(self.cfg.output_dir, self.step)
        rank_states = gather_object([rank_state])  # each process's RNGs go beside the main checkpoint
        if acc.is_main_process:
            ema = None
            state = {"step": self.step, "batches_seen": self.batches_seen, "nan_total": self.nan_total,
                     "nan_streak": self.nan_streak, "lr_scheduler": self.lr_scheduler.state_dict()}
            if self.ema is not None:
                ema = self._named_trainable(self.ema.shadow_params)
                state["ema"] = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
            optimizer = None if self.deepspeed else self.optimizer.state_dict()  # a shard per process: not resumable
            ckpt.save_checkpoint(folder, self._named_trainable(self.params), ema, optimizer,
                                 state, dict(enumerate(rank_states)))
            ckpt.prune_checkpoints(self.cfg.output_dir, self.cfg.checkpoints_total_limit)
        acc.wait_for_everyone()

    def _load_checkpoint(self, model: SigmaDiT, folder: str, loaded: Dict) -> None:
        missing = set(self.trainable_names) - set(loaded["trainable"])
        if missing:
            raise ConfigError(f"resume: checkpoint {folder} lacks trainable parameters {sorted(missing)[:4]}: "
                              "was it written with other trainable_modules?")
        if loaded["optimizer"] is None:
            raise ConfigError(f"resume: checkpoint {folder} holds no optimizer state (written under DeepSpeed): "
                              "start a new run from an exported model (output_dir/model) with init_checkpoint")
        model.load_state_dict(loaded["trainable"], strict=False)
        self.optimizer.load_state_dict(loaded["optimizer"])
        state = loaded["state"]
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and loaded["ema"] is not None:
            self.ema.load_state_dict({**state["ema"], "shadow_params": [loaded["ema"][n] for n in self.trainable_names]})
        self.step, self.batches_seen = state["step"], state["batches_seen"]
        self.nan_total, self.nan_streak = state["nan_total"], state["nan_streak"]
        if loaded["rank_state"] is not None:
            ckpt.set_rng_state(loaded["rank_state"]["rng"])
        logger.info("resumed from %s at step %d", folder, self.step)

    def export(self, folder: str) -> str:
        """Save the full model (EMA weights where kept) and its noise schedule with save_pretrained: the next stage's
        init_checkpoint, and what inference samples with."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = self.unwrapped.state_dict()
            if self.ema is not None:
                state.update(self._named_trainable(self.ema.shadow_params))
            save_pretrained(self.unwrapped, folder, state_dict=state, noise_schedule=self.cfg.noise_scheduler_kwargs)
        acc.wait_for_everyone()
        return folder

    def validate(self) -> None:
        from .validation import run_validation

        if self.accelerator.is_main_process:
            run_validation(self)
        self.accelerator.wait_for_everyone()
