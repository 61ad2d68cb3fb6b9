"""Paste-back: the animated face crop returned in the whole source image, for sources of every shape."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.face import landmark_box
from megactor.data.paste_back import even_size, face_mask, paste_back

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def animator():
    cfg = load_config(InferenceConfig, str(ROOT / "configs/inference/tiny/inference.yaml"),
                      ["checkpoint=", "num_inference_steps=1"])
    return Animator.from_config(cfg, device="cpu")


def _image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _sources(testcases: Path) -> dict:
    """Portraits of several shapes; the face in the middle, off to one side, or at the top edge."""
    tall, wide = _image(testcases / "source" / "10.png"), _image(testcases / "source" / "12.png")
    small_wide = np.asarray(Image.fromarray(wide).resize((540, 620)))
    return {
        "portrait_768x844": tall,
        "portrait_1080x1240": wide,
        "square_512": _image(testcases / "wild" / "source" / "case_AOC.jpg"),
        "padded_odd_1069x881": np.pad(tall, ((37, 0), (301, 0), (0, 0)), mode="edge"),  # face off-centre, odd sides
        "landscape_1240x620": np.pad(small_wide, ((0, 0), (0, 700), (0, 0)), mode="edge"),  # face at the left
        "face_at_the_top": tall[150:],  # the crop's square reaches past the image's top edge
    }


@pytest.mark.parametrize("shape", ["portrait_768x844", "portrait_1080x1240", "square_512", "padded_odd_1069x881",
                                   "landscape_1240x620", "face_at_the_top"])
def test_pasted_video_has_the_sources_size_and_its_pixels_away_from_the_face(animator, testcases, shape):
    source = _sources(testcases)[shape]
    driver = str(testcases / "driver" / "audio_ENTF_1.mp4")
    result = animator.animate(source, audio=driver, mode="audio", limit=0.2, progress=False)
    height, width = even_size(*source.shape[:2])
    assert result.frames.shape == (5, height, width, 3)
    assert result.crops.shape == (5, 64, 64, 3)

    x0, y0, x1, y1 = landmark_box(animator.locate_source(source).landmarks)
    grow = 0.3 * max(x1 - x0, y1 - y0)
    far = np.ones((height, width), bool)  # farther than 30% of the face's size from its box
    far[max(int(y0 - grow), 0):int(y1 + grow) + 1, max(int(x0 - grow), 0):int(x1 + grow) + 1] = False
    assert far.mean() > 0.2
    assert (result.frames[:, far] == source[:height, :width][far]).all()
    # and the face itself is the model's (a random model: noise), not the source's
    cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
    centre = np.s_[cy - 5:cy + 5, cx - 5:cx + 5]
    assert np.abs(result.frames[(slice(None), *centre)].astype(int) - source[centre]).mean() > 10


def test_crop_only_keeps_the_square_crop(animator, testcases):
    animator.cfg.paste_back = False
    try:
        result = animator.animate(str(testcases / "source" / "10.png"), mode="audio", limit=0.2, progress=False,
                                  audio=str(testcases / "driver" / "audio_ENTF_1.mp4"))
    finally:
        animator.cfg.paste_back = True
    assert result.frames.shape == (5, 64, 64, 3) and result.crops is None
    assert result.grid_panels() == ["source", "driver", "control", "result"]  # the idle driver and its control


def test_the_source_crop_pasted_back_reproduces_the_source():
    """Pasting the source's own crop back changes it only by resampling, and only under the mask."""
    rng = np.random.default_rng(0)
    image = np.asarray(Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).resize((400, 300)))
    box = np.array([100, 40, 200])  # x0, y0, side
    crop = np.asarray(Image.fromarray(image[40:240, 100:300]).resize((100, 100), Image.BILINEAR))
    mask = face_mask(None, 100)
    out = paste_back(image, crop[None], box, mask)[0]
    assert out.shape == image.shape
    outside = np.ones(image.shape[:2], bool)
    outside[40:240, 100:300] = False
    assert (out[outside] == image[outside]).all()
    assert np.abs(out[80:200, 140:260].astype(int) - image[80:200, 140:260]).mean() < 8  # resampled, in place
    assert mask[0].max() == 0 and mask[:, -1].max() == 0 and mask[50, 50] == 1  # zero at the crop's border
