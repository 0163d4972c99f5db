"""The whole reference-image encoding on real photos with synthetic antelopev2, random BiSeNet and a tiny EVA."""
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import tolerance as tol
from encoders import FaceEncoders, FaceResult, NoFace, load_face_analysis
from encoders.images import align_face
from encoders.parsing import face_features_image, parse_labels
from support import encoder_fakes as fakes
from support.encoder_models import make_models


def astronaut_rgb():
    from skimage import data

    return data.astronaut()


def group_photo_rgb():
    import insightface

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    return np.ascontiguousarray(cv2.imread(path)[:, :, ::-1])


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return make_models(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def photo_results(encoders):
    return encoders.encode([astronaut_rgb(), np.zeros((300, 200, 3), np.uint8), group_photo_rgb()])


def test_results_per_image_in_order(photo_results):
    first, black, group = photo_results
    assert isinstance(first, FaceResult) and first.ok and isinstance(group, FaceResult)
    assert isinstance(black, NoFace) and not black.ok and "no face detected" in black.reason
    for result in (first, group):
        assert result.id_cond.shape == (1, 1280) and result.id_cond.dtype == torch.float32
        assert [tuple(h.shape) for h in result.hidden_states] == [(1, 577, fakes.TINY_EVA.width)] * 5
        assert result.aligned.shape == result.parsed.shape == (512, 512, 3)
        assert result.aligned.dtype == result.parsed.dtype == np.uint8
        assert result.bbox.shape == (4,) and result.kps.shape == (5, 2) and result.det_score > 0.5
        assert result.face_count == 1 and result.found_by == "detector 640 px"


def test_id_cond_is_raw_arcface_then_normalized_eva(encoders, photo_results):
    rgb = astronaut_rgb()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    reference = encoders.face_analysis.get(bgr)[0]  # insightface's own pipeline on the same face
    result = photo_results[0]
    np.testing.assert_array_equal(result.id_cond[0, :512].numpy(), reference.embedding)
    tol.assert_close(result.bbox, reference.bbox, np.float32, tol.NETWORK)
    tol.assert_close(result.kps, reference.kps, np.float32, tol.NETWORK)

    # independent recomputation of the EVA half from insightface's keypoints
    aligned = align_face(bgr, reference.kps)[:, :, ::-1]
    np.testing.assert_array_equal(result.aligned, aligned)
    face = torch.from_numpy(aligned.copy()).permute(2, 0, 1)[None].float() / 255
    features = face_features_image(face, parse_labels(encoders.parser, face))
    np.testing.assert_array_equal(result.parsed, (features[0].permute(1, 2, 0) * 255).round().byte().numpy())
    with torch.no_grad():
        embedding, hidden = encoders.eva(encoders.eva.preprocess(features))
    tol.assert_close(result.id_cond[:, 512:], F.normalize(embedding, dim=-1), torch.float32, tol.NETWORK)
    tol.assert_close(result.id_cond[:, 512:].norm(), 1.0, torch.float32, tol.OPS)
    for ours, expected in zip(result.hidden_states, hidden):
        tol.assert_close(ours, expected, torch.float32, tol.NETWORK)  # batched vs single: float noise


def test_large_photo_is_limited_to_1024_and_boxes_use_input_pixels(encoders, photo_results):
    rgb = group_photo_rgb()
    assert max(rgb.shape[:2]) == 1280
    direct = encoders.face_analysis.get(np.ascontiguousarray(rgb[:, :, ::-1]))[0]  # detection at full size
    np.testing.assert_allclose(photo_results[2].bbox, direct.bbox, atol=2.0)
    np.testing.assert_allclose(photo_results[2].kps, direct.kps, atol=2.0)


def test_comfyui_image_tensor_with_alpha(encoders, photo_results):
    rgb = astronaut_rgb()
    rgba = torch.from_numpy(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).float()[None] / 255
    result = encoders.encode(rgba)[0]
    torch.testing.assert_close(result.id_cond, photo_results[0].id_cond)  # alpha dropped, same pixels


def test_face_index_out_of_range_is_a_no_face_result(encoders):
    result = encoders.encode(astronaut_rgb(), order="left-right", index=1)[0]
    assert isinstance(result, NoFace) and result.face_count == 1
    assert "face index 1" in result.reason and "only 1 face was detected" in result.reason


class _CheapParser(torch.nn.Module):
    """Stands in for BiSeNet where its result does not matter: same call and output convention (logits, ...)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return (self.conv(x),)


def test_results_follow_the_eva_module_dtype_but_come_back_as_float32(encoders, photo_results, monkeypatch):
    monkeypatch.setattr(encoders, "parser", _CheapParser())
    expected = encoders.encode(astronaut_rgb())[0]
    encoders.eva.to(torch.bfloat16)
    try:
        result = encoders.encode(astronaut_rgb())[0]
    finally:
        encoders.eva.to(torch.float32)
    assert result.id_cond.dtype == torch.float32 and result.hidden_states[0].dtype == torch.float32
    torch.testing.assert_close(result.id_cond, expected.id_cond, rtol=0, atol=0.05)
    assert not torch.equal(result.id_cond, expected.id_cond)


def test_choosing_among_three_faces(tmp_path):
    fakes.write_antelopev2(str(tmp_path / "models" / "antelopev2"), faces=fakes.THREE_FACES)
    models = FaceEncoders(load_face_analysis(str(tmp_path), "CPU"), eva=None, parser=None)  # locate() only
    rgb = astronaut_rgb()
    left, largest, right = (models.locate(rgb, order=order, index=0)
                            for order in ("left-right", "largest", "right-left"))
    assert left.face_count == largest.face_count == right.face_count == 3
    assert left.bbox[0] < largest.bbox[0] < right.bbox[0]
    areas = [(r.bbox[2] - r.bbox[0]) * (r.bbox[3] - r.bbox[1]) for r in (left, largest, right)]
    assert areas[1] == max(areas)
    assert not np.array_equal(left.arcface, right.arcface) and not np.array_equal(left.aligned_bgr, right.aligned_bgr)
    assert isinstance(models.locate(rgb, "top-bottom", 3), NoFace)


class _OnlyOnPaddedImages:
    """Wraps the fake detector so it finds nothing until the image has the pipeline's padding."""

    def __init__(self, detector, min_side):
        self.detector, self.min_side = detector, min_side

    def detect(self, img, input_size=None, max_num=0):
        if min(img.shape[:2]) < self.min_side:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return self.detector.detect(img, input_size=input_size, max_num=max_num)


def test_padded_retry_when_the_face_fills_the_frame(encoders, monkeypatch):
    rgb = astronaut_rgb()  # 512 px; padded copy: 768 px
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    monkeypatch.setattr(encoders.face_analysis, "det_model", _OnlyOnPaddedImages(encoders.face_analysis.det_model, 600))
    located = encoders.locate(rgb)
    assert located.found_by == "detector 640 px, padded image"
    assert np.all(located.kps > -128) and np.all(located.kps < 512 + 128)
    # keypoints are reported in the input image's pixels and the crop is the original's crop
    assert np.abs(located.aligned_bgr.astype(int) - align_face(bgr, located.kps)).max() <= 1
    monkeypatch.setattr(encoders, "pad_retry", False)
    no_face = encoders.locate(rgb)
    assert isinstance(no_face, NoFace) and "padded" not in no_face.reason


@pytest.mark.parametrize("height,width", [(1, 1), (2, 4000), (4000, 2), (1, 5000), (5000, 1), (4000, 20), (20, 4000),
                                          (10, 10), (0, 7)])
def test_images_too_small_or_too_narrow_are_skipped_with_their_size(encoders, height, width):
    """OpenCV's resize crashed on these (a side scaled to 0 px): now each is 'no usable face', with the reason."""
    photo = cv2.resize(astronaut_rgb(), (max(width, 1), max(height, 1)), interpolation=cv2.INTER_AREA)[:height, :width]
    for images in (photo, torch.from_numpy(photo.copy()).float()[None] / 255.0):  # numpy and ComfyUI IMAGE
        [result] = encoders.encode(images)
        assert isinstance(result, NoFace), (height, width)
        assert result.reason.startswith(f"the image is {width}x{height} px")
        assert result.reason.endswith("too small or too narrow to hold a face (each side needs at least 16 px)")
    if max(height, width) > 1024:
        scaled = tuple(max(1, int(round(s * 1024 / max(height, width)))) for s in (width, height))
        assert f"({scaled[0]}x{scaled[1]} px once the long side is scaled to 1024 px)" in result.reason


@pytest.mark.parametrize("height,width", [(64, 2000), (2000, 64), (16, 16), (40, 1024)])
def test_narrow_but_usable_images_go_through_detection(encoders, height, width):
    photo = cv2.resize(astronaut_rgb(), (width, height), interpolation=cv2.INTER_AREA)
    [result] = encoders.encode(photo)
    assert result.ok or result.reason.startswith("no face detected")


def test_detector_sizes_that_would_shrink_a_side_to_nothing_are_skipped(encoders):
    from encoders.faces import detect_faces

    strip = np.full((1, 1024, 3), 128, np.uint8)  # insightface would resize it to 640x0 px
    assert detect_faces(encoders.face_analysis, strip) == ([], None)
    assert detect_faces(encoders.face_analysis, np.ascontiguousarray(strip.transpose(1, 0, 2))) == ([], None)
