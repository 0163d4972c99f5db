"""Tier (b): the nodes inside a real ComfyUI (COMFYUI_PATH), sampling a full-width random Flux on the CPU."""

import logging

import pytest
import torch

from support import comfy_harness as H
from support import tolerance as tol
from support.comfy_nodes_env import apply, dit_patch, env, sample  # noqa: F401 - env: the module fixture

pytestmark = pytest.mark.comfyui


def test_node_mappings_keep_the_original_names_and_input_order(env):
    n = env.pack.NODE_CLASS_MAPPINGS
    assert set(n) >= {"PulidFluxModelLoader", "PulidFluxInsightFaceLoader", "PulidFluxEvaClipLoader", "ApplyPulidFlux"}
    req = n["ApplyPulidFlux"].INPUT_TYPES()["required"]
    assert list(req) == ["model", "pulid_flux", "eva_clip", "face_analysis", "image", "weight", "start_at", "end_at"]
    assert list(n["ApplyPulidFlux"].INPUT_TYPES()["optional"])[0] == "attn_mask"
    assert n["ApplyPulidFlux"].RETURN_TYPES[0] == "MODEL"


def test_patch_changes_output_and_unpatched_model_stays_bit_identical(env):
    before = sample(env, env.model)
    patched, preview = apply(env)
    assert preview.shape == (1, 512, 1024, 3) and 0 <= preview.min() and preview.max() <= 1
    on = sample(env, patched)
    assert (on - before).abs().max() > 1e-4
    stronger = sample(env, apply(env, weight=2.0)[0])
    assert (stronger - on).abs().max() > 1e-4
    after = sample(env, env.model)
    assert torch.equal(after, before)
    assert "patches_replace" not in env.model.model_options["transformer_options"]
    # weight 0: bit-identical to the plain model
    assert torch.equal(sample(env, apply(env, weight=0.0)[0]), before)


def test_embedding_is_cached_across_weight_changes(env, monkeypatch):
    apply(env, weight=1.0)
    calls = []
    monkeypatch.setattr(env.pack.comfy_layer.encoding, "FaceEncoders", lambda *a, **k: calls.append(1))
    apply(env, weight=0.3, start_at=0.2, end_at=0.9)
    assert calls == []


@pytest.mark.parametrize("inference", [False, True], ids=["tensor", "inference_tensor"])
def test_cache_key_follows_content_not_identity(env, monkeypatch, inference):
    """ComfyUI runs nodes under torch.inference_mode(): LoadImage's output has no version counter."""
    with torch.inference_mode(inference):
        image = env.image.clone()
    first = apply(env, image=image)[1]
    with torch.inference_mode(inference):
        image[:, :64] = 0.25 if inference else 0.5  # in place: same tensor object, content not seen before
    calls = []
    real = env.pack.comfy_layer.encoding.FaceEncoders
    monkeypatch.setattr(env.pack.comfy_layer.encoding, "FaceEncoders", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    apply(env, image=image)
    assert calls == [1]
    apply(env, image=env.image.clone())  # equal content, new tensor: cached
    assert calls == [1] and first.shape == (1, 512, 1024, 3)


def test_chained_apply_nodes_and_a_foreign_patch_all_act(env):
    seen = []

    def foreign(args, extra):
        seen.append(1)
        return extra["original_block"](args)

    base = env.model.clone()
    base.set_model_patch_replace(foreign, "dit", "double_block", 0)
    one = apply(env, model=base)[0]
    two = apply(env, model=one, weight=0.5)[0]
    out_two = sample(env, two)
    assert seen  # the foreign patch still ran
    p = dit_patch(two)
    assert p.previous is dit_patch(one) and p.previous.previous is foreign
    assert (out_two - sample(env, one)).abs().max() > 1e-4


def test_sigma_window_follows_model_sampling_placed_after_apply(env):
    patched = apply(env, start_at=0.3, end_at=0.7)[0]
    app = dit_patch(patched).app
    record = []
    orig = app._window_open
    app._window_open = lambda sigma, window: (lambda r: (record.append((float(sigma.reshape(-1)[0]), r)), r)[1])(
        orig(sigma, window))
    try:
        import comfy_extras.nodes_model_advanced as adv
        shifted = adv.ModelSamplingFlux().patch(patched, 3.0, 0.5, 1024, 1024)[0]
        ms = shifted.get_model_object("model_sampling")
        sample(env, shifted, steps=6)
    finally:
        del app._window_open
    hi, lo = ms.percent_to_sigma(0.3), ms.percent_to_sigma(0.7)
    sigmas = sorted({s for s, _ in record}, reverse=True)
    assert len(sigmas) == 6 and len(record) == 6  # decided once per model call, not per block
    for s, active in record:
        assert active == (lo <= s <= hi), (s, lo, hi)
    assert any(a for _, a in record) and not all(a for _, a in record)
    # the window was not the one of the unshifted schedule
    base = env.model.get_model_object("model_sampling")
    assert abs(base.percent_to_sigma(0.3) - hi) > 1e-3


def test_cfg_uncond_id_uses_the_uncond_embedding_on_the_negative_only(env):
    patched = apply(env, uncond="uncond_id")[0]
    app = dit_patch(patched).app
    layouts = []
    orig = app._batch_layout
    app._batch_layout = lambda batch, cou: (lambda r: (layouts.append((list(cou or []), r)), r)[1])(orig(batch, cou))
    try:
        out = sample(env, patched, cfg=3.0)
    finally:
        del app._batch_layout
    assert layouts
    for cou, layout in layouts:
        per = len(layout) // len(cou)
        assert layout == [("cond" if c == 0 else "uncond") for c in cou for _ in range(per)]
    assert any(1 in cou for cou, _ in layouts)
    same = sample(env, apply(env, uncond="same")[0], cfg=3.0)
    none = sample(env, apply(env, uncond="none")[0], cfg=3.0)
    assert (out - same).abs().max() > 1e-5 and (out - none).abs().max() > 1e-5


def test_mask_limits_the_update_and_two_identities_compose(env, monkeypatch):
    mask_left = torch.zeros(1, 128, 128)
    mask_left[..., :64] = 1
    patch_mod = env.pack.pulid_flux.patch
    deltas = []
    real = patch_mod.PulidApplication._update

    def spy(self, region, *args):
        before = region.clone()
        real(self, region, *args)
        deltas.append((region - before).abs().amax(-1))

    monkeypatch.setattr(patch_mod.PulidApplication, "_update", spy)
    left = apply(env, attn_mask=mask_left)[0]
    out_left = sample(env, left)
    assert deltas
    for delta in deltas:
        grid = delta.reshape(-1, 8, 8)  # 16x16 latent -> 8x8 tokens
        assert grid[..., 4:].max() == 0 and grid[..., :4].min() > 0
    monkeypatch.setattr(patch_mod.PulidApplication, "_update", real)
    both = apply(env, model=left, attn_mask=1 - mask_left)[0]
    assert (sample(env, both) - out_left).abs().max() > 1e-5


def test_mask_covering_no_token_samples_like_the_plain_model(env, caplog):
    """An all-black mask, and a white region smaller than a token, crashed KSampler ('cannot reshape tensor of 0
    elements'). Now: black adds nothing (bit-identical, one log line for the run); a small region counts."""
    plain = sample(env, env.model)
    with caplog.at_level(logging.WARNING):
        black = sample(env, apply(env, attn_mask=torch.zeros(1, 128, 128))[0], steps=3)
    assert torch.equal(black, sample(env, env.model, steps=3))
    assert sum("covers no part of the image" in r.getMessage() for r in caplog.records) == 1
    speck = torch.zeros(1, 128, 128)
    speck[:, 0:4, 96:100] = 1  # 4x4 px between the points bilinear sampling reads (a token is 16x16 px here)
    out = sample(env, apply(env, attn_mask=speck)[0])
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-6


def test_kontext_reference_tokens_are_untouched(env, monkeypatch):
    patch_mod = env.pack.pulid_flux.patch
    sizes = []
    real = patch_mod.add_id_attention
    monkeypatch.setattr(patch_mod, "add_id_attention", lambda img, *a, **k: (sizes.append(img.shape[1]), real(img, *a, **k))[1])
    positive = [[env.positive[0][0], dict(env.positive[0][1], reference_latents=[torch.randn(1, 16, 8, 8)])]]
    sample(env, apply(env)[0], positive=positive)
    assert sizes and set(sizes) == {64}  # 8x8 generated tokens; the 16 reference tokens are excluded


def test_clones_do_not_copy_pulid_weights(env):
    patched = apply(env)[0]
    clones = [patched.clone()]
    for _ in range(2):
        clones.append(clones[-1].clone())
    for c in clones:
        p = dit_patch(c, ("single_block", 0))
        assert p is dit_patch(patched, ("single_block", 0))
        assert p.app.ca is env.pulid.model.pulid_ca
        assert p.app.id_tokens.data_ptr() == dit_patch(patched).app.id_tokens.data_ptr()
    # the CA weights load with the diffusion model through ComfyUI's model management
    assert env.pulid.ca in patched.model_patches_models()


def test_no_face_errors_or_returns_model_unchanged(env):
    black = torch.zeros(1, 256, 256, 3)
    node = env.pack.nodes.ApplyPulidFlux()
    with pytest.raises(ValueError, match="no usable face.*image 1"):
        node.apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, black, 1.0, 0.0, 1.0)
    model, _ = node.apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, black, 1.0, 0.0, 1.0,
                                     on_no_face="return model unchanged")
    assert model is env.model


def test_no_face_messages_fit_the_chosen_on_no_face(env, caplog):
    black = torch.zeros(1, 256, 256, 3)
    node = env.pack.nodes.ApplyPulidFlux()
    with pytest.raises(ValueError) as e:
        node.apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, black, 1.0, 0.0, 1.0)
    assert "set on_no_face to 'return model unchanged'" in str(e.value)  # the way out, for who chose 'error'
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        node.apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, black, 1.0, 0.0, 1.0,
                              on_no_face="return model unchanged")
    lines = [r.getMessage() for r in caplog.records if "no usable face" in r.getMessage()]
    assert len(lines) == 1
    assert "image 1: no face detected" in lines[0] and "set on_no_face" not in lines[0]
    assert lines[0].endswith("on_no_face is 'return model unchanged': the model is returned without the identity.")


@pytest.mark.parametrize("height,width", [(2, 4000), (4000, 2), (1, 1), (1, 5000)])
def test_extreme_aspect_reference_is_no_usable_face_not_an_opencv_crash(env, height, width):
    image = torch.full((1, height, width, 3), 0.5)
    with pytest.raises(env.pack.comfy_layer.encoding.NoFaceError) as e:
        apply(env, image=image)
    assert f"image 1: the image is {width}x{height} px" in str(e.value) and "too small or too narrow" in str(e.value)
    assert apply(env, image=image, on_no_face="return model unchanged")[0] is env.model


@pytest.mark.parametrize("name", ["weight", "start_at", "end_at"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_naming_the_input(env, monkeypatch, name, value):
    calls = []
    monkeypatch.setattr(env.pack.comfy_layer.encoding, "embed_references", lambda *a, **k: calls.append(1))
    values = {**dict(weight=1.0, start_at=0.0, end_at=1.0), name: value}
    with pytest.raises(ValueError) as e:
        apply(env, **values)
    assert str(e.value) == f"{name} must be a finite number, got {value}."
    assert calls == []  # refused before any encoding


def test_non_flux_model_is_refused(env):
    class NotFlux:
        model = object()

    with pytest.raises(ValueError, match="This is a .* PuLID-Flux v0.9 works with FLUX.1 models"):
        apply(env, model=NotFlux())


def test_tiny_flux_loaded_through_comfyui_detection(env, monkeypatch):
    """A narrow FLUX.1 (tiny PuLID layout) whose config ComfyUI derives from the key layout."""
    pack = env.pack
    from support import pulid_fakes as fakes
    cfg = pack.pulid_flux.TINY
    model = H.tiny_flux(cfg.img_dim, double=3, single=5, std=0.1)
    tiny = pack.pulid_flux.PulidFlux(cfg)
    tiny.load_state_dict(fakes.random_state_dict(cfg, dtype=torch.float32))
    tiny_bundle = pack.comfy_layer.models.PulidModel("tiny", tiny, pack.comfy_layer.models.managed(tiny.pulid_encoder, torch.float32),
                                                pack.comfy_layer.models.managed(tiny.pulid_ca, torch.float32))
    tokens = torch.randn(1, cfg.num_queries, cfg.output_dim)
    fake = pack.comfy_layer.encoding.Embedding(tokens, torch.zeros(1, 8, 16, 3), [0], {})
    monkeypatch.setattr(pack.comfy_layer.encoding, "embed_references", lambda *a, **k: fake)
    positive = [[torch.randn(1, 4, 32), {"pooled_output": torch.randn(1, 16)}]]
    negative = [[torch.randn(1, 4, 32), {"pooled_output": torch.randn(1, 16)}]]
    node = pack.nodes.ApplyPulidFlux()
    patched = node.apply_pulid_flux(model, tiny_bundle, env.eva, env.faces, env.image, 1.0, 0.0, 1.0)[0]

    def run(m):
        latent = {"samples": torch.zeros(1, 16, 8, 8)}
        return env.comfy_nodes.common_ksampler(m, 1, 2, 2.0, "euler", "simple", positive, negative, latent)[0]["samples"]

    plain = run(model)
    assert (run(patched) - plain).abs().max() > 1e-5
    assert torch.equal(run(model), plain)
    assert sorted(k for k in patched.model_options["transformer_options"]["patches_replace"]["dit"]) == [
        ("double_block", 0), ("double_block", 2), ("single_block", 0), ("single_block", 4)]


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn"])
def test_fp8_weights_flux_works(env, weight_dtype):
    """ComfyUI casts fp8 weights for compute; the ID update runs in the CA's dtype and is cast back."""
    fp8 = env.comfy_nodes.UNETLoader().load_unet("flux_test_1d1s.safetensors", weight_dtype)[0]
    plain = sample(env, fp8)
    patched = sample(env, apply(env, model=fp8)[0])
    assert torch.isfinite(patched).all() and (patched - plain).abs().max() > 1e-4
    assert torch.equal(sample(env, fp8), plain)


def test_missing_model_files_name_the_folder_and_the_download(env, tmp_path, monkeypatch):
    layer = env.pack.comfy_layer
    monkeypatch.setattr(layer.folders, "folders_of", lambda name: [str(tmp_path / name)])
    with pytest.raises(FileNotFoundError) as e:
        layer.models.FaceAnalysisModel.load("CPU")
    assert "scrfd_10g_bnkps.onnx" in str(e.value) and str(tmp_path / "insightface") in str(e.value)
    monkeypatch.setattr(layer.models, "_parsers", {})
    with pytest.raises(FileNotFoundError, match="parsing_bisenet.pth not found in .*facexlib"):
        layer.models.face_parser()
    monkeypatch.setattr(layer.folders, "eva_candidates", lambda: [])
    with pytest.raises(FileNotFoundError, match="No EVA02-CLIP file found.*EVA02_CLIP_L_336_psz14_s6B.pt"):
        layer.models.EvaModel.load()
    with pytest.raises(Exception, match="not in any models/pulid folder"):
        layer.models.PulidModel.load("nope.safetensors")


def test_antelopev2_in_the_wrong_folder_keeps_the_fix_line(env, tmp_path, monkeypatch):
    from support import encoder_fakes

    layer = env.pack.comfy_layer
    empty, wrong = tmp_path / "first", tmp_path / "insightface"
    encoder_fakes.write_antelopev2(str(wrong / "antelopev2"))  # one level too high: root/antelopev2/*.onnx
    monkeypatch.setattr(layer.folders, "folders_of", lambda name: [str(empty), str(wrong)])
    with pytest.raises(FileNotFoundError) as e:
        layer.models.FaceAnalysisModel.load("CPU")
    message = str(e.value)
    expected = str(wrong / "models" / "antelopev2")
    assert f"found scrfd_10g_bnkps.onnx, glintr100.onnx in {wrong / 'antelopev2'}" in message
    assert f"Fix: move the .onnx files into {expected}" in message
    assert "huggingface" not in message and "Download" not in message  # the files exist: no download advice


def test_eva_auto_skips_a_broken_candidate(env, tmp_path, monkeypatch):
    broken = tmp_path / "eva02_broken.pt"
    broken.write_bytes(b"not a checkpoint")
    layer = env.pack.comfy_layer
    monkeypatch.setattr(layer.folders, "find_eva_files", lambda choice: [("pulid/eva02_broken.pt", str(broken)),
                                                                     ("clip/eva02.pt", env.eva.path)])
    assert layer.models.EvaModel.load().path == env.eva.path
    monkeypatch.setattr(layer.folders, "find_eva_files", lambda choice: [("pulid/eva02_broken.pt", str(broken))])
    with pytest.raises(layer.models.EncoderModelError, match="eva02_broken.pt"):
        layer.models.EvaModel.load()


# Outputs of the patched model on the session's fixed tiny models (seeded full-width Flux with one double and one
# single block, seeded PuLID-Flux and encoders, a fixed photo), recorded before issue 16's refactor (commit 70468d3)
# so that moving code cannot change what the nodes compute. 25 evenly spaced values of the sampled latent.
PINNED_POSITIONS = slice(0, None, 167)
PINNED = {  # ComfyUI v0.3.64 at commit 70468d3; v0.29.0 gave the same values within 1e-5 (another sampler path)
    "apply": [-1.10288787, -1.88669419, 1.77893472, -2.07358813, -3.88985586, -3.15805459, 1.39285374, 6.82703543, -0.58714509, 9.80966568, -3.2491529, 2.1440084, 4.86879063, 1.68000805, -8.31578445, -2.16926742, -7.4046073, 2.0948298, -2.94248891, 4.66369724, 0.331257969, 1.84093928, 3.11380219, -2.48409915, 7.14033842],
    "true_cfg_mask_window": [4.01792574, 2.05840492, -2.63449335, -7.87010717, -10.0906763, -2.8295424, -0.263944268, 10.3320217, -12.9366627, 4.55830145, -6.46393251, -6.1662364, 7.70002127, 0.809967756, -11.074069, -9.267066, -9.41814995, -2.50481653, -9.25394344, 4.95036697, 0.914464116, 8.50759602, 2.77382565, -12.8660707, 13.4182043],
    "apply_identity": [-1.10288787, -1.88669419, 1.77893472, -2.07358813, -3.88985586, -3.15805459, 1.39285374, 6.82703543, -0.58714509, 9.80966568, -3.2491529, 2.1440084, 4.86879063, 1.68000805, -8.31578445, -2.16926742, -7.4046073, 2.0948298, -2.94248891, 4.66369724, 0.331257969, 1.84093928, 3.11380219, -2.48409915, 7.14033842],
}


def pinned_runs(env):
    """name -> the sampled latent for the settings each pinned case uses, through the nodes' public classes."""
    nodes = env.pack.NODE_CLASS_MAPPINGS
    plain = nodes["ApplyPulidFlux"]().apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, env.image, 1.0, 0.0,
                                                       1.0)[0]
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1.0
    true_cfg = nodes["ApplyPulidFlux"]().apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, env.image, 0.8,
                                                          0.0, 0.6, attn_mask=mask, uncond="uncond_id")[0]
    identity = nodes["PulidFluxEncodeIdentity"]().encode(env.pulid, env.eva, env.faces, env.image)["result"][0]
    from_identity = nodes["PulidFluxApplyIdentity"]().apply(env.model, env.pulid, identity, 1.0, 0.0, 1.0)[0]
    return {"apply": sample(env, plain), "true_cfg_mask_window": sample(env, true_cfg, steps=3, cfg=2.0),
            "apply_identity": sample(env, from_identity)}


def test_patched_outputs_are_pinned(env):
    """What the nodes compute is pinned: a refactor that moves code must leave these numbers alone (within another
    BLAS path's rounding of a whole network; a changed weight, window, mask or token moves them by 1e-2 and more)."""
    plain = sample(env, env.model).flatten()[PINNED_POSITIONS]
    for name, latent in pinned_runs(env).items():
        values = latent.flatten()[PINNED_POSITIONS]
        tol.assert_close(values, torch.tensor(PINNED[name]), torch.float32, tol.NETWORK)
        assert (values - plain).abs().max() > 1e-2, name  # the pin holds a patched output, not the plain model's
