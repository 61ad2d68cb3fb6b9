"""Context windows, multi-modal guidance and the windowed sampler."""
import pytest
import torch

import math

from megactor.config import ContextConfig, NoiseSchedulerConfig
from megactor.diffusion.context import LAYOUTS, context_windows, window_weights
from megactor.diffusion.guidance import Branch, GuidanceSchedule, combine, guidance_branches
from megactor.diffusion.sampler import sample_video, windowed_prediction
from megactor.diffusion.schedulers import sampling_scheduler


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("frames,length,overlap", [(5, 8, 2), (8, 8, 2), (9, 8, 2), (40, 16, 4), (250, 8, 2),
                                                   (33, 16, 0), (17, 16, 15), (125, 16, 2), (125, 24, 2)])
def test_windows_cover_every_frame_at_every_step_and_weights_sum_to_one(frames, length, overlap, layout):
    seams = set()
    for step in range(12):
        windows = context_windows(frames, length, overlap, step, layout=layout)
        assert all(len(w) == min(length, frames) for w in windows)
        assert all(0 <= w.start and w.stop <= frames for w in windows)
        covered = sorted({i for w in windows for i in w})
        assert covered == list(range(frames))
        for a, b in zip(windows, windows[1:]):  # consecutive windows overlap by at least `overlap`
            assert a.stop - b.start >= overlap
        weights = window_weights(windows, frames)
        assert torch.allclose(weights.sum(0), torch.ones(frames))
        seams.add(tuple(w.start for w in windows))
    if layout == "shifted" and frames >= 2 * length and length - overlap > 2:
        assert len(seams) > 1  # the windows move between steps


@pytest.mark.parametrize("frames,length,overlap", [(125, 16, 2), (100, 16, 4), (250, 8, 2), (61, 24, 2),
                                                   (125, 32, 2), (40, 16, 4), (17, 16, 15)])
def test_fewest_layout_runs_the_fewest_windows_and_moves_its_seams_by_its_slack(frames, length, overlap):
    fewest = math.ceil((frames - overlap) / (length - overlap))  # n windows overlapping by o cover n*(L-o)+o frames
    slack = fewest * (length - overlap) + overlap - frames
    layouts = [context_windows(frames, length, overlap, step) for step in range(25)]
    assert all(len(w) == fewest for w in layouts)
    starts = {tuple(w.start for w in windows) for windows in layouts}
    if fewest > 2:  # the first and last windows sit at the ends; the interior ones move by 0..slack
        assert len(starts) >= min(slack + 1, 10)
    shifted = sum(len(context_windows(frames, length, overlap, s, layout="shifted")) for s in range(25)) / 25
    assert shifted >= fewest
    if (frames, length, overlap) == (125, 16, 2):  # the xl benchmark's layout: 9.72 windows a step before
        assert shifted > fewest + 0.5


def test_guidance_outside_its_interval_is_the_fully_conditioned_prediction():
    schedule = GuidanceSchedule(True, True, audio_scale=3.0, visual_scale=1.5, interval=(0.2, 0.7),
                                num_train_timesteps=1000)
    assert schedule.branches(500) == guidance_branches(True, True, 3.0, 1.5)
    assert schedule.branches(700) == schedule.branches(200) == schedule.branches(500)
    for t in (999, 701, 199, 0):
        assert schedule.branches(t) == [Branch(True, True, 1.0)]
        full = torch.randn(1, 4)
        assert torch.equal(combine(full, schedule.branches(t)), full)
    # a modality whose scale is 0 stays off outside the interval too
    audio_only = GuidanceSchedule(True, True, audio_scale=2.0, visual_scale=0.0, interval=(0.3, 0.6))
    assert audio_only.branches(900) == [Branch(True, False, 1.0)]
    assert GuidanceSchedule(True, False, 2.0, 2.0).branches(999) == guidance_branches(True, False, 2.0, 2.0)
    with pytest.raises(ValueError, match="interval"):
        GuidanceSchedule(True, True, 2.0, 2.0, interval=(0.8, 0.2))


def test_guidance_formula_and_branch_batching():
    eps0, eps_a, eps_av = torch.randn(3, 2, 4)
    s_a, s_v = 3.0, 1.5
    branches = guidance_branches(True, True, s_a, s_v)
    assert [(b.audio, b.visual) for b in branches] == [(False, False), (True, False), (True, True)]
    guided = combine(torch.cat([eps0, eps_a, eps_av]), branches)
    assert torch.allclose(guided, eps0 + s_a * (eps_a - eps0) + s_v * (eps_av - eps_a), atol=1e-6)
    # the single knob: equal scales need no audio-only pass
    assert [(b.audio, b.visual) for b in guidance_branches(True, True, 2.0, 2.0)] == [(False, False), (True, True)]
    with pytest.raises(ValueError):
        guidance_branches(False, False, 1.0, 1.0)


def test_a_guidance_scale_of_zero_drops_its_branch():
    eps0, eps_a, eps_av = torch.randn(3, 2, 4)
    audio_off = guidance_branches(True, False, 0.0, 2.0)  # audio only, s_a = 0: the undriven prediction
    assert [(b.audio, b.visual) for b in audio_off] == [(False, False)]
    assert torch.equal(combine(eps0, audio_off), eps0)
    visual_off = guidance_branches(True, True, 2.0, 0.0)  # mixed, s_v = 0: audio guidance alone
    assert all(not b.visual for b in visual_off)
    assert torch.allclose(combine(torch.cat([eps0, eps_a]), visual_off), eps0 + 2.0 * (eps_a - eps0), atol=1e-6)
    assert [(b.audio, b.visual) for b in guidance_branches(False, True, 1.0, 0.0)] == [(False, False)]


@pytest.mark.parametrize("audio,visual", [(True, True), (True, False), (False, True)])
def test_scales_of_one_give_the_fully_conditioned_prediction(audio, visual):
    branches = guidance_branches(audio, visual, 1.0, 1.0)
    assert branches == [Branch(audio, visual, 1.0)]
    full = torch.randn(2, 4)
    assert torch.equal(combine(full, branches), full)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_windowed_sampling_equals_whole_video_sampling_for_a_per_frame_model(name):
    """A model that treats frames independently must give the same video whatever the windows."""
    scheduler_cfg = NoiseSchedulerConfig()
    weights = torch.randn(1, 3, 1, 1, 1) * 0.1

    def model_fn(x, t, frames):
        return x * 0.5 + weights * (t / 1000.0)

    noise = torch.randn(1, 3, 20, 4, 4)
    whole = sample_video(model_fn, noise, sampling_scheduler(name, scheduler_cfg), 6, ContextConfig(32, 0),
                         progress=False)
    for layout in LAYOUTS:
        windowed = sample_video(model_fn, noise, sampling_scheduler(name, scheduler_cfg), 6,
                                ContextConfig(8, 3, layout), progress=False)
        assert torch.allclose(whole, windowed, atol=1e-5)


def test_windows_split_across_ranks_sum_to_the_single_process_prediction():
    latents = torch.randn(1, 2, 30, 2, 2)
    gain = torch.linspace(0.5, 1.5, 30).view(1, 1, -1, 1, 1)

    def model_fn(x, t, frames):  # depends on where the window sits, as a real model's output does
        return x * gain[:, :, frames.start:frames.stop] + frames.start * 1e-2

    windows = context_windows(30, 8, 2, step=3)
    single = windowed_prediction(model_fn, latents, torch.tensor(10), windows)
    split = [windowed_prediction(model_fn, latents, torch.tensor(10), windows, rank=r, world_size=3) for r in range(3)]
    assert torch.allclose(sum(split), single, atol=1e-6)
    assert all(not torch.allclose(s, single) for s in split)


@pytest.mark.parametrize("name, guided_steps", [("inference.yaml", 10), ("inference_fast.yaml", 4)])
def test_the_xl_presets_guide_as_many_steps_as_their_speed_was_measured_with(name, guided_steps):
    """docs/benchmarks.md timed the xl presets with guidance at 10 of 25 DDIM steps and 4 of 10 DPM-Solver++
    steps; the presets' interval must keep that count (which steps they are does not change the work)."""
    from pathlib import Path

    from megactor.config import InferenceConfig, load_config

    cfg = load_config(InferenceConfig, str(Path(__file__).parents[1] / "configs/inference/megactor-sigma" / name))
    scheduler = sampling_scheduler(cfg.scheduler, NoiseSchedulerConfig())
    scheduler.set_timesteps(cfg.num_inference_steps)
    schedule = GuidanceSchedule(True, True, 2.0, 2.0, interval=cfg.guidance.interval)
    assert sum(schedule.guided(t) for t in scheduler.timesteps.tolist()) == guided_steps
