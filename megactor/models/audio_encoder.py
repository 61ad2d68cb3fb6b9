"""Audio features: a frozen Whisper encoder, and the per-video-frame windows of its features.

Whisper's encoder turns 30-second log-mel windows into 1500 feature frames:
50 per second. SigmaDiT takes, for each video frame, the features of that frame
and its +-`window` neighbours (FEATURES_PER_FRAME per video frame), from every
encoder layer; `AudioProjection` in sigma_dit.py turns them into audio tokens.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from ..config import AudioEncoderConfig

SAMPLE_RATE = 16000
FEATURE_RATE = 50  # Whisper encoder frames per second
FEATURES_PER_FRAME = 2  # feature frames taken per video frame: 50 / 25 fps
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's fixed input length
SAMPLES_PER_FEATURE = SAMPLE_RATE // FEATURE_RATE


def whisper_config(cfg: AudioEncoderConfig) -> WhisperConfig:
    """The Whisper config that `cfg` describes: read from its folder/hub id, or the seeded random one."""
    if cfg.path:
        return WhisperConfig.from_pretrained(cfg.path, subfolder=cfg.subfolder or "")
    return WhisperConfig(
        d_model=cfg.d_model, encoder_layers=cfg.layers, encoder_attention_heads=cfg.heads,
        encoder_ffn_dim=4 * cfg.d_model, decoder_layers=1, decoder_attention_heads=cfg.heads,
        decoder_ffn_dim=4 * cfg.d_model, vocab_size=64, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[],
    )


def feature_shape(cfg: AudioEncoderConfig) -> Tuple[int, int]:
    """(hidden states per feature frame = layers + 1, width) of the encoder `cfg` describes."""
    wc = whisper_config(cfg)
    return wc.encoder_layers + 1, wc.d_model


def window_size(window: int) -> int:
    """Feature frames per video frame's window of +-`window` video frames."""
    return (2 * window + 1) * FEATURES_PER_FRAME


def window_indices(frame_indices: torch.Tensor, fps: torch.Tensor | float, num_features: torch.Tensor | int,
                   window: int = 2) -> torch.Tensor:
    """Feature indices of each video frame's audio window.

    Video frame j starts at feature floor(j * 50 / fps); the window of frame i takes
    FEATURES_PER_FRAME features from each of the frames i-window .. i+window. Indices
    past the clip's ends are clamped to the first/last feature (edge padding).

    frame_indices (..., F) int; fps and num_features broadcast against (...) -> (..., F, W) int64.
    """
    frames = frame_indices.to(torch.float64)
    fps = torch.as_tensor(fps, dtype=torch.float64)
    num_features = torch.as_tensor(num_features)
    if fps.ndim:  # one value per sample: broadcast over frames
        fps, num_features = fps[..., None, None], num_features[..., None, None]
    device = frames.device
    fps, num_features = fps.to(device), num_features.to(device)
    offsets = torch.arange(-window, window + 1, dtype=torch.float64, device=device)  # (2w+1,)
    starts = torch.floor((frames[..., None] + offsets) * FEATURE_RATE / fps).to(torch.int64)  # (..., F, 2w+1)
    idx = starts[..., None] + torch.arange(FEATURES_PER_FRAME, device=device)  # (..., F, 2w+1, k)
    idx = idx.flatten(-2)  # (..., F, W)
    return torch.minimum(idx.clamp(min=0), num_features - 1)


def gather_windows(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """features (B, n, L, d), indices (B, F, W) -> (B, F, W, L, d)."""
    b, f, w = indices.shape
    flat = indices.reshape(b, f * w)
    out = torch.gather(features, 1, flat[:, :, None, None].expand(-1, -1, *features.shape[2:]))
    return out.view(b, f, w, *features.shape[2:])


def num_features(num_samples: int) -> int:
    """Valid feature frames for `num_samples` of 16 kHz audio."""
    return max(1, math.ceil(num_samples / SAMPLES_PER_FEATURE))


def init_stem(encoder: nn.Module) -> None:
    """He-initialise a random Whisper encoder's two input convolutions.

    With transformers' init (normal, std 0.02) the stem's output is about 40 times
    smaller than the sinusoidal position table added to it: the audio's content is
    2.5% of every layer's features (std over time of speech minus silence, 0.008
    against the table's 0.32), and a model reading them learns position, not sound.
    He init (std sqrt(2 / fan_in), for the GELUs that follow) lifts the content to
    0.25 against 0.36, about where a trained Whisper's stem puts it.
    """
    for conv in (encoder.conv1, encoder.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)


class WhisperAudioEncoder(nn.Module):
    """Frozen Whisper encoder: 16 kHz waveforms -> hidden states of every layer at 50 Hz."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        if cfg.path:
            sub = cfg.subfolder or ""
            model = WhisperModel.from_pretrained(cfg.path, subfolder=sub)
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(cfg.path, subfolder=sub)
        else:
            config = whisper_config(cfg)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = WhisperModel(config)
                init_stem(model.get_encoder())
            self.feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        self.encoder = model.get_encoder()
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen, always in eval mode

    @torch.no_grad()
    def forward(self, waveforms: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """waveforms: B arrays of 16 kHz samples (or (B, S)) -> (B, n, L+1, d), n = features of the longest.

        Audio longer than 30 s is encoded in consecutive 30-second chunks.
        """
        if isinstance(waveforms, torch.Tensor):
            waveforms = list(waveforms.float().cpu().numpy())
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        longest = max(len(w) for w in waveforms)
        device = next(self.encoder.parameters()).device
        dtype = next(self.encoder.parameters()).dtype
        chunks = []
        for start in range(0, max(longest, 1), CHUNK_SAMPLES):
            pieces = [w[start:start + CHUNK_SAMPLES] for w in waveforms]
            pieces = [p if len(p) else np.zeros(SAMPLES_PER_FEATURE, np.float32) for p in pieces]
            mel = self.feature_extractor(pieces, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            hidden = self.encoder(mel.to(device, dtype), output_hidden_states=True).hidden_states
            chunks.append(torch.stack(hidden, dim=2))  # (B, 1500, L+1, d)
        return torch.cat(chunks, dim=1)[:, : num_features(longest)]


@torch.no_grad()
def content_share(encoder: WhisperAudioEncoder, audio: np.ndarray) -> torch.Tensor:
    """(L+1,): per layer, how much the sound moves the features against how much Whisper's position table does:
    the std over time of (features of ``audio`` - features of silence), over the std of silence's features.
    A random encoder with transformers' std-0.02 init scores 0.025 (``init_stem`` fixes it); a network reading
    such features learns position, not sound. Checked in tests/test_models.py and printed by bench/audio_probe.py."""
    feats = encoder([audio, np.zeros_like(audio)])[:, :num_features(len(audio))]  # (2, n, L+1, d)
    return (feats[0] - feats[1]).std(0).mean(-1) / feats[1].std(0).mean(-1)

