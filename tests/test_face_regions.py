"""Face regions without ComfyUI (encoders/regions): masks against the generated detector's known boxes and
landmarks at several sizes and aspect ratios, exact grow and feather (checked against scipy's distance transform),
the parsing mask warped back to the image, crop then paste, and property tests for the geometry."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from encoders.faces import load_face_analysis
from encoders.images import FFHQ_TEMPLATE_512, ffhq_affine, to_rgb_list
from encoders.regions import (FaceCrop, FaceCrops, box_mask, crop_window, ellipse_mask, feather_mask, find_faces,
                              grow_mask, limit_box, locate_batch, parsing_masks, paste, refine, rgb_uint8,
                              working_size)
from encoders.regions.crops import cut, resize_square
from encoders.regions.parts import aligned_point_in_image
from support import encoder_fakes as fakes
from support import face_regions as FR

# width, height: square, landscape, portrait, over the 1024 px detection limit, odd sizes
SIZES = [(512, 512), (640, 480), (480, 800), (1536, 768), (333, 517)]


@pytest.fixture(scope="module")
def one_face(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_face")
    fakes.write_antelopev2(str(root / "models" / "antelopev2"))
    return load_face_analysis(str(root), "CPU")


@pytest.fixture(scope="module")
def three_faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("three_faces")
    fakes.write_antelopev2(str(root / "models" / "antelopev2"), faces=fakes.THREE_FACES)
    return load_face_analysis(str(root), "CPU")


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def edt_outside(mask: np.ndarray) -> np.ndarray:
    """scipy: distance of each pixel to the nearest mask pixel (0 inside)."""
    return ndimage.distance_transform_edt(~mask)


# --- masks from the detector's boxes ------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height", SIZES)
def test_box_and_ellipse_masks_sit_on_the_detectors_box(one_face, width, height):
    (face,) = find_faces(one_face, FR.photo(width, height))
    box = FR.expected_box(fakes.ONE_FACE[0], width, height)
    np.testing.assert_allclose(face.bbox, box, atol=0.05)
    np.testing.assert_allclose(face.kps, FR.expected_kps(fakes.ONE_FACE[0], width, height), atol=0.05)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    boxed, inscribed = box_mask(face.bbox, height, width), ellipse_mask(face.bbox, height, width)
    assert boxed.shape == (height, width) and inscribed.any()
    assert np.abs(centroid(boxed) - centre).max() < 1.0 and np.abs(centroid(inscribed) - centre).max() < 1.0
    assert not (inscribed & ~boxed).any()  # box contains ellipse
    rows, cols = np.nonzero(boxed)  # every pixel whose centre lies in the (float32) box the detector gave
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (math.ceil(x1), math.floor(x2), math.ceil(y1),
                                                                 math.floor(y2))
    # the ellipse touches the box's sides at their middles and is its inscribed ellipse: area pi/4 of the box's
    assert abs(inscribed.sum() / boxed.sum() - math.pi / 4) < 0.02


def test_three_faces_each_get_their_own_mask(three_faces):
    width, height = 640, 480
    (item,) = locate_batch(three_faces, [FR.photo(width, height)], "all", "left-right")
    assert len(item.found) == 3 and len(item.picked) == 3
    expected = sorted((FR.expected_box(f, width, height) for f in fakes.THREE_FACES), key=lambda b: b[0] + b[2])
    for face, box in zip(item.picked, expected):
        np.testing.assert_allclose(face.bbox, box, atol=0.05)
        mask = ellipse_mask(face.bbox, height, width)
        assert np.abs(centroid(mask) - [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]).max() < 1.0
    (chosen,) = locate_batch(three_faces, [FR.photo(width, height)], "chosen", "largest", 2)
    assert len(chosen.picked) == 1 and chosen.picked[0].area == min(f.area for f in item.found)
    (missing,) = locate_batch(three_faces, [FR.photo(width, height)], "chosen", "largest", 5)
    assert missing.picked == [] and "only 3 faces" in missing.reason


@pytest.mark.parametrize("channels,dtype", [(3, torch.float32), (4, torch.float32), (1, torch.float32),
                                            (3, torch.uint8), (3, torch.float16)])
def test_fast_rgb_conversion_gives_the_reference_pipelines_pixels(channels, dtype):
    gen = torch.Generator().manual_seed(channels)
    images = torch.rand(2, 37, 53, channels, generator=gen) * 1.2 - 0.1
    images[0, 0, :8, 0] = torch.tensor([0.5, 1.5, 2.5, 3.5, 254.5, 253.5, 0.0, 1.0]) / 255  # halves: to even
    images = (images.clamp(0, 1) * 255).round().to(dtype) if dtype == torch.uint8 else images.to(dtype)
    # to_rgb_list takes uint8 pixels as they are from numpy (a torch uint8 tensor goes through float there)
    fast, reference = rgb_uint8(images), to_rgb_list(images.numpy() if dtype == torch.uint8 else images)
    assert len(fast) == 2 and all(f.dtype == np.uint8 and f.shape == (37, 53, 3) for f in fast)
    assert all(np.array_equal(f, r) for f, r in zip(fast, reference))


def test_no_face_on_a_black_image(one_face):
    (item,) = locate_batch(one_face, [np.zeros((400, 600, 3), np.uint8)], "all")
    assert item.found == [] and item.picked == [] and item.reason == "no face detected"


def test_a_box_outside_the_image_gives_an_empty_or_cut_mask():
    assert not box_mask((-50, -50, -10, -10), 40, 40).any() and not ellipse_mask((50, 0, 90, 30), 40, 40).any()
    cut_box = box_mask((-10.5, 5, 10.2, 20), 40, 40)
    rows, cols = np.nonzero(cut_box)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (0, 10, 5, 20)


# --- grow and feather, exact --------------------------------------------------------------------------------------

@pytest.mark.parametrize("grow", [1, 3, 17, -1, -4])
def test_grow_moves_a_box_edge_by_exactly_n_pixels(grow):
    mask = box_mask((40, 30, 80, 60), 100, 120)  # columns 40..80, rows 30..60
    grown = grow_mask(mask, grow)
    rows, cols = np.nonzero(grown)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (40 - grow, 80 + grow, 30 - grow, 60 + grow)
    if grow > 0:  # rounded corners of radius grow: the corner pixel diagonal to the box is out
        assert not grown[30 - grow, 40 - grow] and grown[30, 40 - grow]


@pytest.mark.parametrize("grow", [0, 2, 9, -3])
def test_grow_is_the_distance_rule_on_any_shape(grow):
    rng = np.random.default_rng(grow + 10)
    mask = ndimage.binary_opening(rng.random((90, 110)) > 0.7, iterations=1)
    mask[:, :5] = True  # a mask along the border keeps its pixels there when shrunk
    if grow >= 0:
        expected = edt_outside(mask) <= grow
    else:
        inside = ndimage.distance_transform_edt(np.pad(mask, 1, constant_values=True))[1:-1, 1:-1]
        expected = inside > -grow
    assert np.array_equal(grow_mask(mask, grow), expected)


@pytest.mark.parametrize("feather", [1, 4, 12])
def test_feather_is_a_linear_ramp_of_exactly_n_pixels(feather):
    mask = box_mask((40, 30, 80, 60), 100, 140)
    soft = feather_mask(mask, feather)
    assert soft.dtype == np.float32 and np.all(soft[mask] == 1.0)
    row = soft[45, 81:81 + feather + 2]  # outward from the right edge (column 80)
    np.testing.assert_allclose(row[:feather], [(feather - k) / (feather + 1) for k in range(feather)], atol=1e-6)
    assert row[feather] == 0.0 and np.count_nonzero(soft[45, 81:]) == feather
    distance = edt_outside(mask)
    np.testing.assert_allclose(soft, np.clip(1 - distance / (feather + 1), 0, 1), atol=1e-6)
    assert np.all(soft[distance >= feather + 1] == 0.0)


def test_grow_then_feather_reaches_exactly_grow_plus_feather():
    mask = ellipse_mask((50, 40, 110, 120), 200, 200)
    soft = refine(mask, 6, 5)
    distance = edt_outside(mask)
    assert np.all(soft[distance <= 6] == 1.0) and np.all(soft[distance >= 6 + 5 + 1] == 0.0)
    grown = distance <= 6  # scipy's grow; the ramp is measured from the grown edge
    np.testing.assert_allclose(soft, np.clip(1 - edt_outside(grown) / 6, 0, 1), atol=1e-6)


# --- the parsing mask ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height", [(640, 480), (480, 800), (1536, 768)])
def test_parsing_mask_is_the_aligned_labels_warped_back(one_face, width, height):
    """A parser whose labels are a disk around the FFHQ template's nose: in the image the mask is a disk around the
    detected nose, its radius divided by the alignment's scale."""
    (face,) = find_faces(one_face, FR.photo(width, height))
    nose, radius = FFHQ_TEMPLATE_512[2], 40.0
    parser = FR.LabelMapParser(FR.disk_labels(nose, radius, label=10))
    (mask,) = parsing_masks(parser, FR.photo(width, height), [face])
    affine = ffhq_affine(face.kps)
    scale = math.hypot(affine[0, 0], affine[0, 1])  # aligned pixels per image pixel
    assert np.abs(centroid(mask) - aligned_point_in_image(affine, nose)).max() < 1.0
    assert abs(mask.sum() / (math.pi * (radius / scale) ** 2) - 1) < 0.05
    assert not (mask & ~box_mask(limit_box(face.bbox), height, width)).any()


def test_parsing_parts_hair_and_what_is_never_masked(one_face):
    rgb = FR.photo(640, 480)
    (face,) = find_faces(one_face, rgb)
    for label, without, with_hair in ((1, True, True), (6, True, True), (17, False, True), (7, False, False),
                                      (14, False, False), (0, False, False)):
        parser = FR.LabelMapParser(FR.disk_labels(FFHQ_TEMPLATE_512[2], 30.0, label))
        assert parsing_masks(parser, rgb, [face])[0].any() == without, label
        assert parsing_masks(parser, rgb, [face], include_hair=True)[0].any() == with_hair, label


@pytest.fixture(scope="module")
def bisenet(tmp_path_factory):
    from encoders.parsing import load_face_parser

    return load_face_parser(fakes.write_bisenet(str(tmp_path_factory.mktemp("parser") / "parsing_bisenet.pth")))


@pytest.mark.parametrize("width,height,hair", [(512, 512, False), (1536, 768, True), (333, 517, False),
                                               (480, 800, True)])
def test_random_bisenet_parsing_mask_lies_inside_the_grown_face_box(one_face, bisenet, width, height, hair):
    rgb = FR.photo(width, height)
    (face,) = find_faces(one_face, rgb)
    (mask,) = parsing_masks(bisenet, rgb, [face], include_hair=hair)
    assert mask.shape == (height, width) and mask.any()
    assert not (mask & ~box_mask(limit_box(face.bbox, hair), height, width)).any()


# --- crop and paste -------------------------------------------------------------------------------------------

def crops_of(images: torch.Tensor, located, context=2.0, size=256, grow=0, feather=0):
    pieces, items = [], []
    for item in located:
        for face in item.picked:
            mask = torch.from_numpy(refine(ellipse_mask(face.bbox, item.height, item.width), grow, feather))
            window = crop_window(face.bbox, item.height, item.width, context)
            crop, _, window_mask = cut(images[item.index], mask, window, size)
            pieces.append(crop)
            items.append(FaceCrop(item.index, *window, window_mask))
    pixels = torch.stack(pieces)
    return pixels, FaceCrops(images.shape[0], images.shape[1], images.shape[2], size, items, pixels)


def test_crop_then_paste_with_nothing_done_is_bit_identical(three_faces):
    rgbs = [FR.photo(640, 480), FR.photo(640, 480)[::-1].copy()]
    images = FR.as_image(*rgbs)
    located = locate_batch(three_faces, rgbs, "all")
    pixels, info = crops_of(images, located, feather=6)
    assert pixels.shape == (6, 256, 256, 3) and [c.image_index for c in info.crops] == [0, 0, 0, 1, 1, 1]
    assert torch.equal(paste(images, pixels, info), images)
    assert torch.equal(paste(images, pixels.clone(), info), images)  # equal values, another tensor


def test_pasted_crops_change_only_where_their_masks_are_not_zero(three_faces):
    rgbs = [FR.photo(640, 480), FR.photo(640, 480)[:, ::-1].copy()]
    images = FR.as_image(*rgbs)
    pixels, info = crops_of(images, locate_batch(three_faces, rgbs, "all"), grow=4, feather=8)
    out = paste(images, 1.0 - pixels, info)
    touched = torch.zeros(images.shape[:3], dtype=torch.bool)
    for c in info.crops:
        touched[c.image_index, c.y:c.y + c.side, c.x:c.x + c.side] |= c.mask > 0
    assert torch.equal(out[~touched], images[~touched]) and (out[touched] != images[touched]).any()
    first = info.crops[0]  # where the mask is 1 the pasted crop is there as it was resized back
    window = out[0, first.y:first.y + first.side, first.x:first.x + first.side]
    full = first.mask == 1
    later = torch.zeros_like(full)
    for c in info.crops[1:3]:  # faces pasted after this one may overlap its window
        later[max(0, c.y - first.y):max(0, c.y + c.side - first.y),
              max(0, c.x - first.x):max(0, c.x + c.side - first.x)] = True
    expected = resize_square(1.0 - pixels[0], first.side)
    assert torch.equal(window[full & ~later], expected[full & ~later])


# --- properties ---------------------------------------------------------------------------------------------------

coordinate = st.floats(-3000, 6000, allow_nan=False)


@given(x1=coordinate, y1=coordinate, w=st.floats(0, 4000), h=st.floats(0, 4000), width=st.integers(1, 5000),
       height=st.integers(1, 5000), context=st.floats(1.0, 8.0))
def test_crop_window_is_inside_the_image_for_any_box(x1, y1, w, h, width, height, context):
    x, y, side = crop_window((x1, y1, x1 + w, y1 + h), height, width, context)
    assert all(isinstance(v, int) for v in (x, y, side))
    assert 1 <= side <= min(width, height) and 0 <= x <= width - side and 0 <= y <= height - side
    longer = max(w, h)
    if context * longer + 1 <= min(width, height) and 0 <= x1 and x1 + w <= width - 1 and 0 <= y1 \
            and y1 + h <= height - 1:  # the window holds the whole box (to the pixel the rounding may take)
        assert x <= x1 + 1 and x1 + w <= x + side + 1 and y <= y1 + 1 and y1 + h <= y + side + 1


@given(size=st.integers(-100, 100_000))
def test_working_size_is_a_multiple_of_16(size):
    side = working_size(size)
    assert side % 16 == 0 and side >= 16 and (abs(side - size) <= 8 or size < 16)


@given(data=st.data(), width=st.integers(1, 48), height=st.integers(1, 48), count=st.integers(1, 3),
       channels=st.sampled_from([1, 3, 4]))
def test_paste_is_exact_wherever_the_mask_is_zero(data, width, height, count, channels):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31)))
    images = torch.rand(2, height, width, channels, generator=gen)
    items = []
    for _ in range(count):
        side = data.draw(st.integers(1, min(width, height)))
        x, y = data.draw(st.integers(0, width - side)), data.draw(st.integers(0, height - side))
        mask = torch.rand(side, side, generator=gen) * (torch.rand(side, side, generator=gen) > 0.5)
        items.append(FaceCrop(data.draw(st.integers(0, 1)), x, y, side, mask))
    crop_side = data.draw(st.sampled_from([16, 32]))
    info = FaceCrops(2, height, width, crop_side, items, None)
    out = paste(images, torch.rand(count, crop_side, crop_side, 3, generator=gen), info)
    touched = torch.zeros(2, height, width, dtype=torch.bool)
    for c in items:
        touched[c.image_index, c.y:c.y + c.side, c.x:c.x + c.side] |= c.mask > 0
    assert out.shape == images.shape and torch.equal(out[~touched], images[~touched])


@given(data=st.data(), grow=st.integers(-6, 6), feather=st.integers(0, 6))
def test_refine_follows_the_distance_rules(data, grow, feather):
    rows, cols = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30))
    bits = data.draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    mask = np.array(bits, bool).reshape(rows, cols)
    soft = refine(mask, grow, feather)
    grown = grow_mask(mask, grow)
    if grow >= 0:
        assert np.array_equal(grown, edt_outside(mask) <= grow if mask.any() else mask)
    if grown.any():
        np.testing.assert_allclose(soft, np.clip(1 - edt_outside(grown) / (feather + 1), 0, 1), atol=1e-6)
    else:
        assert not soft.any()
