"""Training checkpoints: everything an exact resume needs, written atomically.

A checkpoint folder `checkpoints/step-0000100/` holds
    trainable.safetensors   the trainable parameters (frozen ones come from the stage's init)
    ema.safetensors         their exponential moving average (when use_ema)
    optimizer.pt            optimizer state (not under      } loaded with
                            DeepSpeed/FSDP: sharded)        }
    state.pt                step, data position, lr         } torch.load(weights_only=True)
                            schedule, EMA counters, RNGs
    state_rank{r}.pt        each process's RNG states
"""
from __future__ import annotations

import glob
import os
import random
import re
import shutil
from typing import Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..fileio import atomic_folder

CHECKPOINT_RE = re.compile(r"step-(\d+)$")


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step-{step:07d}")


def list_checkpoints(output_dir: str):
    """Checkpoint folders of a run, oldest first."""
    found = [p for p in glob.glob(os.path.join(output_dir, "checkpoints", "step-*")) if CHECKPOINT_RE.search(p)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.search(p).group(1)))


def resolve_resume(resume: str, output_dir: str) -> Optional[str]:
    """`latest` -> the newest checkpoint of output_dir (None if there is none yet); a path -> that path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(resume, "state.pt")):
        raise FileNotFoundError(f"resume={resume}: not a training checkpoint (no state.pt)")
    return resume


def rng_state() -> Dict:
    """The global generators' states (the trainer's own draws are seeded per sample and need none)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _numpy_state_to_lists(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_lists(state):
    kind, keys, pos, has_gauss, cached = state
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(folder: str, trainable: Dict[str, torch.Tensor], ema: Optional[Dict[str, torch.Tensor]],
                    optimizer_state: Optional[Dict], state: Dict, rank_states: Dict[int, Dict]) -> None:
    """Write the checkpoint folder atomically (all of it appears at once, or nothing)."""
    with atomic_folder(folder) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()},
                  os.path.join(tmp, "trainable.safetensors"))
        if ema is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, os.path.join(tmp, "ema.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, os.path.join(tmp, "optimizer.pt"))
        torch.save(state, os.path.join(tmp, "state.pt"))
        for rank, rs in rank_states.items():
            torch.save(rs, os.path.join(tmp, f"state_rank{rank}.pt"))


def load_checkpoint(folder: str, rank: int = 0, map_location: str = "cpu") -> Dict:
    out = {
        "trainable": load_file(os.path.join(folder, "trainable.safetensors"), device=map_location),
        "state": torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True),
        "ema": None,
    }
    optimizer_path = os.path.join(folder, "optimizer.pt")
    out["optimizer"] = (torch.load(optimizer_path, map_location=map_location, weights_only=True)
                        if os.path.isfile(optimizer_path) else None)
    ema_path = os.path.join(folder, "ema.safetensors")
    if os.path.isfile(ema_path):
        out["ema"] = load_file(ema_path, device=map_location)
    rank_path = os.path.join(folder, f"state_rank{rank}.pt")
    out["rank_state"] = torch.load(rank_path, weights_only=True) if os.path.isfile(rank_path) else None
    return out


def prune_checkpoints(output_dir: str, keep: int) -> None:
    """Keep the newest `keep` checkpoints."""
    found = list_checkpoints(output_dir)
    for old in found[: max(len(found) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
