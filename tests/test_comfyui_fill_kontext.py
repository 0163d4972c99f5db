"""Tier (b): FLUX.1 Fill and FLUX.1 Kontext inside a real ComfyUI (COMFYUI_PATH), the models made through
ComfyUI's own detection from state dicts in the official key layout (full width, 1 double + 1 single block).

Fill (`img_in` takes 384 features: ComfyUI's FluxInpaint, 96 input channels) is sampled through ComfyUI's
InpaintModelConditioning and KSampler, with Apply PuLID-Flux and with Apply identity (a saved identity and a card).
The models have fp8 weights (ComfyUI's weight_dtype fp8_e4m3fn: a quarter of float32's memory, and a supported
path of its own). A face-region attn_mask (the Face mask node's) on Kontext (reference latents), dev and Fill: at
every injection point the ID update reaches only the generated image's tokens inside the mask; text, Kontext's
reference tokens and the rest stay."""
import os
import types

import pytest
import torch

from support import comfy_harness as H
from support import family_models as F
from support import identity_samples as samples

pytestmark = pytest.mark.comfyui
SIZE = 128  # pixels: a 16x16 latent, 8x8 tokens of 16 px
TEXT_TOKENS = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory, comfy_models):
    """The pack's loaders on the session's files, and fp8 models only (a quarter of float32's memory; fp8 is a
    supported path of its own): FLUX.1 dev from its file (Kontext is dev's layout; Kontext-ness is the reference
    latents in the conditioning) and FLUX.1 Fill from its state dict."""
    root = tmp_path_factory.mktemp("comfy_fill")
    identities = str(root / "identities")
    folder_paths = H.import_comfyui()
    H.register_folders(folder_paths, comfy_models["root"])
    folder_paths.add_model_folder_path("pulid_identities", identities, is_default=True)
    pack = H.import_pack(str(root))
    import comfy.sd
    import comfy.utils
    import nodes as comfy_nodes

    e = types.SimpleNamespace(pack=pack, comfy_nodes=comfy_nodes, folder_paths=folder_paths, N=pack.NODE_CLASS_MAPPINGS)
    n = pack.nodes
    e.pulid = n.PulidFluxModelLoader().load_model("pulid_flux_v0.9.1.safetensors")[0]
    e.eva = n.PulidFluxEvaClipLoader().load_eva_clip()[0]
    e.faces = n.PulidFluxInsightFaceLoader().load_insightface("CPU")[0]
    e.image = H.face_photo()
    e.positive, e.negative = H.flux_conditioning(0, tokens=TEXT_TOKENS), H.flux_conditioning(1, tokens=TEXT_TOKENS)
    e.model = comfy_nodes.UNETLoader().load_unet("flux_test_1d1s.safetensors", "fp8_e4m3fn")[0]
    e.fill = comfy.sd.load_diffusion_model_state_dict(F.flux1_fill(), model_options={"dtype": torch.float8_e4m3fn})
    e.vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(comfy_models["vae"]))
    e.photo = torch.nn.functional.interpolate(e.image.movedim(-1, 1), size=(SIZE, SIZE), mode="area").movedim(1, -1)
    # the region of the photo's face, as the workflows make it: Face mask (the generated detector's face)
    e.face_mask, found = e.N["PulidFluxFaceMask"]().mask(e.photo, e.faces, "chosen", "largest", 0, "ellipse", 4, 0)
    assert found == 1 and 0.02 < e.face_mask.mean() < 0.3, (found, e.face_mask.mean())
    data = samples.fmt.identity_bytes(samples.make_full_size_identity(seed=4))
    os.makedirs(identities, exist_ok=True)
    with open(os.path.join(identities, "fill_person.safetensors"), "wb") as f:
        f.write(data)
    from pulid_flux.identity.card import card_bytes

    preview = (torch.rand(128, 256, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    with open(os.path.join(folder_paths.get_input_directory(), "fill_person_card.png"), "wb") as f:
        f.write(card_bytes(preview, data))
    return e


def inpaint(env, positive=None):
    """InpaintModelConditioning as a workflow wires it: the face mask is the region to fill."""
    node = env.comfy_nodes.InpaintModelConditioning()
    return node.encode(positive or env.positive, env.negative, env.photo, env.vae, env.face_mask, True)


def sample(env, model, conditioning, steps=2, seed=3):
    positive, negative, latent = conditioning
    return env.comfy_nodes.common_ksampler(model, seed, steps, 1.0, "euler", "simple", positive, negative, latent,
                                           denoise=1.0)[0]["samples"]


def apply_pulid(env, model, weight=1.0, **kw):
    return env.pack.nodes.ApplyPulidFlux().apply_pulid_flux(model, env.pulid, env.eva, env.faces, env.image, weight,
                                                            0.0, 1.0, **kw)[0]


def apply_identity(env, model, identity, weight=1.0, **kw):
    return env.N["PulidFluxApplyIdentity"]().apply(model, env.pulid, identity, weight, 0.0, 1.0, **kw)[0]


def test_flux_fill_is_detected_as_flux_inpaint_and_keeps_96_input_channels(env):
    assert env.fill is not None  # ComfyUI recognised the state dict
    config = env.fill.model.model_config
    assert type(config).__name__ == "FluxInpaint" and config.unet_config["in_channels"] == 96
    assert tuple(env.fill.model.diffusion_model.img_in.weight.shape) == (3072, 384)
    positive, _, latent = inpaint(env)
    assert positive[0][1]["concat_latent_image"].shape == (1, 16, SIZE // 8, SIZE // 8)
    assert latent["noise_mask"].shape[-2:] == (SIZE, SIZE)


def test_fill_sampled_through_inpaint_conditioning_with_apply_and_with_apply_identity(env):
    conditioning = inpaint(env)
    plain = sample(env, env.fill, conditioning)
    loaded = env.N["PulidFluxLoadIdentity"]().load("fill_person.safetensors")["result"][0]
    card = env.N["PulidFluxLoadIdentityCard"]().load("fill_person_card.png")["result"][0]
    assert torch.equal(loaded.id_tokens, card.id_tokens)  # the card holds the same identity file
    outputs = {"apply": sample(env, apply_pulid(env, env.fill), conditioning),
               "identity file": sample(env, apply_identity(env, env.fill, loaded), conditioning),
               "identity card": sample(env, apply_identity(env, env.fill, card), conditioning)}
    for name, out in outputs.items():
        assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3, name
    assert torch.equal(outputs["identity file"], outputs["identity card"])
    assert (outputs["apply"] - outputs["identity file"]).abs().max() > 1e-3  # another person, another result
    # weight 0, and the model as it was before (the patch disconnected): bit-identical to the plain model
    assert torch.equal(sample(env, apply_pulid(env, env.fill, weight=0.0), conditioning), plain)
    assert torch.equal(sample(env, apply_identity(env, env.fill, loaded, weight=0.0), conditioning), plain)
    assert torch.equal(sample(env, env.fill, conditioning), plain)
    assert "patches_replace" not in env.fill.model_options["transformer_options"]
    # KSampler keeps the latent outside the noise mask: the identity changes the face region only
    original = conditioning[2]["samples"]
    outside = torch.nn.functional.interpolate(env.face_mask[:, None], size=original.shape[-2:], mode="bilinear") == 0
    outside = outside.expand_as(original)
    for name, out in outputs.items():
        assert torch.equal(out[outside], plain[outside]), name


def record_injections(env, monkeypatch):
    """[(kind, img before, img after)] at every ID injection point (the block's output, before and after the ID)."""
    app_class = env.pack.pulid_flux.patch.PulidApplication
    real = app_class.inject
    seen = []

    def inject(self, out, args, ca_index, kind):
        before = out["img"].clone()
        real(self, out, args, ca_index, kind)
        seen.append((kind, before, out["img"].clone()))

    monkeypatch.setattr(app_class, "inject", inject)
    return seen


def kontext(env, positive):
    """ReferenceLatent as ComfyUI's Kontext template wires it: the photo's latent (here 8x8, 16 tokens) in the
    conditioning's reference_latents, appended after the generated image's tokens."""
    reference = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(9))
    return [[positive[0][0], dict(positive[0][1], reference_latents=[reference])]]


@pytest.mark.parametrize("family", ["kontext", "dev", "fill"])
def test_a_face_region_attn_mask_touches_only_the_generated_tokens_inside_it(env, monkeypatch, family):
    """All three with fp8 weights: the ID update is computed in the PuLID weights' dtype and cast back."""
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    model, conditioning, reference_tokens = env.model, (env.positive, env.negative, latent), 0
    if family == "kontext":
        conditioning, reference_tokens = (kontext(env, env.positive), env.negative, latent), 16
    elif family == "fill":
        model, conditioning = env.fill, inpaint(env)
    tokens = env.pack.pulid_flux.injection.tokens_mask(env.face_mask, SIZE // 16, SIZE // 16, 1)[0, :, 0]
    inside = tokens > 0
    assert 0 < inside.sum() < len(tokens) // 2  # the face is a part of the picture
    seen = record_injections(env, monkeypatch)
    masked = sample(env, apply_pulid(env, model, attn_mask=env.face_mask), conditioning)
    assert torch.isfinite(masked).all()
    assert {kind for kind, _, _ in seen} == {"double", "single"} and len(seen) == 2 * 2  # 2 steps x 2 points
    for kind, before, after in seen:
        text = 0 if kind == "double" else TEXT_TOKENS
        assert before.shape[1] == text + len(tokens) + reference_tokens, kind
        change = (after - before).abs().amax(dim=(0, 2))
        assert torch.equal(change[:text], torch.zeros(text)), kind  # text tokens (single blocks)
        generated = change[text:text + len(tokens)]
        assert generated[~inside].max() == 0 and generated[inside].min() > 0, kind
        assert change[text + len(tokens):].abs().sum() == 0, kind  # Kontext's reference tokens
    seen.clear()
    whole = sample(env, apply_pulid(env, model), conditioning)
    assert (whole - masked).abs().max() > 1e-4  # the mask did limit the identity
    for kind, before, after in seen:  # without it every generated token gets the identity
        text = 0 if kind == "double" else TEXT_TOKENS
        assert (after - before)[:, text:text + len(tokens)].abs().amax(dim=(0, 2)).min() > 0, kind
