"""The three training stages ("modality decoupling") and which parameters each trains.

| stage | trains (default)                       | runs                        |
| 1     | backbone, reference_net, patch_embed   | one frame, no audio         |
| 2     | audio, backbone                        | clips, temporal layers off  |
| 3     | temporal                               | clips, every branch         |

Frame counts and mode ratios live in the stage configs; this module knows what the
model runs in each stage and maps `trainable_modules` entries to parameters.
An entry is a group name below or a regular expression searched in parameter names.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import torch.nn as nn

from ..config import ConfigError

MODULE_GROUPS: Dict[str, str] = {
    "backbone": r"^(patch_embed|adaln_single|caption_projection|final_layer)\.|^context$"
                r"|^blocks\.\d+\.(attn|cross_attn|mlp)\.|^blocks\.\d+\.scale_shift_table$",
    "reference_net": r"^reference_net\.",
    # the patch embedding, image and control halves: one convolution, so the control half has no parameter
    # of its own; named in stage 1 for what it adds (the control inputs), though `backbone` includes it
    "patch_embed": r"^patch_embed\.",
    "audio": r"^audio_proj\.|\.audio_(attn|norm)\.",
    "temporal": r"\.temporal\.",
}


DEFAULT_TRAINABLE: Dict[int, List[str]] = {1: ["backbone", "reference_net", "patch_embed"], 2: ["audio", "backbone"],
                                           3: ["temporal"]}


def uses_audio(stage: int) -> bool:
    return stage >= 2


def uses_temporal(stage: int) -> bool:
    return stage == 3


def bypassed_groups(stage: int) -> List[str]:
    """Branches the model does not run in this stage: their parameters get no gradient."""
    return [g for g, on in (("audio", uses_audio(stage)), ("temporal", uses_temporal(stage))) if not on]


def parameter_groups(model: nn.Module, learning_rate: float, multipliers: Dict[str, float],
                     where: str = "config") -> List[dict]:
    """The optimizer's parameter groups: the trainable parameters each multiplier's entry (a group name or a
    regex, as in `trainable_modules`) matches at ``learning_rate`` times its factor, the rest at
    ``learning_rate``. A parameter matched by two entries is an error, as is an entry matching no trainable one."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    taken: Dict[str, str] = {}
    groups = []
    for entry, factor in multipliers.items():
        if factor <= 0:
            raise ConfigError(f"{where}: learning_rate_multipliers.{entry}={factor}: a factor must be > 0")
        pattern = re.compile(MODULE_GROUPS.get(entry, entry))
        matched = [(n, p) for n, p in trainable if pattern.search(n)]
        if not matched:
            raise ConfigError(f"{where}: learning_rate_multipliers entry {entry!r} matches no trainable parameter "
                              f"of this stage (groups: {sorted(MODULE_GROUPS)})")
        for n, _ in matched:
            if n in taken:
                raise ConfigError(f"{where}: learning_rate_multipliers entries {taken[n]!r} and {entry!r} both "
                                  f"match {n!r}")
            taken[n] = entry
        groups.append({"params": [p for _, p in matched], "lr": learning_rate * factor, "name": entry})
    rest = [p for n, p in trainable if n not in taken]
    return ([{"params": rest, "lr": learning_rate, "name": "default"}] if rest else []) + groups


def select_trainable(model: nn.Module, trainable_modules: Optional[Sequence[str]], stage: int,
                     where: str = "config") -> List[str]:
    """Set requires_grad by `trainable_modules` (None: the stage's DEFAULT_TRAINABLE); return the trainable names.

    Fails (ConfigError) on an entry that matches no parameter, and on trainable
    parameters of a branch the stage does not run.
    """
    if trainable_modules is None:
        trainable_modules = DEFAULT_TRAINABLE[stage]
    names = [n for n, _ in model.named_parameters()]
    patterns = [re.compile(MODULE_GROUPS.get(entry, entry)) for entry in trainable_modules]
    for entry, pattern in zip(trainable_modules, patterns):
        if not any(pattern.search(n) for n in names):
            raise ConfigError(f"{where}: trainable_modules entry {entry!r} matches no model parameter "
                              f"(groups: {sorted(MODULE_GROUPS)}, or a regex over names like {names[0]!r})")
    trainable = [n for n in names if any(p.search(n) for p in patterns)]
    for group in bypassed_groups(stage):
        idle = [n for n in trainable if re.search(MODULE_GROUPS[group], n)]
        if idle:
            raise ConfigError(f"{where}: stage {stage} does not run the {group} branch, but trainable_modules "
                              f"makes {len(idle)} of its parameters trainable (e.g. {idle[0]!r})")
    chosen = set(trainable)
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return trainable
