"""Lip-sync of a talking-head clip without weights: canonical correlation of the mouth's look and the audio.

``lip_sync`` takes a per-frame lip signal of several components and the loudness
of the audio in five bands, and at each lag finds the linear combinations of each
side that correlate best (canonical correlation, as FaceSync, Slaney and Covell
2000, does between face pixels and audio). The lip signal the curation uses is
the mouth's appearance: the first three principal components, over the clip, of
a grayscale patch cut upright around the lips and normalised to zero mean and
unit variance (``mouth_components``; the patch from ``data.control.mouth_patch``):
the dark opening, the rounding, the teeth, not the exposure. The result is the
lag whose match is highest, and a confidence: how far that peak stands above the
rest of the curve, ``(peak - mean) / std`` over the lags searched. An unrelated
voice gives a curve without a standing peak; a shifted one moves the peak.

Lag sign: ``lag > 0`` means the audio is late. The lips of frame ``t`` match the
audio of frame ``t + lag``; delaying a clip's audio by ``d`` frames adds ``d`` to
its lag. In natural speech the mouth moves before the sound it shapes (by
100-300 ms at syllable onsets, Chandrasekaran et al. 2009), so an in-sync clip
reads a lag of about 0 to +300 ms; the curation window is -100 ... +300 ms
(``CurationConfig.min_sync_lag_ms``, ``max_sync_lag_ms``: milliseconds, so that it
means the same at every frame rate; -100 allows for a frame or two of jitter).

Signal processing:

- Audio: log power in 80-300, 300-800, 800-1500, 1500-3000 and 3000-6000 Hz
  (4th-order Butterworth, zero phase) over two frame periods around each frame's
  centre, floored 30 dB under the band's mean. The bands carry what one envelope
  averages away: voicing in the low band, the fricatives that a rounded or spread
  mouth shapes in the high ones. Frames of digital silence (RMS under 16-bit
  quantisation noise: the zeros that fill a shifted or late-starting track) are
  left out of the match, their loudness interpolated so that the band-pass sees
  no cliff: padding says nothing about the mouth.
- Both sides are band-passed to syllable rates (1-6 Hz, 2nd order, zero phase)
  and z-scored: slow drifts (leaning in, loudness) and jitter go.
- The match at a lag, over the overlapping frames: the RMS of the first two
  canonical correlations (ridge 0.3 on unit-variance inputs: a few seconds of
  syllable-rate signal hold only some tens of independent samples, and plain CCA
  of 3 x 5 signals finds correlation in noise), as Fisher's z, times
  sqrt(overlap / T): the z of a correlation over n samples has a standard error
  of about 1 / sqrt(n), so a lag with less overlap needs a higher correlation to
  win, as much as chance requires. Two correlations, because the mouth shapes
  sound in more than one way (opening with loudness, rounding with the spectrum).
  Lags keep at least a second of overlap.

Checked against: the 13 in-sync real clips of ``../shared/testcases/driver`` and
``wild/driver``, cut as ``pack`` cuts them, each with its audio delayed and
advanced by 5, 10 and 15 frames (silence filling) and with the audio of three
other clips (``bench/sync_eval.py``, which runs the audio filter's own
functions). Shares below: in-sync kept / shifts of 10+ dropped / swapped dropped /
shifted lags that moved by the shift (+-1 frame). Targets 0.9 / 0.9 / 0.8 / 0.9.

- The first measure (the inner-lip gap against one 300-3000 Hz envelope, the
  correlation at the best lag; kept if >= 0.2 at |lag| <= 8 frames of +-15): on
  17 pieces of at most 8 s, 0.65 / 0.65 / 0.53 / 0.62; in-sync lags from -13 to
  +13 frames (the peak aliasing to the next syllable).
- Landmark lip measures with CCA (whole clips, lags +-25): inner gap, outer
  height, width and inner area x 5 bands 0.85 / 0.83 / 0.74; inner gap and width
  x 5 bands 0.85-0.92 / 0.87 / 0.69-0.72 (ridge 0.1-0.3); x 3 bands 0.85 / 0.85 /
  0.77; x 1 envelope 0.69-0.77 / 0.8 / 0.62-0.77. Derivatives (onsets) of both
  sides: sharper peaks, more aliasing (kept 0.77 at best). Modulation bands
  0.5-8 and 1-8 Hz: lower. Confidence as peak minus median (SyncNet's form) or
  the raw peak: a few points lower than the z-score; a permutation null (the peak
  against the audio circularly shifted by more than a second): swapped dropped
  0.85 but in-sync kept 0.69. On the 8 s pieces, landmark measures read
  0.88 / 0.79 / 0.69 / 0.67, and two in-sync clips at -400 and -500 ms.
- Mouth appearance, first canonical correlation scaled by overlap / T, on the 17
  pieces: 1, 2, 3, 4, 6, 8 components kept 0.65, 0.82, 0.82, 0.94, 0.76, 0.82 of
  the in-sync pieces before the silence floor; with it, 3 components: 0.88 /
  0.88 / 0.82 / 0.75. The misses were mostly the 2 s tails of longer clips.

From here on, on the 18 equal pieces that ``pack`` now cuts (none under 3 s),
scored on mouth patches cached from one face-analysis run (the bench analyses
each piece afresh, which moves a figure by a copy or two):

- The measure above on equal pieces: 0.89 / 0.92 / 0.78 / 0.79.
- The match: RMS of 2 canonical correlations as Fisher's z (this one) 0.94 /
  0.96 / 0.83 / 0.87; the first alone as Fisher's z 0.89 / 0.93 / 0.81 / 0.81;
  2 scaled by overlap / T 0.94 / 0.93 / 0.67 / 0.84; all 3, 0.94 / 0.96 / 0.80 /
  0.85; Wilks' lambda (-sum log(1 - rho^2)) 0.94 / 0.97 / 0.78 / 0.85. Ridge 0.1
  and 1.0: 0.94 / 0.96 / 0.81 / 0.89 and 0.89 / 0.94 / 0.81 / 0.80. Four mouth
  components 0.94 / 0.94 / 0.76 / 0.82. Eight audio bands 0.94 / 0.97 / 0.85 /
  0.87; four (no 3-6 kHz) 0.94 / 0.97 / 0.78 / 0.85. Syllable band 1-8, 0.5-6 and
  1.5-7 Hz: tracking 0.85-0.87, no better elsewhere. The z of the peak over the
  curve outside its own lobe (+-3 lags): in-sync and swapped scores rise
  together. The same lip frames at every lag (the central T - 2 L): 0.83 / 0.93 /
  0.83 / 0.88. Only interior maxima as peaks: 0.94 / 0.96 / 0.81 / 0.86.
- Mouth patches normalised (zero mean, unit variance each) before the PCA:
  0.94 / 0.96 / 0.83 / 0.91; the PCA on syllable-band-passed patches instead
  0.83 / 0.90 / 0.76 / 0.82, both 0.89 / 0.96 / 0.83 / 0.82.
- Digital silence left out of the match (this measure): 0.94 / 0.97 / 0.83 /
  0.94; what ``python bench/sync_eval.py`` prints: 0.94 / 0.97 / 0.85 / 0.91.
  The threshold of 2.0 and the ridge of 0.3 are those of the measures before,
  not re-tuned.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import scipy.signal

AUDIO_BANDS_HZ = ((80.0, 300.0), (300.0, 800.0), (800.0, 1500.0), (1500.0, 3000.0), (3000.0, 6000.0))
SYLLABLE_BAND_HZ = (1.0, 6.0)
CCA_RIDGE = 0.3
LOUDNESS_FLOOR = 1e-3  # band power is floored 30 dB under its clip mean: silence is quiet, not -inf
MOUTH_COMPONENTS = 3
CANONICAL_PAIRS = 2  # the match pools the first two canonical correlations: the mouth shapes sound in more than one way
MAX_CORRELATION = 0.999  # Fisher's z is infinite at 1
DIGITAL_SILENCE = 3e-6  # RMS under 16-bit quantisation noise (2^-15 / sqrt(12) = 9e-6): zeros, not a quiet room


@dataclass(frozen=True)
class SyncResult:
    score: float  # higher is better: the confidence of the best lag (here a z-score; SyncNet: its confidence)
    lag: int  # video frames; > 0: the audio is late
    correlations: np.ndarray  # (2 * L + 1,) the match at the lags searched, -L ... L (higher is better)


def mouth_components(patches: list, k: int = MOUTH_COMPONENTS) -> np.ndarray:
    """Per-frame (h, w) mouth patches (None where no face) -> (T, k) their first ``k`` principal components
    over the clip (NaN where no face): how the mouth's look (opening, rounding, teeth) changes. Each patch is
    first brought to zero mean and unit variance, so that exposure and lighting changes are not read as
    movement of the mouth."""
    known = [p for p in patches if p is not None]
    out = np.full((len(patches), k), np.nan)
    if len(known) < 2:
        return out
    x = np.stack([np.asarray(p, np.float64).reshape(-1) for p in known])  # (F, h * w)
    x -= x.mean(1, keepdims=True)
    x /= np.maximum(x.std(1, keepdims=True), 1e-6)
    x -= x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    n = min(k, len(s))
    rows = [i for i, p in enumerate(patches) if p is not None]
    out[rows] = 0.0
    out[rows, :n] = u[:, :n] * s[:n]
    return out


def frame_power(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """(S,) audio -> (num_frames,) its mean power over two frame periods around each frame's centre."""
    window = max(1, int(round(2 * sample_rate / fps)))
    centres = np.round((np.arange(num_frames) + 0.5) / fps * sample_rate).astype(np.int64)  # each frame's centre
    power = scipy.ndimage.uniform_filter1d(np.square(audio), window, mode="constant")  # (S,) centred mean
    return np.maximum(power[np.clip(centres, 0, len(power) - 1)], 0.0)


def audible_frames(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """(S,) audio -> (num_frames,) True where the track holds sound, False in digital silence: a gap filled
    with zeros (a shifted or late-starting track), quieter than 16-bit quantisation noise."""
    return np.sqrt(frame_power(np.asarray(audio, np.float64), sample_rate, fps, num_frames)) > DIGITAL_SILENCE


def band_loudness(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """(S,) mono audio -> (num_frames, len(AUDIO_BANDS_HZ)) log RMS of each band around each frame's centre."""
    audio = np.asarray(audio, np.float64)
    out = np.zeros((num_frames, len(AUDIO_BANDS_HZ)))
    for i, (low, high) in enumerate(AUDIO_BANDS_HZ):
        high = min(high, 0.45 * sample_rate)
        if low >= high:
            continue  # a band above the Nyquist rate: constant, so z-scoring zeroes it
        sos = scipy.signal.butter(4, [low, high], btype="band", fs=sample_rate, output="sos")
        if audio.size <= 3 * (2 * len(sos) + 1):  # too short to filter (sosfiltfilt's padding): no voice
            break
        power = frame_power(scipy.signal.sosfiltfilt(sos, audio), sample_rate, fps, num_frames)  # (num_frames,)
        out[:, i] = 0.5 * np.log(power + LOUDNESS_FLOOR * power.mean() + 1e-12)
    return out


def syllable_rate(signal: np.ndarray, fps: float) -> np.ndarray:
    """(T, K) per-frame signals -> (T, K) band-passed to syllable rates and z-scored (zeros where constant)."""
    low, high = SYLLABLE_BAND_HZ
    high = min(high, 0.45 * fps)
    sos = scipy.signal.butter(2, [low, high], btype="band", fs=fps, output="sos")
    x = scipy.signal.sosfiltfilt(sos, np.asarray(signal, np.float64), axis=0)
    x = x - x.mean(0)
    std = x.std(0)
    return x / np.where(std > 1e-12, std, np.inf)


def canonical_correlations(a: np.ndarray, b: np.ndarray, ridge: float = CCA_RIDGE) -> np.ndarray:
    """(N, Ka), (N, Kb) -> (min(Ka, Kb),) the canonical correlations, largest first, with ``ridge`` added to
    each covariance."""
    a, b = a - a.mean(0), b - b.mean(0)
    n = len(a)
    whiten_a = np.linalg.inv(np.linalg.cholesky(a.T @ a / n + ridge * np.eye(a.shape[1])))
    whiten_b = np.linalg.inv(np.linalg.cholesky(b.T @ b / n + ridge * np.eye(b.shape[1])))
    return np.linalg.svd(whiten_a @ (a.T @ b / n) @ whiten_b.T, compute_uv=False)


def match(lips: np.ndarray, audio: np.ndarray, T: int) -> float:
    """(N, Ka), (N, Kb) overlapping frames of a clip of ``T`` -> how well they match: Fisher's z of the RMS of
    the first ``CANONICAL_PAIRS`` canonical correlations, times sqrt(N / T). The z of a correlation over N
    samples has a standard error of about 1 / sqrt(N): scaled so, a lag with less overlap needs a higher
    correlation to win, as much as chance requires and no more."""
    rho = canonical_correlations(lips, audio)[:CANONICAL_PAIRS]
    return float(np.arctanh(min(np.sqrt(np.mean(np.square(rho))), MAX_CORRELATION)) * np.sqrt(len(lips) / T))


def lagged_correlation(lips: np.ndarray, audio: np.ndarray, max_lag: int, heard: np.ndarray) -> np.ndarray:
    """(T, Ka), (T, Kb), (T,) audible audio frames -> (2 * max_lag + 1,) their ``match`` over the overlapping
    frames at lags -max_lag ... max_lag, leaving out the frames whose audio is digital silence."""
    T = len(lips)
    out = np.zeros(2 * max_lag + 1)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        overlap = slice(max(0, -lag), T - max(0, lag)), slice(max(0, lag), T - max(0, -lag))
        sound = heard[overlap[1]]
        if sound.sum() > lips.shape[1] + audio.shape[1]:
            out[i] = match(lips[overlap[0]][sound], audio[overlap[1]][sound], T)
    return out


def fill_gaps(signal: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(T, K) signal, (T,) the frames where it is known -> (T, K) linearly interpolated across the rest."""
    frames = np.flatnonzero(known)
    return np.stack([np.interp(np.arange(len(signal)), frames, k[frames]) for k in signal.T], 1)


def min_frames(fps: float) -> int:
    """The shortest clip ``lip_sync`` scores: a second and two frames, so that lags of +-1 keep a second."""
    return int(np.ceil(fps)) + 2


def lip_sync(lips: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, max_lag: int = 25) -> SyncResult:
    """Score how well the lip signal ``lips`` (T,) or (T, K) follows ``audio`` (S,) mono at ``sample_rate``.

    Lags -max_lag ... max_lag are searched, fewer on a clip too short for them: every lag keeps an
    overlap of at least a second. Frames without measured lips may be NaN; they are filled by linear
    interpolation. Frames whose audio is digital silence are left out of the match (their loudness is
    interpolated, so that the band-pass sees no cliff): padding is not evidence of a closed mouth. Raises
    ValueError for clips shorter than ``min_frames``, or without lips or sound.
    """
    lips = np.asarray(lips, np.float64)
    lips = lips[:, None] if lips.ndim == 1 else lips  # (T, K)
    T = len(lips)
    if T < min_frames(fps):
        raise ValueError(f"lip_sync needs at least {min_frames(fps)} frames at {fps} fps, got {T}")
    max_lag = min(max_lag, (T - int(np.ceil(fps))) // 2)
    known = np.isfinite(lips).all(1)
    if not known.any():
        raise ValueError("lip_sync: no frame has lip measures")
    lips = fill_gaps(lips, known)
    heard = audible_frames(audio, sample_rate, fps, T)
    if heard.sum() < 2:
        raise ValueError("lip_sync: the audio is digital silence")
    loudness = fill_gaps(band_loudness(audio, sample_rate, fps, T), heard)  # (T, len(AUDIO_BANDS_HZ))
    corr = lagged_correlation(syllable_rate(lips, fps), syllable_rate(loudness, fps), max_lag, heard)
    best = int(np.argmax(corr))
    spread = corr.std()
    score = float((corr[best] - corr.mean()) / spread) if spread > 1e-12 else 0.0
    return SyncResult(score=score, lag=best - max_lag, correlations=corr)


def sync_columns(lips: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, max_lag: int = 25) -> dict:
    """``lip_sync`` as table columns: "sync_score", "sync_lag" (video frames, > 0: the audio is late) and
    "sync_lag_ms". A clip it cannot score (too short, no lips measured) reads a NaN score, no lag, and
    "sync_error" saying why. The curation's audio filter and ``evaluate.py`` both score clips through this."""
    try:
        sync = lip_sync(lips, audio, sample_rate, fps, max_lag)
    except ValueError as e:
        return {"sync_score": float("nan"), "sync_lag": None, "sync_lag_ms": None, "sync_error": str(e)}
    return {"sync_score": sync.score, "sync_lag": sync.lag, "sync_lag_ms": sync.lag * 1000.0 / fps}
