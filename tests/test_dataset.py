"""ClipDataset: sample contents, mode ratios, reference distance, disjoint shares, exact resume, corrupt samples."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from megactor.config import AugmentConfig, ConfigError, TrainDataConfig
from megactor.curation.config import load_curation_config
from megactor.curation.pipeline import curate
from megactor.data.dataset import ClipDataset, FrameCache, batches_before, collate_clips, plan_sample
from megactor.data.shards import index_shard, list_shards, write_shard
from megactor.data.video_io import write_video
from test_curation import small_clip


@pytest.fixture(scope="module")
def shard_dir(testcases, tmp_path_factory) -> str:
    """Eleven one-second clips of the three real drivers at 160 px, packed and face-filtered."""
    src = tmp_path_factory.mktemp("videos")
    for path in sorted((testcases / "driver").glob("*.mp4")):
        frames, audio, fps = small_clip(path, 160, 5.0)
        write_video(str(src / path.name), frames, fps, audio)
    out = tmp_path_factory.mktemp("curated")
    cfg = load_curation_config(["clip_seconds=1", "min_clip_seconds=1", "min_face_size=40"])
    curate(str(src), str(out), cfg, steps=["pack", "face"])
    return str(out / "2_face" / "shards")


def config(shard_dir, **kw) -> TrainDataConfig:
    base = dict(data_dirs=[shard_dir], video_length=4, frame_stride=2, sample_size=64, ref_min_distance=8,
                use_audio_ratio=0.4, use_both_ratio=0.3, uncond_ratio=0.1)
    return TrainDataConfig(**{**base, **kw})


def take(dataset, n):
    it = iter(dataset)
    return [next(it) for _ in range(n)]


def test_sample_shapes_and_ranges(shard_dir):
    ds = ClipDataset(config(shard_dir), seed=0)
    assert len(ds) == 11
    for s in take(ds, 6):
        assert s["pixel_values"].shape == (3, 4, 64, 64) and s["control"].shape == (3, 4, 64, 64)
        assert s["reference"].shape == (3, 64, 64)
        for k in ("pixel_values", "reference", "control"):
            assert s[k].dtype == torch.float32 and s[k].min() >= -1 and s[k].max() <= 1
        assert s["pixel_values"].std() > 0.1 and s["reference"].std() > 0.1
        assert s["frame_indices"].dtype == torch.int64 and (s["frame_indices"].diff() == 2).all()
        assert s["audio"].ndim == 1 and s["audio"].dtype == torch.float32 and len(s["audio"]) == 16000
        assert float(s["fps"]) == 30.0 and isinstance(s["key"], str)
        control_on = bool((s["control"] > -1).any())
        assert control_on == bool(s["use_visual"]), "black control exactly in audio and none modes"
        assert (s["control"][0] == s["control"][1]).all()  # grayscale in 3 channels
        assert s["face_parts"].shape == (4, 64, 64) and set(s["face_parts"].unique().tolist()) == {0.0, 1.0}


def test_single_frame_samples(shard_dir):
    cfg = config(shard_dir, video_length=1, use_audio_ratio=0.0, use_both_ratio=0.0, uncond_ratio=0.0)
    s = take(ClipDataset(cfg, seed=3), 1)[0]
    assert s["pixel_values"].shape == (3, 1, 64, 64) and s["frame_indices"].shape == (1,)
    assert s["use_visual"] == 1 and s["use_audio"] == 0
    silent = take(ClipDataset(cfg, seed=3, with_audio=False), 1)[0]  # a stage without audio skips its decoding
    assert len(s["audio"]) > 0 and silent["audio"].shape == (0,)
    assert all(torch.equal(s[k], silent[k]) for k in ("pixel_values", "reference", "control", "noise_seed"))


def test_modes_follow_the_ratios_and_reference_keeps_its_distance(shard_dir):
    cfg = config(shard_dir)
    valid = np.ones(30, bool)
    valid[[3, 17]] = False
    counts = {"visual": 0, "audio": 0, "both": 0, "none": 0}
    n = 4000
    for i in range(n):
        indices, ref, mode = plan_sample(valid, cfg, np.random.default_rng([0, 0, i]))
        counts[mode] += 1
        assert valid[indices].all() and valid[ref]
        assert np.abs(indices - ref).min() >= cfg.ref_min_distance
    for mode, p in {"audio": 0.4, "both": 0.3, "none": 0.1, "visual": 0.2}.items():
        assert abs(counts[mode] / n - p) < 4 * np.sqrt(p * (1 - p) / n), counts
    # too short for the distance: the farthest valid frame
    short = np.ones(12, bool)
    indices, ref, _ = plan_sample(short, config(shard_dir, video_length=6, frame_stride=1), np.random.default_rng(1))
    assert ref not in indices and np.abs(indices - ref).min() == max(indices.min(), 11 - indices.max())


def test_ranks_and_workers_share_an_epoch_disjointly(shard_dir):
    cfg = config(shard_dir)
    ds = ClipDataset(cfg, seed=5)
    n, streams = len(ds), 4
    epoch0 = [ds.plan(g, streams, p) for g in range(streams) for p in range(len(range(g, n, streams)))]
    assert sorted(i for _, i in epoch0) == list(range(n)) and {e for e, _ in epoch0} == {0}
    # through real DataLoaders: 2 ranks x 2 workers, first two batches of each worker
    keys = []
    for rank in range(2):
        loader = DataLoader(ClipDataset(cfg, seed=5, rank=rank, world_size=2), batch_size=1, num_workers=2,
                            collate_fn=collate_clips)
        it = iter(loader)
        keys += [k for _ in range(4) for k in next(it)["key"]]
    assert len(keys) == 8 and len(set(keys)) == 8
    assert set(keys) == {ds.samples[ds.plan(g, streams, p)[1]].key for g in range(streams) for p in range(2)}


def test_skip_batches_resumes_exactly(shard_dir):
    cfg = config(shard_dir, video_length=3)

    def loader(skip):  # 11 samples, 2 workers x batches of 2: the streams run into epoch 1
        return iter(DataLoader(ClipDataset(cfg, seed=9, batch_size=2, skip_batches=skip), batch_size=2,
                               num_workers=2, collate_fn=collate_clips))

    fresh = loader(0)
    batches = [next(fresh) for _ in range(7)]
    for skip in (3, 4):
        resumed = loader(skip)
        for expect in batches[skip:]:
            got = next(resumed)
            assert got["key"] == expect["key"], skip
            for k, v in expect.items():
                if torch.is_tensor(v):
                    assert torch.equal(got[k], v), (skip, k)
    assert [batches_before(5, w, 2) for w in range(2)] == [3, 2]


def test_frame_cache_gives_the_same_samples_within_its_budget(shard_dir):
    cfg = config(shard_dir)
    plain = take(ClipDataset(cfg, seed=4), 24)  # 11 clips: every clip read again in epochs 1 and 2
    cached_ds = ClipDataset(config(shard_dir, frame_cache_mb=64), seed=4)
    cached = take(cached_ds, 24)
    for a, b in zip(plain, cached):
        assert a["key"] == b["key"]
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    cache = cached_ds.cache
    kinds = sorted({what for what, _ in cache.entries})
    assert kinds == ["audio@16000", "frames", "json", "landmarks"] and len(cache.entries) == 4 * 11
    assert cache.bytes == sum(nbytes for _, nbytes in cache.entries.values())
    ref = cached_ds.samples[0]
    small = FrameCache(max_bytes=int(2.5 * cache.entries["frames", f"{ref.shard}:{ref.key}"][0].nbytes))  # two clips
    reads = []
    for key in ("a", "b", "a", "c", "a"):  # the least recently used goes first: b, when c comes
        small.frames(key, lambda: reads.append(key) or ref.read("mp4"))
    assert reads == ["a", "b", "c"] and [k for _, k in small.entries] == ["c", "a"] and small.bytes <= small.max_bytes


def test_corrupt_samples_are_skipped_and_counted(shard_dir, tmp_path, caplog):
    good = index_shard(list_shards(shard_dir)[0])[0]
    meta = good.read_json()
    bad_faces = dict(meta, faces={**meta["faces"], "valid": [False] * meta["num_frames"]})
    write_shard(str(tmp_path / "shard-000000.tar"), [
        {"__key__": "a_good", "json": good.read("json"), "mp4": good.read("mp4")},
        {"__key__": "b_bad_mp4", "json": good.read("json"), "mp4": b"\x00not a video" * 50},
        {"__key__": "c_bad_json", "json": b"{not json", "mp4": good.read("mp4")},
        {"__key__": "d_no_valid_frames", "json": json.dumps(bad_faces).encode(), "mp4": good.read("mp4")},
    ])
    ds = ClipDataset(config(str(tmp_path)), seed=0)
    with caplog.at_level(logging.WARNING, logger="megactor.data.dataset"):
        samples = take(ds, 8)
    assert {s["key"] for s in samples} == {"a_good"}
    assert ds.skipped >= 3
    assert "skipped" in caplog.text and f"{ds.skipped} skipped so far" in caplog.text


def test_collate_pads_audio(shard_dir):
    samples = take(ClipDataset(config(shard_dir), seed=0), 2)
    samples[1]["audio"] = samples[1]["audio"][:1000]
    batch = collate_clips(samples)
    assert batch["audio"].shape == (2, 16000) and batch["audio_lengths"].tolist() == [16000, 1000]
    assert (batch["audio"][1, 1000:] == 0).all() and batch["pixel_values"].shape == (2, 3, 4, 64, 64)


def test_missing_shards_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ClipDataset(TrainDataConfig(data_dirs=[str(tmp_path)]), seed=0)


def test_augmentation_changes_only_the_control(shard_dir):
    still = AugmentConfig(affine_prob=0.0, max_rotate=0.0, max_scale=0.0, max_translate=0.0, color_jitter=0.0)
    strong = AugmentConfig(affine_prob=1.0, max_rotate=10.0, max_scale=0.2, max_translate=0.05, color_jitter=0.5)
    kw = dict(use_audio_ratio=0.0, use_both_ratio=0.0, uncond_ratio=0.0)
    changes = []
    for a, b in zip(take(ClipDataset(config(shard_dir, augmentation=still, **kw), seed=2), 6),
                    take(ClipDataset(config(shard_dir, augmentation=strong, **kw), seed=2), 6)):
        assert a["key"] == b["key"] and torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["reference"], b["reference"])
        shown = (a["control"] > -1) | (b["control"] > -1)
        changes.append(float((a["control"] - b["control"]).abs()[shown].mean()))
    # One small random draw changes a control by as little as 0.09; six of them average 0.3-0.5 across seeds.
    assert np.mean(changes) > 0.15, np.round(changes, 3)


def test_control_parts_lie_on_the_target_frames_parts(shard_dir):
    """The control is aligned onto the clip's own pose, not the reference's: its patches cover the target frame's
    eye and mouth patches (up to the augmentation's change of aspect)."""
    kw = dict(use_audio_ratio=0.0, use_both_ratio=0.0, uncond_ratio=0.0, video_length=1, ref_min_distance=20)
    ious = []
    for s in take(ClipDataset(config(shard_dir, **kw), seed=3), 8):
        shown, parts = s["control"][0] > -1, s["face_parts"].bool()  # (1, S, S) each
        ious.append(float((shown & parts).sum() / (shown | parts).sum()))
    assert min(ious) > 0.7 and np.mean(ious) > 0.8, np.round(ious, 2)  # 0.80-1.00; onto the reference: 0.18-0.81


def test_an_unreadable_shard_is_skipped_counted_and_named(shard_dir, tmp_path, caplog):
    good = list_shards(shard_dir)[0]
    shutil.copy(good, tmp_path / "shard-000000.tar")
    data = open(good, "rb").read()
    (tmp_path / "shard-000001.tar").write_bytes(data[:700])  # truncated inside its first header block's member
    (tmp_path / "shard-000002.tar").write_bytes(b"\x00\x01 not a tar" * 100)
    with caplog.at_level(logging.WARNING, logger="megactor.data.dataset"):
        ds = ClipDataset(config(str(tmp_path)), seed=0)
    assert len(ds) == len(index_shard(good)) and len(ds.skipped_shards) >= 1
    assert all(p.endswith(("shard-000001.tar", "shard-000002.tar")) for p in ds.skipped_shards)
    assert "skipped an unreadable shard" in caplog.text and ds.skipped_shards[0] in caplog.text
    assert take(ds, 2)[0]["pixel_values"].shape == (3, 4, 64, 64)


def test_shards_without_face_data_say_which_step_adds_it(shard_dir):
    pack_shards = os.path.join(os.path.dirname(os.path.dirname(shard_dir)), "1_pack", "shards")
    with pytest.raises(ConfigError, match=r"hold no face data .*1_pack\.py.*2_face_filter\.py"):
        ClipDataset(config(pack_shards), seed=0)


def test_a_forked_worker_can_use_opencv_after_the_parent_did():
    """OpenCV's thread pool, used in the parent (paste-back, control frames), must not hang a forked worker."""
    import os
    import time

    import cv2

    import megactor.data.dataset  # noqa: F401  (registers the fork hook)

    threads = cv2.getNumThreads()
    cv2.setNumThreads(max(2, threads))  # a pool of threads, whatever OMP_NUM_THREADS says
    image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    for _ in range(3):
        cv2.GaussianBlur(image, (31, 31), 5)  # parallel: the pool's threads now exist
    pid = os.fork()
    if pid == 0:
        cv2.setNumThreads(1)
        cv2.GaussianBlur(image, (31, 31), 5)
        os._exit(0)
    deadline = time.time() + 30
    while time.time() < deadline and not os.waitpid(pid, os.WNOHANG)[0]:
        time.sleep(0.05)
    finished = time.time() < deadline
    if not finished:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    pool = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    assert finished, "the forked child hung in OpenCV"
    assert pool == max(2, threads)  # the parent got its threads back
