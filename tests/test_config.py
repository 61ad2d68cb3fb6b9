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
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["stage"])


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
