"""Tier (b): models of other families, built through ComfyUI's own loading path (state dict -> model detection ->
config -> model), are refused by Apply PuLID-Flux and Apply identity with a message naming them, before anything
is patched; FLUX.1 still patches and leaves its base model bit-identical. Each family is tested where the ComfyUI
under test knows it (its config class exists): v0.29 has FLUX.2 and LongCat-Image, both versions SD3 and Qwen-Image."""
import copy

import pytest
import torch

from support import family_models as F
from support.comfy_patch_env import cenv, patched, sample  # noqa: F401 - cenv is a fixture

pytestmark = pytest.mark.comfyui
CONFIG_CLASS = {"flux2_klein": "Flux2", "longcat_image": "LongCatImage", "qwen_image": "QwenImage", "sd3": "SD3"}


def _state(model):
    """Everything a patch would add to a ModelPatcher."""
    return (copy.copy(model.model_options["transformer_options"]), dict(model.patches), copy.deepcopy(model.wrappers),
            {k: dict(v) for k, v in model.callbacks.items()}, dict(model.additional_models),
            dict(model.object_patches))


def test_other_families_are_refused_before_anything_is_patched(cenv, monkeypatch):
    import comfy.sd
    import comfy.supported_models

    pack = cenv.pack
    embeds = []
    monkeypatch.setattr(pack.comfy_layer.encoding, "embed_references", lambda *a, **k: embeds.append(1))
    apply_node = pack.NODE_CLASS_MAPPINGS["ApplyPulidFlux"]()
    identity_node = pack.NODE_CLASS_MAPPINGS["PulidFluxApplyIdentity"]()
    tried = []
    for family, (build, name) in F.REFUSED.items():
        if not hasattr(comfy.supported_models, CONFIG_CLASS[family]):
            continue  # this ComfyUI does not know the family: nothing can load it there
        model = F.load(comfy.sd, build())
        assert type(model.model.model_config).__name__ == CONFIG_CLASS[family]  # ComfyUI's detection decided
        before = _state(model)
        for attempt in (
                lambda: apply_node.apply_pulid_flux(model, cenv.pulid, None, None, torch.zeros(1, 64, 64, 3), 1.0,
                                                    0.0, 1.0),
                lambda: identity_node.apply(model, cenv.pulid, object(), 1.0, 0.0, 1.0),
                lambda: pack.comfy_layer.patching.patch_model(model, cenv.pulid, cenv.id_tokens, None, 1.0, 0.0, 1.0)):
            with pytest.raises(ValueError) as e:
                attempt()
            message = str(e.value)
            assert message.startswith(f"This is a {name}") and "PuLID-Flux v0.9 works with FLUX.1 models" in message
            assert _state(model) == before and not model.model_options["transformer_options"].get("patches_replace")
        tried.append(family)
        del model
    assert embeds == [] and len(tried) >= 2, tried
    if hasattr(comfy.supported_models, "Flux2"):
        assert {"flux2_klein", "longcat_image"} <= set(tried)


def test_flux1_still_patches_and_its_base_model_stays_bit_identical(cenv):
    base = cenv.model
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    before = sample(cenv, base, 1, 0, 1.0)
    model = patched(cenv)
    assert len(model.model_options["transformer_options"]["patches_replace"]["dit"]) == 2  # 1 double + 1 single
    assert (sample(cenv, model, 1, 0, 1.0) - before).abs().max() > 1e-4
    assert torch.equal(sample(cenv, base, 1, 0, 1.0), before)
    assert all(torch.equal(v, weights[k]) for k, v in base.model.state_dict().items())
    assert "patches_replace" not in base.model_options["transformer_options"]


def test_a_pulid_file_made_for_another_width_is_still_refused(cenv):
    from pulid_flux import TINY, PulidFlux
    from support.pulid_fakes import random_state_dict

    layer = cenv.pack.comfy_layer
    weights = PulidFlux(TINY)
    weights.load_state_dict(random_state_dict(TINY, dtype=torch.float32))
    tiny = layer.models.PulidModel("tiny.safetensors", weights, layer.models.managed(weights.pulid_encoder, torch.float32),
                         layer.models.managed(weights.pulid_ca, torch.float32))
    before = _state(cenv.model)
    tokens = torch.zeros(1, TINY.num_queries, TINY.output_dim)
    with pytest.raises(ValueError) as refused:
        cenv.pack.comfy_layer.patching.patch_model(cenv.model, tiny, tokens, None, 1.0, 0.0, 1.0)
    # the fix names the file that fits FLUX.1 and where it goes, not only the mismatch
    assert str(refused.value) == (
        f"This Flux model has hidden size 3072; tiny.safetensors is made for {TINY.img_dim}. Fix: FLUX.1 models "
        "(hidden size 3072) take pulid_flux_v0.9.1.safetensors, made for hidden size 3072. Download "
        "pulid_flux_v0.9.1.safetensors (or v0.9.0) from https://huggingface.co/guozinan/PuLID into "
        "ComfyUI/models/pulid/. Then pick it in Load PuLID-Flux Model.")
    assert cenv.pack.comfy_layer.patching.width_fix(2048).startswith(
        "Fix: PuLID-Flux weights exist for FLUX.1 only (hidden size 3072): connect a FLUX.1 model")
    assert _state(cenv.model) == before
