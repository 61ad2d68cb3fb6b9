"""Curation pipeline: real clips kept, faults recorded with their reasons, deterministic resume, settings."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from megactor.config import ConfigError
from megactor.config import TrainDataConfig
from megactor.curation.config import load_curation_config
from megactor.data.dataset import ClipDataset
from megactor.curation.pack import piece_lengths
from megactor.curation.pipeline import curate, main
from megactor.curation.runner import Item, Step, process_items
from megactor.data.shards import index_shard, list_shards, plan_shards, unpack_array, write_shard
from megactor.data.video_io import read_video, write_video

REPO = Path(__file__).resolve().parents[1]


def small_clip(path: Path, size: int, seconds: float):
    """Frames resized to ``size`` and cut to ``seconds``, with the matching 16 kHz audio."""
    clip = read_video(str(path), max_seconds=seconds)
    frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in clip.frames])
    return frames, clip.audio, clip.fps


def shard_bytes(folder: Path) -> dict:
    return {os.path.basename(p): Path(p).read_bytes() for p in list_shards(str(folder))}


# --------------------------------------------------------------------------- shards


def test_plan_shards_is_greedy_and_order_preserving():
    assert plan_shards([5, 5, 5, 20, 1, 1], 10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]
    assert plan_shards([], 10) == []


def test_write_shard_is_deterministic_and_indexed(tmp_path):
    samples = [{"__key__": f"clip-{i}", "json": json.dumps({"i": i}).encode(), "mp4": bytes([i]) * (700 + i)}
               for i in range(3)]
    write_shard(str(tmp_path / "a.tar"), samples)
    time.sleep(1.1)  # a different wall-clock second must not change the bytes
    write_shard(str(tmp_path / "b.tar"), samples)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    refs = index_shard(str(tmp_path / "a.tar"))
    assert [r.key for r in refs] == ["clip-0", "clip-1", "clip-2"]
    assert refs[2].read("mp4") == bytes([2]) * 702 and refs[1].read_json() == {"i": 1}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


# --------------------------------------------------------------------------- pack


def test_piece_lengths_are_equal_and_within_the_clip_length():
    first = lambda n, clip, least=1: list(islice(piece_lengths(n, clip, least), math.ceil(n / clip) + 1))
    assert first(250, 200, 50) == [125, 125, 200]  # 10 s at 25 fps, clips of 8 s: 5 + 5 s, not 8 + 2
    assert first(100, 38) == [33, 33, 34, 38]
    assert first(150, 200) == [150, 200]
    assert first(128, 30, 30) == [30] * 6  # equal pieces (25 or 26 frames) would all be too short: 4 x 30 + a tail
    assert list(islice(piece_lengths(0, 50, 1), 2)) == [50, 50]  # no estimate: pieces of the clip length
    for n in range(1, 400, 7):
        sizes = first(n, 60)[:-1]
        assert sum(sizes) == n and max(sizes) <= 60 and max(sizes) - min(sizes) <= 1


def test_pack_cuts_a_video_into_equal_clips_with_their_audio(tmp_path):
    from megactor.curation.pack import Pack

    fps, T = 25.0, 100
    frames = (np.full((48, 48, 3), 2 * i, np.uint8) for i in range(T))  # each frame's brightness is its index
    tone = np.sin(np.arange(int(T / fps * 16000)) * 0.05).astype(np.float32) * 0.3
    write_video(str(tmp_path / "talk.mp4"), frames, fps, tone)
    cfg = load_curation_config(["clip_seconds=1.5", "min_clip_seconds=1"])
    clips = Pack().process(Item("talk", ("talk.mp4", str(tmp_path / "talk.mp4"))), cfg, str(tmp_path / "work"))
    assert [c["json"]["num_frames"] for c in clips] == [33, 33, 34]
    assert [c["json"]["start_frame"] for c in clips] == [0, 33, 66]
    for clip in clips:
        video = read_video(clip["mp4"]["path"])
        assert abs(float(video.frames[0].mean()) - 2 * clip["json"]["start_frame"]) < 3
        assert abs(len(video.audio) - clip["json"]["num_frames"] / fps * 16000) < 1100  # AAC pads its last frame


# --------------------------------------------------------------------------- workers


class AbortOnC(Step):
    """Kills its worker process on item "c", as a native crash in a decoder would."""
    name, folder = "abort", "abort"

    def items(self, in_dir, out_dir):
        return [Item(k, k) for k in "abcde"]

    def process(self, item, cfg, item_dir):
        if item.key == "c":
            os.abort()
        return [{"record": {"key": item.key, "source": item.key, "pid": os.getpid(), "reason": None},
                 "json": None, "mp4": None}]


def test_a_worker_crash_is_recorded_and_the_others_processed(tmp_path):
    step = AbortOnC()
    process_items(step, step.items("", ""), load_curation_config(["workers=2"]), str(tmp_path / "work"), str(tmp_path))
    records = {k: json.loads((tmp_path / "work" / f"{k}.json").read_text())[0]["record"] for k in "abcde"}
    assert records["c"]["reason"] == "crashed"
    assert all(records[k]["reason"] is None and records[k]["pid"] != os.getpid() for k in "abde")


# --------------------------------------------------------------------------- settings and command line


def test_settings_reject_unknown_keys_and_bad_values(tmp_path, capsys):
    cfg = load_curation_config(["clip_seconds=4", "max_sync_lag_ms=200"])
    assert cfg.clip_seconds == 4.0 and cfg.max_sync_lag_ms == 200
    with pytest.raises(ConfigError, match="dwpose_det_model and dwpose_pose_model"):
        load_curation_config(["face_backend=dwpose"])
    with pytest.raises(ConfigError, match="min_sync_lag_ms"):
        load_curation_config(["min_sync_lag_ms=400"])
    assert main(["pack"], ["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err
    assert main(["pack"], ["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "workers=0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert main(["face"], ["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "1_pack.py" in capsys.readouterr().err
    assert main(["pack"], ["--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_curate_keeps_the_real_clips(testcases, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "data_processing" / "curate.py"), "--input-dir",
                          str(testcases / "driver"), "--output-dir", str(out), "--workers", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "clips: 3, kept: 3" in run.stdout
    table = pd.read_csv(out / "metrics.csv")
    assert len(table) == 3 and table["kept"].all()
    assert (table["valid_fraction"] == 1.0).all() and (table["face_size"] > 150).all()
    refs = [r for p in list_shards(str(out / "shards")) for r in index_shard(p)]
    assert len(refs) == 3
    sample = refs[0].read_json()
    n = sample["num_frames"]
    assert sample["fps"] == 30.0 and sample["sample_rate"] == 16000
    assert len(sample["faces"]["valid"]) == n and all(sample["faces"]["valid"])
    landmarks = unpack_array(sample["faces"]["landmarks"])
    assert landmarks.shape == (n, 468, 2) and np.isfinite(landmarks).all()
    assert {"sync_score", "sync_lag", "sync_lag_ms", "valid_fraction", "yaw", "motion"} <= set(sample["metrics"])
    assert sample["metrics"]["sync_scorer"] == "lipsync" and sample["has_audio"]
    assert unpack_array(sample["faces"]["mouth_appearance"]).shape == (n, 3)
    report = (out / "report.md").read_text()
    assert "clips: 3, kept: 3" in report and "| sync_score | 3 |" in report
    assert {"sync_score.png", "valid_fraction.png", "motion.png"} <= set(os.listdir(out / "report"))


@pytest.mark.slow
def test_faults_are_recorded_and_the_rest_processed(testcases, tmp_path):
    clips = sorted((testcases / "driver").glob("*.mp4"))
    a, audio, fps = small_clip(clips[0], 192, 4.0)  # long enough for a sync verdict to hold
    b, _, _ = small_clip(clips[1], 192, 4.0)
    src = tmp_path / "in"
    write_video(str(src / "good.mp4"), a, fps, audio)
    data = (src / "good.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[:len(data) // 2])
    (src / "notes").mkdir()
    (src / "notes" / "text.mp4").write_text("this is not a video\n")
    noise = np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint8)
    write_video(str(src / "noise.mp4"), noise, fps, audio)
    write_video(str(src / "two_faces.mp4"), np.concatenate([a, b], axis=2), fps, audio)

    cfg = load_curation_config(["workers=2", "min_face_size=40"])
    summary = curate(str(src), str(tmp_path / "out"), cfg)
    table = pd.read_csv(tmp_path / "out" / "metrics.csv").set_index("source")
    expected = {"truncated.mp4": ("pack", "unreadable"), "notes/text.mp4": ("pack", "unreadable"),
                "noise.mp4": ("face", "no_face"),
                "two_faces.mp4": ("face", "multiple_faces")}
    for source, (step, reason) in expected.items():
        assert (table.loc[source, "dropped_at"], table.loc[source, "reason"]) == (step, reason), source
    assert "notes/text.mp4" in table.loc["notes/text.mp4", "error"]
    assert table.loc["good.mp4", "kept"] and table["kept"].sum() == 1
    assert [r.key for p in list_shards(str(tmp_path / "out" / "shards")) for r in index_shard(p)] == \
        [table.loc["good.mp4", "key"]]
    assert "| face | no_face | 1 |" in summary and "| pack | unreadable | 2 |" in summary


@pytest.mark.slow
def test_visual_only_clips_are_kept_marked_and_trained_visually(testcases, tmp_path):
    clips = sorted((testcases / "driver").glob("*.mp4"))
    src = tmp_path / "in"
    frames, audio, fps = small_clip(clips[0], 192, 3.0)
    write_video(str(src / "talk.mp4"), frames, fps, audio)
    write_video(str(src / "silent_film.mp4"), small_clip(clips[1], 192, 2.5)[0], fps, None)
    short, short_audio, _ = small_clip(clips[2], 192, 1.5)  # 45 frames: the lag search needs 25 + 30
    write_video(str(src / "short_talk.mp4"), short, fps, short_audio)
    out = tmp_path / "out"
    summary = curate(str(src), str(out), load_curation_config(["min_face_size=40", "min_clip_seconds=1"]))
    table = pd.read_csv(out / "metrics.csv").set_index("source")
    assert table["kept"].all() and len(table) == 3
    assert not table.loc["silent_film.mp4", "has_audio"] and table.loc["talk.mp4", "has_audio"]
    assert np.isnan(table.loc["silent_film.mp4", "sync_score"])  # the sync filter skipped it
    assert table.loc["short_talk.mp4", "audio_unverified"] and not table.loc["talk.mp4", "audio_unverified"]
    short_row = table.loc["short_talk.mp4"]
    assert np.isnan(short_row["sync_score"]) and "a verdict needs 55" in short_row["sync_error"]
    assert "too short for a sync verdict (kept, trained as visual-only): 1" in summary
    refs = {r.key.split("-")[0]: r for p in list_shards(str(out / "shards")) for r in index_shard(p)}
    assert refs["silent_film"].read_json()["has_audio"] is False and refs["talk"].read_json()["has_audio"] is True
    assert refs["short_talk"].read_json()["audio_unverified"] is True

    # the trainer's data folder is the curation's output folder; the silent clip gives visual or undriven samples
    cfg = TrainDataConfig(data_dirs=[str(out)], video_length=2, sample_size=32, ref_min_distance=4,
                          use_audio_ratio=0.5, use_both_ratio=0.3, uncond_ratio=0.1)
    dataset = ClipDataset(cfg, seed=0)
    silent = dataset.samples.index(refs["silent_film"])
    modes = [dataset.load(silent, np.random.default_rng(i)) for i in range(12)]
    assert all(not s["use_audio"] for s in modes) and any(s["use_visual"] for s in modes)
    assert all(len(s["audio"]) == round(2.5 * 16000) and not s["audio"].any() for s in modes)
    talk = [dataset.load(dataset.samples.index(refs["talk"]), np.random.default_rng(i)) for i in range(12)]
    assert any(s["use_audio"] for s in talk)
    unverified = [dataset.load(dataset.samples.index(refs["short_talk"]), np.random.default_rng(i)) for i in range(12)]
    assert all(not s["use_audio"] and not s["audio"].any() for s in unverified)

    strict = tmp_path / "strict"
    curate(str(src), str(strict), load_curation_config(["min_face_size=40", "require_audio=true"]))
    table = pd.read_csv(strict / "metrics.csv").set_index("source")
    assert (table.loc["silent_film.mp4", "dropped_at"], table.loc["silent_film.mp4", "reason"]) == ("pack", "no_audio")
    assert table.loc["talk.mp4", "kept"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_shards(testcases, tmp_path):
    clips = sorted((testcases / "driver").glob("*.mp4"))
    src = tmp_path / "in"
    for path in clips[:2]:  # 256 px: libx264 gives different bytes now and then at some sizes (160 px), not here
        frames, audio, fps = small_clip(path, 256, 3.0)
        write_video(str(src / path.name), frames, fps, audio)
    truth = {"mouth_opening": list(range(90)), "params": {"seed": 7, "size": [256, 256]}}
    (src / clips[0].with_suffix(".json").name).write_text(json.dumps(truth))
    settings = ["clip_seconds=1.5", "min_clip_seconds=1.2", "min_face_size=40", "shard_size_mb=0.1",
                "min_sync_score=-1", "min_sync_lag_ms=-1000", "max_sync_lag_ms=1000"]

    clean = tmp_path / "clean"
    curate(str(src), str(clean), load_curation_config(settings))

    resumed = tmp_path / "resumed"
    cmd = [sys.executable, str(REPO / "data_processing" / "curate.py"), "--input-dir", str(src),
           "--output-dir", str(resumed), *settings]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    face_work = resumed / "2_face" / "work"
    deadline = time.time() + 120
    while not (face_work.is_dir() and any(n.endswith(".json") for n in os.listdir(face_work))):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "2_face" / "records.jsonl").exists()  # killed in the middle of the face step

    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    for folder in ("1_pack/shards", "2_face/shards", "shards"):
        expect = shard_bytes(clean / folder)
        assert len(expect) >= 3 and shard_bytes(resumed / folder) == expect, folder

    # a finished run redoes nothing: no work file or shard is rewritten
    outputs = [p for p in resumed.rglob("*") if p.is_file() and (p.suffix == ".tar" or p.parent.name == "work")]
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    curate(str(src), str(resumed), load_curation_config(settings))
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps

    # the sidecar's per-frame lists are cut to each clip, the rest is carried as is
    refs = [r for p in list_shards(str(clean / "1_pack" / "shards")) for r in index_shard(p)]
    metas = [r.read_json() for r in refs if r.key.startswith("audio_CHTF_2")]
    assert [m["source_meta"]["mouth_opening"] for m in metas] == [list(range(45)), list(range(45, 90))]
    assert all(m["source_meta"]["params"] == truth["params"] for m in metas)


def test_an_output_folder_inside_the_input_is_not_read_as_input(testcases, tmp_path):
    from megactor.curation.pack import Pack

    src = tmp_path / "in"
    frames, audio, fps = small_clip(sorted((testcases / "driver").glob("*.mp4"))[0], 96, 1.0)
    write_video(str(src / "talk.mp4"), frames, fps, audio)
    out = src / "curated"
    cfg = load_curation_config(["clip_seconds=1", "min_clip_seconds=0.5", "workers=1"])
    for _ in range(2):  # the second run finds the first one's clip files under the input folder
        curate(str(src), str(out), cfg, steps=["pack"])
    assert [item.source[0] for item in Pack().items(str(src), str(out))] == ["talk.mp4"]
    records = [json.loads(line) for line in (out / "1_pack" / "records.jsonl").read_text().splitlines()]
    assert {r["source"] for r in records} == {"talk.mp4"}


def test_a_still_image_named_mp4_is_not_a_one_frame_video(testcases, tmp_path):
    from megactor.curation.pack import Pack
    from megactor.curation.runner import Item
    from megactor.data.video_io import MediaError, probe

    still = tmp_path / "portrait.mp4"
    still.write_bytes(sorted((testcases / "source").glob("*.png"))[0].read_bytes())
    with pytest.raises(MediaError, match="portrait.mp4: is a still image"):
        read_video(str(still))
    with pytest.raises(MediaError, match="still image"):
        probe(str(still))
    [clip] = Pack().process(Item("portrait", ("portrait.mp4", str(still))), load_curation_config([]), str(tmp_path))
    assert clip["record"]["reason"] == "unreadable" and "still image" in clip["record"]["error"]


def _process_table() -> dict:
    """{pid: (parent pid, state)} of the running processes, from /proc."""
    table = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set:
    table, found = _process_table(), set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids) -> set:
    table = _process_table()
    return {p for p in pids if p in table and table[p][1] not in "ZX"}  # a zombie has ended


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process table from /proc")
def test_workers_end_when_curate_is_killed(tmp_path):
    """kill -9 of the main process: its forkserver, workers and resource tracker end within seconds."""
    src = tmp_path / "in"
    noise = np.random.default_rng(0).integers(0, 256, (75, 96, 96, 3), dtype=np.uint8)
    for i in range(6):
        write_video(str(src / f"clip{i}.mp4"), noise, 25.0, np.zeros(48000, np.float32))
    cmd = [sys.executable, str(REPO / "data_processing" / "curate.py"), "--input-dir", str(src),
           "--output-dir", str(tmp_path / "out"), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, family = time.time() + 120, set()
    while len(family) < 3:  # the forkserver and the resource tracker, and a worker under the forkserver
        assert proc.poll() is None and time.time() < deadline, "the run ended before its workers started"
        family = _descendants(proc.pid)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while _alive(family) and time.time() < deadline:
        time.sleep(0.2)
    alive = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in _alive(family)}
    for pid in alive:
        os.kill(pid, signal.SIGKILL)  # the leaked ones, so that a failure leaves none behind
    assert not alive, alive
