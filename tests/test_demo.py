"""The Gradio demo: a live server on a free port driven through gradio_client, and its input checks."""
import copy
import re
import socket
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.video_io import probe, read_video, write_video

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))
from run_gradio import Limits, build_demo, check_inputs  # noqa: E402

MAX_SECONDS = 2.0  # the served limit: the real drivers (3.2-4.3 s) are too long unless a request trims them
SETTINGS = dict(audio_scale=3.0, visual_scale=1.5, audio_amplitude=0.8, visual_amplitude=1.2, steps=2, seed=7)


def request(source, driver, audio=None, mode="mixed", seconds=0.5, grid=False, **settings):
    """The endpoint's inputs, in order."""
    s = {**SETTINGS, **settings}
    return (source, driver, audio, mode, s["audio_scale"], s["visual_scale"], s["audio_amplitude"],
            s["visual_amplitude"], s["steps"], s["seed"], seconds, True, grid)


@pytest.fixture(scope="module")
def animator():
    cfg = load_config(InferenceConfig, str(ROOT / "configs/inference/tiny/inference.yaml"),
                      ["checkpoint=", "num_inference_steps=4"])
    return Animator.from_config(cfg, device="cpu")


@pytest.fixture(scope="module")
def media(testcases, tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "notes.txt").write_text("not a portrait\n")
    (folder / "broken.mp4").write_text("not a video either\n")
    silent = read_video(str(testcases / "driver" / "audio_ENTF_1.mp4"), max_seconds=0.5, with_audio=False)
    write_video(str(folder / "silent.mp4"), silent.frames, silent.fps)  # a driver without an audio track
    return {"source": str(testcases / "source" / "10.png"), "driver": str(testcases / "driver" / "audio_CHTF_2.mp4"),
            "text": str(folder / "notes.txt"), "broken": str(folder / "broken.mp4"),
            "silent": str(folder / "silent.mp4")}


@pytest.fixture(scope="module")
def demo(animator, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    blocks = build_demo(animator, Limits(max_seconds=MAX_SECONDS), str(output_dir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield blocks, f"http://127.0.0.1:{port}/", output_dir
    blocks.close()


@pytest.mark.slow
def test_request_through_the_client_returns_a_playable_mp4_with_audio(demo, media):
    _, url, output_dir = demo
    client = Client(url, verbose=False)
    video, grid, info = client.predict(*request(handle_file(media["source"]), handle_file(media["driver"]),
                                                grid=True), api_name="/animate")
    clip, driver = read_video(video), probe(media["driver"])
    assert clip.frames.shape == (15, 64, 64, 3)  # 0.5 s of the 30 fps driver, at the tiny preset's size
    assert clip.fps == driver["fps"]
    assert probe(video)["has_audio"] and abs(len(clip.audio) - 8000) <= 1024  # 0.5 s at 16 kHz, +- an AAC frame
    assert np.abs(clip.audio).max() > 0.01  # the driver's speech, not silence
    grid_clip = read_video(grid, with_audio=False)
    assert grid_clip.frames.shape == (15, 64, 4 * 64, 3)  # source | driver | control | result
    assert info.startswith("15 frames at 30 fps, mixed driving, 2 steps")
    kept = {p.name: p for p in output_dir.rglob("*.mp4")}  # the server keeps what it served
    assert Path(video).name == "10_audio_CHTF_2_mixed.mp4"
    assert kept[Path(video).name].read_bytes() == Path(video).read_bytes()
    assert kept[Path(grid).name].read_bytes() == Path(grid).read_bytes()


@pytest.mark.parametrize("case, message", [
    ("text_as_image", "notes.txt is not an image"),
    ("driver_too_long", "audio_CHTF_2.mp4 is 4.3 s long, but this demo animates at most 2 s"),
    ("audio_only_without_audio", "Audio-only driving needs audio, but silent.mp4 has no audio track"),
    ("visual_without_driver", "Visual-only driving needs a driver video"),
    ("steps_out_of_range", "Denoising steps must lie in [1, 200], got 0"),
])
def test_bad_requests_get_a_readable_error(demo, media, case, message):
    _, url, _ = demo
    source, driver = handle_file(media["source"]), handle_file(media["driver"])
    args = {
        "text_as_image": request(handle_file(media["text"]), driver),
        "driver_too_long": request(source, driver, seconds=0),  # 0: the whole driver
        "audio_only_without_audio": request(source, handle_file(media["silent"]), mode="audio"),
        "visual_without_driver": request(source, None, mode="visual"),
        "steps_out_of_range": request(source, driver, steps=0),
    }[case]
    # The server runs without show_error, so only a gr.Error's message reaches the client.
    with pytest.raises(AppError, match=re.escape(message)):
        Client(url, verbose=False).predict(*args, api_name="/animate")


def test_check_inputs(media, testcases):
    source, driver, silent = media["source"], media["driver"], media["silent"]
    limits = Limits(max_seconds=MAX_SECONDS, max_image_pixels=1000 * 1000)
    check_inputs(source, driver, None, "mixed", 1.0, limits)  # trimmed to 1 s: within the limit
    check_inputs(source, driver, None, "audio", 1.0, limits)  # audio-only from the driver's own track
    check_inputs(source, silent, driver, "mixed", None, limits)  # audio from another file
    check_inputs(source, None, driver, "audio", 1.5, limits)  # a video's track as the audio file
    bad = [
        ((str(testcases / "source" / "1.png"), driver, None, "mixed", 1.0),
         "1.png is too large: 2052x2004 pixels (4.1 MP); this demo takes at most 1.0 MP"),
        ((source, source, None, "visual", 1.0), "10.png is not a video"),
        ((source, media["broken"], None, "visual", 1.0), "broken.mp4 is not a video that can be read"),
        ((source, driver, silent, "audio", 1.0), "silent.mp4 has no audio track"),
        ((source, driver, media["text"], "mixed", 1.0), "notes.txt is not an audio file: expected one of .wav"),
        ((source, silent, None, "mixed", 1.0), "Mixed driving needs audio, but silent.mp4 has no audio track"),
        ((source, None, None, "audio", 1.0), "Audio-only driving needs audio, but no audio was given"),
        ((source, None, driver, "audio", None), "audio_CHTF_2.mp4 is 4.3 s long"),
        ((source, driver, None, "visual", 0), "audio_CHTF_2.mp4 is 4.3 s long"),
        ((source, driver, None, "mixed", -1.0), "Seconds to animate must be a number, 0 for the whole driver"),
        ((source, driver, None, "mixed", "1"), "Seconds to animate must be a number, 0 for the whole driver"),
        ((None, driver, None, "mixed", 1.0), "Upload a source portrait image"),
        ((source, driver, None, "both", 1.0), "Unknown driving mode 'both'"),
    ]
    for args, message in bad:
        with pytest.raises(gr.Error, match=re.escape(message)):
            check_inputs(*args, limits)


def test_a_request_sets_its_knobs_for_its_run_only_and_reports_denoising_progress(demo, animator, media,
                                                                                    monkeypatch):
    blocks = demo[0]
    handler = next(f.fn for f in blocks.fns.values() if f.api_name == "animate")
    seen, updates = [], []
    animate = animator.animate

    def spy(*args, **kwargs):
        seen.append(copy.deepcopy(animator.cfg))
        return animate(*args, **kwargs)

    monkeypatch.setattr(animator, "animate", spy)
    served = copy.deepcopy(animator.cfg)
    # the handler runs with preprocess=False: uploads arrive as FileData dicts
    _, _, info = handler(*request({"path": media["source"]}, {"path": media["silent"]}, mode="visual", seconds=0,
                                  steps=3), progress=lambda value, desc=None: updates.append((value, desc)))

    cfg = seen[0]
    assert (cfg.num_inference_steps, cfg.limit) == (3, None)  # 0 seconds: the whole driver
    g = cfg.guidance
    assert (g.audio_scale, g.visual_scale, g.audio_amplitude, g.visual_amplitude) == (
        SETTINGS["audio_scale"], SETTINGS["visual_scale"], SETTINGS["audio_amplitude"], SETTINGS["visual_amplitude"])
    assert info.startswith("15 frames at 30 fps, visual driving, 3 steps")  # all of the 0.5 s driver
    assert animator.cfg == served  # the served config is untouched
    assert [v for v, desc in updates if desc == "Denoising"] == [(1, 3), (2, 3), (3, 3)]
