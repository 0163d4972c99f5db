"""Tier (b): bad node inputs inside a real ComfyUI (COMFYUI_PATH). Each is refused in the node, before any sampling,
with a message naming the input and the fix, and the model stays unpatched; or it has a documented handling.
Uses the same env fixture as test_comfyui_nodes (support/comfy_nodes_env.py): the session's one set of model files."""
import logging
import os

import pytest
import torch

from support.comfy_nodes_env import apply, env, sample  # noqa: F401 - env: the shared module fixture

pytestmark = pytest.mark.comfyui
NAN, INF = float("nan"), float("inf")


def node(env, name):
    return env.pack.NODE_CLASS_MAPPINGS[name]()


@pytest.fixture(scope="module")
def identity(env):
    return node(env, "PulidFluxEncodeIdentity").encode(env.pulid, env.eva, env.faces, env.image)["result"][0]


def apply_identity(env, identity, **kw):
    return node(env, "PulidFluxApplyIdentity").apply(env.model, env.pulid, identity, 1.0, 0.0, 1.0, **kw)[0]


def unpatched(model) -> bool:
    return "patches_replace" not in model.model_options["transformer_options"]


def _mask(fill, shape=(1, 128, 128)):
    mask = torch.ones(shape)
    mask.view(-1, *shape[-2:])[0, 5, 7] = fill
    return mask


@pytest.mark.parametrize("mask,message", [
    (torch.zeros(0, 128, 128), "attn_mask is an empty batch (0 masks): the node that feeds it produced no mask."),
    (_mask(NAN), "attn_mask holds NaN values (the mask): the node that feeds it produced invalid numbers"),
    (_mask(INF, (2, 64, 64)), "attn_mask holds infinite values (mask 1 of 2):"),
    (torch.ones(1, 1, 64, 64), "attn_mask: expected a MASK [batch, height, width] or [height, width], got shape"),
], ids=["empty-batch", "nan", "inf", "4d"])
def test_bad_masks_are_refused_at_apply_by_both_apply_nodes(env, identity, monkeypatch, mask, message):
    """Before: an empty mask batch reached the sampler (ZeroDivisionError there), a NaN mask silently turned the
    identity off, a 4-D mask failed inside a block patch."""
    encoded = []
    monkeypatch.setattr(env.pack.comfy_layer.encoding, "embed_references", lambda *a, **k: encoded.append(1))
    with pytest.raises(ValueError) as e:
        apply(env, attn_mask=mask)
    assert str(e.value).startswith(message)
    with pytest.raises(ValueError) as e:
        apply_identity(env, identity, attn_mask=mask)
    assert str(e.value).startswith(message)
    assert encoded == [] and unpatched(env.model)  # refused before encoding, nothing patched


def test_mask_values_outside_0_1_act_as_if_clipped_first(env, identity):
    """Soft values above 1 used to be averaged over each token before clipping, so a 2.0 speck weighed double."""
    soft = torch.rand(1, 128, 128, generator=torch.Generator().manual_seed(5)) * 2.0
    out = sample(env, apply_identity(env, identity, attn_mask=soft))
    assert torch.equal(out, sample(env, apply_identity(env, identity, attn_mask=soft.clamp(0, 1))))
    assert torch.equal(out, sample(env, apply(env, attn_mask=soft)[0]))  # both Apply nodes alike


@pytest.mark.parametrize("fill,message", [(NAN, "image holds NaN values (the image)"),
                                          (INF, "image holds infinite values (the image)"),
                                          (255.0, "image: pixel values run from")], ids=["nan", "inf", "0-255"])
def test_bad_reference_pixels_are_refused_by_apply_and_encode(env, fill, message):
    """Before: an all-NaN photo was read as black ('no usable face'), a 0..255 photo as white."""
    image = env.image.clone()
    image[:, :32] = fill
    if fill == 255.0:
        image = image * 255.0
    for run in (lambda: apply(env, image=image, on_no_face="return model unchanged"),
                lambda: node(env, "PulidFluxEncodeIdentity").encode(env.pulid, env.eva, env.faces, image)):
        with pytest.raises(ValueError) as e:
            run()
        assert str(e.value).startswith(message)
    assert unpatched(env.model)


def test_empty_image_batch_says_the_batch_is_empty(env, caplog):
    """Before: 'no usable face in any reference image ()'."""
    empty = torch.zeros(0, 64, 64, 3)
    expected = "image is an empty batch (0 images): the node that feeds it produced no image. Connect at least one image."
    with pytest.raises(ValueError) as e:
        apply(env, image=empty)
    assert str(e.value) == expected
    with pytest.raises(ValueError) as e:
        node(env, "PulidFluxEncodeIdentity").encode(env.pulid, env.eva, env.faces, empty)
    assert str(e.value) == expected
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):  # no photo with a face: on_no_face applies
        assert apply(env, image=empty, on_no_face="return model unchanged")[0] is env.model
    assert [r.getMessage() for r in caplog.records if "empty batch" in r.getMessage()] == [
        f"PuLID-Flux: {expected} on_no_face is 'return model unchanged': the model is returned without the identity."]


def test_face_similarity_checks_images_and_reference(env):
    score = node(env, "PulidFluxFaceSimilarity").score
    for kwargs, message in (
            (dict(images=torch.zeros(0, 64, 64, 3), reference=env.image), "images is an empty batch (0 images)"),
            (dict(images=env.image, reference=torch.zeros(0, 64, 64, 3)), "reference is an empty batch (0 images)"),
            (dict(images=torch.full((2, 64, 64, 3), NAN), reference=env.image), "images holds NaN values (images 1, 2"),
            (dict(images=env.image, reference=env.image * NAN), "reference holds NaN values (the image)"),
            # before: every ranking score NaN, and best_index/best_image silently image 1
            (dict(images=env.image, reference=env.image, copy_penalty=NAN), "copy_penalty must be a finite number"),
            (dict(images=env.image, reference=env.image, copy_penalty=-INF), "copy_penalty must be a finite number"),
            (dict(images=env.image, reference=env.image, copy_penalty=-0.5), "copy_penalty must be 0 or more")):
        with pytest.raises(ValueError) as e:
            score(env.faces, **kwargs)
        assert str(e.value).startswith(message)


def test_a_nan_curation_threshold_is_refused_only_where_curation_reads_it(env):
    """Before: min_consistency = NaN stopped Apply even with curate 'off', where no threshold chooses anything."""
    off = apply(env, curate="off", min_consistency=NAN, max_yaw=INF)[0]
    assert torch.equal(sample(env, off), sample(env, apply(env)[0]))
    for curate in ("warn", "drop", "weight"):
        for run in (lambda: apply(env, curate=curate, min_consistency=NAN),
                    lambda: node(env, "PulidFluxEncodeIdentity").encode(env.pulid, env.eva, env.faces, env.image,
                                                                        curate=curate, min_consistency=NAN)):
            with pytest.raises(ValueError, match="curation threshold min_consistency must be a number, got nan"):
                run()
    assert unpatched(env.model)


def test_rgba_and_gray_images_are_read_as_rgb(env):
    """Documented handling: alpha is dropped, one gray channel is repeated."""
    score = node(env, "PulidFluxFaceSimilarity").score
    rgb = env.image
    rgba = torch.cat([rgb, torch.rand(*rgb.shape[:3], 1)], dim=-1)
    same = score(env.faces, rgba, reference=rgb)["result"][0]
    assert same == score(env.faces, rgb, reference=rgb)["result"][0] and same[0] > 0.99
    gray = rgb.mean(-1, keepdim=True)
    assert score(env.faces, gray, reference=gray.repeat(1, 1, 1, 3))["result"][0][0] > 0.99


# --- model files -------------------------------------------------------------------------------------------------

@pytest.fixture
def eva_folders(env, tmp_path, monkeypatch):
    """Empty clip_vision and pulid EVA folders of our own; text_encoders keeps the env's real EVA-CLIP file. The
    EVA loader is replaced by a recorder: these tests are about which file is tried, not about EVA itself."""
    import folder_paths

    folders = {name: tmp_path / name for name in ("clip_vision", "pulid")}
    for name, path in folders.items():
        path.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(path)], set(folder_paths.supported_pt_extensions)))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    loaded = []
    monkeypatch.setattr(env.pack.comfy_layer.models, "load_eva_clip",
                        lambda path, *a, **k: (loaded.append(os.fspath(path)), torch.nn.Linear(1, 1))[1])
    return folders, loaded


def test_eva_auto_skips_a_dangling_link_with_a_warning(env, eva_folders, tmp_path, caplog):
    """Before: TypeError (expected str, bytes or os.PathLike object, not NoneType), even with a good file present."""
    layer = env.pack.comfy_layer
    folders, loaded = eva_folders
    (folders["clip_vision"] / "eva02_gone.pt").symlink_to(tmp_path / "deleted.pt")
    assert layer.folders.eva_candidates()[0] == "clip_vision/eva02_gone.pt"
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        chosen = node(env, "PulidFluxEvaClipLoader").load_eva_clip("auto")[0]
    assert chosen.path == env.eva.path and loaded == [env.eva.path]
    warnings = [r.getMessage() for r in caplog.records if "skipping EVA-CLIP" in r.getMessage()]
    assert warnings == ["PuLID-Flux: skipping EVA-CLIP candidate clip_vision/eva02_gone.pt: eva02_gone.pt: a symbolic "
                        f"link to a file that does not exist ({tmp_path / 'deleted.pt'})."]
    with pytest.raises(layer.models.EncoderModelError) as e:  # chosen by name: the same reason, and the fix
        node(env, "PulidFluxEvaClipLoader").load_eva_clip("clip_vision/eva02_gone.pt")
    assert "a symbolic link to a file that does not exist" in str(e.value) and "Fix: restore the file" in str(e.value)


def test_eva_is_looked_for_in_clip_vision_first_then_pulid_then_clip(env, eva_folders):
    layer = env.pack.comfy_layer
    folders, loaded = eva_folders
    for name in ("pulid", "clip_vision"):
        (folders[name] / "eva02_clip_l_336.safetensors").symlink_to(env.eva.path)
    names = layer.folders.eva_candidates()
    assert names[:2] == ["clip_vision/eva02_clip_l_336.safetensors", "pulid/eva02_clip_l_336.safetensors"]
    assert names[2].startswith("text_encoders/")  # models/clip, where older instructions put it: still found
    assert layer.models.EvaModel.load().path == str(folders["clip_vision"] / "eva02_clip_l_336.safetensors")


def test_eva_errors_name_clip_vision_and_every_broken_candidate(env, eva_folders, tmp_path, monkeypatch):
    layer = env.pack.comfy_layer
    folders, _ = eva_folders
    with monkeypatch.context() as patch, pytest.raises(FileNotFoundError) as e:
        patch.setattr(layer.folders, "eva_candidates", lambda: [])
        layer.models.EvaModel.load()
    assert f"in {folders['clip_vision']}, {folders['pulid']}, " in str(e.value)
    assert "put it in models/clip_vision/" in str(e.value)
    (folders["clip_vision"] / "eva02_gone.pt").symlink_to(tmp_path / "deleted.pt")
    (folders["pulid"] / "eva02_broken.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(layer.folders, "find_eva_files", lambda choice: [
        ("clip_vision/eva02_gone.pt", None), ("pulid/eva02_broken.pt", str(folders["pulid"] / "eva02_broken.pt"))])
    monkeypatch.setattr(layer.models, "load_eva_clip", env.pack.encoders.load_eva_clip)
    with pytest.raises(layer.models.EncoderModelError) as e:
        layer.models.EvaModel.load()
    lines = str(e.value).splitlines()
    assert lines[0] == "None of the 2 EVA-CLIP files loads:"
    assert lines[1].startswith("  - clip_vision/eva02_gone.pt: eva02_gone.pt: a symbolic link to a file that does")
    assert lines[2].startswith("  - pulid/eva02_broken.pt: eva02_broken.pt: ") and len(lines) == 4  # + the hint


def test_damaged_antelopev2_file_is_named_by_load_insightface(env, tmp_path, monkeypatch):
    from support import encoder_fakes

    layer = env.pack.comfy_layer
    folder = encoder_fakes.write_antelopev2(str(tmp_path / "insightface" / "models" / "antelopev2"))
    path = os.path.join(folder, "glintr100.onnx")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    monkeypatch.setattr(layer.folders, "folders_of", lambda name: [str(tmp_path / "insightface")])
    with pytest.raises(layer.models.EncoderModelError) as e:
        node(env, "PulidFluxInsightFaceLoader").load_insightface("CPU")
    assert str(e.value).startswith(f"glintr100.onnx in {folder} is damaged: onnxruntime cannot read it (")
    assert "Fix: download it again" in str(e.value)
