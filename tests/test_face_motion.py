"""The pixel measures of face motion (megactor.metrics.face_motion) and bench/control_eval.py, on synthetic clips.

Each measure is checked against ground truth on clips of a seed it was not tuned on: on the driver's own
frames aligned as the control aligns them it follows the driver's truth (its ceiling), and against an
unrelated clip's truth it is about 0. control_eval is run end to end with two fake models that cannot
follow: colour noise, and a copy of the visual control.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from megactor.animate import Animation, Animator
from megactor.config import InferenceConfig
from megactor.data.control import control_frames
from megactor.data.face import build_face_analyser
from megactor.data.synthetic import generate_dataset
from megactor.data.video_io import read_video
from megactor.metrics import face_motion

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def _load_control_eval():
    spec = importlib.util.spec_from_file_location("control_eval", ROOT / "bench" / "control_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


control_eval = _load_control_eval()


class FakeAnimator(Animator):
    """The real face handling (source crop, driver tracking, control frames) around a fake denoiser: ``kind``
    "noise" gives colour noise, "copy" the control frames themselves (black without visual driving)."""

    def __init__(self, kind: str, faces):
        cfg = InferenceConfig(sample_size=SIZE, crop_margin=0.25)
        super().__init__(None, None, None, faces, cfg, None, None)
        self.kind = kind

    def animate(self, source, driver=None, audio=None, mode=None, limit=None, seed=None, **_):
        clip = read_video(driver, with_audio=False, max_seconds=limit)
        crop, landmarks = self.prepare_source(source)
        frames_shape = (clip.num_frames, SIZE, SIZE, 3)
        if self.kind == "noise":
            frames = np.random.default_rng(seed).integers(0, 256, frames_shape, dtype=np.uint8)
        elif mode == "audio":
            frames = np.zeros(frames_shape, np.uint8)
        else:
            control, _ = control_frames(clip.frames, self.track_driver(clip.frames, driver), landmarks, SIZE,
                                        mode="eyes" if mode == "mixed" else "eyes+mouth")
            frames = np.repeat(control[..., None], 3, axis=-1)
        return Animation(frames=frames, fps=clip.fps, audio=None, source=crop, control=None, driver=clip.frames)


@pytest.fixture(scope="module")
def faces():
    with build_face_analyser("mediapipe") as analyser:
        yield analyser


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heldout")
    generate_dataset(str(out), clips=5, seconds=3.0, size=96, seed=77)  # not the seeds the measures were tuned on
    return out


@pytest.fixture(scope="module")
def aligned_drivers(clips_dir, faces):
    """Per pair (source i, driver i+1, unrelated i+2): the driver's frames aligned onto the source crop as the
    control aligns them, the boxes placed there, and the truths."""
    clips = control_eval.load_clips(str(clips_dir))
    animator = FakeAnimator("copy", faces)
    out = []
    for i in range(len(clips)):
        pm = control_eval.PairMeasure(animator, clips[i], clips[(i + 1) % len(clips)], None)
        out.append((pm, clips[(i + 1) % len(clips)].truth, clips[(i + 2) % len(clips)].truth))
    return out


def _scores(aligned_drivers, measure, key):
    own = [(measure(pm, pm.driver_aligned), np.asarray(t[key])) for pm, t, _ in aligned_drivers]
    other = [(measure(pm, pm.driver_aligned), np.asarray(u[key])) for pm, _, u in aligned_drivers]
    return face_motion.pooled_correlation(own), face_motion.pooled_correlation(other)


@pytest.mark.parametrize("name,key,ceiling", [
    ("mouth", "mouth_opening", 0.75), ("eyes", "eye_opening", 0.7), ("head_x", "head_x", 0.8),
    ("head_y", "head_y", 0.8)])
def test_each_measure_follows_the_aligned_driver_and_not_an_unrelated_clip(aligned_drivers, name, key, ceiling):
    measure = {"mouth": lambda pm, f: pm.mouth(f, True), "eyes": lambda pm, f: pm.eyes(f),
               "head_x": lambda pm, f: pm.head(f, f[0])[:, 0], "head_y": lambda pm, f: pm.head(f, f[0])[:, 1]}[name]
    own, unrelated = _scores(aligned_drivers, measure, key)
    assert own > ceiling
    assert abs(unrelated) < 0.25


def test_identity_is_the_sources_for_the_source_and_the_drivers_for_the_driver(aligned_drivers):
    for pm, _, _ in aligned_drivers:
        still = np.broadcast_to(pm.source, pm.driver_aligned.shape)
        assert face_motion.identity_kept(still, pm.source, pm.driver_aligned).all()
        assert not face_motion.identity_kept(pm.driver_aligned, pm.source, pm.driver_aligned).any()


def test_pooled_correlation_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert face_motion.pooled_correlation([(x, 10 * x + 5), (x + 100, -x)]) == pytest.approx(0.0)
    assert face_motion.pooled_correlation([(x, x), (3 * x, x + 7)]) == pytest.approx(1.0)
    assert face_motion.pooled_correlation([(np.ones(4), x)]) == 0.0  # a constant output follows nothing
    assert face_motion.pooled_correlation([(np.array([1.0, np.nan, 3, 2]), np.array([1.0, 5, 3, 2]))]) == \
        pytest.approx(1.0)


def test_pairs_are_cross_identity_and_the_audio_a_third_clip():
    pairs = control_eval.pair_indices(5, 15)
    assert all(len({i, j, k}) == 3 for i, j, k in pairs)
    assert len(set(pairs)) == 15


@pytest.mark.parametrize("kind", ["noise", "copy"])
def test_models_that_cannot_follow_score_about_zero_across_identities(clips_dir, faces, kind):
    clips = control_eval.load_clips(str(clips_dir))
    result = control_eval.evaluate(FakeAnimator(kind, faces), clips, num_pairs=4, limit=2.0, sweep_pairs=0)
    cross = ["audio_mouth", "mixed_mouth", "mixed_mouth_leak"]
    if kind == "noise":
        cross += ["visual_mouth", "visual_eyes", "visual_head", "mixed_eyes", "self_visual_mouth"]
    for key in cross:
        assert abs(result[key]) < 0.2, (key, result[key])
    if kind == "copy":  # the control carries the driver's visual motion, but a copy does not look like the source
        assert result["identity_kept"] < 0.1
    assert result["ceiling_visual_mouth"] > 0.75


def test_control_eval_writes_exactly_the_issues_keys(clips_dir, faces, tmp_path, monkeypatch):
    monkeypatch.setattr(control_eval.Animator, "from_config", classmethod(lambda cls, cfg: FakeAnimator("noise", faces)))
    out = tmp_path / "control.json"
    monkeypatch.setattr("sys.argv", ["control_eval.py", "--config", str(ROOT / "configs/inference/tiny/inference.yaml"),
                                     "--clips", str(clips_dir), "--pairs", "3", "--limit", "1", "--num-steps", "2",
                                     "--sweep-pairs", "1", "--json", str(out), "checkpoint=null"])
    control_eval.main()
    result = json.loads(out.read_text())
    assert set(result) == {"visual_mouth", "visual_eyes", "visual_head", "audio_mouth", "mixed_eyes", "mixed_mouth",
                           "mixed_mouth_leak", "identity_kept", "amplitude_rho", "self_visual_mouth",
                           "ceiling_visual_mouth", "pairs", "steps", "seconds", "checkpoint"}
    assert set(result["amplitude_rho"]) == {"audio_scale", "visual_scale", "audio_amplitude", "visual_amplitude"}
    assert result["pairs"] == 3 and result["steps"] == 2 and result["checkpoint"] is None


def test_too_few_clips_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        control_eval.load_clips(str(tmp_path))
