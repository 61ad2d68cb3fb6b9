"""Self-reenactment pixel fidelity: PSNR and SSIM of each result frame against the driver frame it
reproduces (torchmetrics' implementations, on 0-255 RGB). Meaningful only when the source is a frame of the
driver, so that a perfect result is the driver itself; identical frames read ``PSNR_CAP`` dB, not infinity.
SSIM runs in float32 (float64 is 15 times slower on a CPU, for digits past the fifth), and the scorer reads it
on evenly spaced frames only (``ssim_frames``): about 0.1-0.3 s a 512x512 frame on one CPU core."""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

PSNR_CAP = 100.0  # dB: what identical frames read (their PSNR is infinite)


def _tensor(frame: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.array(frame)).permute(2, 0, 1)[None].to(dtype)  # (1, 3, H, W)


def frame_psnr(result: np.ndarray, target: np.ndarray) -> float:
    """(H, W, 3) uint8 frames -> PSNR in dB, at most PSNR_CAP."""
    value = float(peak_signal_noise_ratio(_tensor(result), _tensor(target), data_range=255.0))
    return min(value, PSNR_CAP)


def frame_ssim(result: np.ndarray, target: np.ndarray) -> float:
    """(H, W, 3) uint8 frames -> SSIM (Gaussian window 11, sigma 1.5) in [-1, 1]."""
    return float(structural_similarity_index_measure(_tensor(result, torch.float32), _tensor(target, torch.float32),
                                                     data_range=255.0))
