"""Face analysis: find faces, fit landmarks, and measure eyes, mouth, head pose and size.

Two landmark layouts are understood, told apart by their point count:

- 468: MediaPipe's face mesh, ``(468, 3)`` x, y in pixels and z in the same scale
  (MediaPipe's relative depth, larger = farther from the camera). The default backend.
- 68: the iBUG-68 layout (DWPose's face keypoints), ``(68, 2)``: 2D only.

Every measure below (``eye_boxes``, ``mouth_opening``, ...) takes either layout with any
leading batch shape, ``(..., N, k)``, and returns the batch shape; a single face gives
scalars, and NaN landmarks (a frame without a face) give NaN. ``head_pose`` needs the 3D mesh and says so for 2D input. "Left" and "right"
are the subject's own: the left eye is on the image's right in a frontal face.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np
from mediapipe.python.solution_base import SolutionBase
from mediapipe.python.solutions import face_mesh as mp_face_mesh
from mediapipe.python.solutions import face_mesh_connections as mp_conn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.transform import Rotation


@dataclass
class Face:
    landmarks: np.ndarray  # (468, 3) float32 (MediaPipe) or (68, 2) (DWPose), pixels of the analysed image
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1: the landmarks' bounding box
    score: float  # detector confidence in [0, 1]


# --------------------------------------------------------------------------- landmark layouts


def _points(connections) -> np.ndarray:
    return np.unique(np.array(sorted(connections))).astype(np.int64)


def _lip_contours() -> tuple[np.ndarray, np.ndarray]:
    """Split FACEMESH_LIPS into its two closed contours; the outer one holds the mouth corner 61."""
    edges = np.array(sorted(mp_conn.FACEMESH_LIPS))
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(468, 468))
    _, label = connected_components(graph, directed=False)
    points = np.unique(edges)
    outer = points[label[points] == label[61]]
    inner = points[label[points] != label[61]]
    return outer, inner


@dataclass(frozen=True)
class LandmarkLayout:
    """Index tables of one landmark layout: what each measure reads."""
    left_eye: np.ndarray  # eye contour
    right_eye: np.ndarray
    mouth_outer: np.ndarray  # outer lip contour
    mouth_inner: np.ndarray  # inner lip contour
    align: np.ndarray  # points that do not move with expression: eye corners, nose
    eye_corners: np.ndarray  # (2, 2): (outer, inner) for left, right eye
    eye_lids: np.ndarray  # (2, P, 2): (upper, lower) lid point pairs for left, right eye
    lips: np.ndarray  # (P, 2): (upper, lower) inner-lip point pairs
    brow_to_nose: tuple[int, int]  # forehead-to-nose-base points: the face's vertical axis


_MESH_OUTER_LIPS, _MESH_INNER_LIPS = _lip_contours()

MESH_468 = LandmarkLayout(
    left_eye=_points(mp_conn.FACEMESH_LEFT_EYE),
    right_eye=_points(mp_conn.FACEMESH_RIGHT_EYE),
    mouth_outer=_MESH_OUTER_LIPS,
    mouth_inner=_MESH_INNER_LIPS,
    align=np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 2, 98, 327]),
    eye_corners=np.array([[263, 362], [33, 133]]),
    eye_lids=np.array([[[387, 373], [386, 374], [385, 380]],
                       [[160, 144], [159, 145], [158, 153]]]),
    lips=np.array([[82, 87], [13, 14], [312, 317]]),
    brow_to_nose=(10, 2),
)

IBUG_68 = LandmarkLayout(
    left_eye=np.arange(42, 48),
    right_eye=np.arange(36, 42),
    mouth_outer=np.arange(48, 60),
    mouth_inner=np.arange(60, 68),
    align=np.array([36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35]),
    eye_corners=np.array([[45, 42], [36, 39]]),
    eye_lids=np.array([[[43, 47], [44, 46]], [[37, 41], [38, 40]]]),
    lips=np.array([[61, 67], [62, 66], [63, 65]]),
    brow_to_nose=(27, 33),
)

LAYOUTS = {468: MESH_468, 68: IBUG_68}

LEFT_EYE = MESH_468.left_eye
RIGHT_EYE = MESH_468.right_eye
MOUTH_OUTER = MESH_468.mouth_outer
MOUTH_INNER = MESH_468.mouth_inner
ALIGN_POINTS = MESH_468.align


def landmark_layout(lm: np.ndarray) -> LandmarkLayout:
    """The layout of a ``(..., N, k)`` landmark array, by its point count N."""
    lm = np.asarray(lm)
    if lm.ndim < 2 or lm.shape[-2] not in LAYOUTS or lm.shape[-1] not in (2, 3):
        raise ValueError(f"landmarks must be (..., 468, 2|3) or (..., 68, 2|3), got shape {lm.shape}")
    return LAYOUTS[lm.shape[-2]]


# --------------------------------------------------------------------------- measures


def _box(pts: np.ndarray) -> np.ndarray:
    """(..., P, >=2) -> (..., 4) x0, y0, x1, y1."""
    return np.concatenate([pts[..., :2].min(-2), pts[..., :2].max(-2)], -1)


def _dist(lm: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Distances between landmark pairs over all given coordinates: (..., N, k), (..., 2) -> (...)."""
    return np.linalg.norm(lm[..., pairs[..., 0], :] - lm[..., pairs[..., 1], :], axis=-1)


def landmark_box(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (..., 4): the bounding box of all landmarks."""
    return _box(np.asarray(lm, np.float32))


def eye_boxes(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (..., 2, 4): boxes around the left and the right eye contour."""
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float32)
    return np.stack([_box(lm[..., layout.left_eye, :]), _box(lm[..., layout.right_eye, :])], -2)


def mouth_box(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (..., 4): the box around the outer lip contour."""
    return _box(np.asarray(lm, np.float32)[..., landmark_layout(lm).mouth_outer, :])


def face_size(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (...): distance between the two eye centres (3D when z is given, so turning
    the head does not shrink it)."""
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float64)
    left, right = lm[..., layout.left_eye, :].mean(-2), lm[..., layout.right_eye, :].mean(-2)
    return np.linalg.norm(left - right, axis=-1)


def mouth_opening(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (...): mean inner-lip gap / face_size; ~0 closed, ~0.5 wide open."""
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float64)
    return _dist(lm, layout.lips).mean(-1) / np.maximum(face_size(lm), 1e-6)


def mouth_width(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (...): span of the outer lip contour along the eye axis / face_size."""
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float64)[..., :2]
    axis = lm[..., layout.left_eye, :].mean(-2) - lm[..., layout.right_eye, :].mean(-2)  # (..., 2)
    axis /= np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-6)
    along = (lm[..., layout.mouth_outer, :] * axis[..., None, :]).sum(-1)  # (..., P)
    return (along.max(-1) - along.min(-1)) / np.maximum(face_size(lm), 1e-6)


def lip_measures(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (..., 2): inner-lip gap and mouth width (``mouth_opening``, ``mouth_width``): the sync
    filter's lip signal for clips analysed before the mouth's appearance was recorded."""
    return np.stack([mouth_opening(lm), mouth_width(lm)], -1)


def eye_opening(lm: np.ndarray) -> np.ndarray:
    """(..., N, k) -> (...): eyelid gap / eye width, averaged over both eyes; ~0.3 open, <0.1 shut."""
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float64)
    gap = _dist(lm, layout.eye_lids).mean(-1)  # (..., 2)
    width = _dist(lm, layout.eye_corners)  # (..., 2)
    return (gap / np.maximum(width, 1e-6)).mean(-1)


def head_pose(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 468, 3) -> yaw, pitch, roll in degrees, each of shape (...).

    A head frame is built from points that expressions do not move: the x axis through the
    eye corners (right to left eye), the y axis from forehead to nose base made orthogonal
    to it, z = x × y. Its rotation in camera coordinates (x right, y down, z away) is split
    into intrinsic Y-X-Z Euler angles. Signs: yaw > 0 when the face turns towards the
    image's right, pitch > 0 when it tilts up, roll > 0 when it tilts clockwise in the image.
    A frontal face reads about 0, 0, 0 up to a pitch offset of the mesh's own geometry.
    """
    layout = landmark_layout(lm)
    lm = np.asarray(lm, np.float64)
    if layout is not MESH_468 or lm.shape[-1] != 3:
        raise ValueError(f"head_pose needs the 3D 468-point mesh, got landmarks of shape {lm.shape}")
    left_outer, left_inner = layout.eye_corners[0]
    right_outer, right_inner = layout.eye_corners[1]
    x = (lm[..., left_outer, :] - lm[..., right_outer, :]) + (lm[..., left_inner, :] - lm[..., right_inner, :])
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = lm[..., layout.brow_to_nose[1], :] - lm[..., layout.brow_to_nose[0], :]
    y -= (y * x).sum(-1, keepdims=True) * x
    y /= np.linalg.norm(y, axis=-1, keepdims=True)
    rot = np.stack([x, y, np.cross(x, y)], -1).reshape(-1, 3, 3)  # (B, 3, 3), columns = head axes
    angles = np.full((len(rot), 3), np.nan)
    found = np.isfinite(rot).all((1, 2))
    if found.any():
        angles[found] = Rotation.from_matrix(rot[found]).as_euler("YXZ", degrees=True)
    yaw, pitch, roll = angles.T
    shape = lm.shape[:-2]
    return -yaw.reshape(shape)[()], -pitch.reshape(shape)[()], roll.reshape(shape)[()]  # [()]: scalars for one face


# --------------------------------------------------------------------------- analysers


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{what} must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


class FaceAnalyser(ABC):
    """Finds faces and fits landmarks. Faces come largest first. Use as a context manager."""

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 (H, W, 3) image, each analysed on its own (static mode)."""

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, list[Face]]]:
        """(frame, its faces) for each frame of a clip, as they come: a (T, H, W, 3) array or any iterable of
        (H, W, 3) frames (a decoder's, so that one frame at a time is in memory). Backends that can track
        override this."""
        for frame in frames:
            yield frame, self.detect(frame)

    def track(self, frames: Iterable[np.ndarray]) -> list[list[Face]]:
        """Faces per frame of a clip (see ``stream``)."""
        return [faces for _, faces in self.stream(frames)]

    def close(self) -> None:
        """Release the backend's resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_native_lock = threading.RLock()


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Route file descriptor 2 to /dev/null while MediaPipe's C++ graph runs.

    Its calculators log through absl and TFLite straight to that descriptor ("Feedback manager requires a model
    with a single signature inference", "Created TensorFlow Lite XNNPACK delegate", once per graph and clip),
    which neither GLOG_minloglevel nor Python's logging reaches. Errors still surface as Python exceptions.
    """
    with _native_lock:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _opened(graph: SolutionBase) -> SolutionBase:
    """Wait until the graph's calculators have opened. SolutionBase starts its run (at construction and in
    ``reset``) without waiting, and the calculators log as they open, on MediaPipe's threads: unwaited, a line
    could reach file descriptor 2 after ``quiet_native_logs`` had given it back."""
    graph._graph.wait_until_idle()  # the CalculatorGraph; SolutionBase's own process() waits on it the same way
    return graph


class MediaPipeFaceAnalyser(FaceAnalyser):
    """MediaPipe's legacy face mesh (BlazeFace short-range detector + 468-point mesh).

    Both models ship inside the mediapipe 0.10.21 wheel. ``track`` runs the graph in video
    mode, where faces are followed from the previous frame's landmarks and the detector
    only runs while fewer than ``max_num_faces`` are tracked. A face's score is the
    detector's confidence on the latest frame where it ran; a face tracked through frames
    without a detection keeps the score it had.
    """

    def __init__(self, max_num_faces: int = 2, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        self.max_num_faces = max_num_faces
        self.min_detection_confidence = min_detection_confidence
        self.min_tracking_confidence = min_tracking_confidence
        self._graphs: dict[bool, SolutionBase] = {}

    def _graph(self, static: bool) -> SolutionBase:
        if static not in self._graphs:
            with quiet_native_logs():
                self._graphs[static] = _opened(self._new_graph(static))
        return self._graphs[static]

    def _new_graph(self, static: bool) -> SolutionBase:
        # FaceMesh's own graph and parameters, also asked for the detections to read their scores.
        return SolutionBase(
            binary_graph_path=mp_face_mesh._BINARYPB_FILE_PATH,
            side_inputs={"num_faces": self.max_num_faces, "with_attention": False,
                         "use_prev_landmarks": not static},
            calculator_params={
                "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
                "TensorsToDetectionsCalculator.min_score_thresh": self.min_detection_confidence,
                "facelandmarkcpu__ThresholdingCalculator.threshold": self.min_tracking_confidence,
            },
            outputs=["multi_face_landmarks", "face_detections"])

    def _faces(self, result, height: int, width: int, previous: list[Face]) -> list[Face]:
        if not result.multi_face_landmarks:
            return []
        scale = np.array([width, height, width], np.float32)  # MediaPipe's z is in units of the width
        detections = []  # (centre x, centre y, score) in pixels
        for det in result.face_detections or []:
            rb = det.location_data.relative_bounding_box
            detections.append(((rb.xmin + rb.width / 2) * width, (rb.ymin + rb.height / 2) * height, det.score[0]))
        faces = []
        for mesh in result.multi_face_landmarks:
            lm = np.array([(p.x, p.y, p.z) for p in mesh.landmark], np.float32) * scale  # (468, 3)
            box = landmark_box(lm)
            inside = [s for cx, cy, s in detections if box[0] <= cx <= box[2] and box[1] <= cy <= box[3]]
            if inside:
                score = max(inside)
            elif previous:
                score = max(previous, key=lambda f: _iou(f.box, box)).score
            else:
                score = self.min_detection_confidence  # reported faces passed this threshold
            faces.append(Face(lm, box, float(score)))
        return sorted(faces, key=lambda f: -_area(f.box))

    def detect(self, image: np.ndarray) -> list[Face]:
        image = _check_image(image)
        graph = self._graph(static=True)
        with quiet_native_logs():
            result = graph.process(image)
        return self._faces(result, *image.shape[:2], previous=[])

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, list[Face]]]:
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"frames must be RGB uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        graph = self._graph(static=False)
        with quiet_native_logs():  # per call: the consumer runs between frames, its own stderr intact
            graph.reset()  # no tracking state carried over from another clip
            _opened(graph)
        previous: list[Face] = []
        for frame in frames:
            frame = _check_image(frame, "frames")
            with quiet_native_logs():
                result = graph.process(frame)
            previous = self._faces(result, *frame.shape[:2], previous=previous)
            yield frame, previous

    def close(self) -> None:
        with quiet_native_logs():
            for graph in self._graphs.values():
                graph.close()
        self._graphs.clear()


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = _area(np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]))
    return inter / max(_area(a) + _area(b) - inter, 1e-9)


class DWPoseFaceAnalyser(FaceAnalyser):
    """DWPose through onnxruntime: YOLOX person boxes, then RTMPose whole-body keypoints.

    Gives the 68 iBUG face keypoints (COCO-WholeBody points 23..90) as ``(68, 2)``
    landmarks; every measure here reads them through ``IBUG_68`` except ``head_pose``,
    which needs the 3D mesh and raises. Frames are analysed independently (no tracking).
    Pre/post-processing follows the DWPose reference: letterboxed BGR input for YOLOX,
    a 1.25x person box warped to the pose model's input, SimCC arg-max decoding.
    A face is kept when its keypoints' mean confidence reaches ``min_score``.
    """

    FACE_POINTS = slice(23, 91)
    MEAN = np.array([123.675, 116.28, 103.53], np.float32)
    STD = np.array([58.395, 57.12, 57.375], np.float32)

    def __init__(self, det_model: str, pose_model: str, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 min_score: float = 0.3, person_score: float = 0.3, nms_iou: float = 0.45):
        for name, path in (("det_model", det_model), ("pose_model", pose_model)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"DWPose {name}: no such ONNX file {path!r}")
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("the DWPose face backend needs onnxruntime: pip install onnxruntime") from None
        self.det = onnxruntime.InferenceSession(det_model, providers=list(providers))
        self.pose = onnxruntime.InferenceSession(pose_model, providers=list(providers))
        self.min_score, self.person_score, self.nms_iou = min_score, person_score, nms_iou

    def _people(self, bgr: np.ndarray) -> np.ndarray:
        """(H, W, 3) -> (P, 4) person boxes x0, y0, x1, y1."""
        in_h, in_w = self.det.get_inputs()[0].shape[2:]
        ratio = min(in_h / bgr.shape[0], in_w / bgr.shape[1])
        resized = cv2.resize(bgr, (int(bgr.shape[1] * ratio), int(bgr.shape[0] * ratio)))
        padded = np.full((in_h, in_w, 3), 114, np.uint8)
        padded[:resized.shape[0], :resized.shape[1]] = resized
        x = padded.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, in_h, in_w), BGR 0..255
        pred = self.det.run(None, {self.det.get_inputs()[0].name: x})[0][0]  # (anchors, 5 + classes)
        grids, strides = [], []  # YOLOX's anchor-free decoding over strides 8, 16, 32
        for stride in (8, 16, 32):
            xs, ys = np.meshgrid(np.arange(in_w // stride), np.arange(in_h // stride))
            grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
            strides.append(np.full((grids[-1].shape[0], 1), stride))
        grid, stride = np.concatenate(grids), np.concatenate(strides)
        centre = (pred[:, :2] + grid) * stride / ratio
        size = np.exp(pred[:, 2:4]) * stride / ratio
        score = pred[:, 4] * pred[:, 5]  # objectness * person class
        xywh = np.concatenate([centre - size / 2, size], 1)
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), score.tolist(), self.person_score, self.nms_iou)
        keep = np.asarray(keep, np.int64).reshape(-1)
        return np.concatenate([xywh[keep, :2], xywh[keep, :2] + xywh[keep, 2:]], 1)

    def _keypoints(self, bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One person box -> (K, 2) keypoints in image pixels and (K,) confidences."""
        in_h, in_w = self.pose.get_inputs()[0].shape[2:]
        centre = (box[:2] + box[2:]) / 2
        w, h = (box[2:] - box[:2]) * 1.25
        w, h = max(w, h * in_w / in_h), max(h, w * in_h / in_w)  # fix the aspect ratio
        s = in_w / w
        warp = np.array([[s, 0, in_w / 2 - s * centre[0]], [0, s, in_h / 2 - s * centre[1]]], np.float32)
        crop = cv2.warpAffine(bgr, warp, (in_w, in_h), flags=cv2.INTER_LINEAR)
        x = ((crop - self.MEAN) / self.STD).transpose(2, 0, 1)[None].astype(np.float32)
        simcc_x, simcc_y = self.pose.run(None, {self.pose.get_inputs()[0].name: x})[:2]  # (1, K, Wx), (1, K, Wy)
        split = simcc_x.shape[-1] / in_w
        xy = np.stack([simcc_x[0].argmax(-1), simcc_y[0].argmax(-1)], -1) / split  # (K, 2) crop pixels
        conf = np.minimum(simcc_x[0].max(-1), simcc_y[0].max(-1))
        return (xy - [in_w / 2, in_h / 2]) / s + centre, conf

    def detect(self, image: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(_check_image(image)[..., ::-1])
        faces = []
        for box in self._people(bgr):
            xy, conf = self._keypoints(bgr, box)
            lm, score = xy[self.FACE_POINTS].astype(np.float32), float(conf[self.FACE_POINTS].mean())
            if score >= self.min_score:
                faces.append(Face(lm, landmark_box(lm), score))
        return sorted(faces, key=lambda f: -_area(f.box))


BACKENDS = {"mediapipe": MediaPipeFaceAnalyser, "dwpose": DWPoseFaceAnalyser}


def build_face_analyser(backend: str = "mediapipe", **kwargs) -> FaceAnalyser:
    """The analyser named ``backend`` ("mediapipe" or "dwpose"), built with ``kwargs``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown face backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend](**kwargs)


def face_analyser_from(cfg) -> FaceAnalyser:
    """The analyser a config names (curation or inference): ``face_backend``, and for DWPose its
    ``dwpose_det_model`` and ``dwpose_pose_model``; ValueError names a missing one."""
    if cfg.face_backend != "dwpose":
        return build_face_analyser(cfg.face_backend)
    missing = [k for k in ("dwpose_det_model", "dwpose_pose_model") if not getattr(cfg, k, None)]
    if missing:
        raise ValueError(f"face_backend=dwpose needs {' and '.join(missing)} (paths to DWPose's ONNX models)")
    return build_face_analyser("dwpose", det_model=cfg.dwpose_det_model, pose_model=cfg.dwpose_pose_model)
