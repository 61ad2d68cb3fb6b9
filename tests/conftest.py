import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megactor.config import PRESETS, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
TESTCASES = ROOT.parent / "shared" / "testcases"


@pytest.fixture(scope="session")
def testcases() -> Path:
    if not TESTCASES.is_dir():
        pytest.skip(f"real test clips not found at {TESTCASES}")
    return TESTCASES


def tiny_config(**overrides) -> ModelConfig:
    cfg = copy.deepcopy(PRESETS["tiny"])
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def tiny_pixart_dir(tmp_path_factory) -> str:
    """A random tiny diffusers PixArt-α transformer saved with save_pretrained, shaped like the tiny preset."""
    from diffusers import PixArtTransformer2DModel

    cfg = tiny_config()
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.width // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=2 * cfg.in_channels, num_layers=cfg.depth,
        cross_attention_dim=cfg.width, caption_channels=cfg.caption_channels, sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
    )
    folder = tmp_path_factory.mktemp("pixart")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def analyser():
    """The default face analyser (MediaPipe), one per test module."""
    from megactor.data.face import build_face_analyser

    with build_face_analyser("mediapipe") as a:
        yield a


def curated_synthetic_shards(root: Path, clips: int, seed: int) -> str:
    """`clips` synthetic talking heads (2 s, 96 px) through the real curation pipeline: the shards folder."""
    subprocess.run([sys.executable, "-m", "megactor.data.synthetic", "--out", str(root / "clips"), "--clips", str(clips),
                    "--seconds", "2", "--size", "96", "--seed", str(seed)], check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "data_processing" / "curate.py"), "--input-dir", str(root / "clips"),
                    "--output-dir", str(root / "curated"), "min_face_size=24"], check=True, capture_output=True)
    return str(root / "curated" / "shards")


def artifacts_dir(tmp_path: Path) -> Path:
    """Where tests leave images for a person to look at: $MEGACTOR_TEST_ARTIFACTS or the test's tmp_path."""
    folder = Path(os.environ.get("MEGACTOR_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
