"""Peak memory of the curation's worker processes on one long video.

    python bench/curation_memory.py --loop ../shared/testcases/wild/driver/fullbody_1080x1920.mp4 \
        --seconds 20 --work /tmp/curation_memory [--workers 1] [key=value ...]

Makes a video of ``--seconds`` by looping ``--loop`` (its packets copied, not
re-encoded) under ``--work`` (or takes ``--video`` as it is), then runs the
three curation steps on it, each as its own ``data_processing/`` command, and
reads the peak resident set (``VmHWM`` in ``/proc/<pid>/status``, the kernel's
own high-water mark, so that no spike between two polls is missed) of every
process of each run: the command itself and its workers. Prints, per step, the
wall time, the peak of the largest worker and of the command's own process.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import av
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (("pack", "1_pack.py"), ("face", "2_face_filter.py"), ("audio", "3_audio_filter.py"))


def loop_video(src: str, seconds: float, dst: str) -> None:
    """Write ``dst``: ``src`` repeated (packets copied, timestamps shifted) until it lasts ``seconds``."""
    with av.open(src) as first:
        starts, ends = {}, {}
        for packet in first.demux():
            if packet.dts is not None:
                i = packet.stream.index
                starts[i] = min(starts.get(i, packet.dts), packet.dts)
                ends[i] = max(ends.get(i, packet.dts), packet.dts + (packet.duration or 0))
        spans = {i: ends[i] - starts[i] for i in ends}  # a loop's length per stream: its dts run on without a step
        length = max(float(s.time_base * spans[s.index]) for s in first.streams if s.index in spans)
    loops = max(1, int(round(seconds / length)))
    tmp = dst + ".tmp.mp4"
    with av.open(tmp, "w") as out:
        for k in range(loops):
            with av.open(src) as inp:
                if k == 0:
                    streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
                for packet in inp.demux():
                    if packet.dts is None or packet.stream.index not in streams:
                        continue
                    shift = k * spans[packet.stream.index]
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
    os.replace(tmp, dst)


def peak_rss(pid: int) -> int:
    """The process's peak resident set so far, bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_step(script: str, args: list[str]) -> tuple[float, int, int]:
    """Run one step's command; (seconds, largest worker's peak RSS, the command's own peak RSS)."""
    start = time.time()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "data_processing", script), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for p in [parent, *parent.children(recursive=True)]:
            peaks[p.pid] = max(peaks.get(p.pid, 0), peak_rss(p.pid))
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode:
        raise RuntimeError(f"{script} failed:\n{err[-2000:]}")
    own = peaks.pop(proc.pid, 0)
    return time.time() - start, max(peaks.values(), default=0), own


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="a video to curate as it is")
    source.add_argument("--loop", help="a video to loop to --seconds")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--work", required=True, help="scratch folder (the long video, the curation output)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="curation settings, key=value")
    args = parser.parse_args(argv)
    videos = os.path.join(args.work, "videos")
    os.makedirs(videos, exist_ok=True)
    if args.loop:
        video = os.path.join(videos, f"loop_{int(args.seconds)}s.mp4")
        if not os.path.exists(video):
            loop_video(args.loop, args.seconds, video)
    else:
        video = args.video
        os.symlink(os.path.abspath(video), os.path.join(videos, os.path.basename(video)))
    with av.open(video) as c:
        v = c.streams.video[0]
        print(f"{video}: {float(c.duration / av.time_base):.1f} s, {v.width}x{v.height}, {float(v.average_rate):.2f} fps")
    out = os.path.join(args.work, "curated")
    common = ["--input-dir", videos, "--output-dir", out, "--workers", str(args.workers), *args.overrides]
    print(f"{'step':6s} {'seconds':>8s} {'worker peak RSS':>16s} {'command peak RSS':>17s}")
    for name, script in STEPS:
        seconds, worker, own = run_step(script, common)
        print(f"{name:6s} {seconds:8.1f} {worker / 2**30:13.2f} GiB {own / 2**30:14.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
