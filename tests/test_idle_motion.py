"""Idle motion: the procedural eye-and-head driver for audio-only driving, measured from its own pixels."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.control import crop_and_resize, crop_matrix, face_crop_box, transform_points
from megactor.data.face import MESH_468, build_face_analyser, eye_opening
from megactor.data.idle_motion import idle_driver

ROOT = Path(__file__).resolve().parents[1]
FPS = 25.0


@pytest.fixture(scope="module")
def face(testcases):
    """A real portrait's face crop (192 px) and its landmarks in crop pixels."""
    analyser = build_face_analyser("mediapipe")
    image = np.asarray(Image.open(testcases / "source" / "10.png").convert("RGB"))
    landmarks = analyser.detect(image)[0].landmarks
    box = face_crop_box(landmarks, image.shape[:2], 0.25)
    return crop_and_resize(image, box, 192), transform_points(landmarks, crop_matrix(box, 192)), analyser


def test_same_seed_same_driver_and_another_seed_another(face):
    crop, landmarks, _ = face
    a, b, c = (idle_driver(crop, landmarks, 40, FPS, seed) for seed in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_blinks_measured_from_the_drivers_pixels_at_least_once_every_6_s(face):
    """The eye opening MediaPipe measures on the generated frames dips in every 6 s; the measure is checked
    against the driver's own openness (its ground truth): they correlate, and the dips fall on the blinks."""
    crop, landmarks, analyser = face
    frames, _, openness = idle_driver(crop, landmarks, int(12 * FPS), FPS, seed=0)
    measured = np.array([eye_opening(f[0].landmarks) if f else np.nan for f in analyser.track(frames)])
    assert np.isfinite(measured).mean() > 0.95
    assert np.corrcoef(measured[np.isfinite(measured)], openness[np.isfinite(measured)])[0, 1] > 0.7
    dips = measured < 0.9 * np.nanmedian(measured)  # a blink narrows the measured eyes by 20-25%
    assert (openness[dips] < 0.6).all()  # every dip is a blink
    window = int(6 * FPS)
    assert all(dips[start:start + window].any() for start in range(0, len(dips) - window + 1))


def test_head_motion_scales_with_strength_and_leaves_the_face_shape(face):
    crop, landmarks, _ = face
    _, still, _ = idle_driver(crop, landmarks, 50, FPS, seed=1, strength=0.0)
    _, moving, _ = idle_driver(crop, landmarks, 50, FPS, seed=1, strength=1.0)
    _, strong, _ = idle_driver(crop, landmarks, 50, FPS, seed=1, strength=2.0)
    nose = MESH_468.align[-4]  # a point blinks do not move
    travel = [np.ptp(lm[:, nose, :2], axis=0).max() for lm in (still, moving, strong)]
    assert travel[0] < 1e-3 and 0.5 < travel[1] < 0.15 * len(crop) and travel[2] == pytest.approx(2 * travel[1], 0.05)


@pytest.fixture(scope="module")
def animator():
    cfg = load_config(InferenceConfig, str(ROOT / "configs/inference/tiny/inference.yaml"),
                      ["checkpoint=", "num_inference_steps=1", "paste_back=false"])
    return Animator.from_config(cfg, device="cpu")


def test_audio_only_driving_gets_eye_control_from_the_idle_driver(animator, testcases):
    source, audio = str(testcases / "source" / "10.png"), str(testcases / "driver" / "audio_ENTF_1.mp4")
    a = animator.animate(source, audio=audio, mode="audio", limit=1.0, seed=5, progress=False)
    b = animator.animate(source, audio=audio, mode="audio", limit=1.0, seed=5, progress=False)
    assert a.control is not None and len(a.control) == len(a.frames) == 25
    assert np.array_equal(a.control, b.control) and np.array_equal(a.frames, b.frames)
    lower_half = a.control[:, 40:]  # eye patches only: the mouth is the audio's
    assert lower_half.max() == 0 and a.control[:, :40].max() > 0
    animator.cfg.idle_motion = False
    try:
        plain = animator.animate(source, audio=audio, mode="audio", limit=1.0, seed=5, progress=False)
    finally:
        animator.cfg.idle_motion = True
    assert plain.control is None and plain.driver is None
