"""Time ``evaluate.py`` on N results of S seconds each, on this machine.

    python bench/evaluate_bench.py [--videos 4] [--seconds 10] [--driver ../shared/testcases/driver/X.mp4]

Each result is a real 512x512 driver clip looped to S seconds and started at a different frame (so that
no two files share bytes, and no driver's face analysis is reused from another's), scored against itself
(its own driver) with the weight-free metrics. The first run ("cold") analyses every driver and fills
the cache; the second ("warm") reads the drivers' analyses from it, as a rerun on the same drivers does.
The table gives seconds per video and the extrapolation to 100 results of 10 s (linear in frames: every
frame of a result, and of a driver not yet cached, goes through the face mesh once).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import evaluate  # noqa: E402
from megactor.data.video_io import read_video, write_video  # noqa: E402

DEFAULT_DRIVER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "testcases", "driver", "audio_CHTF_2.mp4")


def make_set(folder: str, driver: str, videos: int, seconds: float) -> int:
    """drivers/d<i>.mp4 and results/r<i>_d<i>.mp4 (the same bytes); returns the frames per video."""
    clip = read_video(driver, sample_rate=44100)
    n = int(round(seconds * clip.fps))
    os.makedirs(os.path.join(folder, "drivers"))
    os.makedirs(os.path.join(folder, "results"))
    for i in range(videos):
        start = (7 * i) % len(clip.frames)
        frames = np.take(clip.frames, np.arange(start, start + n) % len(clip.frames), axis=0)
        samples = np.arange(int(round(start / clip.fps * 44100)), int(round((start + n) / clip.fps * 44100)))
        audio = np.take(clip.audio, samples % len(clip.audio))
        path = os.path.join(folder, "drivers", f"d{i}.mp4")
        write_video(path, frames, clip.fps, audio, 44100)
        os.link(path, os.path.join(folder, "results", f"r{i}_d{i}.mp4"))
    return n


def timed_run(folder: str) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = evaluate.main(["--results", os.path.join(folder, "results"), "--drivers", os.path.join(folder, "drivers"),
                              "--json", os.path.join(folder, "out.json"), f"cache_dir={os.path.join(folder, 'cache')}"])
    if code != 0:
        raise SystemExit(f"evaluate.py exited {code}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--driver", default=DEFAULT_DRIVER, help="a talking-head clip to loop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        frames = make_set(folder, args.driver, args.videos, args.seconds)
        cold, warm = timed_run(folder), timed_run(folder)
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"{args.videos} results of {args.seconds:g} s ({frames} frames, 512x512) on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, OMP_NUM_THREADS={threads}")
    print("| run | seconds | s per video | frames per s | 100 x 10 s results, extrapolated |")
    print("| --- | ---: | ---: | ---: | ---: |")
    scale = 100 * 10.0 / (args.videos * args.seconds)
    for name, total in (("cold (drivers analysed)", cold), ("warm (drivers cached)", warm)):
        print(f"| {name} | {total:.1f} | {total / args.videos:.2f} | {args.videos * frames / total:.1f} | "
              f"{total * scale / 60:.1f} min |")


if __name__ == "__main__":
    main()
