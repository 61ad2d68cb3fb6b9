"""The inference pipeline and eval_audio.py, with the tiny preset on the real clips."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.video_io import probe, read_video, write_video
from megactor.models.fp8 import convert_to_fp8

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import eval_audio  # noqa: E402

STEPS = ["num_inference_steps=2", "checkpoint=", "context.context_frames=16", "context.context_overlap=4"]


@pytest.fixture(scope="module")
def animator():
    cfg = load_config(InferenceConfig, str(ROOT / "configs/inference/tiny/inference.yaml"), STEPS)
    return Animator.from_config(cfg, device="cpu")


@pytest.fixture(scope="module")
def clips(testcases):
    drivers = sorted((testcases / "driver").glob("*.mp4"))
    sources = sorted((testcases / "source").glob("*.png"))
    return [str(p) for p in drivers], [str(p) for p in sources]


@pytest.fixture(scope="module")
def long_driver(clips, tmp_path_factory):
    """A 10-second talking-head driver: the real clips back to back, at 256x256."""
    frames, audio = [], []
    for path in clips[0]:
        clip = read_video(path)
        frames.append(clip.frames[:, ::2, ::2])
        audio.append(np.resize(clip.audio, int(round(clip.duration * 16000))))
    out = tmp_path_factory.mktemp("long") / "long.mp4"
    frames, audio = np.concatenate(frames)[:300], np.concatenate(audio)[: 300 * 16000 // 30]
    write_video(str(out), frames, 30.0, audio)
    return str(out)


def cfg_path() -> str:
    return str(ROOT / "configs/inference/tiny/inference.yaml")


def run_cli(tmp_path, *args):
    return eval_audio.main(["--config", str(ROOT / "configs/inference/tiny/inference.yaml"), *args, *STEPS])


def test_mixed_mode_writes_the_drivers_frames_fps_and_audio(clips, tmp_path):
    drivers, sources = clips
    out = tmp_path / "out.mp4"
    assert run_cli(tmp_path, "--source", sources[1], "--driver", drivers[0], "--output-path", str(out), "--grid") == 0
    info, driver = probe(str(out)), probe(drivers[0])
    assert (info["width"], info["height"]) == (768, 844)  # the source's size: the crops pasted back into it
    assert info["has_audio"]
    assert info["fps"] == driver["fps"]
    assert read_video(str(out), with_audio=False).num_frames == read_video(drivers[0], with_audio=False).num_frames
    assert abs(info["duration"] - driver["duration"]) <= 1 / driver["fps"]
    grid = read_video(str(tmp_path / "out_grid.mp4"), with_audio=False)
    # source | driver | control | result (64 x 64 each) | pasted (the source's aspect, 64 tall)
    assert grid.frames.shape[1:3] == (64, 4 * 64 + 58)


@pytest.mark.parametrize("mode", ["visual", "audio"])
def test_single_modality_modes(animator, clips, mode):
    drivers, sources = clips
    result = animator.animate(sources[1], drivers[1], mode=mode, limit=1.0, progress=False)
    assert result.crops.shape == (30, 64, 64, 3) and result.fps == 30.0
    assert result.frames.shape == (30, 844, 768, 3)  # 10.png's size
    assert result.audio is not None and len(result.audio) == 16000
    assert result.control is not None  # audio-only: the idle-motion driver's eyes


def test_visual_control_shows_the_mouth_only_without_audio(animator, clips):
    drivers, sources = clips
    visual = animator.animate(sources[0], drivers[0], mode="visual", limit=0.4, progress=False)
    mixed = animator.animate(sources[0], drivers[0], mode="mixed", limit=0.4, progress=False)
    assert (visual.control > 0).sum() > (mixed.control > 0).sum()  # eyes + mouth vs eyes


def test_unpaired_audio_from_another_file(animator, clips):
    drivers, sources = clips
    result = animator.animate(sources[0], drivers[0], audio=drivers[2], limit=1.0, progress=False)
    other = read_video(drivers[2]).audio[:16000]
    assert np.corrcoef(result.audio[: len(other)], other)[0, 1] > 0.99
    assert len(result.frames) == 30


def test_ten_second_driver_in_8_frame_windows(animator, long_driver, monkeypatch):
    latents = []
    denoise = animator._denoise
    monkeypatch.setattr(animator, "_denoise", lambda *a: latents.append(denoise(*a)) or latents[-1])
    animator.cfg.context.context_frames, animator.cfg.context.context_overlap = 8, 2
    animator.cfg.paste_back = False
    try:
        result = animator.animate(animator_source(), long_driver, progress=False)
    finally:
        animator.cfg.context.context_frames, animator.cfg.context.context_overlap = 16, 4
        animator.cfg.paste_back = True
    assert result.frames.shape == (300, 64, 64, 3) and result.frames.std() > 0
    assert latents[0].shape[2] == 300 and torch.isfinite(latents[0]).all()  # before clamping to uint8 hides a NaN


def animator_source():
    return str(sorted((ROOT.parent / "shared/testcases/source").glob("*.png"))[2])


def test_same_seed_same_frames(animator, clips):
    drivers, sources = clips
    a = animator.animate(sources[0], drivers[0], limit=0.5, seed=7, progress=False)
    b = animator.animate(sources[0], drivers[0], limit=0.5, seed=7, progress=False)
    c = animator.animate(sources[0], drivers[0], limit=0.5, seed=8, progress=False)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_unit_scales_and_amplitudes_equal_the_fully_conditioned_prediction(animator, clips):
    """With s_a = s_v = a_a = a_v = 1 the guided model_fn is one pass with every condition on."""
    drivers, sources = clips
    g = animator.cfg.guidance
    g.guidance_scale, saved = 1.0, (g.guidance_scale,)
    calls = []
    original = animator.model.forward

    def spy(*args, **kwargs):
        calls.append((args[0].shape[0], kwargs["audio_amplitude"].tolist(), kwargs["visual_amplitude"].tolist()))
        return original(*args, **kwargs)

    animator.model.forward = spy
    try:
        animator.animate(sources[0], drivers[0], limit=0.2, progress=False)
    finally:
        del animator.model.forward
        g.guidance_scale = saved[0]
    assert calls and all(c == (1, [1.0], [1.0]) for c in calls)


# ---------------------------------------------------------------------------- bad input


def _no_output(tmp_path):
    return not any(p.suffix == ".mp4" for p in tmp_path.rglob("*"))


def test_missing_file(tmp_path, clips, capsys):
    code = run_cli(tmp_path, "--source", str(tmp_path / "nope.png"), "--driver", clips[0][0],
                   "--output-path", str(tmp_path))
    assert code != 0 and "nope.png: no such file" in capsys.readouterr().err and _no_output(tmp_path)


def test_file_that_is_not_media(tmp_path, clips, capsys):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    code = run_cli(tmp_path, "--source", clips[1][0], "--driver", str(fake), "--output-path", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert code != 0 and "fake.mp4" in err and "not a readable media file" in err
    assert not (tmp_path / "o").exists()


def test_source_without_face_fails_unless_no_crop(tmp_path, clips, capsys):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((128, 96, 3), 180, np.uint8)).save(blank)
    code = run_cli(tmp_path, "--source", str(blank), "--driver", clips[0][0], "--output-path", str(tmp_path / "o"))
    assert code != 0 and "no face found" in capsys.readouterr().err and _no_output(tmp_path)
    # --no-crop with audio-only driving animates the whole image
    out = tmp_path / "o" / "wall.mp4"
    assert run_cli(tmp_path, "--source", str(blank), "--driver", clips[0][0], "--no-visual", "--no-crop",
                   "--limit", "0.5", "--output-path", str(out)) == 0
    assert out.exists()


def test_driver_without_face_in_a_visual_mode(tmp_path, clips, capsys):
    noise = np.random.default_rng(0).integers(0, 255, (15, 64, 64, 3), dtype=np.uint8)
    driver = tmp_path / "noise.mp4"
    write_video(str(driver), noise, 25.0, np.zeros(16000 * 15 // 25, np.float32))
    code = run_cli(tmp_path, "--source", clips[1][0], "--driver", str(driver), "--no-audio",
                   "--output-path", str(tmp_path / "o"))
    assert code != 0 and "no face found in the driver" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_audio_only_without_audio(tmp_path, clips, capsys):
    silent = tmp_path / "silent.mp4"
    write_video(str(silent), read_video(clips[0][0], max_seconds=0.5).frames, 30.0)
    code = run_cli(tmp_path, "--source", clips[1][0], "--driver", str(silent), "--no-visual",
                   "--output-path", str(tmp_path / "o"))
    assert code != 0 and "needs audio" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_config_pairs_run_and_a_failing_pair_does_not_stop_the_rest(tmp_path, clips, capsys):
    drivers, sources = clips
    cfg = tmp_path / "pairs.yaml"
    cfg.write_text(
        "model:\n  preset: tiny\nsample_size: 64\nlimit: 0.4\n"
        f"source_image: [{sources[0]}, {tmp_path / 'missing.png'}, {sources[1]}]\n"
        f"video_path: [{drivers[0]}, {drivers[1]}, {drivers[2]}]\n"
    )
    code = eval_audio.main(["--config", str(cfg), "--output-path", str(tmp_path / "out"), *STEPS])
    assert code == 1
    written = sorted(p.name for p in (tmp_path / "out").glob("*.mp4"))
    assert written == sorted([f"{Path(sources[0]).stem}_{Path(drivers[0]).stem}.mp4",
                              f"{Path(sources[1]).stem}_{Path(drivers[2]).stem}.mp4"])
    assert "1 of 3 pairs failed" in capsys.readouterr().err


def test_inference_samples_with_the_schedule_the_checkpoint_was_trained_with(tmp_path, clips, capsys):
    from conftest import tiny_config

    from megactor.animate import checkpoint_schedule
    from megactor.config import ConfigError, NoiseSchedulerConfig
    from megactor.models import SigmaDiT, save_pretrained

    model = SigmaDiT(tiny_config())
    v = NoiseSchedulerConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    save_pretrained(model, tmp_path / "v", noise_schedule=v)
    assert checkpoint_schedule(str(tmp_path / "v"), None) == v
    leading = NoiseSchedulerConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                   timestep_spacing="leading")
    assert checkpoint_schedule(str(tmp_path / "v"), leading) == leading  # a sampling-only choice
    with pytest.raises(ConfigError, match="prediction_type: trained 'v_prediction', asked 'epsilon'"):
        checkpoint_schedule(str(tmp_path / "v"), NoiseSchedulerConfig())
    save_pretrained(model, tmp_path / "old")  # written before checkpoints recorded their schedule
    assert checkpoint_schedule(str(tmp_path / "old"), None) == NoiseSchedulerConfig()
    # the command line: a one-line error before any work
    code = eval_audio.main(["--config", str(ROOT / "configs/inference/tiny/inference.yaml"), "--source", clips[1][0],
                            "--driver", clips[0][0], "--output-path", str(tmp_path / "o"), f"checkpoint={tmp_path / 'v'}",
                            "noise_scheduler_kwargs.prediction_type=epsilon"])
    err = capsys.readouterr().err
    assert code == 2 and "trained with (prediction_type: trained 'v_prediction'" in err and _no_output(tmp_path)


def test_guidance_outside_its_interval_runs_the_conditioned_pass_alone(clips):
    """An interval that holds none of the steps' noise levels gives the unguided (scale 1) video, frame for frame."""
    drivers, sources = clips
    cfg = load_config(InferenceConfig, str(ROOT / "configs/inference/tiny/inference.yaml"), STEPS + ["paste_back=false"])
    animator = Animator.from_config(cfg, device="cpu")
    for p in animator.model.parameters():  # the audio and visual branches start at zero: guidance would change nothing
        p.data.normal_(std=0.02)
    g = animator.cfg.guidance
    g.guidance_scale, g.interval = 1.0, None
    unguided = animator.animate(sources[0], drivers[0], limit=0.3, seed=3, progress=False)
    g.guidance_scale, g.interval = 3.0, [0.0, 0.0]
    outside = animator.animate(sources[0], drivers[0], limit=0.3, seed=3, progress=False)
    g.interval = [0.0, 1.0]
    inside = animator.animate(sources[0], drivers[0], limit=0.3, seed=3, progress=False)
    assert np.array_equal(outside.frames, unguided.frames)
    assert not np.array_equal(inside.frames, unguided.frames)


def test_fp8_animator_runs_the_e4m3_path_close_to_float32(clips):
    drivers, sources = clips
    overrides = STEPS + ["paste_back=false"]
    cfg = load_config(InferenceConfig, str(ROOT / "configs/inference/tiny/inference.yaml"), overrides + ["fp8=true"])
    assert type(Animator.from_config(cfg, device="cpu").model.blocks[0].mlp.fc1).__name__ == "Fp8Linear"
    animator = Animator.from_config(load_config(InferenceConfig, cfg_path(), overrides), device="cpu")
    for p in animator.model.parameters():  # no zero-initialised branch left out of the comparison
        p.data.normal_(std=0.02)
    float32 = animator.animate(sources[0], drivers[0], limit=0.3, seed=3, progress=False).frames
    convert_to_fp8(animator.model.blocks)  # what from_config does with fp8=true
    fp8 = animator.animate(sources[0], drivers[0], limit=0.3, seed=3, progress=False).frames
    diff = np.abs(fp8.astype(float) - float32.astype(float))
    assert 0 < diff.mean() < 0.02 * 255  # e4m3 rounding moves pixels, a little


def test_a_missing_checkpoint_fails_before_torch_is_imported_naming_the_path_and_the_working_directory(tmp_path):
    import subprocess

    script = ("import sys, eval_audio; rc = eval_audio.main(['--config', sys.argv[1], '--source', 'a.png', "
              "'--driver', 'b.mp4']); print(rc, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script, str(ROOT / "configs/inference/tiny/inference.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert run.stdout.split() == ["2", "False"]  # exit 2, and nothing slow was loaded before the check
    assert (f"checkpoint runs/tiny/stage3/model: no such folder (looked for {tmp_path}/runs/tiny/stage3/model, "
            f"relative to the working directory {tmp_path})") in run.stderr
    assert "add checkpoint= to run a randomly initialised model" in run.stderr


@pytest.fixture(scope="module")
def short_driver(clips, tmp_path_factory):
    """0.4 s of a real driver (12 frames at 30 fps), with its audio."""
    clip = read_video(clips[0][0], max_seconds=0.4)
    out = tmp_path_factory.mktemp("short") / "short.mp4"
    write_video(str(out), clip.frames, clip.fps, clip.audio)
    return str(out)


def test_limit_zero_is_the_whole_driver_and_a_negative_one_is_refused(animator, short_driver, tmp_path, capsys):
    from megactor.animate import InputError

    assert len(animator.animate(animator_source(), short_driver, limit=0, progress=False).frames) == 12
    with pytest.raises(InputError, match="limit=-1"):
        animator.animate(animator_source(), short_driver, limit=-1, progress=False)
    out = tmp_path / "o.mp4"
    assert run_cli(tmp_path, "--source", animator_source(), "--driver", short_driver, "--limit", "0",
                   "--output-path", str(out)) == 0
    assert read_video(str(out), with_audio=False).num_frames == 12
    assert eval_audio.main(["--config", str(ROOT / "configs/inference/tiny/inference.yaml"), "--source",
                            animator_source(), "--driver", short_driver, "--num-steps", "-1"]) == 2
    assert "num_inference_steps=-1 must be at least 1" in capsys.readouterr().err


def test_two_faces_in_the_source_and_faceless_driver_frames_are_each_one_warning(animator, clips, tmp_path, caplog):
    from PIL import Image

    sources = [np.asarray(Image.open(p).convert("RGB").resize((256, 256))) for p in clips[1][:2]]
    pair = tmp_path / "pair.png"
    Image.fromarray(np.concatenate([sources[0], sources[1][::2, ::2].repeat(2, 0).repeat(2, 1)], 1)).save(pair)
    clip = read_video(clips[0][0], max_seconds=0.4)
    frames = clip.frames.copy()
    frames[4:7] = 0  # three frames without a face
    driver = tmp_path / "gap.mp4"
    write_video(str(driver), frames, clip.fps, clip.audio)
    with caplog.at_level("WARNING", logger="megactor.animate"):
        animator.animate(str(pair), str(driver), mode="visual", progress=False)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("2 faces found; animating the largest" in m for m in lines) == 1, lines
    assert sum("no face in 3 of 12 driver frames (from frame 4): their control is black" in m for m in lines) == 1


def test_inputs_and_outputs_are_checked_before_any_model_loads(tmp_path, clips, capsys, monkeypatch):
    from megactor.animate import Animator as Loaded

    def no_loading(*a, **kw):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(Loaded, "from_config", no_loading)
    assert run_cli(tmp_path, "--source", str(tmp_path / "gone.png"), "--driver", clips[0][0]) == 2
    assert "gone.png: no such file" in capsys.readouterr().err
    (tmp_path / "taken.mp4").mkdir()
    assert run_cli(tmp_path, "--source", clips[1][0], "--driver", clips[0][0],
                   "--output-path", str(tmp_path / "taken.mp4")) == 2
    assert "taken.mp4: is a folder" in capsys.readouterr().err
    assert run_cli(tmp_path, "--source", clips[1][0], "--driver", clips[0][0],
                   "--output-path", "/sys/megactor/out.mp4") == 2
    assert "/sys/megactor/out.mp4: cannot be written" in capsys.readouterr().err
    still = tmp_path / "still.mp4"
    still.write_bytes(Path(clips[1][0]).read_bytes())  # a PNG
    assert run_cli(tmp_path, "--source", clips[1][0], "--driver", str(still)) == 2
    assert f"{still}: is a still image (png), not a video" in capsys.readouterr().err


def test_a_failed_write_is_one_line_and_the_batch_goes_on(tmp_path, clips, short_driver, capsys, monkeypatch):
    from megactor.data import video_io

    drivers, sources = clips
    cfg = tmp_path / "pairs.yaml"
    cfg.write_text("model:\n  preset: tiny\nsample_size: 64\n"
                   f"source_image: [{sources[0]}, {sources[1]}]\nvideo_path: [{short_driver}, {short_driver}]\n")
    real = video_io.write_video

    def full_disk(path, *a, **kw):
        if Path(path).name == f"{Path(sources[0]).stem}_short.mp4":
            raise OSError(28, "No space left on device")
        return real(path, *a, **kw)

    monkeypatch.setattr(video_io, "write_video", full_disk)
    assert eval_audio.main(["--config", str(cfg), "--output-path", str(tmp_path / "out"), *STEPS]) == 1
    err = capsys.readouterr().err
    failed = Path(tmp_path / "out" / f"{Path(sources[0]).stem}_short.mp4")
    assert f"error: {failed}: could not be written ([Errno 28] No space left on device)" in err
    assert "Traceback" not in err and "1 of 2 pairs failed" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{Path(sources[1]).stem}_short.mp4"]


def test_muxed_audio_ends_with_the_video(tmp_path):
    from megactor.data.video_io import read_audio

    audio = np.random.default_rng(0).uniform(-0.1, 0.1, 32000).astype(np.float32)
    write_video(str(tmp_path / "a.mp4"), np.zeros((50, 32, 32, 3), np.uint8), 25.0, audio)  # 2.00 s
    assert len(read_audio(str(tmp_path / "a.mp4"))) == 32000  # not the AAC frames' 32768 (2.05 s)
    assert len(read_video(str(tmp_path / "a.mp4")).audio) == 32000


def test_one_name_for_the_denoising_steps_in_every_entry_point():
    import subprocess

    help_no_audio = eval_audio.parse_args(["--config", "x"])
    assert help_no_audio.num_steps is None
    for script in ("eval_audio.py", "bench/infer_bench.py", "bench/control_eval.py"):
        text = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True).stdout
        assert "--num-steps" in text and "--steps " not in text, script
        if script == "eval_audio.py":
            assert "still carries the driver's audio" in " ".join(text.split())
