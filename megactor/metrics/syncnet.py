"""SyncNet (Chung & Zisserman 2016) lip-sync confidence and offset, when its weights are given.

The network and the evaluation follow the reference implementation
(joonson/syncnet_python: ``SyncNetModel.S`` and ``SyncNetInstance.evaluate``),
so its released weights (``syncnet_v2.model``, a state dict) load as they are:
25 fps face crops resized to 224x224 in BGR, 0-255, in windows of 5 frames;
MFCCs of the 16 kHz audio (13 coefficients at 100 Hz, as python_speech_features
computes them from 16-bit samples) in windows of 20. For each video window the
distance to the audio windows at offsets -max_lag ... max_lag is averaged over
the clip; the best offset is the lag and ``median - min`` of those mean
distances the confidence.

No weights ship with the project; ``SyncNetScorer`` raises FileNotFoundError
naming the path when they are missing.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import scipy.fft
import torch
from torch import nn

from megactor.metrics.lipsync import SyncResult

FPS = 25.0  # SyncNet's video rate: 4 MFCC frames (100 Hz) per video frame
SAMPLE_RATE = 16000


def _conv2d(cin, cout, pool=None, **kw):
    layers = [nn.Conv2d(cin, cout, **kw), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers + ([nn.MaxPool2d(**pool)] if pool else [])


def _conv3d(cin, cout, pool=None, **kw):
    layers = [nn.Conv3d(cin, cout, **kw), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return layers + ([nn.MaxPool3d(**pool)] if pool else [])


class SyncNet(nn.Module):
    """The reference ``S`` network; module names match its state dict."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv2d(1, 64, dict(kernel_size=1, stride=1), kernel_size=3, padding=1),
            *_conv2d(64, 192, dict(kernel_size=3, stride=(1, 2)), kernel_size=3, padding=1),
            *_conv2d(192, 384, kernel_size=3, padding=1),
            *_conv2d(384, 256, kernel_size=3, padding=1),
            *_conv2d(256, 256, dict(kernel_size=3, stride=2), kernel_size=3, padding=1),
            *_conv2d(256, 512, kernel_size=(5, 4)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_conv3d(3, 96, dict(kernel_size=(1, 3, 3), stride=(1, 2, 2)), kernel_size=(5, 7, 7), stride=(1, 2, 2)),
            *_conv3d(96, 256, dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                     kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 256, dict(kernel_size=(1, 3, 3), stride=(1, 2, 2)), kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d(256, 512, kernel_size=(1, 6, 6)),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR 0-255 windows -> (N, embed_dim)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def syncnet_mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(S,) float audio in [-1, 1] -> (13, F) MFCCs at 100 Hz, as ``python_speech_features.mfcc`` with its
    defaults computes them from 16-bit samples (25 ms rectangular windows, 512-point FFT, 26 mel filters,
    pre-emphasis 0.97, lifter 22, c0 replaced by the log frame energy)."""
    signal = np.asarray(audio, np.float64) * 32768.0
    signal = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
    win, hop, nfft = int(round(0.025 * sample_rate)), int(round(0.01 * sample_rate)), 512
    count = 1 if len(signal) <= win else 1 + int(np.ceil((len(signal) - win) / hop))
    signal = np.pad(signal, (0, (count - 1) * hop + win - len(signal)))
    frames = signal[np.arange(count)[:, None] * hop + np.arange(win)]  # (F, win)
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft  # (F, 257)
    energy = power.sum(1)
    mel = np.linspace(0, 2595 * np.log10(1 + sample_rate / 2 / 700), 28)
    bins = np.floor((nfft + 1) * 700 * (10 ** (mel / 2595) - 1) / sample_rate).astype(int)
    bank = np.zeros((26, nfft // 2 + 1))
    for j in range(26):
        rise, fall = np.arange(bins[j], bins[j + 1]), np.arange(bins[j + 1], bins[j + 2])
        bank[j, rise] = (rise - bins[j]) / (bins[j + 1] - bins[j])
        bank[j, fall] = (bins[j + 2] - fall) / (bins[j + 2] - bins[j + 1])
    tiny = np.finfo(float).eps
    feat = np.log(np.where((fb := power @ bank.T) == 0, tiny, fb))
    cep = scipy.fft.dct(feat, type=2, axis=1, norm="ortho")[:, :13]
    cep *= 1 + 11.0 * np.sin(np.pi * np.arange(13) / 22)
    cep[:, 0] = np.log(np.where(energy == 0, tiny, energy))
    return cep.T.astype(np.float32)


def mean_distances(lip: torch.Tensor, aud: torch.Tensor, max_lag: int) -> torch.Tensor:
    """(W, D) video and audio window embeddings -> (2 * max_lag + 1,) mean distance of video window i to
    audio window i + lag, for lag = -max_lag ... max_lag (missing audio windows count as zero vectors)."""
    windows = len(lip)
    padded = nn.functional.pad(aud, (0, 0, max_lag, max_lag))  # audio window i + lag at row i + max_lag + lag
    return torch.stack([(lip - padded[k:k + windows]).norm(dim=1) for k in range(2 * max_lag + 1)], 1).mean(0)


class SyncNetScorer:
    """Loads SyncNet weights (a state dict, e.g. syncnet_v2.model) and scores face-crop clips."""

    def __init__(self, weights: str, device: str = "cpu", batch_size: int = 20):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"SyncNet weights not found: {weights!r} (the state dict syncnet_v2.model "
                                    "of joonson/syncnet_python; none ships with this project)")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.net = SyncNet()
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{weights}: not SyncNet weights ({str(e).splitlines()[0]})") from None
        self.net.to(device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def score(self, faces: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE,
              max_lag: int = 15) -> SyncResult:
        """faces (T, H, W, 3) RGB uint8 face crops at ``fps``, audio (S,) 16 kHz mono.

        Returns the confidence (``score``), the lag in 25 fps frames (> 0: the audio is late)
        and minus the mean distance per lag (``correlations``, -max_lag ... max_lag).
        """
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"SyncNet needs {SAMPLE_RATE} Hz audio, got {sample_rate}")
        keep = np.floor(np.arange(int(len(faces) * FPS / fps)) * fps / FPS).astype(int)  # resample to 25 fps
        video = np.stack([cv2.resize(faces[i], (224, 224))[..., ::-1] for i in keep])  # (T, 224, 224, 3) BGR
        mfcc = torch.from_numpy(syncnet_mfcc(audio))  # (13, F)
        windows = min(len(video), len(audio) // 640) - 5
        if windows < 1:
            raise ValueError(f"SyncNet needs more than 5 frames at 25 fps, got {min(len(video), len(audio) // 640)}")
        video = torch.from_numpy(np.ascontiguousarray(video)).float().permute(3, 0, 1, 2)  # (3, T, 224, 224)
        lip, aud = [], []
        for start in range(0, windows, self.batch_size):
            idx = range(start, min(windows, start + self.batch_size))
            lip.append(self.net.forward_lip(torch.stack([video[:, i:i + 5] for i in idx]).to(self.device)).cpu())
            aud.append(self.net.forward_aud(torch.stack([mfcc[None, :, 4 * i:4 * i + 20] for i in idx]).to(self.device)).cpu())
        mean = mean_distances(torch.cat(lip), torch.cat(aud), max_lag)
        best = int(mean.argmin())
        return SyncResult(score=float(mean.median() - mean[best]), lag=best - max_lag, correlations=(-mean).numpy())
