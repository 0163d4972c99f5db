"""Face analysis: antelopev2 folder checks, providers, detection with retries, face choice."""
import logging
import os
import warnings

import cv2
import numpy as np
import pytest

from encoders import EncoderModelError
from encoders.faces import (DetectedFace, arcface_embedding, choose_face, detect_faces, find_antelopev2,
                            load_face_analysis, onnx_providers, order_faces)
from support import encoder_fakes as fakes


def astronaut_bgr():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def group_photo_bgr():
    import insightface

    return cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    fakes.write_antelopev2(str(root / "models" / "antelopev2"))
    return str(root)


@pytest.fixture(scope="module")
def analysis(flat_root):
    return load_face_analysis(flat_root, "CPU")


# --- providers -------------------------------------------------------------------------------------------------

def test_providers_explicit_and_auto():
    available = ["CUDAExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("CUDA", available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("CoreML", available) == ["CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("CPU", available) == ["CPUExecutionProvider"]
    assert onnx_providers("auto", available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers("ROCM", ["MIGraphXExecutionProvider", "CPUExecutionProvider"])[0] == \
        "MIGraphXExecutionProvider"


def test_unavailable_provider_falls_back_to_cpu_with_one_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="encoders.faces"):
        assert onnx_providers("CUDA", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    lines = [r for r in caplog.records if r.name == "encoders.faces"]
    assert len(lines) == 1 and "CUDA" in lines[0].getMessage() and "using CPU" in lines[0].getMessage()
    with pytest.raises(ValueError, match="auto, CPU, CUDA, ROCM, CoreML"):
        onnx_providers("TPU", ["CPUExecutionProvider"])


# --- antelopev2 folder -----------------------------------------------------------------------------------------

def test_loads_flat_folder_with_detection_and_recognition_only(analysis):
    assert set(analysis.models) == {"detection", "recognition"}


def test_loads_nested_folder(tmp_path, caplog):
    written = fakes.write_antelopev2(str(tmp_path / "models" / "antelopev2"), nested=True)
    assert written.endswith(os.path.join("antelopev2", "antelopev2"))
    with caplog.at_level(logging.INFO, logger="encoders.faces"):
        analysis = load_face_analysis(str(tmp_path), "CPU")
    assert find_antelopev2(str(tmp_path)) == written
    assert "nested" in caplog.text
    boxes, _ = analysis.det_model.detect(astronaut_bgr(), input_size=(640, 640))
    assert len(boxes) == 1


def test_missing_files_never_download(tmp_path, monkeypatch):
    import insightface.utils.storage as storage

    def no_download(*args, **kwargs):
        raise AssertionError("insightface tried to download")

    monkeypatch.setattr(storage, "download_file", no_download)
    with pytest.raises(EncoderModelError) as e:
        load_face_analysis(str(tmp_path), "CPU")
    message = str(e.value)
    for expected in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", os.path.join(str(tmp_path), "models", "antelopev2"),
                     "huggingface.co/MonsterMMORPG/tools/tree/main/antelopev2", "antelopev2.zip",
                     "models/insightface/models/antelopev2"):
        assert expected in message


def test_partial_folder_names_the_missing_file(tmp_path):
    folder = fakes.write_antelopev2(str(tmp_path / "models" / "antelopev2"))
    os.remove(os.path.join(folder, "glintr100.onnx"))
    with pytest.raises(EncoderModelError, match="expected glintr100.onnx in") as e:
        load_face_analysis(str(tmp_path), "CPU")
    assert "It holds only: scrfd_10g_bnkps.onnx" in str(e.value)


@pytest.mark.parametrize("where", ["antelopev2", "models", "."])
def test_misplaced_folder_says_where_to_move(tmp_path, where):
    fakes.write_antelopev2(str(tmp_path / where))
    with pytest.raises(EncoderModelError, match="wrong folder") as e:
        load_face_analysis(str(tmp_path), "CPU")
    expected = os.path.join(str(tmp_path), "models", "antelopev2")
    assert f"move the .onnx files into {expected}" in str(e.value)


@pytest.mark.parametrize("name,damage", [("scrfd_10g_bnkps.onnx", "truncated"), ("glintr100.onnx", "truncated"),
                                         ("glintr100.onnx", "empty"), ("1k3d68.onnx", "garbage")])
def test_damaged_onnx_file_is_named_with_the_fix(tmp_path, name, damage):
    """A truncated antelopev2 download ended in onnxruntime's raw InvalidProtobuf, naming no file to replace.
    InsightFace loads every .onnx of the folder, so a damaged file PuLID does not use breaks it too."""
    folder = fakes.write_antelopev2(str(tmp_path / "models" / "antelopev2"))
    path = os.path.join(folder, name)
    data = open(path, "rb").read() if os.path.exists(path) else b""
    with open(path, "wb") as f:
        f.write({"truncated": data[:len(data) // 2], "empty": b"", "garbage": b"not an onnx model" * 9}[damage])
    with pytest.raises(EncoderModelError) as e:
        load_face_analysis(str(tmp_path), "CPU")
    message = str(e.value)
    assert message.startswith(f"{name} in {folder} is damaged: onnxruntime cannot read it (")
    assert f"file: {path}" in message and "Fix: download it again" in message
    assert ("deleting this file also works" in message) == (name == "1k3d68.onnx")


# --- detection -------------------------------------------------------------------------------------------------

def test_one_face_with_keypoints_on_real_photos(analysis):
    for bgr in (astronaut_bgr(), group_photo_bgr()):
        faces, size = detect_faces(analysis, bgr)
        assert size == 640 and len(faces) == 1
        face = faces[0]
        assert face.kps.shape == (5, 2) and face.det_score > 0.5
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= bgr.shape[1] and 0 <= y1 < y2 <= bgr.shape[0]
        assert np.all((face.kps >= face.bbox[:2]) & (face.kps <= face.bbox[2:]))


def test_no_face_on_black_image(analysis):
    assert detect_faces(analysis, np.zeros((480, 640, 3), np.uint8)) == ([], None)


def test_arcface_embedding_matches_insightface_get(analysis):
    bgr = astronaut_bgr()
    reference = analysis.get(bgr)
    faces, _ = detect_faces(analysis, bgr)
    ours = arcface_embedding(analysis, bgr, faces[0])
    assert ours.shape == (512,) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference[0].embedding)  # raw, not normalized
    assert abs(np.linalg.norm(ours) - 1.0) > 1e-3


class _SizeSensitiveDetector:
    """Finds a face only at the given input size or on images at least `min_side` px: exercises the retries."""

    def __init__(self, size=None, min_side=None):
        self.size, self.min_side, self.calls = size, min_side, []

    def detect(self, img, input_size=None, max_num=0):
        self.calls.append((input_size, img.shape[:2]))
        hit = (self.size is not None and input_size == (self.size, self.size)) or \
              (self.min_side is not None and min(img.shape[:2]) >= self.min_side)
        if not hit:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return np.array([[10, 10, 50, 60, 0.9]], np.float32), np.tile([[20.0, 30.0]], (1, 5, 1)).astype(np.float32)


class _StubAnalysis:
    def __init__(self, detector):
        self.det_model = detector


def test_smaller_detector_sizes_are_retried_in_order():
    detector = _SizeSensitiveDetector(size=320)
    faces, size = detect_faces(_StubAnalysis(detector), np.zeros((100, 100, 3), np.uint8))
    assert size == 320 and len(faces) == 1
    assert [c[0][0] for c in detector.calls] == [640, 512, 384, 320]


# --- face choice -----------------------------------------------------------------------------------------------

def _face(x1, y1, x2, y2, score=0.9):
    return DetectedFace(np.array([x1, y1, x2, y2], np.float32), np.zeros((5, 2), np.float32), score)


SMALL_LEFT_LOW = _face(0, 80, 10, 90)  # area 100, centre (5, 85)
BIG_MIDDLE = _face(40, 40, 80, 80)  # area 1600, centre (60, 60)
MEDIUM_RIGHT_HIGH = _face(90, 0, 110, 20)  # area 400, centre (100, 10)
FACES = [SMALL_LEFT_LOW, BIG_MIDDLE, MEDIUM_RIGHT_HIGH]


@pytest.mark.parametrize("order, expected", [
    ("largest", [BIG_MIDDLE, MEDIUM_RIGHT_HIGH, SMALL_LEFT_LOW]),
    ("large-small", [BIG_MIDDLE, MEDIUM_RIGHT_HIGH, SMALL_LEFT_LOW]),
    ("small-large", [SMALL_LEFT_LOW, MEDIUM_RIGHT_HIGH, BIG_MIDDLE]),
    ("left-right", [SMALL_LEFT_LOW, BIG_MIDDLE, MEDIUM_RIGHT_HIGH]),
    ("right-left", [MEDIUM_RIGHT_HIGH, BIG_MIDDLE, SMALL_LEFT_LOW]),
    ("top-bottom", [MEDIUM_RIGHT_HIGH, BIG_MIDDLE, SMALL_LEFT_LOW]),
    ("bottom-top", [SMALL_LEFT_LOW, BIG_MIDDLE, MEDIUM_RIGHT_HIGH]),
])
def test_face_orders(order, expected):
    assert [id(f) for f in order_faces(FACES, order)] == [id(f) for f in expected]
    for index, face in enumerate(expected):
        assert choose_face(FACES, order, index) == (face, "")
    assert choose_face(FACES, order, -1) == (expected[-1], "")


def test_face_choice_out_of_range_and_unknown_order():
    face, reason = choose_face(FACES, "left-right", 3)
    assert face is None and "face index 3" in reason and "only 3 faces were detected" in reason and "0..2" in reason
    assert choose_face([], "largest", 0) == (None, "no face detected")
    with pytest.raises(ValueError, match="left-right"):
        order_faces(FACES, "random")


def test_ties_keep_detection_order():
    a, b = _face(0, 0, 10, 10), _face(20, 0, 30, 10)
    assert order_faces([a, b], "largest")[0] is a and order_faces([b, a], "largest")[0] is b


def test_three_synthetic_faces_end_to_end(tmp_path):
    fakes.write_antelopev2(str(tmp_path / "models" / "antelopev2"), faces=fakes.THREE_FACES)
    analysis = load_face_analysis(str(tmp_path), "CPU")
    faces, _ = detect_faces(analysis, astronaut_bgr())
    assert len(faces) == 3
    centres_x = [f.center[0] for f in order_faces(faces, "left-right")]
    assert centres_x == sorted(centres_x)
    largest = choose_face(faces, "largest", 0)[0]
    assert largest.area == max(f.area for f in faces)
    assert 0.4 * 512 < largest.center[0] < 0.6 * 512  # THREE_FACES[0] is the middle, largest box
    top = choose_face(faces, "top-bottom", 0)[0]
    assert top.center[0] > 0.75 * 512  # the right face is the highest


# --- third-party warnings -------------------------------------------------------------------------------------

def _warn_from_module(module_name: str, message: str, category=FutureWarning):
    """A warning raised by code whose module is `module_name` (what `filterwarnings(module=...)` matches).
    warn_explicit takes the module name as an argument, so no code has to be compiled under that name."""
    warnings.warn_explicit(message, category, filename=module_name.replace(".", "/") + ".py", lineno=1,
                           module=module_name, registry={})


def test_insightface_future_warnings_are_silenced_at_the_call_site_only(analysis):
    from encoders.faces import quiet_insightface

    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bgr = astronaut_bgr()
        faces, _ = detect_faces(analysis, bgr)
        arcface_embedding(analysis, bgr, faces[0])
        with quiet_insightface():
            _warn_from_module("insightface.utils.face_align", "`estimate` is deprecated")
            _warn_from_module("somebody_else", "not ours to hide")
            _warn_from_module("insightface.model_zoo", "a real problem", UserWarning)
    assert len(faces) == 1
    assert [(w.category, str(w.message)) for w in caught] == [(FutureWarning, "not ours to hide"),
                                                              (UserWarning, "a real problem")]
    assert warnings.filters == filters_before  # nothing changed for the rest of the process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_from_module("insightface.utils.face_align", "`estimate` is deprecated")
    assert len(caught) == 1  # outside the call sites, the same warning still shows


def test_two_threads_locating_faces_at_once_leave_the_warnings_filters_as_they_were(analysis):
    """Before: quiet_insightface used warnings.catch_warnings, which saves and restores the process-wide filter list;
    thread A in, B in, A out (restores the list without the filter), B out (restores A's list, filter included):
    the filter stayed installed for good, hiding insightface's FutureWarnings everywhere."""
    import threading

    from encoders.faces import quiet_insightface

    filters_before = list(warnings.filters)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with quiet_insightface():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def thread_b():
        a_in.wait(10)
        with quiet_insightface():
            b_in.set()
            a_out.wait(10)
            with warnings.catch_warnings(record=True) as caught:  # A has left: still quiet while B is inside
                _warn_from_module("insightface.utils.face_align", "`estimate` is deprecated")
            seen["inside"] = len(caught)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"inside": 0} and warnings.filters == filters_before

    bgr = astronaut_bgr()
    alone, _ = detect_faces(analysis, bgr)
    results = []

    def locate():
        for _ in range(6):
            faces, _ = detect_faces(analysis, bgr)
            results.append((faces[0].bbox.tolist(), arcface_embedding(analysis, bgr, faces[0]).tolist()))

    workers = [threading.Thread(target=locate) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert warnings.filters == filters_before and len(results) == 12
    assert all(r == (alone[0].bbox.tolist(), arcface_embedding(analysis, bgr, alone[0]).tolist()) for r in results)
