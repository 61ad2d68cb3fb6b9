"""What every curation step shares: resumable per-item work, parallel workers, shard assembly.

A step turns items (videos, or the clips of the previous step's shards) into
clips with measurements, in two phases:

1. Work. Each item is processed on its own (``Step.process``), in a pool of
   worker processes, and leaves ``<step>/work/<item>.json`` (its records) plus
   whatever clip files it wrote in ``<step>/work/<item>/``. The record file is
   written last and atomically: it marks the item done, and a re-run skips it.
   A fault in one item becomes a record with a reason, even a worker's death
   (see ``process_items``); the run goes on.
2. Assembly, in the main process, in item order. Clip-level thresholds
   (``Step.decide``) drop clips with a reason; the kept clips are planned into
   shards by size (``plan_shards``), and each shard is written whole under a
   temporary name and renamed. The plan is saved; when a re-run plans the same
   shards, those already on disk are kept. ``records.jsonl`` lists every clip.

Nothing in the shards depends on worker timing or on where a killed run
stopped: the same inputs and settings give the same bytes.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from tqdm import tqdm

from megactor.curation.config import CurationConfig
from megactor.data.shards import SHARD_PATTERN, SampleRef, index_shard, list_shards, plan_shards, write_shard
from megactor.fileio import write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    key: str  # unique and file-name safe; items are sharded in key order
    source: Any  # what Step.process reads: a video path, a SampleRef


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Step(ABC):
    """One stage of the pipeline. Subclasses set ``name`` and ``folder`` and implement ``items``/``process``."""

    name: str  # "pack", "face", "audio": the value of the records' "step" column
    folder: str  # its folder under the output directory

    def shard_dir(self, out_dir: str) -> str:
        return os.path.join(out_dir, self.folder, "shards")

    @abstractmethod
    def items(self, in_dir: str, out_dir: str) -> list[Item]:
        """The work of this step, sorted by key. Raises FileNotFoundError when its input is missing."""

    def setup(self, cfg: CurationConfig) -> None:
        """Open per-process resources (a face analyser); runs once in each worker."""

    def teardown(self) -> None:
        """Release what ``setup`` opened."""

    @abstractmethod
    def process(self, item: Item, cfg: CurationConfig, item_dir: str) -> list[dict]:
        """Measure one item -> clip entries {"record": {...}, "json": sample json or None, "mp4": ref or None}.

        ``record`` holds "key", "source", the measurements and "reason" (None when
        the clip passed so far). ``mp4`` = {"path", "offset", "size"} locates the
        clip's video bytes in a file. Expected faults
        (unreadable media, no face) are records with a reason, not exceptions.
        """

    def decide(self, record: dict, cfg: CurationConfig) -> Optional[str]:
        """The reason to drop a measured clip under ``cfg``'s thresholds, or None to keep it."""
        return None


# --------------------------------------------------------------------------- phase 1: work

_WORKER: dict = {}


def _work_path(work_dir: str, item: Item) -> str:
    return os.path.join(work_dir, item.key + ".json")


def _started_path(work_dir: str, item: Item) -> str:
    return os.path.join(work_dir, item.key + ".started")


def _failure(item: Item, reason: str, error: str) -> list[dict]:
    source = str(getattr(item.source, "key", item.source))
    return [{"record": {"key": None, "source": source, "reason": reason, "error": error}, "json": None, "mp4": None}]


def _write_entries(step: Step, item: Item, clips: list[dict], work_dir: str, out_dir: str) -> None:
    """Save the clips' sample jsons, then the item's record file (the "done" mark)."""
    item_dir = os.path.join(work_dir, item.key)
    entries = []
    for clip in clips:
        record = {"step": step.name, **clip["record"]}
        sample = None
        if clip["json"] is not None:
            data = dump_json(clip["json"])
            name = os.path.join(item_dir, record["key"] + ".json")
            write_bytes(name, data)
            mp4 = {**clip["mp4"], "path": os.path.relpath(clip["mp4"]["path"], out_dir)}
            sample = {"json": os.path.relpath(name, out_dir), "json_size": len(data), "mp4": mp4}
        entries.append({"record": record, "sample": sample})
    write_bytes(_work_path(work_dir, item), dump_json(entries))
    if os.path.exists(_started_path(work_dir, item)):
        os.remove(_started_path(work_dir, item))


def _exit_with(parent: int, period: float = 0.5) -> None:
    """End this process soon after process ``parent`` is gone (killed with -9, it cannot tell its workers): a
    worker blocks on its task queue, and with it the forkserver and resource tracker, for as long as it lives."""
    def watch():
        while True:
            time.sleep(period)
            try:
                os.kill(parent, 0)
            except (ProcessLookupError, PermissionError):  # gone, or its pid taken by someone else's process
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(step: Step, cfg: CurationConfig, work_dir: str, out_dir: str, parent: int) -> None:
    _exit_with(parent)
    step.setup(cfg)
    _WORKER.update(step=step, cfg=cfg, work_dir=work_dir, out_dir=out_dir)


def _run_in_worker(item: Item) -> None:
    step, cfg, work_dir, out_dir = (_WORKER[k] for k in ("step", "cfg", "work_dir", "out_dir"))
    write_bytes(_started_path(work_dir, item), b"")  # tells the parent who was running if this process dies
    try:
        clips = step.process(item, cfg, os.path.join(work_dir, item.key))
    except Exception as e:  # a bug or an unforeseen fault in one item must not stop the others
        log.warning("%s: %s failed:\n%s", step.name, item.key, traceback.format_exc())
        clips = _failure(item, "error", f"{type(e).__name__}: {e}")
    _write_entries(step, item, clips, work_dir, out_dir)


def _run_pool(step: Step, items: list[Item], cfg: CurationConfig, work_dir: str, out_dir: str,
              workers: int, bar: tqdm) -> list[Item]:
    """Process ``items`` in a pool of ``workers``; returns the items left undone when a worker died."""
    ctx = mp.get_context("forkserver")  # workers start clean: no analyser or decoder state of this process
    ctx.set_forkserver_preload(["megactor.curation.pipeline"])  # imported once, in the server they fork from
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_init_worker,
                             initargs=(step, cfg, work_dir, out_dir, os.getpid())) as pool:
        for future in as_completed([pool.submit(_run_in_worker, item) for item in items]):
            try:
                future.result()
            except BrokenProcessPool:
                break
            bar.update()
    return [item for item in items if not os.path.exists(_work_path(work_dir, item))]


def process_items(step: Step, items: list[Item], cfg: CurationConfig, work_dir: str, out_dir: str) -> None:
    """Run ``step.process`` on the items without a record file, in ``cfg.workers`` worker processes.

    A worker that dies (a native crash in a decoder or the face analyser) breaks
    the pool; the items it was running are retried one by one in a pool of
    their own, and an item that kills its worker again is recorded as "crashed".
    """
    todo = [item for item in items if not os.path.exists(_work_path(work_dir, item))]
    if len(todo) < len(items):
        log.info("%s: %d of %d items already done", step.name, len(items) - len(todo), len(items))
    os.makedirs(work_dir, exist_ok=True)
    with tqdm(total=len(todo), desc=step.folder, unit="item") as bar:
        while todo:
            left = _run_pool(step, todo, cfg, work_dir, out_dir, cfg.workers, bar)
            suspects = [item for item in left if os.path.exists(_started_path(work_dir, item))]
            if len(left) == len(todo) and not suspects:
                raise RuntimeError(f"{step.name}: the worker processes die before processing any item")
            for item in suspects:
                if _run_pool(step, [item], cfg, work_dir, out_dir, 1, bar):
                    log.warning("%s: %s crashed its worker process twice", step.name, item.key)
                    _write_entries(step, item, _failure(item, "crashed", "the worker process died"), work_dir, out_dir)
                    bar.update()
            todo = [item for item in left if not os.path.exists(_work_path(work_dir, item))]


# --------------------------------------------------------------------------- phase 2: assembly


def _sample_bytes(sample: dict, key: str, out_dir: str) -> dict:
    with open(os.path.join(out_dir, sample["json"]), "rb") as f:
        meta = f.read()
    ref = sample["mp4"]
    ref = SampleRef(os.path.join(out_dir, ref["path"]), key, {"mp4": (ref["offset"], ref["size"])})
    return {"__key__": key, "json": meta, "mp4": ref.read("mp4")}


def write_shards(shard_dir: str, samples: list[tuple[str, dict]], max_mb: float, out_dir: str,
                 plan_path: str, desc: str) -> list[str]:
    """Write (key, sample) pairs, in order, into shards of at most ``max_mb``; returns the shard paths.

    Shards of an unchanged plan that already exist are kept; shards of another
    plan are removed first.
    """
    sizes = [s["json_size"] + s["mp4"]["size"] for _, s in samples]
    plan = [[samples[i][0] for i in r] for r in plan_shards(sizes, max_mb * 2**20)]
    os.makedirs(shard_dir, exist_ok=True)
    old_plan = None
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            old_plan = json.load(f)
    if old_plan != plan:
        for path in list_shards(shard_dir):
            os.remove(path)
        write_bytes(plan_path, json.dumps(plan).encode())
    by_key = dict(samples)
    paths = []
    for i, keys in enumerate(tqdm(plan, desc=f"{desc} shards", unit="shard")):
        path = os.path.join(shard_dir, SHARD_PATTERN.format(i))
        if not os.path.exists(path):
            write_shard(path, (_sample_bytes(by_key[k], k, out_dir) for k in keys))
        paths.append(path)
    return paths


def run_step(step: Step, in_dir: str, out_dir: str, cfg: CurationConfig) -> list[dict]:
    """Process (or resume) ``step`` and assemble its shards; returns its records, one per clip or failed input."""
    folder = os.path.join(out_dir, step.folder)
    work_dir = os.path.join(folder, "work")
    items = step.items(in_dir, out_dir)
    process_items(step, items, cfg, work_dir, out_dir)

    records, kept = [], []
    for item in items:
        with open(_work_path(work_dir, item)) as f:
            entries = json.load(f)
        for entry in entries:
            record = entry["record"]
            if record["reason"] is None:
                record["reason"] = step.decide(record, cfg)
            record["kept"] = record["reason"] is None
            records.append(record)
            if record["kept"]:
                kept.append((record["key"], entry["sample"]))
    write_shards(step.shard_dir(out_dir), kept, cfg.shard_size_mb, out_dir,
                 os.path.join(folder, "plan.json"), step.folder)
    write_bytes(os.path.join(folder, "records.jsonl"), b"".join(dump_json(r) + b"\n" for r in records))
    dropped = len(records) - len(kept)
    log.info("%s: %d kept, %d dropped", step.name, len(kept), dropped)
    return records


def shard_items(shard_dir: str, previous: str) -> list[Item]:
    """The samples of the shards in ``shard_dir`` as items; FileNotFoundError names the step to run first."""
    shards = list_shards(shard_dir)
    if not shards and not os.path.isdir(shard_dir):
        raise FileNotFoundError(f"no shards in {shard_dir}: run {previous} first")
    return sorted((Item(ref.key, ref) for path in shards for ref in index_shard(path)), key=lambda it: it.key)


def iter_records(out_dir: str, steps: list[Step]) -> Iterator[tuple[Step, list[dict]]]:
    """(step, records) for each step of ``steps`` that has finished in ``out_dir``."""
    for step in steps:
        path = os.path.join(out_dir, step.folder, "records.jsonl")
        if os.path.exists(path):
            yield step, read_jsonl(path)
