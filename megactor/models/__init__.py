"""SigmaDiT and what feeds it. Start at sigma_dit.py; the audio enters through
`SigmaDiT.audio_proj` and each block's `audio_attn` (blocks.py)."""
from .audio_encoder import WhisperAudioEncoder, gather_windows, window_indices
from .codec import LatentCodec, PixelCodec, VaeCodec, build_codec
from .loading import build_sigma_dit, from_pretrained, load_noise_schedule, load_pixart_weights, save_pretrained
from .sigma_dit import SigmaDiT

__all__ = [
    "SigmaDiT", "build_sigma_dit", "from_pretrained", "save_pretrained", "load_pixart_weights", "load_noise_schedule",
    "WhisperAudioEncoder", "window_indices", "gather_windows",
    "LatentCodec", "PixelCodec", "VaeCodec", "build_codec",
]
