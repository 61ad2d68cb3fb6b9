"""The Gradio demo: a live server on a free port driven through gradio_client, its handlers, and its input checks."""
import copy
import re
import socket
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from megactor.animate import Animator
from megactor.config import InferenceConfig, load_config
from megactor.data.video_io import probe, read_video, write_video

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))
from app import (RANDOM_MODEL_BANNER, Limits, build_demo, check_inputs, example_rows, fit_source,  # noqa: E402
                 synthetic_examples)

MAX_SECONDS = 2.0  # the served limit: the real drivers (3.2-4.3 s) are too long unless a request trims them
SETTINGS = dict(audio_scale=3.0, visual_scale=1.5, audio_amplitude=0.8, visual_amplitude=1.2, idle_motion=True,
                idle_strength=1.0, steps=2, seed=7, crop=True, paste_back=True)


def request(source, driver, audio=None, mode="mixed", seconds=0.5, grid=False, **settings):
    """The endpoints' inputs, in order."""
    s = {**SETTINGS, **settings}
    return (source, driver, audio, mode, s["audio_scale"], s["visual_scale"], s["audio_amplitude"],
            s["visual_amplitude"], s["idle_motion"], s["idle_strength"], s["steps"], s["seed"], seconds, s["crop"],
            s["paste_back"], grid)


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
    Image.fromarray(np.full((128, 96, 3), 180, np.uint8)).save(folder / "wall.png")  # no face
    silent = read_video(str(testcases / "driver" / "audio_ENTF_1.mp4"), max_seconds=0.5, with_audio=False)
    write_video(str(folder / "silent.mp4"), silent.frames, silent.fps)  # a driver without an audio track
    return {"source": str(testcases / "source" / "10.png"), "driver": str(testcases / "driver" / "audio_CHTF_2.mp4"),
            "text": str(folder / "notes.txt"), "broken": str(folder / "broken.mp4"),
            "silent": str(folder / "silent.mp4"), "wall": str(folder / "wall.png")}


@pytest.fixture(scope="module")
def demo(animator, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    blocks = build_demo(animator, Limits(max_seconds=MAX_SECONDS, max_image_pixels=700 * 700), str(output_dir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield blocks, f"http://127.0.0.1:{port}/", output_dir
    blocks.close()


def handler(blocks, name):
    return next(f.fn for f in blocks.fns.values() if getattr(f.fn, "__name__", None) == name)


@pytest.mark.slow
def test_request_through_the_client_returns_the_portrait_video_with_audio_and_a_captioned_grid(demo, media):
    _, url, output_dir = demo
    client = Client(url, verbose=False)
    video, grid, info = client.predict(*request(handle_file(media["source"]), handle_file(media["driver"]),
                                                grid=True), api_name="/animate")
    clip, driver = read_video(video), probe(media["driver"])
    # 0.5 s of the 30 fps driver; 10.png (768x844) is over the served 700x700 pixels, so scaled down to 666x732
    assert clip.frames.shape == (15, 732, 666, 3)
    assert clip.fps == driver["fps"]
    assert probe(video)["has_audio"] and abs(len(clip.audio) - 8000) <= 1024  # 0.5 s at 16 kHz, +- an AAC frame
    assert np.abs(clip.audio).max() > 0.01  # the driver's speech, not silence
    assert grid["label"] == "Grid: source crop | driver | control | result | in the portrait"
    grid_clip = read_video(grid["value"], with_audio=False)
    assert grid_clip.frames.shape[:2] == (15, 256)  # each panel 256 px tall, whatever the model's crop
    assert info.startswith("15 frames of 666x732 at 30 fps, mixed driving, 2 steps. 10.png (768x844) was scaled "
                           "down to 667x733 to fit this demo.")  # and the video rounded to even sides
    kept = {p.name: p for p in output_dir.rglob("*.mp4")}  # the server keeps what it served
    assert Path(video).name == "10_audio_CHTF_2_mixed.mp4"
    assert kept[Path(video).name].read_bytes() == Path(video).read_bytes()


def test_the_pages_inputs_reach_the_handler_in_its_order(demo):
    blocks = demo[0]
    labels = {}
    for dep in blocks.fns.values():
        if dep.api_name in ("animate_ui", "animate"):
            labels[dep.api_name] = [getattr(c, "label", None) for c in dep.inputs]
    assert labels["animate_ui"] == labels["animate"] == [
        "Source portrait", "Driver video (face motion; its audio too)", "Audio (optional: replaces the driver's track)",
        "Driving mode", "Audio guidance s_a", "Visual guidance s_v", "Audio amplitude a_a", "Visual amplitude a_v",
        "Idle motion: blink and move a little", "Idle head motion", "Denoising steps", "Seed", "Seconds to animate",
        "Crop around the face", "Paste back into the portrait", "Also make a grid of what the model saw"]


@pytest.mark.parametrize("case, message", [
    ("text_as_image", "notes.txt is not an image"),
    ("driver_too_long", "audio_CHTF_2.mp4 is 4.3 s long, but this demo animates at most 2 s"),
    ("audio_only_without_audio", "Audio-only driving needs audio, but silent.mp4 has no audio track"),
    ("visual_without_driver", "Visual-only driving needs a driver video"),
    ("steps_out_of_range", "Denoising steps must lie in [1, 200], got 0"),
    ("no_face_cropped", "wall.png: no face found: untick 'Crop around the face' under Advanced to animate the "
                        "whole image."),
    ("no_face_visual", "wall.png: no face in the source image, so it cannot follow a driver's face: pick "
                       "audio-only driving."),
])
def test_the_page_shows_each_error_in_its_own_words_as_its_status(demo, media, case, message):
    _, url, _ = demo
    source, driver = handle_file(media["source"]), handle_file(media["driver"])
    wall = handle_file(media["wall"])
    args = {
        "text_as_image": request(handle_file(media["text"]), driver),
        "driver_too_long": request(source, driver, seconds=0),  # 0: the whole driver
        "audio_only_without_audio": request(source, handle_file(media["silent"]), mode="audio"),
        "visual_without_driver": request(source, None, mode="visual"),
        "steps_out_of_range": request(source, driver, steps=0),
        "no_face_cropped": request(wall, handle_file(media["silent"]), mode="visual"),
        "no_face_visual": request(wall, handle_file(media["silent"]), mode="visual", crop=False),
    }[case]
    video, grid, info, status = Client(url, verbose=False).predict(*args, api_name="/animate_ui")
    assert (video, grid, info) == (None, None, "")
    assert status.startswith("**Error:** ") and message in status
    assert "--" not in status  # no command-line flag


def test_the_scripts_endpoint_raises_the_same_message(demo, media):
    _, url, _ = demo
    args = request(handle_file(media["source"]), None, mode="visual")
    # The server runs without show_error, so only a gr.Error's message reaches the client.
    with pytest.raises(AppError, match=re.escape("Visual-only driving needs a driver video")):
        Client(url, verbose=False).predict(*args, api_name="/animate")


def test_check_inputs(media):
    source, driver, silent = media["source"], media["driver"], media["silent"]
    limits = Limits(max_seconds=MAX_SECONDS)
    check_inputs(source, driver, None, "mixed", 1.0, limits)  # trimmed to 1 s: within the limit
    check_inputs(source, driver, None, "audio", 1.0, limits)  # audio-only from the driver's own track
    check_inputs(source, silent, driver, "mixed", None, limits)  # audio from another file
    check_inputs(source, None, driver, "audio", 1.5, limits)  # a video's track as the audio file
    bad = [
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


def test_an_oversized_source_is_scaled_down_when_it_arrives(demo, testcases, media, tmp_path):
    big = str(testcases / "source" / "1.png")  # 2052 x 2004
    scaled, note = fit_source(big, 1000 * 1000, str(tmp_path))
    width, height = Image.open(scaled).size
    assert width * height <= 1000 * 1000 and abs(width / height - 2052 / 2004) < 0.01
    assert note == f"1.png (2052x2004) was scaled down to {width}x{height} to fit this demo."
    assert fit_source(media["wall"], 1000 * 1000, str(tmp_path)) == (media["wall"], None)
    on_upload = handler(demo[0], "on_source_upload")
    path, status = on_upload({"path": big})
    assert Image.open(path).size[0] * Image.open(path).size[1] <= 700 * 700 and "was scaled down" in status
    assert on_upload({"path": media["text"]}) == (None, "**Error:** notes.txt is not an image (PNG, JPEG, WebP, ...).")


def test_a_request_sets_its_knobs_for_its_run_only_and_reports_each_stage(demo, animator, media, monkeypatch):
    animate = handler(demo[0], "animate")
    seen, updates = [], []
    original = animator.animate

    def spy(*args, **kwargs):
        seen.append(copy.deepcopy(animator.cfg))
        return original(*args, **kwargs)

    monkeypatch.setattr(animator, "animate", spy)
    served = copy.deepcopy(animator.cfg)
    # the handler runs with preprocess=False: uploads arrive as FileData dicts
    _, _, info = animate(*request({"path": media["wall"]}, None, {"path": media["driver"]}, mode="audio",
                                  seconds=0.4, steps=3, idle_strength=0.5, crop=False, paste_back=False),
                         progress=lambda value, desc=None, **_: updates.append((value, desc)))
    cfg = seen[0]
    assert (cfg.num_inference_steps, cfg.limit, cfg.paste_back, cfg.idle_motion_strength) == (3, 0.4, False, 0.5)
    g = cfg.guidance
    assert (g.audio_scale, g.visual_scale, g.audio_amplitude, g.visual_amplitude) == (
        SETTINGS["audio_scale"], SETTINGS["visual_scale"], SETTINGS["audio_amplitude"], SETTINGS["visual_amplitude"])
    assert info.startswith("10 frames of 64x64 at 25 fps, audio driving, 3 steps")  # no face: no idle motion
    assert animator.cfg == served  # the served config is untouched
    stages = [desc for _, desc in updates]
    assert stages.index("Face analysis (source and driver)") < stages.index("Denoising")
    assert [v for v, desc in updates if desc == "Denoising" and v is not None] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("how", ["cancel", "closed"])
def test_cancel_or_a_closed_tab_stops_the_run_at_its_next_step(demo, media, how):
    blocks = demo[0]
    animate_ui, stop = handler(blocks, "animate_ui"), handler(blocks, how)
    session = SimpleNamespace(session_hash=f"tab-{how}")
    steps, first_step, outputs = [], threading.Event(), []

    def progress(value, desc=None, **_):
        if desc == "Denoising" and value is not None:
            steps.append(value)
            first_step.set()

    run = threading.Thread(target=lambda: outputs.append(animate_ui(
        *request({"path": media["source"]}, {"path": media["driver"]}, steps=50), request=session,
        progress=progress)))
    run.start()
    assert first_step.wait(120)
    stop(session)
    run.join(120)
    assert not run.is_alive() and len(steps) < 50
    assert outputs[0] == (None, None, "", "Cancelled: the run stopped at its next step.")
    if how == "cancel":
        assert stop(session) == "Nothing is running."


def test_a_random_model_says_so_and_its_modes_give_the_same_video(demo, animator, media):
    """The banner's claim: with its control and audio branches at their zero initialisation, a random model
    draws the same frames whatever the mode (audio-only here with idle motion, so its control is not empty)."""
    assert RANDOM_MODEL_BANNER in str(demo[0].config)
    animator.cfg.paste_back, animator.cfg.num_inference_steps = False, 1
    try:
        runs = [animator.animate(media["source"], media["driver"], mode=mode, limit=0.2, seed=3, progress=False)
                for mode in ("mixed", "visual", "audio")]
    finally:
        animator.cfg.paste_back, animator.cfg.num_inference_steps = True, 4
    assert runs[2].control is not None and runs[2].control.max() > 0
    for other in runs[1:]:
        assert np.abs(other.frames.astype(int) - runs[0].frames).max() <= 1


def test_examples_are_drawn_for_a_fresh_clone_one_per_mode(tmp_path):
    folder = synthetic_examples(str(tmp_path / "examples"))
    rows = example_rows(folder)
    assert [row[3] for row in rows] == ["mixed", "visual", "audio"]
    for source, driver, audio, mode in rows:
        assert Image.open(source).size == (128, 128)
        assert probe(driver or audio)["has_audio"] and (driver is None) == (mode == "audio")
    with pytest.raises(FileNotFoundError, match="need at least one image"):
        example_rows(str(tmp_path))


def test_the_demo_fails_on_a_missing_checkpoint_before_importing_gradio_or_torch(tmp_path):
    import subprocess

    script = ("import sys; sys.path.insert(0, sys.argv[1]); import run_gradio; rc = run_gradio.main([]); "
              "print(rc, 'gradio' in sys.modules, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script, str(ROOT / "demo")], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": ""})
    assert run.stdout.split() == ["2", "False", "False"]
    assert f"looked for {tmp_path}/runs/tiny/stage3/model, relative to the working directory {tmp_path}" in run.stderr
