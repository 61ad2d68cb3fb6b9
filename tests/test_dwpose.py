"""DWPose reachable from the configs: small random ONNX models of DWPose's input and output shapes, made
here with ``onnx`` and loaded through onnxruntime as the real models are, drive curation, control frames
and the inference config; head pose on its 2D layout is refused by name."""
import numpy as np
import pandas as pd
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from megactor.config import ConfigError, InferenceConfig, load_config  # noqa: E402
from megactor.curation.config import load_curation_config  # noqa: E402
from megactor.curation.pipeline import curate  # noqa: E402
from megactor.data.control import control_frames  # noqa: E402
from megactor.data.face import DWPoseFaceAnalyser, face_analyser_from, head_pose  # noqa: E402
from megactor.data.shards import index_shard, list_shards, unpack_array  # noqa: E402
from megactor.data.video_io import write_video  # noqa: E402
from test_curation import small_clip  # noqa: E402

ANCHORS = 80 * 80 + 40 * 40 + 20 * 20  # YOLOX at 640 x 640, strides 8, 16, 32


def constant_model(path, input_shape, outputs: dict) -> None:
    """An ONNX model from one float input to constant outputs (plus 0 x the input's mean, so that each output
    depends on the input, as a network's does)."""
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "dwpose_stand_in", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, list(input_shape))], graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def dwpose_models(tmp_path_factory):
    """(detector, pose model) paths: one person box over the middle of a 192 x 192 frame; random whole-body
    keypoints, the 68 face points inside the face's part of the person crop."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("dwpose")
    det = np.concatenate([rng.normal(0, 0.1, (1, ANCHORS, 4)), rng.uniform(0, 0.1, (1, ANCHORS, 81))], -1)
    ratio, (x0, y0, x1, y1) = 640 / 192, (40.0, 30.0, 152.0, 170.0)  # the box in frame pixels
    cx, cy = (x0 + x1) / 2 * ratio / 32, (y0 + y1) / 2 * ratio / 32
    i = 80 * 80 + 40 * 40 + int(cy) * 20 + int(cx)
    det[0, i, :4] = cx - int(cx), cy - int(cy), np.log((x1 - x0) * ratio / 32), np.log((y1 - y0) * ratio / 32)
    det[0, i, 4:6] = 0.95
    simcc_x, simcc_y = rng.uniform(0, 0.2, (1, 133, 576)), rng.uniform(0, 0.2, (1, 133, 768))
    for k in range(133):  # a confident peak per keypoint; the face's in the crop's middle third
        simcc_x[0, k, rng.integers(200, 376)] = simcc_y[0, k, rng.integers(250, 450)] = 0.9
    constant_model(folder / "det.onnx", (1, 3, 640, 640), {"dets": det})
    constant_model(folder / "pose.onnx", (1, 3, 384, 288), {"simcc_x": simcc_x, "simcc_y": simcc_y})
    return str(folder / "det.onnx"), str(folder / "pose.onnx")


@pytest.mark.slow
def test_curation_runs_on_the_dwpose_layout(testcases, tmp_path, dwpose_models):
    det, pose = dwpose_models
    frames, audio, fps = small_clip(sorted((testcases / "driver").glob("*.mp4"))[0], 192, 1.5)
    write_video(str(tmp_path / "in" / "talk.mp4"), frames, fps, audio)
    cfg = load_curation_config(["face_backend=dwpose", f"dwpose_det_model={det}", f"dwpose_pose_model={pose}",
                                "min_face_size=10", "min_clip_seconds=1"])
    curate(str(tmp_path / "in"), str(tmp_path / "out"), cfg)
    row = pd.read_csv(tmp_path / "out" / "metrics.csv").iloc[0]
    assert row["valid_fraction"] == 1.0 and row["dropped_at"] != "face"
    assert np.isnan(row["yaw"])  # no 3D mesh, no head pose: its limits do not apply
    assert row["sync_scorer"] == "lipsync"  # the audio filter ran on the 68-point clip
    ref = index_shard(list_shards(str(tmp_path / "out" / "2_face" / "shards"))[0])[0]
    faces = ref.read_json()["faces"]
    landmarks = unpack_array(faces["landmarks"])
    assert landmarks.shape == (len(frames), 68, 2) and np.isfinite(landmarks).all()
    assert np.isfinite(unpack_array(faces["mouth_appearance"])).all()

    control, _ = control_frames(frames[:4], landmarks[:4], landmarks[0] * 64 / 192, 64)
    assert control.shape == (4, 64, 64) and control.any()
    with pytest.raises(ValueError, match="3D 468-point mesh"):
        head_pose(landmarks)


def test_inference_config_names_dwposes_missing_models(dwpose_models):
    det, pose = dwpose_models
    with pytest.raises(ConfigError, match="dwpose_det_model and dwpose_pose_model"):
        load_config(InferenceConfig, None, ["face_backend=dwpose"])
    with pytest.raises(ConfigError, match="dwpose_pose_model"):
        load_config(InferenceConfig, None, ["face_backend=dwpose", f"dwpose_det_model={det}"])
    cfg = load_config(InferenceConfig, None, ["face_backend=dwpose", f"dwpose_det_model={det}",
                                              f"dwpose_pose_model={pose}"])
    with face_analyser_from(cfg) as analyser:
        assert isinstance(analyser, DWPoseFaceAnalyser)
        faces = analyser.detect(np.zeros((192, 192, 3), np.uint8))
        assert len(faces) == 1 and faces[0].landmarks.shape == (68, 2)
