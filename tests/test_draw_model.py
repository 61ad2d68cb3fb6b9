"""scripts/draw_model.py draws from the model: every box names a SigmaDiT module that exists."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import draw_model  # noqa: E402


def test_draws_the_model_and_fails_on_a_module_it_does_not_have(tmp_path, monkeypatch):
    draw_model.draw("tiny", str(tmp_path / "model.png"))
    assert (tmp_path / "model.png").stat().st_size > 10_000
    layout = dict(draw_model.LAYOUT, ghost=(0, 0, 1, 1, "audio", "blocks.0.no_such_layer", "ghost"))
    monkeypatch.setattr(draw_model, "LAYOUT", layout)
    with pytest.raises(AttributeError, match="no_such_layer"):
        draw_model.draw("tiny", str(tmp_path / "other.png"))
