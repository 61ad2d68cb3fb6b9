"""CSIM: identity similarity of a result to its source, as the cosine of ArcFace embeddings (ONNX).

Faces are aligned as insightface aligns them for its recognition models: the similarity that takes five
points (eye centres, nose tip, mouth corners, in the image's left-to-right order) onto ArcFace's 112 x 112
template (``ARCFACE_TEMPLATE``), then ``(RGB - 127.5) / 127.5`` in (N, 3, 112, 112). The model (e.g.
insightface's ``w600k_r50.onnx``) runs through onnxruntime and gives (N, D) embeddings; CSIM is the mean
cosine similarity of the result frames' embeddings with the source's (1: the same face). No weights ship
with the project; a missing file is an error naming it.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def align_face(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8, (5, 2) points -> (112, 112, 3): the face warped onto the ArcFace template."""
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(points, np.float32), ARCFACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("align_face: no similarity fits the five points")
    return cv2.warpAffine(image, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


class ArcFace:
    """An ArcFace-style ONNX recognition model: aligned (N, 112, 112, 3) RGB faces -> unit (N, D) embeddings."""

    def __init__(self, path: str, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ArcFace weights not found: {path!r} (an ONNX file such as insightface's "
                                    "w600k_r50.onnx; none ships with this project)")
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(path, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: not a loadable ONNX model ({str(e).strip().splitlines()[0]})") from None
        self.input = self.session.get_inputs()[0].name

    def embed(self, faces: np.ndarray) -> np.ndarray:
        x = (np.asarray(faces, np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5  # (N, 3, 112, 112)
        emb = self.session.run(None, {self.input: x})[0].reshape(len(x), -1)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def cosine_to(reference: np.ndarray, embeddings: np.ndarray) -> float:
    """Mean cosine similarity of unit (N, D) ``embeddings`` with a unit (D,) ``reference``."""
    return float((embeddings @ reference).mean())
