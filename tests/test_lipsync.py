"""Lip-sync measure: lag sign and confidence on synthetic signals; on the real clips, the audio filter's decision
on in-sync and shifted audio (bench/sync_eval.py measures it on every real clip)."""
import numpy as np
import pytest
import scipy.signal

from megactor.curation.audio_filter import measure_sync, sync_reason, sync_signal
from megactor.curation.config import CurationConfig
from megactor.curation.face_filter import analyse_clip
from megactor.data.face import build_face_analyser
from megactor.data.video_io import read_video
from megactor.metrics.lipsync import audible_frames, band_loudness, lip_sync, min_frames, mouth_components

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
    assert result.score > CurationConfig().min_sync_score


def test_unrelated_audio_has_no_standing_peak():
    mouth, _ = synthetic_talk(6.0, seed=1)
    _, other = synthetic_talk(6.0, seed=2)
    assert lip_sync(mouth, other, SR, 25.0).score < lip_sync(mouth, synthetic_talk(6.0, seed=1)[1], SR, 25.0).score - 1


def test_missing_frames_are_interpolated_and_short_clips_refused():
    mouth, audio = synthetic_talk(4.0, seed=1)
    mouth[10:14] = np.nan
    assert lip_sync(mouth, audio, SR, 25.0).lag == 0
    with pytest.raises(ValueError, match="at least"):
        lip_sync(mouth[:min_frames(25.0) - 1], audio, SR, 25.0)
    with pytest.raises(ValueError, match="no frame"):
        lip_sync(np.full(60, np.nan), audio, SR, 25.0)


def test_short_clips_search_fewer_lags():
    mouth, audio = synthetic_talk(2.0, seed=3)  # 50 frames: lags up to (50 - 25) // 2
    assert len(lip_sync(mouth, audio, SR, 25.0, max_lag=25).correlations) == 2 * 12 + 1


def test_silence_floor_keeps_a_padded_shift_tracking():
    """Delayed audio starts with digital silence; its loudness must stay finite and the lag follow the shift."""
    mouth, audio = synthetic_talk(5.0, seed=4)
    loud = band_loudness(shift_audio(audio, 10, 25.0), SR, 25.0, len(mouth))
    assert np.isfinite(loud).all()
    assert lip_sync(mouth, shift_audio(audio, 10, 25.0), SR, 25.0).lag == 10


def test_digital_silence_is_left_out_of_the_match():
    """A track that starts 2 s late (pack fills the gap with zeros): the silent frames are not heard, and the
    lag and confidence come from the frames with sound."""
    mouth, audio = synthetic_talk(6.0, seed=5)
    late = audio + np.random.default_rng(5).normal(0, 1e-3, audio.shape).astype(np.float32)  # a room's noise floor
    late[:2 * SR] = 0
    heard = audible_frames(late, SR, 25.0, len(mouth))
    assert not heard[:49].any() and heard[51:].all()
    result = lip_sync(mouth, late, SR, 25.0)
    assert result.lag == 0 and result.score > CurationConfig().min_sync_score
    with pytest.raises(ValueError, match="digital silence"):
        lip_sync(mouth, np.zeros_like(audio), SR, 25.0)


@pytest.fixture(scope="module")
def real_talk(testcases):
    """(lip signal (T, 3): mouth appearance, as the face filter records it; 16 kHz audio; fps) per real driver clip."""
    out = {}
    with build_face_analyser() as analyser:
        for path in sorted((testcases / "driver").glob("*.mp4")):
            clip = read_video(str(path))
            faces, _ = analyse_clip(clip.frames, clip.fps, analyser, 64)
            out[path.name] = (sync_signal(faces), clip.audio, clip.fps)
    return out


def test_real_clips_are_in_sync_under_default_limits(real_talk):
    cfg = CurationConfig()
    for name, (lips, audio, fps) in real_talk.items():
        record = {"has_audio": True, "audio_rms": 0.1, **measure_sync(lips, audio, SR, fps, cfg)}
        # the mouth leads the voice in natural speech: a small positive lag
        assert 0 <= record["sync_lag_ms"] <= cfg.max_sync_lag_ms, (name, record)
        assert sync_reason(record, cfg) is None, (name, record)


@pytest.mark.parametrize("shift", [-10, 10])
def test_real_clips_lag_follows_shifted_audio_and_the_copy_is_dropped(real_talk, shift):
    cfg = CurationConfig()
    for name, (lips, audio, fps) in real_talk.items():
        synced = lip_sync(lips, audio, SR, fps, cfg.sync_search_frames)
        shifted = shift_audio(audio, shift, fps)
        assert abs(lip_sync(lips, shifted, SR, fps, cfg.sync_search_frames).lag - synced.lag - shift) <= 1, name
        record = {"has_audio": True, "audio_rms": 0.1, **measure_sync(lips, shifted, SR, fps, cfg)}
        assert sync_reason(record, cfg) is not None, (name, record)


def test_a_clip_too_short_for_the_lag_search_gets_no_verdict(real_talk):
    """At 30 fps, 54 frames (lags searched up to +-12) are too few for a verdict: not scored, not dropped,
    marked; 55 frames (``verdict_frames``: 25 + 30) are scored."""
    cfg = CurationConfig()
    lips, audio, fps = real_talk["audio_CHTF_2.mp4"]
    for frames, unverified in ((54, True), (55, False)):
        record = {"has_audio": True, "audio_rms": 0.1,
                  **measure_sync(lips[:frames], audio[:int(frames / fps * SR)], SR, fps, cfg)}
        assert record["audio_unverified"] is unverified and bool(np.isnan(record["sync_score"])) is unverified
        if unverified:
            assert sync_reason(record, cfg) is None and "needs 55" in record["sync_error"]


def test_mouth_components_follow_the_mouth_not_the_exposure():
    """A dark opening that grows and shrinks, filmed under a flickering exposure: the first component follows
    the opening, not the brightness of the frame."""
    rng = np.random.default_rng(0)
    opening = 0.5 + 0.5 * np.sin(np.linspace(0, 12, 40))
    gain = 1 + 0.4 * rng.random(40)  # exposure flicker, unrelated to the mouth
    y, x = np.mgrid[:24, :32]

    def patch(o: float, g: float) -> np.ndarray:
        lips = np.exp(-((x - 16) / 9) ** 2 - ((y - 12) / (1 + 6 * o)) ** 2)  # the dark opening, taller when open
        return g * (180 - 140 * lips) + rng.normal(0, 1, lips.shape)

    patches = [patch(o, g) for o, g in zip(opening, gain)]
    patches[5] = None
    pcs = mouth_components(patches)
    assert pcs.shape == (40, 3) and np.isnan(pcs[5]).all() and np.isfinite(np.delete(pcs, 5, 0)).all()
    assert abs(np.corrcoef(np.delete(pcs[:, 0], 5), np.delete(opening, 5))[0, 1]) > 0.95
