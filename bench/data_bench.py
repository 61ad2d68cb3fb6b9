"""Training data loader throughput: samples per second by DataLoader workers, from shards on disk.

    python bench/data_bench.py [--data-dir SHARDS] [--workers 0 1 2] [--samples 24]

Without --data-dir, the real driver clips (../shared/testcases/driver, 512x512,
30 fps) are curated (pack + face filter) into a temporary folder first. Each
sample is the full ClipDataset path at the given size and length: tar read,
H.264 decode up to the last needed frame, AAC decode, crop and resize,
augmentation, control frames. The first batch of each worker (start-up) is not
timed. "workers 0" loads in the main process.

A second table times the frame reads alone, per reader: the ``video_length``
frames from a random start plus a reference frame, out of each sample's
in-memory mp4, with PyAV (``shards.decode_selected_frames``, what the dataset
uses) and, when installed, decord (``VideoReader.get_batch``, random access by
seeking to the nearest keyframe).
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
import tempfile
import time
from datetime import date

import numpy as np
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from megactor.config import TrainDataConfig  # noqa: E402
from megactor.curation.config import load_curation_config  # noqa: E402
from megactor.curation.pipeline import curate  # noqa: E402
from megactor.data.dataset import ClipDataset, collate_clips  # noqa: E402
from megactor.data.shards import decode_selected_frames, index_shard, list_shards  # noqa: E402

DRIVERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "testcases", "driver")
XL_SAMPLES_PER_S = 70 / 16  # an xl training step on an H100 eats about 70 frames/s: 4.4 samples/s at L=16


def throughput(cfg: TrainDataConfig, workers: int, samples: int) -> float:
    """Samples per second over ``samples`` samples after every worker's first one."""
    # forkserver: a worker forked from a process that has already run OpenCV's thread pool (the
    # in-process row) can deadlock in it
    loader = DataLoader(ClipDataset(cfg, seed=0), batch_size=1, num_workers=workers, collate_fn=collate_clips,
                        multiprocessing_context="forkserver" if workers else None)
    it = iter(loader)
    for _ in range(max(workers, 1)):  # start-up: every worker forks, imports and decodes once
        next(it)
    start = time.perf_counter()
    for _ in range(samples):
        next(it)
    return samples / (time.perf_counter() - start)


def read_frames(reader: str, data: bytes, wanted: list) -> int:
    """Decode the `wanted` frames of an in-memory mp4 with `reader`; the number of frames decoded."""
    if reader == "pyav":
        return len(decode_selected_frames(data, "sample", wanted))
    import decord

    return len(decord.VideoReader(io.BytesIO(data), num_threads=1).get_batch(sorted(set(wanted))).asnumpy())


def reader_ms(data_dir: str, length: int, samples: int) -> list:
    """Median ms per sample's frame reads, per reader, over the first `samples` samples' (start, reference) draws."""
    readers = ["pyav"]
    try:
        import decord  # noqa: F401

        readers.append("decord")
    except ImportError:
        pass
    refs = [r for shard in list_shards(data_dir) for r in index_shard(shard)]
    rng = np.random.default_rng(0)
    plans = []
    for i in range(samples):
        ref = refs[i % len(refs)]
        frames = ref.read_json()["num_frames"]
        start = int(rng.integers(0, max(frames - length, 0) + 1))
        plans.append((ref.read("mp4"), [*range(start, min(start + length, frames)), int(rng.integers(0, frames))]))
    rows = []
    for reader in readers:
        times = []
        for data, wanted in plans:
            t = time.perf_counter()
            read_frames(reader, data, wanted)
            times.append(time.perf_counter() - t)
        rows.append((reader, 1000 * float(np.median(times))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="folder of .tar shards; default: curate the real driver clips")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=24, help="timed samples per setting")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--length", type=int, default=16)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            curate(DRIVERS, tmp, load_curation_config(), steps=["pack", "face"])
            data_dir = os.path.join(tmp, "2_face", "shards")
        cfg = TrainDataConfig(data_dirs=[data_dir], video_length=args.length, sample_size=args.size,
                              use_audio_ratio=0.5, use_both_ratio=0.2)
        rows = [(w, throughput(cfg, w, args.samples)) for w in args.workers]
        readers = reader_ms(data_dir, args.length, args.samples)

    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; "
          f"{args.size}x{args.size}, L={args.length}, {args.samples} samples per row")
    print("| workers | samples/s | samples/s per worker |")
    print("| --- | --- | --- |")
    for w, rate in rows:
        print(f"| {w} | {rate:.2f} | {rate / max(w, 1):.2f} |")
    worker_rows = [rate / w for w, rate in rows if w] or [rows[0][1]]
    per_worker = min(worker_rows)  # the most contended row: the conservative figure
    print(f"\nAn xl training step on an H100 takes ~{XL_SAMPLES_PER_S:.1f} samples/s at L=16: about "
          f"{math.ceil(XL_SAMPLES_PER_S / per_worker)} DataLoader workers at {per_worker:.2f} samples/s each "
          f"(a CPU core per worker, besides the training process's own).")
    print(f"\nFrame reads alone ({args.length} frames + a reference, one thread), median per sample:")
    print("| reader | ms per sample |\n| --- | ---: |")
    for reader, ms in readers:
        print(f"| {reader} | {ms:.1f} |")


if __name__ == "__main__":
    main()
