"""FFHQ 512 alignment: identical to facexlib's FaceRestoreHelper and to an independent similarity warp."""
import cv2
import numpy as np
import pytest

from support import tolerance as tol

from encoders.images import FFHQ_TEMPLATE_512, align_face, ffhq_affine, limit_long_side, pad_for_detection, \
    to_rgb_list

# Written out again on purpose: the test must not trust the module's own constant.
TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]])


def astronaut_bgr():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def similarity_lstsq(src, dst):
    """Closed-form least-squares similarity (Umeyama) taking src points onto dst points, as a 2x3 matrix."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    return np.hstack([scale * rotation, (dst_mean - scale * rotation @ src_mean)[:, None]])


@pytest.fixture
def facexlib_helper(monkeypatch):
    """FaceRestoreHelper without its RetinaFace/ParseNet models (they would be downloaded): only alignment is used."""
    import facexlib.utils.face_restoration_helper as frh

    monkeypatch.setattr(frh, "init_detection_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(frh, "init_parsing_model", lambda *args, **kwargs: None)
    return frh.FaceRestoreHelper(upscale_factor=1, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50",
                                 save_ext="png", device="cpu")


def test_template_is_ffhq_512():
    np.testing.assert_array_equal(FFHQ_TEMPLATE_512, TEMPLATE)


@pytest.mark.parametrize("kps", [
    [[218.1, 136.2], [263.2, 136.2], [240.6, 163.8], [223.7, 191.5], [257.5, 191.5]],  # fake detector, astronaut
    [[205.3, 120.9], [262.8, 131.4], [236.0, 160.2], [214.7, 189.9], [255.1, 195.3]],  # tilted, uneven
])
def test_identical_to_facexlib_align_warp_face(facexlib_helper, kps):
    bgr = astronaut_bgr()
    kps = np.array(kps, np.float32)
    facexlib_helper.read_image(bgr)
    facexlib_helper.all_landmarks_5 = [kps]
    facexlib_helper.align_warp_face()
    ours = align_face(bgr, kps)
    assert ours.shape == (512, 512, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, facexlib_helper.cropped_faces[0])
    np.testing.assert_array_equal(ffhq_affine(kps), facexlib_helper.affine_matrices[0])


def test_equals_independent_similarity_warp():
    bgr = astronaut_bgr()
    # keypoints that are an exact similarity image of the template: every estimator must find the same transform
    angle, scale, shift = np.deg2rad(12.0), 0.31, np.array([160.0, 60.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = (TEMPLATE @ (scale * rotation).T + shift).astype(np.float32)
    independent = similarity_lstsq(kps.astype(np.float64), TEMPLATE)
    tol.assert_close(ffhq_affine(kps), independent, np.float32, tol.OPS)
    expected = cv2.warpAffine(bgr, independent, (512, 512), borderValue=(135, 133, 132))
    ours = align_face(bgr, kps).astype(np.int16)
    assert np.abs(ours - expected).max() <= 2 and np.abs(ours - expected).mean() < 0.05
    # the keypoints land on the template
    mapped = np.hstack([kps, np.ones((5, 1))]) @ ffhq_affine(kps).T
    np.testing.assert_allclose(mapped, TEMPLATE, atol=0.05)


def test_border_is_facexlib_gray_in_bgr_order():
    tiny = np.zeros((40, 40, 3), np.uint8)
    kps = (TEMPLATE - TEMPLATE.mean(0) + 20).astype(np.float32)  # a 512 px crop around a 40 px image
    crop = align_face(tiny, kps)
    assert tuple(crop[0, 0]) == (135, 133, 132)
    assert tuple(crop[307, 256]) == (0, 0, 0)  # [row, col] at the template centre: the photo


def test_padding_keeps_the_aligned_crop():
    """The padded-image retry aligns on the padded copy: the crop of the original image, up to rounding."""
    bgr = astronaut_bgr()
    kps = np.array([[218.1, 136.2], [263.2, 136.2], [240.6, 163.8], [223.7, 191.5], [257.5, 191.5]], np.float32)
    padded, pad = pad_for_detection(bgr)
    assert pad == 128 and padded.shape == (768, 768, 3)
    difference = np.abs(align_face(padded, kps + pad).astype(np.int16) - align_face(bgr, kps))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_long_side_limit_matches_official_resize():
    image = np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), np.uint8)
    small, scale = limit_long_side(image)
    assert small.shape == (768, 1024, 3) and scale == pytest.approx(1024 / 2000)
    np.testing.assert_array_equal(small, cv2.resize(image, (1024, 768), interpolation=cv2.INTER_LANCZOS4))
    same, one = limit_long_side(image[:1024, :1000])
    assert one == 1.0 and same.shape == (1024, 1000, 3)


def test_input_conversions():
    import torch

    rgb = np.random.default_rng(1).integers(0, 255, (8, 6, 3), np.uint8)
    comfy = torch.from_numpy(np.stack([rgb, rgb])).float() / 255.0
    out = to_rgb_list(comfy)
    assert len(out) == 2 and all(np.array_equal(o, rgb) for o in out)
    assert np.array_equal(to_rgb_list(torch.cat([comfy, torch.ones(2, 8, 6, 1)], -1))[0], rgb)  # RGBA
    gray = to_rgb_list(comfy[..., :1])[0]
    assert gray.shape == (8, 6, 3) and np.array_equal(gray[..., 1], rgb[..., 0])
    assert np.array_equal(to_rgb_list(rgb[..., 0])[0][..., 2], rgb[..., 0])  # numpy HxW gray
    assert np.array_equal(to_rgb_list([rgb, np.dstack([rgb, rgb[..., :1]])])[1], rgb)  # list, RGBA numpy
    with pytest.raises(ValueError, match="image 0"):
        to_rgb_list(torch.zeros(1, 8, 6, 2))
    with pytest.raises(TypeError, match="ComfyUI IMAGE"):
        to_rgb_list("photo.png")
