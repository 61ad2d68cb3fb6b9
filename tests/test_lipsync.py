"""Lip-sync score: lag sign and recovery on synthetic signals and on the real clips with shifted audio."""
import numpy as np
import pytest
import scipy.signal

from megactor.curation.config import CurationConfig
from megactor.data.face import build_face_analyser, mouth_opening
from megactor.data.video_io import read_video
from megactor.metrics.lipsync import lip_sync, min_frames

SR = 16000


def shift_audio(audio: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """Delay (frames > 0) or advance (< 0) the audio by whole video frames, padding with silence."""
    n = int(round(abs(frames) * SR / fps))
    if frames > 0:
        return np.concatenate([np.zeros(n, audio.dtype), audio[:-n]])
    if frames < 0:
        return np.concatenate([audio[n:], np.zeros(n, audio.dtype)])
    return audio


def synthetic_talk(seconds: float, seed: int, fps: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """A syllable envelope drives both a band-limited noise 'voice' and the mouth opening, frame-synchronous."""
    rng = np.random.default_rng(seed)
    T = int(seconds * fps)
    syllables = np.convolve(rng.random(T) < 0.18, np.hanning(7), mode="same")  # (T,) smooth bursts
    mouth = 0.05 + 0.3 * syllables
    per_sample = np.repeat(syllables, int(SR / fps))  # (T * SR / fps,)
    sos = scipy.signal.butter(4, [300, 3000], btype="band", fs=SR, output="sos")
    voice = scipy.signal.sosfilt(sos, rng.standard_normal(per_sample.size)) * per_sample
    return mouth, (0.1 * voice / np.abs(voice).max()).astype(np.float32)


@pytest.mark.parametrize("delay", [-9, -3, 0, 4, 12])
def test_lag_sign_on_synthetic_speech(delay):
    mouth, audio = synthetic_talk(6.0, seed=delay + 20)
    result = lip_sync(mouth, shift_audio(audio, delay, 25.0), SR, 25.0)
    assert result.lag == delay  # positive: the audio is late
    assert result.score > 0.8


def test_missing_frames_are_interpolated_and_short_clips_refused():
    mouth, audio = synthetic_talk(4.0, seed=1)
    mouth[10:14] = np.nan
    assert lip_sync(mouth, audio, SR, 25.0).lag == 0
    with pytest.raises(ValueError, match="at least"):
        lip_sync(mouth[:min_frames(25.0, 15) - 1], audio, SR, 25.0)
    with pytest.raises(ValueError, match="no frame"):
        lip_sync(np.full(60, np.nan), audio, SR, 25.0)


@pytest.fixture(scope="module")
def real_talk(testcases):
    """(mouth opening (T,), 16 kHz audio, fps) of each real driver clip, from MediaPipe's mesh."""
    out = {}
    with build_face_analyser() as analyser:
        for path in sorted((testcases / "driver").glob("*.mp4")):
            clip = read_video(str(path))
            lm = np.stack([faces[0].landmarks for faces in analyser.track(clip.frames)])
            out[path.name] = (mouth_opening(lm), clip.audio, clip.fps)
    return out


def test_real_clips_are_in_sync_under_default_limits(real_talk):
    cfg = CurationConfig()
    for name, (mouth, audio, fps) in real_talk.items():
        result = lip_sync(mouth, audio, SR, fps, cfg.sync_search_frames)
        # the mouth leads the voice by a few frames in natural speech: a small positive lag
        assert 0 <= result.lag <= cfg.max_sync_lag, (name, result)
        assert result.score >= cfg.min_sync_score, (name, result)


@pytest.mark.parametrize("shift", [-8, 8])
def test_real_clips_lag_follows_shifted_audio(real_talk, shift):
    for name, (mouth, audio, fps) in real_talk.items():
        synced = lip_sync(mouth, audio, SR, fps)
        shifted = lip_sync(mouth, shift_audio(audio, shift, fps), SR, fps)
        assert abs(shifted.lag - synced.lag - shift) <= 1, (name, synced.lag, shifted.lag)
        # at the clip's own sync the shifted audio no longer matches the mouth
        at_sync = shifted.correlations[synced.lag + 15]
        assert at_sync < synced.score - 0.2, (name, synced.score, at_sync)
