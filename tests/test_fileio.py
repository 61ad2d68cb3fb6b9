"""The one atomic writer: what a killed writer leaves is cleaned, outputs get normal permissions, loads name files."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from megactor.data.shards import write_shard
from megactor.data.video_io import write_video
from megactor.fileio import (TEMP_PREFIX, UnreadableFile, atomic_folder, atomic_path, check_output_file, load_named,
                             write_bytes)
from megactor.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

KILLED_WRITER = """
import os, signal, sys, types
import av
import numpy as np
from megactor.data import video_io
from megactor.fileio import atomic_folder

def dying(*args, **kw):  # kill -9 inside write_video, its temporary half written
    os.kill(os.getpid(), signal.SIGKILL)

video_io.av = types.SimpleNamespace(open=av.open, VideoFrame=types.SimpleNamespace(from_ndarray=dying))
folder = sys.argv[1]
with atomic_folder(os.path.join(folder, "checkpoint")) as tmp:
    open(os.path.join(tmp, "weights"), "wb").write(b"x" * 1000)
    video_io.write_video(os.path.join(folder, "out.mp4"), np.zeros((4, 16, 16, 3), np.uint8), 25.0)
"""


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_there(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env, capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    left = _hidden(tmp_path)
    assert len(left) == 2 and all(n.startswith(TEMP_PREFIX) for n in left), left  # the folder and the video
    with atomic_path(str(tmp_path / "live.bin")) as mine:  # a live writer's temporary is not touched
        open(mine, "wb").write(b"y")
        write_bytes(str(tmp_path / "next.json"), b"{}")  # this process's first write into the folder
        assert _hidden(tmp_path) == [os.path.basename(mine)]
    assert _hidden(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["live.bin", "next.json"]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    write_bytes(str(target), b"old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "wb").write(b"new, half")
            1 / 0
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.txt"]


def test_outputs_get_the_users_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_video(str(tmp_path / "v.mp4"), np.zeros((2, 16, 16, 3), np.uint8), 25.0)
        write_shard(str(tmp_path / "shard-000000.tar"), [{"__key__": "a", "json": b"{}"}])
        save_checkpoint(str(tmp_path / "checkpoints" / "step-0000001"), {"w": torch.zeros(2)}, None, None,
                        {"step": 1}, {0: {}})
        with atomic_folder(str(tmp_path / "model")) as tmp:
            save_file({"w": torch.zeros(2)}, os.path.join(tmp, "model.safetensors"))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "v.mp4") == 0o644 and mode(tmp_path / "shard-000000.tar") == 0o644
    assert mode(tmp_path / "model") == 0o755 and mode(tmp_path / "checkpoints" / "step-0000001") == 0o755
    assert mode(tmp_path / "checkpoints" / "step-0000001" / "state.pt") == 0o644


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    (tmp_path / "taken.mp4").mkdir()
    with pytest.raises(OSError, match="taken.mp4: is a folder"):
        check_output_file(str(tmp_path / "taken.mp4"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="a_file/sub/out.mp4: cannot be written .*a_file is a file"):
        check_output_file(str(tmp_path / "a_file" / "sub" / "out.mp4"))
    with pytest.raises(OSError, match="cannot be written"):  # a read-only filesystem, whoever runs the test
        check_output_file("/sys/megactor/out.mp4")
    check_output_file(str(tmp_path / "new" / "deeper" / "out.mp4"))
    assert sorted(os.listdir(tmp_path)) == ["a_file", "taken.mp4"]  # nothing left behind


def test_a_corrupt_checkpoint_file_is_named_with_its_cause(tmp_path):
    folder = tmp_path / "step-0000001"
    save_checkpoint(str(folder), {"w": torch.zeros(4)}, None, {"state": {}, "param_groups": []}, {"step": 1}, {})
    weights = folder / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # truncated
    with pytest.raises(UnreadableFile, match=r"trainable\.safetensors: not a readable checkpoint file \(\w+"):
        load_checkpoint(str(folder))
    (folder / "state.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UnreadableFile, match=r"state\.pt: not a readable"):
        load_named(str(folder / "state.pt"), lambda p: torch.load(p, weights_only=True))
    with pytest.raises(FileNotFoundError):
        load_named(str(folder / "missing.pt"), lambda p: torch.load(p, weights_only=True))
