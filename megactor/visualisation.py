"""Pictures for a person to look at: frames of a result grid stacked into one PNG."""
from __future__ import annotations

import numpy as np
from PIL import Image


def grid_png(path: str, grid: np.ndarray, rows: int = 4) -> None:
    """(T, H, W, 3) uint8 frames (e.g. Animation.grid()) -> a PNG of `rows` of them, evenly spaced, top to bottom."""
    picks = np.linspace(0, len(grid) - 1, min(rows, len(grid))).round().astype(int)
    Image.fromarray(np.concatenate([grid[i] for i in picks], axis=0)).save(path)
