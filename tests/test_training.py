"""The trainer: three chained stages, exact resume, what trains and what does not, failures."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megactor.config import ConfigError, TrainConfig, load_config
from megactor.data.dataset import ClipDataset, collate_clips
from megactor.models import load_noise_schedule
from megactor.training.trainer import Trainer, check_paths

from conftest import curated_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train" / "tiny"
FAST = ["train_data.num_workers=0", "log_every=5", "lr_warmup_steps=2", "init_checkpoint=null"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Synthetic talking heads through the real curation pipeline."""

    folder = curated_synthetic_shards(tmp_path_factory.mktemp("synthetic"), clips=6, seed=1)
    assert any(Path(folder).glob("*.tar"))
    return folder


def config(stage: int, shards: str, out: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, str(CONFIGS / f"train_stage{stage}.yaml"),
                       [f"train_data.data_dirs=[{shards}]", f"output_dir={out}", *FAST, *overrides])


def test_three_stages_chain_each_loading_the_last(shards, tmp_path):
    previous = None
    for stage, steps, batch, frames in ((1, 24, 4, 1), (2, 24, 2, 4), (3, 24, 1, 8)):
        overrides = [f"max_train_steps={steps}", "checkpointing_steps=1000", f"train_batch_size={batch}",
                     f"train_data.video_length={frames}"]
        if previous:
            overrides.append(f"init_checkpoint={previous}")
        trainer = Trainer(config(stage, shards, tmp_path / f"stage{stage}", *overrides))
        if previous:  # the frozen weights are the previous stage's
            before = load_file(os.path.join(previous, "model.safetensors"))
            frozen = next(n for n, p in trainer.unwrapped.named_parameters() if not p.requires_grad)
            assert torch.equal(trainer.unwrapped.state_dict()[frozen], before[frozen])
        previous = trainer.train()
        assert os.path.isfile(os.path.join(previous, "model.safetensors"))
        assert load_noise_schedule(previous) == trainer.cfg.noise_scheduler_kwargs  # what inference samples with
        assert trainer.step == steps and trainer.nan_total == 0
    assert (tmp_path / "stage3" / "tensorboard").is_dir()


def _stage_yaml(tmp_path: Path, stage: int, shards: str, **keys) -> str:
    lines = [f"base: {CONFIGS / f'train_stage{stage}.yaml'}", f"output_dir: {tmp_path / f'stage{stage}'}",
             f"train_data: {{data_dirs: [{shards}], num_workers: 0}}", "max_train_steps: 3", "train_batch_size: 2",
             "lr_warmup_steps: 0", *(f"{k}: {v}" for k, v in keys.items())]
    path = tmp_path / f"stage{stage}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_train_py_runs_several_stages_in_one_process_sharing_the_decoded_clips(shards, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import train

    caches = []
    built = Trainer.__init__

    def recording(self, *args, **kwargs):
        built(self, *args, **kwargs)
        caches.append(self.frame_cache)

    monkeypatch.setattr(Trainer, "__init__", recording)
    first = _stage_yaml(tmp_path, 1, shards)
    second = _stage_yaml(tmp_path, 2, shards, init_checkpoint=tmp_path / "stage1" / "model")
    typo = _stage_yaml(tmp_path, 3, shards, max_train_stepz=3)
    assert train.main(["--config", first, second, typo]) == 2  # every config is read before any stage trains
    assert not (tmp_path / "stage1").exists() and not caches

    assert train.main(["--config", first, second, "checkpointing_steps=1000"]) == 0
    stage1 = load_file(tmp_path / "stage1" / "model" / "model.safetensors")
    stage2 = load_file(tmp_path / "stage2" / "model" / "model.safetensors")
    frozen = "reference_net.blocks.0.attn.qkv.weight"  # stage 2 starts from stage 1's export ...
    assert torch.equal(stage1[frozen], stage2[frozen])
    assert not torch.equal(stage1["blocks.0.attn.qkv.weight"], stage2["blocks.0.attn.qkv.weight"])  # ... and trains
    assert len(caches) == 2 and caches[0] is caches[1] and caches[0].entries  # stage 2 read stage 1's decoded clips


def test_steps_change_trainable_parameters_only(shards, tmp_path):
    trainer = Trainer(config(2, shards, tmp_path, "max_train_steps=4", "train_batch_size=2", "lr_warmup_steps=0"))
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    dataset = ClipDataset(trainer.cfg.train_data, seed=0, batch_size=2)
    samples = iter(dataset)
    for _ in range(4):  # zero-initialised output layers pass gradient upstream one layer per step
        trainer.train_step([collate_clips([next(samples), next(samples)])])
    after = dict(trainer.unwrapped.named_parameters())
    trainable = set(trainer.trainable_names)
    assert any("audio_attn" in n for n in trainable) and not any(".temporal." in n for n in trainable)
    for n, p in after.items():
        if n in trainable:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


def test_face_parts_weigh_more_in_the_loss(shards, tmp_path):
    trainer = Trainer(config(1, shards, tmp_path, "face_parts_loss_weight=4"))
    parts = torch.zeros(2, 1, 64, 64)  # (B, F, S, S)
    parts[0, :, 20:28, 24:40] = 1  # 4 x 8 latent pixels at factor 2
    weight = trainer.loss_weight(parts, (32, 32))
    assert weight.shape == (2, 1, 1, 32, 32)
    assert (weight[0, 0, 0, 10:14, 12:20] == 5).all() and float(weight[0].sum()) == 32 * 32 + 4 * 32
    assert (weight[1] == 1).all()
    inputs = trainer.prepare_inputs(collate_clips([next(iter(ClipDataset(trainer.cfg.train_data, seed=0)))]))
    assert inputs["loss_weight"].shape == (1, 1, 1, 32, 32) and inputs["loss_weight"].max() == 5


def _train(cfg_args, cwd, kill_after_checkpoint=None, delay=0.0):
    """Run train.py to its end, or kill -9 it `delay` seconds after the checkpoint folder appears."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(CONFIGS / "train_stage2.yaml"), *cfg_args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after_checkpoint is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        return
    while not os.path.isdir(kill_after_checkpoint):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_resume_after_kills_at_varied_moments_under_load_is_bit_exact(shards, tmp_path):
    """Killed twice (as a checkpoint appears, and mid-step later on) while a CPU hog competes for the cores.

    No wall-clock budget: max_train_minutes (1 minute in the tiny stage-2 config) stops a run at a step that
    depends on the machine's speed, which is what made this comparison fail on a loaded machine.
    """
    common = [f"train_data.data_dirs=[{shards}]", *FAST, "max_train_steps=8", "checkpointing_steps=2",
              "checkpoints_total_limit=2", "max_train_minutes=null", "train_batch_size=2",
              "train_data.video_length=4", "use_ema=true", "ema_decay=0.9"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _train([*common, f"output_dir={straight}"], tmp_path)
        _train([*common, f"output_dir={interrupted}"], tmp_path,
               kill_after_checkpoint=interrupted / "checkpoints" / "step-0000002")
        _train([*common, f"output_dir={interrupted}", "resume=latest"], tmp_path,
               kill_after_checkpoint=interrupted / "checkpoints" / "step-0000004", delay=0.5)
        assert not (interrupted / "model").exists()  # it really died before the end
        _train([*common, f"output_dir={interrupted}", "resume=latest"], tmp_path)
    finally:
        hog.kill()
        hog.wait()
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = load_file(straight / "checkpoints" / "step-0000008" / "trainable.safetensors")
    assert all(torch.equal(v, load_file(interrupted / "checkpoints" / "step-0000008" / "trainable.safetensors")[k])
               for k, v in last.items())


def test_non_finite_losses_are_skipped_then_stop_the_run(shards, tmp_path, monkeypatch):
    trainer = Trainer(config(1, shards, tmp_path, "max_train_steps=10", "max_nan_steps=3", "train_batch_size=2"))
    real = trainer.compute_loss
    calls = {"n": 0}

    def flaky(inputs):
        calls["n"] += 1
        loss, per_sample = real(inputs)
        if calls["n"] == 2 or calls["n"] >= 4:
            return loss * float("nan"), per_sample
        return loss, per_sample

    monkeypatch.setattr(trainer, "compute_loss", flaky)
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    with pytest.raises(RuntimeError, match="non-finite losses in a row, the last at step 6"):
        trainer.train()
    assert trainer.nan_total == 4  # steps 2, 4, 5, 6
    assert any(not torch.equal(p, before[n]) for n, p in trainer.unwrapped.named_parameters() if p.requires_grad)


def test_the_curation_output_folder_is_a_data_folder(shards, tmp_path):
    """curate.py's OUT (shards in OUT/shards) is accepted as the dataset accepts it, and OUT/shards too."""
    for folder in (os.path.dirname(shards), shards):
        cfg = config(1, folder, tmp_path)
        check_paths(cfg, "test")
        assert len(ClipDataset(cfg.train_data, seed=0)) > 0
    with pytest.raises(ConfigError, match="holds no .tar shards"):
        check_paths(config(1, str(tmp_path), tmp_path), "test")


def test_bad_configs_fail_before_training(shards, tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        Trainer(config(1, str(tmp_path / "nowhere"), tmp_path))
    with pytest.raises(ConfigError, match="'no_such_module' matches no model parameter"):
        Trainer(config(1, shards, tmp_path, "trainable_modules=[backbone,no_such_module]"))
    with pytest.raises(ConfigError, match="stage 1 does not run the temporal branch"):
        Trainer(config(1, shards, tmp_path, "trainable_modules=[temporal]"))
    with pytest.raises(ConfigError, match="init_checkpoint.*missing_stage"):
        Trainer(config(2, shards, tmp_path, f"init_checkpoint={tmp_path / 'missing_stage'}"))
    code = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(CONFIGS / "train_stage1.yaml"),
                           "train_data.data_dirs=[/no/such/folder]"], capture_output=True, text=True)
    assert code.returncode == 2 and "/no/such/folder" in code.stderr


def _poison_first_step(trainer, steps=(1,)):
    """A finite loss whose gradient is infinite at the given steps (a hook on one trainable parameter)."""
    param = trainer.params[0]
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] in steps else grad

    param.register_hook(hook)


def _batch(trainer, n=2):
    samples = iter(ClipDataset(trainer.cfg.train_data, seed=0, batch_size=n))
    return [collate_clips([next(samples) for _ in range(n)])]


def test_fp16_overflow_skips_the_step_through_the_grad_scaler(shards, tmp_path, monkeypatch):
    """accelerate's fp16 path (CPU has none: its GradScaler and optimizer wrapper are set up as on a GPU)."""
    from accelerate.optimizer import AcceleratedOptimizer

    trainer = Trainer(config(1, shards, tmp_path, "lr_warmup_steps=0", "train_batch_size=2"))
    acc, scaler = trainer.accelerator, torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer.optimizer = AcceleratedOptimizer(trainer.optimizer.optimizer, device_placement=False, scaler=scaler)
    monkeypatch.setattr(acc, "scaler", scaler)
    monkeypatch.setattr(acc, "native_amp", True)
    monkeypatch.setattr(acc, "_optimizers", [trainer.optimizer])
    monkeypatch.setattr(acc.state, "_mixed_precision", "fp16")
    _poison_first_step(trainer)
    before = [p.detach().clone() for p in trainer.params]
    trainer.train_step(_batch(trainer))  # overflow: the scaler skips the update and halves its scale
    after_overflow = [p.detach().clone() for p in trainer.params]
    skipped = (trainer.nan_total, trainer.ema.optimization_step, scaler.get_scale())
    trainer.train_step(_batch(trainer))  # the next step unscales afresh (it raised "unscale_() has already been called")
    assert skipped == (1, 0, 2.0**7)
    assert all(torch.equal(p, b) for p, b in zip(after_overflow, before))
    assert trainer.nan_total == 1 and trainer.nan_streak == 0 and trainer.ema.optimization_step == 1
    assert any(not torch.equal(p, b) for p, b in zip(trainer.params, before))


class _FakeDeepSpeedEngine:
    """What accelerate's DeepSpeed backward does, at its seam: backward, then the engine's clip and step, which
    skips on a non-finite gradient when its overflow check is on (and records it in `optimizer.overflow`)."""

    def __init__(self, trainer, checks_overflow):
        self.trainer, self.checks_overflow, self.norm = trainer, checks_overflow, None

    def backward(self, loss, **kwargs):
        loss.backward()
        params, optimizer = self.trainer.params, self.trainer.optimizer.optimizer
        self.norm = torch.nn.utils.clip_grad_norm_(params, self.trainer.cfg.max_grad_norm)
        optimizer.overflow = self.checks_overflow and not torch.isfinite(self.norm)
        if not optimizer.overflow:
            optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("checks_overflow", [True, False])
def test_deepspeed_non_finite_gradient_is_skipped_not_folded_into_the_ema(shards, tmp_path, monkeypatch,
                                                                         checks_overflow):
    from accelerate.utils.deepspeed import DeepSpeedOptimizerWrapper

    trainer = Trainer(config(1, shards, tmp_path, "lr_warmup_steps=0", "train_batch_size=2"))
    plugin = type("Plugin", (), {"deepspeed_config": {"bf16": {"enabled": True}}})()
    monkeypatch.setattr(trainer.accelerator.state, "deepspeed_plugins", {"default": plugin}, raising=False)
    monkeypatch.setattr(type(trainer.accelerator.state), "deepspeed_plugin", property(lambda s: plugin))
    trainer._configure_deepspeed("test")
    assert plugin.deepspeed_config["bf16"]["check_grad_overflow"] is True  # DeepSpeed's own skip, on under bf16

    engine = _FakeDeepSpeedEngine(trainer, checks_overflow)
    trainer.optimizer.optimizer.overflow = False
    trainer.optimizer = DeepSpeedOptimizerWrapper(trainer.optimizer.optimizer)
    trainer.deepspeed = True
    monkeypatch.setattr(trainer.accelerator, "backward", engine.backward)
    monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_", lambda *a: engine.norm)
    _poison_first_step(trainer)
    shadow = [s.clone() for s in trainer.ema.shadow_params]
    if not checks_overflow:  # applied by an engine that does not check: the run stops, it does not go on with it
        with pytest.raises(RuntimeError, match="DeepSpeed applied a non-finite gradient"):
            trainer.train_step(_batch(trainer))
        return
    trainer.train_step(_batch(trainer))
    assert trainer.nan_total == 1 and trainer.ema.optimization_step == 0
    assert all(torch.equal(a, b) for a, b in zip(trainer.ema.shadow_params, shadow))
    assert all(torch.isfinite(p).all() for p in trainer.params)
    trainer.train_step(_batch(trainer))
    assert trainer.nan_total == 1 and trainer.ema.optimization_step == 1


def test_the_default_trainable_modules_are_valid_in_every_stage():
    from megactor.models import SigmaDiT
    from megactor.training.stages import select_trainable

    model = SigmaDiT(TrainConfig().model)
    for stage, group in ((1, "reference_net."), (2, "audio_attn"), (3, ".temporal.")):
        names = select_trainable(model, TrainConfig().trainable_modules, stage)
        assert any(group in n for n in names), stage
        assert stage == 3 or not any(".temporal." in n for n in names)


def test_a_learning_rate_multiplier_speeds_its_group_alone(shards, tmp_path):
    """Two runs from the same weights and batches, one with the audio branch's learning rate x10: at the first
    step, Adam moves each parameter by about its learning rate, so the audio parameters move about 10 times
    as far and every other parameter exactly as far."""
    moves = []
    for extra in ([], ["learning_rate_multipliers={audio: 10.0}"]):
        trainer = Trainer(config(2, shards, tmp_path / str(len(extra)), "lr_warmup_steps=0", "train_batch_size=2",
                                 "train_data.use_audio_ratio=1.0", "train_data.use_both_ratio=0.0",
                                 "train_data.uncond_ratio=0.0", *extra))
        before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
        samples = iter(ClipDataset(trainer.cfg.train_data, seed=0, batch_size=2))
        trainer.train_step([collate_clips([next(samples), next(samples)])])
        moves.append({n: (p.detach() - before[n]).abs().max().item()
                      for n, p in trainer.unwrapped.named_parameters() if n in before})
    plain, fast = moves
    audio_proj = "blocks.0.audio_attn.proj.weight"  # zero-initialised: the audio branch's first to get a gradient
    assert fast[audio_proj] == pytest.approx(10 * plain[audio_proj], rel=0.05)
    backbone = "blocks.0.attn.qkv.weight"
    assert fast[backbone] == pytest.approx(plain[backbone], rel=1e-5)
    with pytest.raises(ConfigError, match="learning_rate_multipliers entry 'temporal' matches no trainable"):
        Trainer(config(2, shards, tmp_path / "bad", "learning_rate_multipliers={temporal: 2.0}"))


def test_resume_latest_skips_a_corrupt_checkpoint_and_a_named_one_fails_in_one_line(shards, tmp_path, caplog):
    cfg = config(1, shards, tmp_path, "max_train_steps=2", "checkpointing_steps=1", "checkpoints_total_limit=5",
                 "train_batch_size=2")
    trainer = Trainer(cfg)
    trainer.train()
    newest = tmp_path / "checkpoints" / "step-0000002"
    weights = newest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="megactor.training.checkpoint"):
        resumed = Trainer(config(1, shards, tmp_path, "max_train_steps=2", "resume=latest", "train_batch_size=2"))
    assert resumed.resumed_from.endswith("step-0000001") and resumed.step == 1
    assert f"skipped checkpoint {newest}" in caplog.text and "trainable.safetensors" in caplog.text
    code = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(CONFIGS / "train_stage1.yaml"),
                           f"train_data.data_dirs=[{shards}]", f"output_dir={tmp_path}", f"resume={newest}", *FAST],
                          capture_output=True, text=True)
    assert code.returncode == 2 and "Traceback" not in code.stderr
    assert f"{weights}: not a readable checkpoint file" in code.stderr.strip().splitlines()[-1]


def test_cached_audio_features_equal_a_fresh_encoding(shards, tmp_path):
    trainer = Trainer(config(2, shards, tmp_path, "train_batch_size=2"))
    samples = iter(ClipDataset(trainer.cfg.train_data, seed=0, batch_size=2))
    batch = collate_clips([next(samples), next(samples)])
    first = trainer.prepare_inputs(batch)["audio"]
    assert len(trainer.audio_cache) == 2
    trainer.audio_encoder = lambda waves: pytest.fail("re-encoded a cached clip")  # a second pass comes from the cache ...
    assert torch.equal(trainer.prepare_inputs(batch)["audio"], first)
    fresh = Trainer(config(2, shards, tmp_path / "fresh", "train_batch_size=2", "train_data.audio_cache_mb=0"))
    assert torch.equal(fresh.prepare_inputs(batch)["audio"], first)  # ... and equal an uncached encoding
    assert not fresh.audio_cache


def test_a_stage_cut_by_its_time_cap_says_so_loudly(shards, tmp_path, caplog):
    trainer = Trainer(config(1, shards, tmp_path, "max_train_steps=1000", "max_train_minutes=0.0",
                             "checkpointing_steps=1000"))
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.step < 1000 and "CUT SHORT" in trainer.cut_short
    assert "STAGE 1 CUT SHORT" in caplog.text
