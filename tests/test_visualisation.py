"""Result grids as PNG."""
import numpy as np
from PIL import Image

from megactor.visualisation import grid_png


def test_grid_png_stacks_evenly_spaced_frames_top_to_bottom(tmp_path):
    frames = np.stack([np.full((8, 24, 3), 10 * i, np.uint8) for i in range(10)])  # frame i is grey 10*i
    grid_png(str(tmp_path / "g.png"), frames, rows=4)
    image = np.asarray(Image.open(tmp_path / "g.png"))
    assert image.shape == (32, 24, 3)
    assert [int(image[8 * r, 0, 0]) for r in range(4)] == [0, 30, 60, 90]  # frames 0, 3, 6, 9
    grid_png(str(tmp_path / "short.png"), frames[:2], rows=4)  # fewer frames than rows: each once
    assert np.asarray(Image.open(tmp_path / "short.png")).shape == (16, 24, 3)
