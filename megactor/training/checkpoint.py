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
import logging
import os
import random
import re
import shutil
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..fileio import atomic_folder, load_named

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"step-(\d+)$")


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step-{step:07d}")


def list_checkpoints(output_dir: str):
    """Checkpoint folders of a run, oldest first."""
    found = [p for p in glob.glob(os.path.join(output_dir, "checkpoints", "step-*")) if CHECKPOINT_RE.search(p)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.search(p).group(1)))


def resolve_resume(resume: str, output_dir: str, rank: int = 0) -> Optional[Tuple[str, Dict]]:
    """-> (folder, its loaded checkpoint), or None when ``resume`` is "latest" and output_dir has none yet.

    ``latest`` takes the newest checkpoint of output_dir that loads, with a warning naming each newer one
    skipped and why; a path is loaded as it is (UnreadableFile naming the file at fault).
    """
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, "state.pt")):
            raise FileNotFoundError(f"resume={resume}: not a training checkpoint (no state.pt)")
        return resume, load_checkpoint(resume, rank)
    for folder in reversed(list_checkpoints(output_dir)):
        try:
            return folder, load_checkpoint(folder, rank)
        except OSError as e:  # UnreadableFile, or a file missing from a half-pruned folder
            logger.warning("resume=latest: skipped checkpoint %s: %s", folder, e)
    return None


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
    """Every file of a checkpoint folder; UnreadableFile (an OSError) names the one that does not load."""
    def tensors(name):
        return load_named(os.path.join(folder, name), lambda p: load_file(p, device=map_location))

    def pickled(name, where=map_location):
        return load_named(os.path.join(folder, name), lambda p: torch.load(p, map_location=where, weights_only=True))

    out = {"trainable": tensors("trainable.safetensors"), "state": pickled("state.pt", "cpu"), "ema": None,
           "optimizer": None, "rank_state": None}
    if os.path.isfile(os.path.join(folder, "optimizer.pt")):
        out["optimizer"] = pickled("optimizer.pt")
    if os.path.isfile(os.path.join(folder, "ema.safetensors")):
        out["ema"] = tensors("ema.safetensors")
    if os.path.isfile(os.path.join(folder, f"state_rank{rank}.pt")):
        out["rank_state"] = pickled(f"state_rank{rank}.pt", None)
    return out


def prune_checkpoints(output_dir: str, keep: int) -> None:
    """Keep the newest `keep` checkpoints."""
    found = list_checkpoints(output_dir)
    for old in found[: max(len(found) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
