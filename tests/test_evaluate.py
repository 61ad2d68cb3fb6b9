"""evaluate.py on real clips: a driver scored as its own result (a perfect generator) reads sync offset 0 and
LMD 0; the same driver with its picture shifted 10 frames against the audio, or its frames shuffled in time,
reads worse; metrics whose weights are not given are absent; each weight metric runs on random weights saved
and loaded through its real loader; bad input fails naming the file, with nothing written."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import evaluate
from megactor.data.face import build_face_analyser
from megactor.data.video_io import read_video, write_video
from megactor.evaluation import drift
from megactor.evaluation.tracks import cached_track, track_faces

DRIVER = "audio_CHTF_2"  # 128 frames at 30 fps, 44.1 kHz


@pytest.fixture(scope="module")
def clip(testcases):
    return read_video(str(testcases / "driver" / f"{DRIVER}.mp4"), sample_rate=44100)


@pytest.fixture(scope="module")
def folders(testcases, clip, tmp_path_factory):
    """drivers/ (the real clip), sources/ (its first frame under each result's prefix), results/: "same" (the
    driver file itself), "late" (the picture 10 frames behind the audio), "shuffled" (frames in random order)."""
    root = tmp_path_factory.mktemp("evaluate")
    for name in ("drivers", "sources", "results"):
        (root / name).mkdir()
    shutil.copy(testcases / "driver" / f"{DRIVER}.mp4", root / "drivers" / f"{DRIVER}.mp4")
    shutil.copy(testcases / "driver" / f"{DRIVER}.mp4", root / "results" / f"same_{DRIVER}.mp4")
    late = np.concatenate([np.repeat(clip.frames[:1], 10, 0), clip.frames[:-10]])
    order = np.random.default_rng(0).permutation(len(clip.frames))
    for name, frames in (("late", late), ("shuffled", clip.frames[order])):
        write_video(str(root / "results" / f"{name}_{DRIVER}.mp4"), frames, clip.fps, clip.audio, 44100)
    for name in ("same", "late", "shuffled"):
        Image.fromarray(clip.frames[0]).save(root / "sources" / f"{name}.png")
    return root


def run(root, *extra, out="out.json"):
    code = evaluate.main(["--results", str(root / "results"), "--drivers", str(root / "drivers"),
                          "--sources", str(root / "sources"), "--json", str(root / out),
                          f"cache_dir={root / 'cache'}", *extra])
    return code, json.loads((root / out).read_text()) if (root / out).exists() else None


@pytest.fixture(scope="module")
def scored(folders):
    code, out = run(folders, "--report", str(folders / "report"), "--csv", str(folders / "out.csv"))
    assert code == 0
    return {v["result"].split("/")[-1].split("_")[0]: v for v in out["videos"]}, out["summary"]


def test_a_driver_as_its_own_result_reads_offset_0_and_lmd_0(scored):
    same = scored[0]["same"]
    assert same["sync_offset"] == 0 and same["lmd"] == 0.0
    assert same["mouth_corr"] == pytest.approx(1.0) and same["eye_corr"] == pytest.approx(1.0)
    assert same["pose_error"] == 0.0 and same["jitter"] == pytest.approx(1.0)
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0)  # self-reenactment: the source is frame 0


def test_the_picture_10_frames_late_reads_an_offset_of_10_and_a_larger_lmd(scored):
    same, late = scored[0]["same"], scored[0]["late"]
    assert abs(late["sync_offset"] + 10) <= 1  # lips 10 frames behind: the audio is 10 frames early
    assert late["lmd"] > 0.02 and late["mouth_corr"] < 0.5
    assert late["psnr"] < same["psnr"] - 50


def test_frames_shuffled_in_time_read_worse_on_every_motion_metric(scored):
    same, shuffled = scored[0]["same"], scored[0]["shuffled"]
    # on 4 s the lip-sync z of a shuffled mouth still peaks somewhere (2.6 against 3.0), but away from lag 0
    assert shuffled["sync_score"] < same["sync_score"] - 0.25 and abs(shuffled["sync_offset"]) > 2
    assert shuffled["lmd"] > 0.02 and shuffled["mouth_corr"] < 0.5 and shuffled["eye_corr"] < 0.5
    assert shuffled["pose_error"] > 1.0 and shuffled["jitter"] > 3.0


def test_metrics_without_weights_are_absent_and_the_outputs_are_written(scored, folders):
    videos, summary = scored
    for key in ("sync_c", "sync_d", "csim"):
        assert all(key not in v for v in videos.values())
    assert "fid" not in summary and "fvd" not in summary
    assert summary["videos"] == 3 and summary["count"]["lmd"] == 3
    header = (folders / "out.csv").read_text().splitlines()[0].split(",")
    assert {"result", "driver", "source", "lmd", "sync_score", "sync_offset", "jitter", "drift_slope"} <= set(header)
    assert {p.name for p in (folders / "report").iterdir()} == {"summary.md", "distributions.png", "drift.png",
                                                                "contact_sheet.png"}
    assert len(videos["same"]["colour_curve"]) == 4  # 4.27 s: four whole seconds


class InceptionStandIn(nn.Module):
    """Called as StyleGAN2-ADA's Inception TorchScript is: uint8 (N, 3, H, W), return_features -> (N, 32)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 5, stride=4), nn.Linear(8, 32)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x.float() / 255.0, size=(75, 75), mode="bilinear", align_corners=False)
        f = self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))
        return f if return_features else torch.softmax(f, 1)


class I3DStandIn(nn.Module):
    """Called as StyleGAN-V's I3D TorchScript is: (N, 3, T, 224, 224) in [-1, 1] -> (N, 16)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv3d(3, 8, (4, 16, 16), stride=(4, 16, 16)), nn.Linear(8, 16)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        f = self.fc(F.adaptive_avg_pool3d(torch.relu(self.conv(x)), 1).flatten(1))
        return f if return_features else torch.softmax(f, 1)


def arcface_stand_in(path):
    """A random (N, 3, 112, 112) -> (N, 64) ONNX model: a strided convolution and a projection."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((8 * 7 * 7, 64)).astype(np.float32), "proj")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["features"], strides=[16, 16]),
             helper.make_node("Flatten", ["features"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "proj"], ["embedding"])]
    graph = helper.make_graph(nodes, "arcface_stand_in",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_each_weight_metric_runs_on_random_weights_saved_and_loaded(clip, tmp_path):
    pytest.importorskip("onnxruntime")
    from megactor.metrics.syncnet import SyncNet

    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), tmp_path / "syncnet.model")
    torch.jit.script(InceptionStandIn()).save(str(tmp_path / "inception.pt"))
    torch.jit.script(I3DStandIn()).save(str(tmp_path / "i3d.pt"))
    arcface_stand_in(tmp_path / "arcface.onnx")
    root = tmp_path / "set"  # 40 frames (SyncNet's 224 x 224 windows are slow on a CPU), two results
    for name in ("drivers", "sources", "results"):
        (root / name).mkdir(parents=True)
    short = clip.frames[:40]
    write_video(str(root / "drivers" / "d.mp4"), short, clip.fps, clip.audio[:int(40 / clip.fps * 44100)], 44100)
    shutil.copy(root / "drivers" / "d.mp4", root / "results" / "same_d.mp4")
    write_video(str(root / "results" / "reversed_d.mp4"), short[::-1], clip.fps, clip.audio, 44100)
    for name in ("same", "reversed"):
        Image.fromarray(short[0]).save(root / "sources" / f"{name}.png")
    code, out = run(root, f"syncnet_weights={tmp_path / 'syncnet.model'}", f"inception_weights={tmp_path / 'inception.pt'}",
                    f"i3d_weights={tmp_path / 'i3d.pt'}", f"arcface_weights={tmp_path / 'arcface.onnx'}", "fvd_frames=8",
                    "csim_frames=1")  # frame 0 alone: the source itself in "same"
    assert code == 0
    for video in out["videos"]:
        assert np.isfinite([video["sync_c"], video["sync_d"], video["csim"]]).all()
        assert -1.0 <= video["csim"] <= 1.0
    same = next(v for v in out["videos"] if "same_" in v["result"])
    assert same["csim"] == pytest.approx(1.0, abs=1e-3)  # frame 0 is the source, through H.264
    assert out["summary"]["fid"] >= 0 and out["summary"]["fvd"] >= 0  # the results show the driver's frames


def test_fid_through_the_loaded_network_tells_the_same_frames_from_noise(clip, tmp_path):
    from megactor.metrics.frechet import fid_metric, image_batch

    torch.manual_seed(0)
    torch.jit.script(InceptionStandIn()).save(str(tmp_path / "inception.pt"))
    frames = list(clip.frames[::4])  # 32 frames
    noise = list(np.random.default_rng(0).integers(0, 256, (32, *frames[0].shape), dtype=np.uint8))
    distances = []
    for fake in (frames, noise):
        fid = fid_metric(str(tmp_path / "inception.pt"))
        fid.update(image_batch(frames), real=True)
        fid.update(image_batch(fake), real=False)
        distances.append(float(fid.compute()))
    assert distances[0] < 1e-3 < distances[1]


def test_missing_or_wrong_weights_fail_naming_the_file(folders, capsys, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    for setting, path in (("i3d_weights", tmp_path / "none.pt"), ("inception_weights", tmp_path / "bad.pt")):
        code, _ = run(folders, f"{setting}={path}", out="weights.json")
        assert code == 2 and str(path) in capsys.readouterr().err
    assert not (folders / "weights.json").exists()


def test_a_result_without_its_driver_or_an_unreadable_result_fails_naming_it(folders, capsys, tmp_path):
    for name, data in (("x_unknown_driver.mp4", None), (f"broken_{DRIVER}.mp4", b"\x00" * 1000)):
        root = tmp_path / name
        shutil.copytree(folders / "drivers", root / "drivers")
        (root / "results").mkdir()
        (root / "sources").mkdir()
        if data is None:
            shutil.copy(folders / "results" / f"same_{DRIVER}.mp4", root / "results" / name)
        else:
            (root / "results" / name).write_bytes(data)
        code, out = run(root)
        assert code == 2 and name in capsys.readouterr().err and out is None


def test_a_driver_is_analysed_once_then_read_from_the_cache(testcases, tmp_path):
    path = str(testcases / "driver" / f"{DRIVER}.mp4")
    with build_face_analyser() as analyser:
        first = cached_track(path, analyser, str(tmp_path))

    class NoAnalysis:
        def stream(self, frames):
            raise AssertionError("analysed again")

    again = cached_track(path, NoAnalysis(), str(tmp_path))
    np.testing.assert_array_equal(first.landmarks, again.landmarks)
    assert again.fps == first.fps and again.num_frames == 128


def test_colour_drift_rises_with_a_colour_shift_that_grows_each_second(clip):
    """The driver's frames, and the same frames brightened by 6 levels more each second: the first reads a
    flat colour curve, the second one rising by the shift's delta E each second."""
    frames = clip.frames[:120]  # 4 whole seconds
    sec = np.arange(len(frames)) // 30
    brighter = np.clip(frames.astype(np.int16) + 6 * sec[:, None, None, None], 0, 255).astype(np.uint8)
    with build_face_analyser() as analyser:
        tracks = [track_faces(f, clip.fps, analyser) for f in (frames, brighter)]
    slopes = [drift.drift(t.colour, t.landmarks, t.fps, None)[1]["drift_slope"] for t in tracks]
    assert abs(slopes[0]) < 0.6 and slopes[1] > slopes[0] + 1.5


def test_the_landmark_openings_follow_the_truth_of_synthetic_heads(tmp_path):
    """mouth_corr and eye_corr read MediaPipe's mesh: on synthetic talking heads (a seed no measure was tuned
    on) its mouth and eye opening follow the rendered truth, and against another clip's truth they do not."""
    from megactor.data.face import eye_opening, mouth_opening
    from megactor.data.synthetic import generate_dataset
    from megactor.metrics.face_motion import pooled_correlation

    paths = generate_dataset(str(tmp_path), clips=2, seconds=3.0, size=96, seed=123)
    pairs = {"mouth": [], "eye": []}
    with build_face_analyser() as analyser:
        for path in paths:
            track = cached_track(str(path), analyser, str(tmp_path / "cache"))
            truth = json.loads(path.with_suffix(".json").read_text())
            pairs["mouth"].append((mouth_opening(track.landmarks), np.asarray(truth["mouth_opening"])))
            pairs["eye"].append((eye_opening(track.landmarks), np.asarray(truth["eye_opening"])))
    assert pooled_correlation(pairs["mouth"]) > 0.8 and pooled_correlation(pairs["eye"]) > 0.4
    swapped = [(pairs["mouth"][0][0], pairs["mouth"][1][1]), (pairs["mouth"][1][0], pairs["mouth"][0][1])]
    assert abs(pooled_correlation(swapped)) < 0.3


def test_a_csv_of_triples_is_read_relative_to_its_folder_and_its_faults_are_named(folders, tmp_path):
    from megactor.evaluation.matching import EvaluationInputError, match_by_name, read_triples

    by_name = match_by_name(str(folders / "results"), str(folders / "drivers"), str(folders / "sources"))
    assert [(t.driver.split("/")[-1], t.source.split("/")[-1]) for t in by_name][0] == (f"{DRIVER}.mp4", "late.png")
    table = folders / "triples.csv"
    table.write_text(f"result,driver,source\nresults/same_{DRIVER}.mp4,drivers/{DRIVER}.mp4,sources/same.png\n")
    (triple,) = read_triples(str(table))
    assert triple.result == str(folders / "results" / f"same_{DRIVER}.mp4") and triple.source.endswith("same.png")
    for text, fault in (("result,source\nx.mp4,y.png\n", "driver"),
                        (f"result,driver\nresults/none.mp4,drivers/{DRIVER}.mp4\n", "none.mp4")):
        (tmp_path / "t.csv").write_text(text)
        with pytest.raises(EvaluationInputError, match=fault):
            read_triples(str(tmp_path / "t.csv"))
