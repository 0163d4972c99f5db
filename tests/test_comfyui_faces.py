"""Face mask, Crop face and Paste face inside a real ComfyUI (COMFYUI_PATH) with the generated models: the
interface the workflows are saved against, masks and crops on one and several faces, batches, no face with each
on_no_face, the pack's errors, and crop -> VAE encode -> KSampler with Apply PuLID-Flux -> VAE decode -> paste,
after which every pixel outside the face mask is bit-identical to the input."""
import logging
import math
import os

import numpy as np
import pytest
import torch

from support import encoder_fakes as fakes
from support import face_regions as FR
from support.comfy_nodes_env import load_env
from support.server_harness import TEST_VAE

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def env(tmp_path_factory, comfy_models):
    root = tmp_path_factory.mktemp("comfy_faces")
    e = load_env(root, comfy_models, lambda folder_paths: folder_paths.add_model_folder_path(
        "vae", os.path.join(comfy_models["root"], "vae"), is_default=True))
    models = e.pack.comfy_layer.models
    three = root / "three" / "insightface"
    fakes.write_antelopev2(str(three / "models" / "antelopev2"), faces=fakes.THREE_FACES)
    e.three_faces = models.FaceAnalysisModel(str(three), "CPU", models.load_face_analysis(str(three), "CPU"))
    e.vae = e.comfy_nodes.VAELoader().load_vae(TEST_VAE)[0]
    e.layer = e.pack.comfy_layer.faces
    return e


def face_mask(env, image, analysis=None, faces="chosen", order="largest", index=0, shape="ellipse", grow=0,
              feather=0, **optional):
    return env.N["PulidFluxFaceMask"]().mask(image, analysis or env.faces, faces, order, index, shape, grow, feather,
                                             **optional)


def crop_face(env, image, analysis=None, faces="chosen", order="largest", index=0, context=2.0, size=256,
              shape="ellipse", grow=0, feather=0, **optional):
    return env.N["PulidFluxCropFace"]().crop(image, analysis or env.faces, faces, order, index, context, size, shape,
                                             grow, feather, **optional)


def paste_face(env, image, crops, info, mask=None):
    return env.N["PulidFluxPasteFace"]().paste(image, crops, info, mask)[0]


def group(width=640, height=480):
    """A batch of two different photos of one size."""
    return FR.as_image(FR.photo(width, height), FR.photo(width, height)[:, ::-1].copy())


# --- the interface (fixed by the spec: saved UI workflows are positional) -----------------------------------------

def test_the_three_nodes_interface(env):
    N, display = env.N, env.pack.NODE_DISPLAY_NAME_MAPPINGS
    expected = {
        "PulidFluxFaceMask": ("Face mask (PuLID-Flux)", ["image", "face_analysis", "faces", "face_order",
                                                         "face_index", "shape", "grow", "feather"],
                              ["include_hair", "on_no_face"], ("MASK", "INT"), ("mask", "face_count")),
        "PulidFluxCropFace": ("Crop face (PuLID-Flux)",
                              ["image", "face_analysis", "faces", "face_order", "face_index", "context", "size",
                               "shape", "grow", "feather"], ["include_hair", "on_no_face"],
                              ("IMAGE", "MASK", "PULIDFLUX_FACE_CROP"), ("crops", "crop_masks", "crop_info")),
        "PulidFluxPasteFace": ("Paste face (PuLID-Flux)", ["image", "crops", "crop_info"], ["mask"], ("IMAGE",),
                               ("image",)),
    }
    for name, (title, required, optional, types, names) in expected.items():
        cls, inputs = N[name], N[name].INPUT_TYPES()
        assert display[name] == title and cls.CATEGORY == "pulid_flux/faces" and cls.DESCRIPTION
        assert list(inputs["required"]) == required and list(inputs["optional"]) == optional
        assert cls.RETURN_TYPES == types and cls.RETURN_NAMES == names and len(cls.OUTPUT_TOOLTIPS) == len(types)
        assert all(spec[1].get("tooltip") for part in inputs.values() for spec in part.values())
    mask_in, crop_in = N["PulidFluxFaceMask"].INPUT_TYPES(), N["PulidFluxCropFace"].INPUT_TYPES()
    assert mask_in["required"]["faces"][0] == ["chosen", "all"]
    assert mask_in["required"]["faces"][1]["default"] == "chosen"
    assert mask_in["required"]["shape"][0] == ["box", "ellipse", "parsing"]
    assert mask_in["required"]["shape"][1]["default"] == "ellipse"
    assert {k: mask_in["required"]["grow"][1][k] for k in ("default", "min", "max")} == {"default": 0, "min": -512,
                                                                                           "max": 1024}
    assert {k: mask_in["required"]["feather"][1][k] for k in ("default", "min", "max")} == {"default": 0, "min": 0,
                                                                                              "max": 1024}
    assert mask_in["optional"]["include_hair"][1]["default"] is False
    assert mask_in["optional"]["on_no_face"][0] == ["error", "empty mask"]
    assert crop_in["optional"]["on_no_face"][0] == ["error", "skip"]
    assert {k: crop_in["required"]["context"][1][k] for k in ("default", "min", "max", "step")} == {
        "default": 2.0, "min": 1.0, "max": 8.0, "step": 0.05}
    assert {k: crop_in["required"]["size"][1][k] for k in ("default", "min", "max", "step")} == {
        "default": 1024, "min": 256, "max": 4096, "step": 16}
    assert mask_in["required"]["face_order"] == env.N["ApplyPulidFlux"].INPUT_TYPES()["optional"]["face_order"]


# --- Face mask ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height", [(512, 512), (640, 480), (480, 800)])
def test_face_mask_sits_on_the_face_with_exact_grow_and_feather(env, width, height):
    image = FR.as_image(FR.photo(width, height))
    box = FR.expected_box(fakes.ONE_FACE[0], width, height)
    mask, count = face_mask(env, image, shape="box", grow=5, feather=3)
    assert mask.shape == (1, height, width) and mask.dtype == torch.float32 and count == 1
    (face,) = env.pack.encoders.regions.find_faces(env.faces.analysis, FR.photo(width, height))
    np.testing.assert_allclose(face.bbox, box, atol=0.05)  # the generated detector's known box
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    rows, cols = np.nonzero(mask[0].numpy() == 1.0)  # the box's pixels, grown by exactly 5
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (
        math.ceil(x1) - 5, math.floor(x2) + 5, math.ceil(y1) - 5, math.floor(y2) + 5)
    centre_row = int(round((box[1] + box[3]) / 2))
    ramp = mask[0, centre_row, cols.max() + 1:cols.max() + 5].tolist()
    np.testing.assert_allclose(ramp, [0.75, 0.5, 0.25, 0.0], atol=1e-6)
    ellipse, _ = face_mask(env, image)
    ys, xs = np.nonzero(ellipse[0].numpy())
    assert abs(xs.mean() - (box[0] + box[2]) / 2) < 1 and abs(ys.mean() - (box[1] + box[3]) / 2) < 1
    assert set(np.unique(ellipse.numpy())) == {0.0, 1.0}


def test_parsing_mask_through_the_packs_parser_lies_inside_the_grown_box(env):
    from encoders.regions import box_mask, limit_box  # the pack's own copy is the same code

    mask, count = face_mask(env, env.image, shape="parsing", include_hair=True)
    box = FR.expected_box(fakes.ONE_FACE[0], 512, 512)
    assert count == 1 and mask[0].any()
    assert not (mask[0].numpy() > 0)[~box_mask(limit_box(box, True), 512, 512)].any()


def test_all_faces_of_a_batch_in_one_mask_each(env):
    image = group()
    mask, count = face_mask(env, image, env.three_faces, faces="all", shape="box")
    assert count == 6 and mask.shape == (2, 480, 640)
    union = np.zeros((480, 640), bool)
    for face in fakes.THREE_FACES:  # the fake detector reports the same boxes on both photos
        x1, y1, x2, y2 = FR.expected_box(face, 640, 480)
        union[math.ceil(y1) + 1:math.floor(y2), math.ceil(x1) + 1:math.floor(x2)] = True
        assert mask[:, math.ceil(y1) + 1, math.ceil(x1) + 1].tolist() == [1.0, 1.0]
    assert (mask.numpy() == 1.0)[:, union].all() and mask.sum() < 2 * (union.sum() + 2 * 480 + 2 * 640)
    chosen, count = face_mask(env, image, env.three_faces, faces="chosen", order="left-right", index=2, shape="box")
    x1, y1, x2, y2 = FR.expected_box(fakes.THREE_FACES[2], 640, 480)  # the rightmost face
    assert count == 6 and chosen[:, :, : int(x1)].sum() == 0 and chosen[:, int(y1) + 2, int(x1) + 2].tolist() == [1, 1]


def test_no_face_with_each_on_no_face(env, caplog):
    image = torch.cat([env.image, torch.zeros_like(env.image)])
    with pytest.raises(env.layer.NoFaceError, match=r"image 2 of 2: no face detected.*on_no_face to 'empty mask'"):
        face_mask(env, image)
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        mask, count = face_mask(env, image, on_no_face="empty mask")
    assert count == 1 and mask[0].any() and not mask[1].any()
    assert len([r for r in caplog.records if "no face" in r.getMessage()]) == 1
    with pytest.raises(env.layer.NoFaceError, match=r"image 1 of 1: face index 3 requested"):
        face_mask(env, env.image, index=3)


def test_face_mask_is_accepted_as_applys_attn_mask(env):
    from support.comfy_nodes_env import apply, sample

    mask, _ = face_mask(env, env.image, feather=8)
    plain, unmasked = sample(env, env.model), sample(env, apply(env)[0])
    masked = sample(env, apply(env, attn_mask=mask)[0])
    assert masked.shape == plain.shape and torch.isfinite(masked).all()
    assert not torch.equal(masked, plain) and not torch.equal(masked, unmasked)


# --- Crop face and Paste face -------------------------------------------------------------------------------------

def test_crop_then_paste_with_nothing_done_is_bit_identical(env):
    image = group()
    crops, crop_masks, info = crop_face(env, image, env.three_faces, faces="all", grow=3, feather=6)
    assert crops.shape == (6, 256, 256, 3) and crop_masks.shape == (6, 256, 256)
    assert [c.image_index for c in info.crops] == [0, 0, 0, 1, 1, 1]
    for c in info.crops:
        assert 0 <= c.x <= 640 - c.side and 0 <= c.y <= 480 - c.side and c.mask.shape == (c.side, c.side)
    assert torch.equal(paste_face(env, image, crops, info), image)
    assert torch.equal(paste_face(env, image, crops.clone(), info, crop_masks), image)


def test_paste_changes_only_where_the_mask_is_not_zero(env):
    image = group()
    crops, crop_masks, info = crop_face(env, image, env.three_faces, faces="all", feather=10)
    out = paste_face(env, image, 1.0 - crops, info)
    touched = torch.zeros(image.shape[:3], dtype=torch.bool)
    for c in info.crops:
        touched[c.image_index, c.y:c.y + c.side, c.x:c.x + c.side] |= c.mask > 0
    assert torch.equal(out[~touched], image[~touched]) and (out[touched] != image[touched]).any()
    only_first = torch.zeros_like(crop_masks)
    only_first[0] = 1.0  # a replacement mask: the whole first window, nothing of the others
    out = paste_face(env, image, 1.0 - crops, info, only_first)
    first = info.crops[0]
    window = torch.zeros(image.shape[:3], dtype=torch.bool)
    window[0, first.y:first.y + first.side, first.x:first.x + first.side] = True
    assert torch.equal(out[~window], image[~window]) and (out[window] != image[window]).all()


def test_crop_skip_and_a_batch_without_any_face(env):
    image = torch.cat([env.image, torch.zeros_like(env.image)])
    with pytest.raises(env.layer.NoFaceError, match=r"Crop face: .*image 2 of 2.*'skip'"):
        crop_face(env, image)
    crops, masks, info = crop_face(env, image, on_no_face="skip")
    assert crops.shape[0] == 1 and [c.image_index for c in info.crops] == [0]
    out = paste_face(env, image, 1.0 - crops, info)
    assert torch.equal(out[1], image[1]) and not torch.equal(out[0], image[0])
    black = torch.zeros(2, 300, 200, 3)
    crops, masks, info = crop_face(env, black, on_no_face="skip")
    assert crops.shape == (1, 256, 256, 3) and not masks.any()
    assert torch.equal(paste_face(env, black, 1.0 - crops, info), black)


def test_bad_inputs_get_the_packs_clear_errors(env):
    InputError = env.pack.pulid_flux.inputs.InputError
    nan = env.image.clone()
    nan[0, 5, 5, 0] = float("nan")
    for node in (face_mask, crop_face):
        with pytest.raises(InputError, match="image holds NaN"):
            node(env, nan)
        with pytest.raises(InputError, match="empty batch"):
            node(env, env.image[:0])
    crops, masks, info = crop_face(env, env.image)
    with pytest.raises(InputError, match=r"crop_info was made from 1 image\(s\) of 512x512 px.*Fix: connect the image"):
        paste_face(env, FR.as_image(FR.photo(640, 480)), crops, info)
    with pytest.raises(InputError, match=r"crops holds 2 image\(s\), but crop_info describes 1 crop"):
        paste_face(env, env.image, torch.cat([crops, crops]), info)
    with pytest.raises(InputError, match=r"mask is 100x100 px.*256x256"):
        paste_face(env, env.image, crops, info, torch.ones(1, 100, 100))
    with pytest.raises(InputError, match=r"mask holds 3 masks for 1 crops"):
        paste_face(env, env.image, crops, info, torch.ones(3, 256, 256))
    with pytest.raises(InputError, match="crops holds NaN"):
        paste_face(env, env.image, crops * float("nan"), info)
    with pytest.raises(InputError, match="crop_info: expected the crop_info output of Crop face"):
        paste_face(env, env.image, crops, {"x": 0})
    with pytest.raises(InputError, match="context must be a number from 1 to 8"):
        crop_face(env, env.image, context=float("nan"))
    with pytest.raises(InputError, match="grow must be a whole number"):
        face_mask(env, env.image, grow=2.5)
    with pytest.raises(InputError, match="size must be a whole number from 256 to 4096"):  # the widget's range
        crop_face(env, env.image, size=128)


def test_size_is_rounded_to_the_flux_grid(env, caplog):
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        crops, masks, info = crop_face(env, env.image, size=300)
    assert crops.shape == (1, 304, 304, 3) and info.size == 304 and "multiple of 16" in caplog.text


# --- after a real sampling pass -----------------------------------------------------------------------------------

def test_pixels_outside_the_mask_are_bit_identical_after_sampling(env):
    """Crop face -> VAE encode -> KSampler (Apply PuLID-Flux, denoise 0.6) -> VAE decode -> Paste face."""
    from support.comfy_nodes_env import apply

    image = env.image
    crops, crop_masks, info = crop_face(env, image, context=1.6, size=256, shape="ellipse", grow=4, feather=12)
    latent = env.comfy_nodes.VAEEncode().encode(env.vae, crops)[0]
    model = apply(env)[0]
    sampled = env.comfy_nodes.common_ksampler(model, 7, 2, 1.0, "euler", "simple", env.positive, env.negative, latent,
                                              denoise=0.6)[0]
    decoded = env.comfy_nodes.VAEDecode().decode(env.vae, sampled)[0]
    assert decoded.shape == crops.shape and not torch.equal(decoded, crops)
    out = paste_face(env, image, decoded, info)
    c = info.crops[0]
    outside = torch.ones(image.shape[:3], dtype=torch.bool)
    outside[0, c.y:c.y + c.side, c.x:c.x + c.side] = c.mask == 0
    assert outside.sum() > image[0, :, :, 0].numel() // 2
    assert torch.equal(out[outside], image[outside])
    assert (out[~outside] != image[~outside]).any()
