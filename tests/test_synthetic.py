"""Synthetic talking heads: MediaPipe finds them, their mouths follow their audio, files are sound."""
import json
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
from PIL import Image

from megactor.data import face as F
from megactor.data import synthetic as S
from megactor.data.video_io import AUDIO_RATE, probe, read_video

FPS = 25
REPO = Path(__file__).resolve().parents[1]


def frame_rms(audio: np.ndarray, fps: float = FPS) -> np.ndarray:
    """librosa RMS with one value per video frame, centred on the frame's time."""
    hop = int(round(AUDIO_RATE / fps))
    return librosa.feature.rms(y=audio, frame_length=2 * hop, hop_length=hop, center=True)[0]


@pytest.mark.parametrize("seed,size", [(0, 128), (1, 256)])
def test_mouth_in_pixels_follows_the_audio(analyser, seed, size):
    frames, audio, truth = S.generate_clip(np.random.default_rng(seed), seconds=4.0, size=size, fps=FPS)
    faces = analyser.track(frames)
    assert all(len(f) == 1 for f in faces)
    measured = F.mouth_opening(np.stack([f[0].landmarks for f in faces]))  # (T,), from the pixels
    rms = frame_rms(audio)[:len(frames)]
    assert np.corrcoef(measured, rms)[0, 1] >= 0.8  # measured 0.86-0.95 over 40 clips
    true = np.array(truth["mouth_opening"])
    assert np.corrcoef(measured, true)[0, 1] >= 0.85
    slope = np.polyfit(true, measured, 1)[0]
    assert 0.6 < slope < 1.4  # the truth is on face.mouth_opening's scale


@pytest.mark.parametrize("size", [128, 256])
def test_mediapipe_finds_the_faces(analyser, size):
    for seed in range(10, 13):
        frames, _, truth = S.generate_clip(np.random.default_rng(seed), seconds=2.0, size=size, fps=FPS)
        faces = analyser.track(frames)
        assert np.mean([len(f) == 1 for f in faces]) >= 0.95  # the curation drops clips under 0.9
        centres = np.array([f[0].box.reshape(2, 2).mean(0) for f in faces])  # (T, 2)
        assert np.corrcoef(centres[:, 0], truth["head_x"])[0, 1] > 0.8  # the head moves as recorded
        assert np.abs(centres.mean(0) / size - [0.5, 0.46]).max() < 0.08


def test_speech_has_syllables_and_pauses():
    audio, envelope = S.speech_audio(np.random.default_rng(3), 6.0, f0=150.0)
    assert audio.dtype == np.float32 and len(audio) == 6 * AUDIO_RATE and np.abs(audio).max() <= 1.0
    rms = frame_rms(audio)
    quiet = rms < 0.1 * rms.max()
    assert 0.15 < quiet.mean() < 0.7  # pauses between syllables and phrases
    assert np.sum(np.diff(quiet.astype(int)) == 1) >= 6  # many separate sounds
    assert np.corrcoef(rms[:len(rms) - 1], envelope[::AUDIO_RATE // FPS][:len(rms) - 1])[0, 1] > 0.9


def test_same_seed_same_clip_and_fast():
    start = time.perf_counter()
    a = S.generate_clip(np.random.default_rng(7), seconds=4.0, size=128, fps=FPS)
    elapsed = time.perf_counter() - start
    b = S.generate_clip(np.random.default_rng(7), seconds=4.0, size=128, fps=FPS)
    c = S.generate_clip(np.random.default_rng(8), seconds=4.0, size=128, fps=FPS)
    assert a[0].shape == (100, 128, 128, 3) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) and a[2]["identity"] != c[2]["identity"]
    assert elapsed < 3.0  # measured ~0.2 s


def test_dataset_files(tmp_path):
    paths = S.generate_dataset(str(tmp_path), clips=2, seconds=1.5, size=96, fps=FPS, seed=5)
    assert [p.name for p in paths] == ["clip_0000.mp4", "clip_0001.mp4"]
    for path in paths:
        info = probe(str(path))
        assert info["has_audio"] and info["width"] == 96 and info["fps"] == FPS
        truth = json.loads(path.with_suffix(".json").read_text())
        assert truth["num_frames"] == 38 and truth["seed"] == 5
        assert set(truth["identity"]) >= {"skin", "hair", "f0"}
        for key in ("mouth_opening", "eye_opening", "head_x", "head_y", "head_roll"):
            assert len(truth[key]) == truth["num_frames"], key
        clip = read_video(str(path))
        assert clip.num_frames == 38 and clip.audio is not None and np.abs(clip.audio).max() > 0.05
        still = np.asarray(Image.open(path.with_suffix(".png")))  # the first frame, lossless: a source portrait
        assert still.shape == (96, 96, 3) and np.abs(still.astype(int) - clip.frames[0]).mean() < 3
    assert not list(tmp_path.glob(".tmp-*"))
    again = S.generate_dataset(str(tmp_path / "more"), clips=3, seconds=1.5, size=96, fps=FPS, seed=5, workers=2)
    assert [p.name for p in again] == ["clip_0000.mp4", "clip_0001.mp4", "clip_0002.mp4"]
    sidecar = lambda p: json.loads(p.with_suffix(".json").read_text())
    assert sidecar(again[1]) == sidecar(paths[1])  # clip i depends on (seed, i) only, whatever the workers
    np.testing.assert_array_equal(read_video(str(again[1])).frames, read_video(str(paths[1])).frames)


def test_cli(tmp_path):
    run = subprocess.run([sys.executable, "-m", "megactor.data.synthetic", "--out", str(tmp_path), "--clips", "1",
                          "--seconds", "1", "--size", "64"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "clip_0000.mp4").is_file() and (tmp_path / "clip_0000.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "megactor.data.synthetic", "--out", str(tmp_path), "--clips", "0"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "--clips" in bad.stderr
