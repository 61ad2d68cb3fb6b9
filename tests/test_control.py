"""Control frames and the source crop on the real clips and portraits."""

import cv2
import numpy as np
import pytest

from megactor.data import control as C
from megactor.data import face as F
from megactor.data.video_io import read_video

from conftest import TESTCASES, artifacts_dir  # the real clips; tests that need them skip (via its fixture) without them
CLIPS = sorted((TESTCASES / "driver").glob("*.mp4"))
SIZE = 256


@pytest.fixture(scope="module")
def source(analyser, testcases):
    """A real portrait's face crop and its landmarks in crop pixels."""
    image = np.ascontiguousarray(cv2.imread(str(TESTCASES / "source" / "12.png"))[..., ::-1])
    face = analyser.detect(image)[0]
    box = C.face_crop_box(face.landmarks, image.shape[:2], margin=0.6)
    return C.crop_and_resize(image, box, SIZE), C.transform_points(face.landmarks, C.crop_matrix(box, SIZE))


@pytest.fixture(scope="module")
def drivers(analyser, testcases):
    """{clip name: (frames, landmarks (T, 468, 3))} for 2 s of every real clip."""
    out = {}
    for path in CLIPS:
        frames = read_video(str(path), max_seconds=2.0, with_audio=False).frames
        out[path.stem] = frames, np.stack([faces[0].landmarks for faces in analyser.track(frames)])
    return out


def test_similarity_transform_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (14, 2))
    angle, scale, shift = np.deg2rad(17), 1.7, np.array([12.0, -30.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    np.testing.assert_allclose(C.similarity_transform(src, dst), np.concatenate([rot, shift[:, None]], 1), atol=1e-9)
    noisy = C.similarity_transform(src, dst + rng.normal(0, 0.5, dst.shape))
    np.testing.assert_allclose(noisy[:, :2], rot, atol=0.02)
    np.testing.assert_allclose(noisy[:, 2], shift, atol=1.0)
    mirrored = C.similarity_transform(src, src * [-1, 1])  # no reflection: the best rotation instead
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_face_crop_box_is_a_centred_square():
    box = C.face_crop_box(np.array([100.0, 50.0, 200.0, 250.0]), (300, 300), margin=0.5)
    np.testing.assert_array_equal(box, [0, 0, 300])  # side 200 * 1.5, centred on (150, 150)
    past = C.face_crop_box(np.array([10.0, 10.0, 110.0, 110.0]), (300, 300), margin=1.0)
    np.testing.assert_array_equal(past, [-40, -40, 200])
    with pytest.raises(ValueError, match="outside"):
        C.face_crop_box(np.array([400.0, 10.0, 500.0, 110.0]), (300, 300), margin=0.5)


def test_crop_matrix_matches_the_crop_and_pads():
    image = np.full((100, 120, 3), 60, np.uint8)
    image[40:44, 70:74] = 255  # a 4 px dot centred at (72, 42)
    for box in ([50, 20, 40], [50, -30, 80]):  # inside; past the top-right corner
        crop = C.crop_and_resize(image, np.array(box), 160)
        expected = C.transform_points(np.array([[72.0, 42.0]]), C.crop_matrix(np.array(box), 160))[0]
        ys, xs = np.nonzero(crop[..., 0] > 150)
        np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], expected, atol=0.5)
    padded = C.crop_and_resize(image, np.array([-50, -50, 100]), 100, pad="black")
    assert padded[:50, :50].max() == 0 and padded[60:, 60:].min() == 60
    assert C.crop_and_resize(image, np.array([-50, -50, 100]), 100, pad="edge").min() == 60


def test_aligned_landmarks_follow_the_warped_face(analyser, source, drivers):
    """MediaPipe on the warped driver finds the face where the aligned landmarks say it is."""
    _, source_lm = source
    frames, lm = drivers["audio_CHTF_2"]
    matrix = C.clip_alignment(lm, source_lm)
    _, aligned = C.control_frames(frames, lm, source_lm, SIZE)
    for t in (0, len(frames) // 2, len(frames) - 1):
        found = analyser.detect(C.warp_frames(frames[t:t + 1], matrix, SIZE)[0])[0].landmarks[:, :2]
        assert np.abs(found - aligned[t]).mean() < 3.0  # pixels of the 256 px crop; measured 0.4-2


def test_one_transform_per_clip_keeps_head_motion(source, drivers):
    _, source_lm = source
    for frames, lm in drivers.values():
        _, aligned = C.control_frames(frames, lm, source_lm, SIZE)
        per_frame = np.stack([C.similarity_transform(lm[t], aligned[t]) for t in range(0, len(lm), 10)])
        np.testing.assert_allclose(per_frame, np.broadcast_to(per_frame[0], per_frame.shape), atol=1e-3)
        # the aligned face sits on the source's: eye centres within a few percent of the crop
        eyes = lambda x: x[..., np.r_[F.LEFT_EYE, F.RIGHT_EYE], :2].mean(-2)
        assert np.linalg.norm(np.median(eyes(aligned), 0) - eyes(source_lm)) < 0.06 * SIZE


def test_control_is_zero_outside_patches_centred_on_landmarks(source, drivers, tmp_path):
    source_crop, source_lm = source
    for name, (frames, lm) in drivers.items():
        control, aligned = C.control_frames(frames, lm, source_lm, SIZE, patch_margin=0.25)
        assert control.shape == (len(frames), SIZE, SIZE) and control.dtype == np.uint8
        assert aligned.shape == (len(frames), 468, 2)
        patches = C.control_patches(aligned, "eyes+mouth", 0.25)  # (T, 3, 4)
        for t in range(0, len(frames), 7):
            inside = np.zeros((SIZE, SIZE), bool)
            for x0, y0, x1, y1 in patches[t]:
                inside[max(int(np.floor(y0)), 0):int(np.ceil(y1)), max(int(np.floor(x0)), 0):int(np.ceil(x1))] = True
            assert control[t][~inside].max() == 0, name
            assert (control[t][inside] > 0).mean() > 0.95, name  # the patches hold the driver's pixels
            regions = [F.LEFT_EYE, F.RIGHT_EYE, F.MOUTH_OUTER]
            for (x0, y0, x1, y1), region in zip(patches[t], regions):
                window = control[t, int(y0) - 3:int(y1) + 3, int(x0) - 3:int(x1) + 3] > 0
                ys, xs = np.nonzero(window)
                patch_centre = np.array([(xs.min() + xs.max() + 1) / 2 + int(x0) - 3,
                                         (ys.min() + ys.max() + 1) / 2 + int(y0) - 3])
                landmarks = aligned[t, region]
                landmark_centre = (landmarks.min(0) + landmarks.max(0)) / 2
                assert np.abs(patch_centre - landmark_centre).max() < 2.0, name
        tiles = []
        for t in np.linspace(0, len(frames) - 1, 3).astype(int):
            driver = cv2.resize(frames[t], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            tiles.append(np.concatenate([source_crop, driver, np.repeat(control[t, ..., None], 3, -1)], 1))
        cv2.imwrite(str(artifacts_dir(tmp_path) / f"control_{name}.png"), np.concatenate(tiles, 0)[..., ::-1])


def test_eyes_mode_has_no_mouth(source, drivers):
    _, source_lm = source
    frames, lm = drivers["audio_CHTF_3"]
    both, aligned = C.control_frames(frames, lm, source_lm, SIZE, mode="eyes+mouth")
    eyes, _ = C.control_frames(frames, lm, source_lm, SIZE, mode="eyes")
    mouth = C.control_patches(aligned, "eyes+mouth", 0.25)[:, 2]  # (T, 4)
    eye_patches = C.control_patches(aligned, "eyes", 0.25)  # (T, 2, 4)
    assert (eyes[both == 0] == 0).all() and (eyes <= both).all()  # a subset of eyes+mouth
    for t in range(len(frames)):
        x0, y0, x1, y1 = mouth[t].astype(int)
        assert both[t, y0 + 2:y1 - 2, x0 + 2:x1 - 2].any() and not eyes[t, int(eye_patches[t, :, 3].max()) + 1:].any()


def test_frames_without_a_face_are_empty(source, drivers):
    _, source_lm = source
    frames, lm = drivers["audio_ENTF_1"]
    lm = lm.copy()
    lm[3] = np.nan
    control, _ = C.control_frames(frames, lm, source_lm, SIZE)
    assert control[3].max() == 0 and control[2].max() > 0


def test_bad_arguments_are_named(source, drivers):
    _, source_lm = source
    frames, lm = drivers["audio_ENTF_1"]
    with pytest.raises(ValueError, match="'mouth'"):
        C.control_frames(frames, lm, source_lm, SIZE, mode="mouth")
    with pytest.raises(ValueError, match="same T"):
        C.control_frames(frames[:5], lm, source_lm, SIZE)
    with pytest.raises(ValueError, match="468"):
        C.control_frames(frames, lm, source_lm[:68], SIZE)
