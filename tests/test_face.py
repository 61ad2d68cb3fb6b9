"""Face analysis on the real test clips and portraits, and the landmark measures."""
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from megactor.data import face as F
from megactor.data.video_io import read_video

from conftest import TESTCASES, artifacts_dir  # the real clips; tests that need them skip (via its fixture) without them
CLIPS = sorted((TESTCASES / "driver").glob("*.mp4"))
PORTRAITS = sorted((TESTCASES / "source").glob("*.png"))


def read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


@pytest.fixture(scope="module")
def tracks(analyser, testcases):
    """{clip name: (frames, per-frame faces)} for the first 3 s of every real clip."""
    out = {}
    for path in CLIPS:
        frames = read_video(str(path), max_seconds=3.0, with_audio=False).frames
        out[path.stem] = frames, analyser.track(frames)
    return out


def assert_plausible(face: F.Face, height: int, width: int):
    assert face.landmarks.shape == (468, 3) and face.landmarks.dtype == np.float32
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert 0.15 * min(height, width) < x1 - x0 < width and 0.15 * min(height, width) < y1 - y0 < height
    assert 0.5 <= face.score <= 1.0
    lm = face.landmarks
    assert lm[F.LEFT_EYE, 0].mean() > lm[F.RIGHT_EYE, 0].mean()  # the subject's left eye is on the image's right
    assert lm[F.LEFT_EYE, 1].mean() < lm[F.MOUTH_OUTER, 1].mean()


@pytest.mark.parametrize("path", PORTRAITS, ids=lambda p: p.name)
def test_one_face_per_portrait(analyser, path):
    image = read_rgb(path)
    faces = analyser.detect(image)
    assert len(faces) == 1
    assert_plausible(faces[0], *image.shape[:2])
    yaw, pitch, roll = F.head_pose(faces[0].landmarks)
    assert abs(yaw) < 20 and abs(pitch) < 20 and abs(roll) < 20  # the portraits face the camera


def test_one_face_per_frame_and_mouth_moves(tracks):
    for name, (frames, faces) in tracks.items():
        assert [len(f) for f in faces] == [1] * len(frames), name
        for f in faces[::16]:
            assert_plausible(f[0], *frames.shape[1:3])
        opening = F.mouth_opening(np.stack([f[0].landmarks for f in faces]))  # (T,)
        assert opening.std() > 0.05, name  # talking: measured 0.07-0.14 on these clips
        assert opening.min() < 0.05, name  # the lips close at least once


def test_mouth_opening_on_frames_checked_by_eye(tracks, tmp_path):
    """CHTF_3 frame 87 has the mouth wide open, frame 24 closed (see the PNG this writes)."""
    frames, faces = tracks["audio_CHTF_3"]
    tiles = []
    for i in (24, 87):
        lm = faces[i][0].landmarks
        tile = frames[i].copy()
        for box in [*F.eye_boxes(lm), F.mouth_box(lm)]:
            x0, y0, x1, y1 = box.astype(int)
            cv2.rectangle(tile, (x0, y0), (x1, y1), (255, 0, 0), 2)
        cv2.putText(tile, f"frame {i} mouth {F.mouth_opening(lm):.2f}", (10, 40), 0, 1.1, (255, 255, 0), 2)
        tiles.append(tile)
    cv2.imwrite(str(artifacts_dir(tmp_path) / "face_mouth_closed_open.png"), np.concatenate(tiles, 1)[..., ::-1])
    closed, wide = (F.mouth_opening(faces[i][0].landmarks) for i in (24, 87))
    assert closed < 0.1 and wide > 0.4
    assert F.eye_opening(faces[24][0].landmarks) > 0.15  # eyes open in both
    closed_box, wide_box = (F.mouth_box(faces[i][0].landmarks) for i in (24, 87))
    assert wide_box[3] - wide_box[1] > 1.5 * (closed_box[3] - closed_box[1])


def test_two_clips_side_by_side_give_two_faces(analyser, testcases):
    a = read_video(str(CLIPS[0]), max_seconds=0.3, with_audio=False).frames
    b = read_video(str(CLIPS[1]), max_seconds=0.3, with_audio=False).frames
    n = min(len(a), len(b))
    pair = np.concatenate([a[:n], b[:n]], axis=2)  # (T, 512, 1024, 3)
    for faces in [analyser.detect(pair[0]), *analyser.track(pair)]:
        assert len(faces) == 2
        centres = sorted((f.box[0] + f.box[2]) / 2 for f in faces)
        assert centres[0] < 512 < centres[1]


def test_blank_and_noise_give_no_face(analyser):
    rng = np.random.default_rng(0)
    blank = np.full((256, 256, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert analyser.detect(blank) == [] and analyser.detect(noise) == []
    assert analyser.track(np.stack([blank, noise])) == [[], []]


def test_rejects_bad_images(analyser):
    with pytest.raises(ValueError, match="uint8"):
        analyser.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        analyser.detect(np.zeros((64, 64), np.uint8))


def test_measures_are_vectorised(tracks):
    _, faces = tracks["audio_ENTF_1"]
    lm = np.stack([f[0].landmarks for f in faces])  # (T, 468, 3)
    batched = [F.mouth_opening(lm), F.eye_opening(lm), F.face_size(lm), *F.head_pose(lm)]
    for t in (0, len(lm) // 2, len(lm) - 1):
        single = [F.mouth_opening(lm[t]), F.eye_opening(lm[t]), F.face_size(lm[t]), *F.head_pose(lm[t])]
        np.testing.assert_allclose([b[t] for b in batched], single, rtol=1e-6)
    assert F.eye_boxes(lm).shape == (len(lm), 2, 4) and F.mouth_box(lm).shape == (len(lm), 4)
    np.testing.assert_allclose(F.mouth_box(lm[5]), F.mouth_box(lm)[5])
    missing = lm.copy()
    missing[1] = np.nan  # a frame without a face
    for measure in (F.mouth_opening, F.eye_opening, F.face_size, lambda x: np.stack(F.head_pose(x), -1)):
        values = measure(missing)
        assert np.isnan(values[1]).all() and np.isfinite(values[[0, 2]]).all()


def test_head_pose_recovers_rotations(analyser, testcases):
    lm = analyser.detect(read_rgb(PORTRAITS[1]))[0].landmarks.astype(np.float64)
    base = np.array(F.head_pose(lm))
    centre = lm.mean(0)
    # Camera axes: x right, y down, z away. Turning the face to the image's right is a
    # negative rotation about y; tilting it up a negative one about x; clockwise roll positive about z.
    for axis, angle, expected in [("y", -25, (25, 0, 0)), ("x", -15, (0, 15, 0)), ("z", 20, (0, 0, 20))]:
        rotated = (lm - centre) @ Rotation.from_euler(axis, angle, degrees=True).as_matrix().T + centre
        np.testing.assert_allclose(np.array(F.head_pose(rotated)) - base, expected, atol=2.5)


def test_measures_scale_free_and_layout_checked():
    rng = np.random.default_rng(0)
    lm = rng.normal(size=(468, 3)) * 50 + 200
    assert F.mouth_opening(lm * 3) == pytest.approx(F.mouth_opening(lm))
    assert F.eye_opening(lm * 3) == pytest.approx(F.eye_opening(lm))
    with pytest.raises(ValueError, match="468"):
        F.mouth_opening(np.zeros((100, 2)))
    with pytest.raises(ValueError, match="3D 468-point"):
        F.head_pose(lm[:, :2])


def test_ibug68_layout():
    """A 68-point face with a known 12 px inner-lip gap and 60 px between the eye centres."""
    lm = np.zeros((68, 2))
    lm[36:42] = [[70, 100], [80, 96], [90, 96], [100, 100], [90, 104], [80, 104]]  # right eye, 30 wide, 8 tall
    lm[42:48] = lm[36:42] + [60, 0]  # left eye
    lm[60:68] = [[120, 200], [130, 194], [140, 194], [150, 194], [160, 200], [150, 206], [140, 206], [130, 206]]
    lm[48:60] = np.concatenate([lm[60:65] + [[-10, 0], [0, -10], [0, -10], [0, -10], [10, 0]],
                                lm[[65, 66, 67, 65, 66, 67, 65]] + [0, 10]])
    assert F.face_size(lm) == pytest.approx(60)
    assert F.mouth_opening(lm) == pytest.approx(12 / 60)
    assert F.eye_opening(lm) == pytest.approx(8 / 30)
    np.testing.assert_allclose(F.eye_boxes(lm), [[130, 96, 160, 104], [70, 96, 100, 104]])
    with pytest.raises(ValueError, match="3D 468-point"):
        F.head_pose(lm)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'openface'"):
        F.build_face_analyser("openface")


def test_dwpose_needs_files_and_onnxruntime(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="det.onnx"):
        F.build_face_analyser("dwpose", det_model=str(tmp_path / "det.onnx"), pose_model=str(tmp_path / "pose.onnx"))
    for name in ("det.onnx", "pose.onnx"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        F.DWPoseFaceAnalyser(str(tmp_path / "det.onnx"), str(tmp_path / "pose.onnx"))


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession with DWPose's input/output signatures.

    The detector reports one person box; the pose model puts every keypoint on the brightest
    pixel of the crop it is given, so the analyser must map crop pixels back to the image.
    """
    person_box = (100.0, 60.0, 300.0, 420.0)  # x0, y0, x1, y1 in the 512 x 512 test image
    confidence = 0.9

    def __init__(self, path, providers):
        self.kind = Path(path).stem
        shape = [1, 3, 640, 640] if self.kind == "det" else [1, 3, 384, 288]
        self._inputs = [types.SimpleNamespace(name="input", shape=shape)]

    def get_inputs(self):
        return self._inputs

    def run(self, outputs, feed):
        x = feed["input"]
        if self.kind == "det":
            ratio = 640 / 512
            pred = np.zeros((1, 80 * 80 + 40 * 40 + 20 * 20, 85), np.float32)
            x0, y0, x1, y1 = np.array(self.person_box) * ratio
            cx, cy = (x0 + x1) / 2 / 32, (y0 + y1) / 2 / 32  # on the stride-32 grid
            i = 80 * 80 + 40 * 40 + int(cy) * 20 + int(cx)
            pred[0, i, :4] = cx - int(cx), cy - int(cy), np.log((x1 - x0) / 32), np.log((y1 - y0) / 32)
            pred[0, i, 4:6] = 0.9, 0.9
            return [pred]
        y, xx = np.unravel_index(x[0].sum(0).argmax(), x.shape[2:])
        simcc_x, simcc_y = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
        simcc_x[..., 2 * xx], simcc_y[..., 2 * y] = self.confidence, self.confidence
        return [simcc_x, simcc_y]


def test_dwpose_maps_keypoints_back_to_the_image(tmp_path, monkeypatch):
    for name in ("det.onnx", "pose.onnx"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(InferenceSession=_FakeSession))
    image = np.zeros((512, 512, 3), np.uint8)
    image[250, 180] = 255  # the one bright pixel, inside the person box
    with F.build_face_analyser("dwpose", det_model=str(tmp_path / "det.onnx"),
                               pose_model=str(tmp_path / "pose.onnx")) as analyser:
        faces = analyser.detect(image)
        assert len(faces) == 1 and faces[0].landmarks.shape == (68, 2)
        np.testing.assert_allclose(faces[0].landmarks, np.tile([[180, 250]], (68, 1)), atol=1.5)
        assert faces[0].score == pytest.approx(0.9)
        monkeypatch.setattr(_FakeSession, "confidence", 0.1)  # below min_score
        assert analyser.detect(image) == []


def test_mediapipe_writes_no_log_lines(testcases):
    """Its C++ graph logs to file descriptor 2 (absl, TFLite), past GLOG_minloglevel: silenced where it runs."""
    import subprocess

    code = ("import sys, numpy as np; from PIL import Image; from megactor.data.face import build_face_analyser; "
            "from megactor.data.video_io import read_video; a = build_face_analyser(); "
            f"a.detect(np.asarray(Image.open({str(PORTRAITS[0])!r}).convert('RGB'))); "
            f"a.track(read_video({str(CLIPS[0])!r}, max_seconds=0.2).frames); a.close(); "
            "print('python still reaches stderr', file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "GLOG_minloglevel"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip() == "python still reaches stderr", run.stderr[:2000]
