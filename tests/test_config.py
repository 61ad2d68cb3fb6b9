"""Config loading: presets, overrides, and errors that name the key and its source."""
from pathlib import Path

import pytest

from megactor.config import ConfigError, InferenceConfig, TrainConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_preset_then_file_then_command_line(tmp_path):
    path = write(tmp_path, "model:\n  preset: xl\n  depth: 3\nlearning_rate: 3.0e-5\n")
    cfg = load_config(TrainConfig, path, ["train_batch_size=4", "model.codec.path=/vae"])
    assert (cfg.model.width, cfg.model.depth, cfg.model.codec.type) == (1152, 3, "vae")
    assert (cfg.learning_rate, cfg.train_batch_size, cfg.model.codec.path) == (3e-5, 4, "/vae")


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train_data:\n  video_lenght: 16\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert "train_data.video_lenght" in str(e.value) and path in str(e.value)
    with pytest.raises(ConfigError, match=r"command line.*'model\.widht'"):
        load_config(TrainConfig, None, ["model.widht=3"])


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "max_train_steps: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert "max_train_steps" in str(e.value) and path in str(e.value)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        load_config(InferenceConfig, None, ["num_inference_steps=many"])


def test_value_checks(tmp_path):
    with pytest.raises(ConfigError, match="use_audio_ratio"):
        load_config(TrainConfig, None, ["train_data.use_audio_ratio=0.9", "train_data.use_both_ratio=0.2"])
    with pytest.raises(ConfigError, match="uncond_ratio"):
        load_config(TrainConfig, None, ["train_data.use_audio_ratio=0.5", "train_data.uncond_ratio=0.4"])
    with pytest.raises(ConfigError, match="model.preset"):
        load_config(TrainConfig, None, ["model.preset=huge"])
    for size in (3, 1, 64):  # not a multiple of patch_size 2; finer than it; does not divide sample_size 32
        with pytest.raises(ConfigError, match=rf"model.reference_patch_size={size} must be a multiple"):
            load_config(TrainConfig, None, [f"model.reference_patch_size={size}"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["stage"])


def test_base_key_inherits_a_file_relative_to_the_including_one(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "root.yaml").write_text("model:\n  preset: small\nlearning_rate: 1.0e-4\n"
                                                   "train_data:\n  video_length: 8\n  sample_size: 128\n")
    (tmp_path / "presets" / "mid.yaml").write_text("base: root.yaml\nlearning_rate: 2.0e-4\ntrainable_modules: [audio]\n")
    child = write(tmp_path, "base: presets/mid.yaml\ntrain_data:\n  video_length: 16\n"
                            "trainable_modules: [temporal, audio]\n")
    cfg = load_config(TrainConfig, child, ["train_batch_size=3"])
    assert cfg.model.width == 384  # the preset named in the root base
    assert (cfg.learning_rate, cfg.train_data.video_length, cfg.train_data.sample_size) == (2e-4, 16, 128)
    assert cfg.trainable_modules == ["temporal", "audio"] and cfg.train_batch_size == 3  # lists are replaced


def test_base_errors_name_the_file_at_fault(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(TrainConfig, str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(TrainConfig, str(tmp_path / "self.yaml"))
    missing = write(tmp_path, "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=rf"nowhere\.yaml \(the `base:` of .*cfg\.yaml\)"):
        load_config(TrainConfig, missing)
    (tmp_path / "bad.yaml").write_text("train_data:\n  video_lenght: 3\n")
    child = write(tmp_path, "base: bad.yaml\nlearning_rate: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: bad key 'train_data\.video_lenght'"):
        load_config(TrainConfig, child)


def test_every_presets_stages_share_one_base():
    """Each stage config inherits its preset's base.yaml and restates none of its values."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs" / "train"
    for preset in ("tiny", "small", "megactor-sigma"):
        base = yaml.safe_load((root / preset / "base.yaml").read_text())
        for stage in (1, 2, 3):
            path = root / preset / f"train_stage{stage}.yaml"
            own = yaml.safe_load(path.read_text())
            assert own.pop("base") == "base.yaml", path
            repeated = [k for k in own if not isinstance(base.get(k), dict) and base.get(k, object()) == own[k]]
            repeated += [f"{k}.{j}" for k in own if isinstance(base.get(k), dict)
                         for j in own[k] if base[k].get(j, object()) == own[k][j]]
            assert not repeated, f"{path} restates {repeated}"
            assert load_config(TrainConfig, str(path)).stage == stage


def test_epsilon_with_zero_terminal_snr_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"prediction_type=epsilon.*rescale_betas_zero_snr=true"):
        load_config(TrainConfig, None, ["noise_scheduler_kwargs.rescale_betas_zero_snr=true"])
    with pytest.raises(ConfigError, match="rescale_betas_zero_snr"):
        load_config(InferenceConfig, None, ["noise_scheduler_kwargs={rescale_betas_zero_snr: true}"])
    load_config(TrainConfig, None, ["noise_scheduler_kwargs.rescale_betas_zero_snr=true",
                                    "noise_scheduler_kwargs.prediction_type=v_prediction"])


@pytest.mark.parametrize("override, key", [("num_inference_steps=0", "num_inference_steps"),
                                           ("num_inference_steps=-1", "num_inference_steps"),
                                           ("limit=-2", "limit"), ("validation.num_inference_steps=0", None)])
def test_steps_and_limit_are_checked(override, key):
    schema = TrainConfig if override.startswith("validation.") else InferenceConfig
    with pytest.raises(ConfigError, match=rf"command line: {key or override.split('=')[0]}=-?[\d.]+ must be at least"):
        load_config(schema, None, [override])
    assert load_config(InferenceConfig, None, ["limit=0"]).limit == 0  # 0: the whole driver, as in the demo


def test_a_bad_value_is_blamed_on_where_it_came_from(tmp_path):
    path = write(tmp_path, "scheduler: ddim\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"^command line: scheduler='euler'"):
        load_config(InferenceConfig, path, ["scheduler=euler"])
    path = write(tmp_path, "scheduler: euler\n")
    with pytest.raises(ConfigError, match=rf"^{path}: scheduler='euler'"):
        load_config(InferenceConfig, path, ["seed=3"])


@pytest.mark.parametrize("preset", ["tiny", "small", "megactor-sigma"])
def test_every_stage_trains_the_undriven_branch_that_guidance_leans_on(preset):
    root = Path(__file__).resolve().parents[1] / "configs"
    guidance = load_config(InferenceConfig, str(root / "inference" / preset / "inference.yaml"), []).guidance
    if guidance.guidance_scale == 1.0 and guidance.audio_scale in (None, 1.0) and guidance.visual_scale in (None, 1.0):
        pytest.skip("no guidance")
    for stage in (1, 2, 3):
        cfg = load_config(TrainConfig, str(root / "train" / preset / f"train_stage{stage}.yaml"), [])
        assert cfg.train_data.uncond_ratio > 0, (preset, stage)
        if stage == 2:  # mixed samples where the backbone and the audio branch train
            assert cfg.train_data.use_both_ratio > 0, preset
