"""Metrics: lip sync (audio-visual), per-clip dataset statistics."""
