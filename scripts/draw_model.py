"""Draw SigmaDiT's diagram (docs/model.png): the blocks, the four conditions and where each enters.

    python scripts/draw_model.py [--preset xl] [--out docs/model.png]

The picture comes from a small description of the data flow (LAYOUT below), checked against the model
itself: every box names the SigmaDiT module it stands for, the script builds that model (on the meta
device, so no memory is spent) and fails if a module is missing, and each box's parameter count and the
shapes come from the model and its preset.
"""
from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from megactor.config import PRESETS  # noqa: E402
from megactor.models import SigmaDiT  # noqa: E402

COLOURS = {"backbone": "#d9d9d9", "reference": "#9ecae1", "visual": "#a1d99b", "audio": "#fdae6b",
           "temporal": "#bcbddc", "input": "#ffffff"}

# name: (x, y, width, height, colour, module in SigmaDiT or None, label); labels may use {shape} fields
LAYOUT = {
    "latents": (0.2, 8.6, 2.6, 0.8, "input", None, "noisy latents\n(B, {c}, F, {h}, {h})"),
    "control": (3.1, 8.6, 2.6, 0.8, "visual", None, "control latents (visual)\neyes [+ mouth], x visual amp."),
    "timestep": (6.0, 8.6, 1.8, 0.8, "input", None, "timestep t"),
    "patch_embed": (0.8, 7.2, 4.4, 0.8, "visual", "patch_embed", "patch_embed: concat 2x{c} ch -> {d}\n(control half zero-init)"),
    "adaln": (6.0, 7.2, 1.8, 0.8, "backbone", "adaln_single", "adaln_single"),
    "self_attn": (0.8, 5.7, 4.4, 0.75, "reference", "blocks.0.attn", "self-attention over own + reference K/V"),
    "temporal": (0.8, 4.75, 4.4, 0.75, "temporal", "blocks.0.temporal", "temporal attention across F frames\n(zero-init)"),
    "cross_attn": (0.8, 3.8, 4.4, 0.75, "backbone", "blocks.0.cross_attn", "cross-attention to the learned context"),
    "audio_attn": (0.8, 2.85, 4.4, 0.75, "audio", "blocks.0.audio_attn", "audio cross-attention x audio amp.\n(zero-init)"),
    "mlp": (0.8, 1.9, 4.4, 0.75, "backbone", "blocks.0.mlp", "adaLN MLP"),
    "final": (0.8, 0.45, 4.4, 0.8, "backbone", "final_layer", "final_layer -> noise / v\n(B, {c}, F, {h}, {h})"),
    "reference": (8.6, 7.2, 3.2, 0.8, "input", None, "reference latent (B, {c}, {h}, {h})"),
    "reference_net": (8.6, 5.6, 3.2, 0.95, "reference", "reference_net",
                      "ReferenceNet: backbone copy, t = 0\nonce per video; K/V of each block"),
    "context": (8.6, 3.75, 3.2, 0.85, "backbone", "context", "learned context ({tokens} tokens)\n-> caption_projection"),
    "audio": (8.6, 1.55, 3.2, 0.8, "input", None, "Whisper windows per frame\n(B, F, {w}, L, d), frozen encoder"),
    "audio_proj": (8.6, 2.75, 3.2, 0.85, "audio", "audio_proj", "AudioProjection MLP\n-> {a} tokens per frame"),
}
ARROWS = [("latents", "patch_embed"), ("control", "patch_embed"), ("timestep", "adaln"),
          ("patch_embed", "self_attn"), ("self_attn", "temporal"), ("temporal", "cross_attn"),
          ("cross_attn", "audio_attn"), ("audio_attn", "mlp"), ("mlp", "final"),
          ("reference", "reference_net"), ("reference_net", "self_attn"), ("context", "cross_attn"),
          ("audio", "audio_proj"), ("audio_proj", "audio_attn")]
BLOCKS_FRAME = (0.5, 1.75, 5.0, 4.85)  # x, y, width, height of the dashed frame around one SigmaBlock


def parameters(model: torch.nn.Module, name: str, depth: int) -> str:
    """The parameter count of the module a box stands for (a block's layer: over all blocks)."""
    if name.startswith("blocks.0."):
        n = sum(p.numel() for i in range(depth) for p in model.get_submodule(name.replace(".0.", f".{i}.")).parameters())
    else:
        target = model.get_parameter(name) if name == "context" else model.get_submodule(name)
        n = target.numel() if isinstance(target, torch.nn.Parameter) else sum(p.numel() for p in target.parameters())
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def draw(preset: str, out: str) -> None:
    cfg = PRESETS[preset]
    with torch.device("meta"):
        model = SigmaDiT(cfg)
    fields = dict(c=cfg.in_channels, h=cfg.sample_size, d=cfg.width, tokens=cfg.context_tokens,
                  a=cfg.audio_tokens, w=2 * cfg.audio_window + 1)
    fig, ax = plt.subplots(figsize=(12, 9.6))
    ax.set_xlim(0, 12), ax.set_ylim(0, 9.6), ax.axis("off")
    fx, fy, fw, fh = BLOCKS_FRAME
    ax.add_patch(FancyBboxPatch((fx, fy), fw, fh, boxstyle="round,pad=0.05", fc="none", ec="#555555", ls="--"))
    ax.text(0.6, 6.9, f"SigmaBlock x {cfg.depth}\nB*F rows x {(cfg.sample_size // cfg.patch_size) ** 2} tokens "
            f"x {cfg.width}", fontsize=8, va="center", color="#333333")
    ax.add_patch(FancyArrowPatch((6.9, 7.2), (fx + fw + 0.05, fy + fh - 0.4), arrowstyle="-|>", mutation_scale=12,
                                 color="#333333", lw=1))
    ax.text(7.0, 6.85, "shift, scale, gate\nof every block", fontsize=8, va="center")
    for name, (x, y, w, h, colour, module, label) in LAYOUT.items():
        text = label.format(**fields)
        if module is not None:
            text += f"\n[{module}: {parameters(model, module, cfg.depth)}]"
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=COLOURS[colour], ec="#333333"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)
    for a, b in ARROWS:
        (xa, ya, wa, ha, *_), (xb, yb, wb, hb, *_) = LAYOUT[a], LAYOUT[b]
        if abs(xa - xb) < 1:  # same column: from one box's edge to the next one's
            start, end = ((xa + wa / 2, ya), (xb + wb / 2, yb + hb)) if ya > yb else ((xa + wa / 2, ya + ha), (xb + wb / 2, yb))
        else:  # across columns: side to side, or down from the inputs' row
            start = (xa if xa > xb else xa + wa, ya + ha / 2) if ya < 8.5 else (xa + wa / 2, ya)
            end = (xb + wb, yb + hb / 2) if xa > xb else (xb, yb + hb / 2) if yb < 8.5 else (xb + wb / 2, yb + hb)
            if a == "control":
                end = (xb + wb * 0.75, yb + hb)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333", lw=1))
    legend = [("reference", "reference image (identity)"), ("visual", "visual control (face motion)"),
              ("audio", "audio"), ("temporal", "temporal (motion across frames)"), ("backbone", "PixArt-α backbone")]
    for i, (colour, label) in enumerate(legend):
        ax.add_patch(FancyBboxPatch((6.1, 0.35 + 0.3 * i), 0.3, 0.2, boxstyle="square,pad=0", fc=COLOURS[colour], ec="#333"))
        ax.text(6.5, 0.45 + 0.3 * i, label, va="center", fontsize=8)
    total = sum(p.numel() for p in model.parameters())
    ax.set_title(f"SigmaDiT, preset {preset!r}: {total / 1e6:.1f}M parameters", fontsize=11)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="xl", choices=sorted(PRESETS))
    ap.add_argument("--out", default="docs/model.png")
    args = ap.parse_args()
    draw(args.preset, args.out)


if __name__ == "__main__":
    main()
