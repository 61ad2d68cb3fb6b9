"""Which driver (and source) each result was made from: by name, as ``eval_audio.py`` names its outputs
(``<source stem>_<driver stem>.mp4``), or from a CSV of triples.

By name, a result ``<prefix>_<driver stem>`` takes the driver whose stem is the longest one that ends its
own stem (so ``a_b_c.mp4`` is source ``a_b`` and driver ``c`` when only ``c`` is a driver, ``a`` and
``b_c`` when ``b_c`` is one); a result whose stem is a driver's stem is that driver reproduced. With a
sources folder, the prefix names the source image. Every problem (a result without its driver, a source
not found, an empty folder, a CSV row naming a missing file) is an EvaluationInputError naming the file.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megactor.data.video_io import AUDIO_EXTS, VIDEO_EXTS

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvaluationInputError(ValueError):
    """Input that cannot be scored; the message names the file or row at fault."""


@dataclass(frozen=True)
class Triple:
    result: str  # the generated video
    driver: str  # the video (or audio file) that drove it
    source: Optional[str]  # the portrait it animates, when known


def _files(folder: str, exts: tuple[str, ...], role: str) -> list[Path]:
    if not os.path.isdir(folder):
        raise EvaluationInputError(f"{folder}: no such folder (the {role})")
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in exts)


def match_by_name(results_dir: str, drivers_dir: str, sources_dir: Optional[str] = None) -> list[Triple]:
    """One triple per video in ``results_dir`` (sorted by name), matched as the module docstring says."""
    results = _files(results_dir, VIDEO_EXTS, "results")
    if not results:
        raise EvaluationInputError(f"{results_dir}: no result videos ({', '.join(VIDEO_EXTS)})")
    drivers = {p.stem: p for p in _files(drivers_dir, VIDEO_EXTS + AUDIO_EXTS, "drivers")}
    sources = {p.stem: p for p in _files(sources_dir, IMAGE_EXTS, "sources")} if sources_dir else None
    triples = []
    for result in results:
        stem = result.stem
        names = [d for d in drivers if stem == d or stem.endswith("_" + d)]
        if not names:
            raise EvaluationInputError(f"{result}: no driver in {drivers_dir} matches its name (expected "
                                       f"<source>_<driver>{result.suffix}, as eval_audio.py names results)")
        driver = max(names, key=len)
        prefix = stem[:-len(driver) - 1] if stem != driver else None
        source = None
        if sources is not None and prefix is not None:
            if prefix not in sources:
                raise EvaluationInputError(f"{result}: its source {prefix!r} is not in {sources_dir} "
                                           f"({', '.join(IMAGE_EXTS)})")
            source = str(sources[prefix])
        triples.append(Triple(str(result), str(drivers[driver]), source))
    return triples


def read_triples(path: str) -> list[Triple]:
    """A CSV with columns ``result``, ``driver`` and optionally ``source`` (paths relative to the CSV's
    folder, or absolute) -> its triples, each file checked to exist."""
    if not os.path.isfile(path):
        raise EvaluationInputError(f"{path}: no such file (the pairs CSV)")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"result", "driver"} - set(reader.fieldnames or ())
        if missing:
            raise EvaluationInputError(f"{path}: needs the columns result and driver (missing: {', '.join(sorted(missing))})")
        triples = []
        for line, row in enumerate(reader, start=2):
            files = {k: os.path.join(base, row[k]) if row.get(k) else None for k in ("result", "driver", "source")}
            for key in ("result", "driver", "source"):
                if key != "source" and not files[key]:
                    raise EvaluationInputError(f"{path}:{line}: empty {key}")
                if files[key] and not os.path.isfile(files[key]):
                    raise EvaluationInputError(f"{path}:{line}: the {key} {files[key]} does not exist")
            triples.append(Triple(files["result"], files["driver"], files["source"]))
    if not triples:
        raise EvaluationInputError(f"{path}: lists no triples")
    return triples
