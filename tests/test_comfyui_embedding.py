"""Tier (b), real ComfyUI: what an Apply call computes besides sampling, with tiny models so it runs in seconds.

The uncond ID tokens are computed once per loaded PuLID model (and again only when its weights change), and the
faces of all reference images go through BiSeNet and EVA-CLIP as one batch, equal to encoding them one by one."""
import os
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch

from support import comfy_harness as H
from support import tolerance as tol
from support.reference_math import reference_idformer

pytestmark = pytest.mark.comfyui


def photos_512() -> torch.Tensor:
    """Real photos as one ComfyUI IMAGE batch [4,512,512,3]: the astronaut and three people of insightface's t1.jpg."""
    import insightface
    from skimage import data

    group = cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))[:, :, ::-1]
    crops = [group[120:760, x:x + 640] for x in (0, 320, 640)]
    images = [data.astronaut()] + [cv2.resize(np.ascontiguousarray(c), (512, 512), interpolation=cv2.INTER_AREA)
                                   for c in crops]
    return torch.from_numpy(np.stack(images)).float().div(255.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder_paths = H.import_comfyui()
    root = tmp_path_factory.mktemp("tiny")
    pack = H.import_pack(str(root))
    layer = pack.comfy_layer
    from support import encoder_fakes, pulid_fakes

    models = root / "models"
    encoder_fakes.write_antelopev2(str(models / "insightface" / "models" / "antelopev2"))
    encoder_fakes.write_bisenet(str(models / "facexlib" / "parsing_bisenet.pth"))
    eva_path = encoder_fakes.write_eva_baai(str(models / "EVA02_CLIP_L_336_psz14_s6B.pt"), encoder_fakes.TINY_EVA)
    folder_paths.add_model_folder_path("facexlib", str(models / "facexlib"))

    cfg = pack.pulid_flux.TINY  # vit_dim 32 = TINY_EVA's width
    model = pack.pulid_flux.PulidFlux(cfg)
    model.load_state_dict(pulid_fakes.random_state_dict(cfg, seed=4, dtype=torch.float32))

    class Tiny:
        pass

    t = Tiny()
    t.pack, t.layer, t.cfg = pack, layer, cfg
    t.pulid = layer.models.PulidModel("tiny", model, layer.models.managed(model.pulid_encoder, torch.float32),
                                 layer.models.managed(model.pulid_ca, torch.float32))
    eva = pack.encoders.load_eva_clip(eva_path, "cpu", torch.float32, encoder_fakes.TINY_EVA)
    t.eva = layer.models.EvaModel(eva_path, layer.models.managed(eva, torch.float32))
    insightface_root = str(models / "insightface")
    t.faces = layer.models.FaceAnalysisModel(insightface_root, "CPU",
                                        pack.encoders.load_face_analysis(insightface_root, "CPU"))
    t.flux = H.tiny_flux(cfg.img_dim)  # Apply only checks the model: nothing is sampled
    t.images = photos_512()
    return t


def encoder_state(t) -> dict:
    """The ID encoder's current weights in float64, under the file's key names, for the reference IDFormer."""
    return {"pulid_encoder." + k: v.detach().to(torch.float64)
            for k, v in t.pulid.encoder.model.inner.state_dict().items()}


def reference_uncond(t) -> torch.Tensor:
    """Official uncond ID embedding: the IDFormer on zeros [1,1280] and 5 x zeros [1,577,vit_dim], in float64."""
    zeros = torch.zeros(1, t.cfg.id_cond_dim, dtype=torch.float64)
    hidden = [torch.zeros(1, 577, t.cfg.vit_dim, dtype=torch.float64)] * 5
    return reference_idformer(encoder_state(t), t.cfg, zeros, hidden)


@pytest.fixture
def zero_passes(tiny):
    """Counts the ID encoder's runs on an all-zero ID condition (the uncond pass), whoever triggers them."""
    calls = []
    hook = tiny.pulid.encoder.model.inner.register_forward_pre_hook(
        lambda module, args: calls.append(bool((args[0] == 0).all())))
    yield lambda: sum(calls)
    hook.remove()


def apply(t, image, uncond):
    node = t.pack.nodes.ApplyPulidFlux()
    patched = node.apply_pulid_flux(t.flux, t.pulid, t.eva, t.faces, image, 1.0, 0.0, 1.0, uncond=uncond)[0]
    return patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)].app


def test_uncond_tokens_are_the_id_encoder_on_zeros(tiny):
    tokens = tiny.pulid.uncond_tokens()
    assert tokens.shape == (1, tiny.cfg.num_queries, tiny.cfg.output_dim)
    assert tokens.dtype == torch.float32 and tokens.device.type == "cpu"
    expected = reference_uncond(tiny)
    assert expected.abs().max() > 0.1  # not zero
    tol.assert_close(tokens, expected, torch.float32, tol.NETWORK)


def test_uncond_tokens_computed_once_across_apply_calls(tiny, zero_passes, monkeypatch):
    monkeypatch.setattr(tiny.pulid, "_uncond", None, raising=False)
    monkeypatch.setattr(tiny.layer.encoding, "_cache", OrderedDict())
    app = apply(tiny, tiny.images[0:1], "same")
    assert app.uncond_tokens is None and zero_passes() == 0  # not needed, not computed
    seen = [apply(tiny, tiny.images[i:i + 1], "uncond_id").uncond_tokens for i in range(3)]
    assert zero_passes() == 1
    for tokens in seen:
        assert torch.equal(tokens, seen[0])
    tol.assert_close(seen[0], reference_uncond(tiny), torch.float32, tol.NETWORK)


def test_uncond_tokens_follow_the_weights_when_cast_or_replaced(tiny, zero_passes):
    from support import pulid_fakes

    encoder = tiny.pulid.encoder.model.inner
    original = {k: v.clone() for k, v in encoder.state_dict().items()}
    try:
        first = tiny.pulid.uncond_tokens()
        runs = zero_passes()
        assert torch.equal(tiny.pulid.uncond_tokens(), first) and zero_passes() == runs  # cached

        encoder.to(torch.float64)
        in_double = tiny.pulid.uncond_tokens()
        assert zero_passes() == runs + 1 and in_double.dtype == torch.float32
        # computed in float64: only the final rounding to float32 differs
        tol.assert_close(in_double, reference_uncond(tiny), torch.float32, tol.ROUNDING)
        encoder.to(torch.float32)
        tiny.pulid.uncond_tokens()
        assert zero_passes() == runs + 2

        other = pulid_fakes.random_state_dict(tiny.cfg, seed=9, dtype=torch.float32)
        prefix = "pulid_encoder."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in other.items() if k.startswith(prefix)})
        replaced = tiny.pulid.uncond_tokens()
        assert zero_passes() == runs + 3 and (replaced - first).abs().max() > 1e-2
        tol.assert_close(replaced, reference_uncond(tiny), torch.float32, tol.NETWORK)

        with torch.inference_mode():  # as ComfyUI runs nodes: a copy that leaves no version count behind
            encoder.load_state_dict(original)
        restored = tiny.pulid.uncond_tokens()
        assert zero_passes() == runs + 4
        tol.assert_close(restored, first, torch.float32, tol.ROUNDING)  # same weights again

        encoder.latents = torch.nn.Parameter(encoder.latents.detach() * 2)  # one weight swapped for another
        tiny.pulid.uncond_tokens()
        assert zero_passes() == runs + 5
    finally:
        encoder.to(torch.float32)
        with torch.no_grad():
            encoder.latents = torch.nn.Parameter(original["latents"].clone())
            encoder.load_state_dict(original)


def test_reference_images_are_one_batch_equal_to_one_at_a_time(tiny, monkeypatch):
    import comfy.utils

    layer, images = tiny.layer, tiny.images
    monkeypatch.setattr(layer.encoding, "_cache", OrderedDict())
    eva, parser = tiny.eva.module, layer.models.face_parser().model.inner
    idformer = tiny.pulid.encoder.model.inner
    eva_batches, parser_batches, id_inputs, progress = [], [], [], []
    hooks = [eva.register_forward_pre_hook(lambda m, args: eva_batches.append(args[0].shape[0])),
             parser.register_forward_pre_hook(lambda m, args: parser_batches.append(args[0].shape[0])),
             idformer.register_forward_pre_hook(lambda m, args: id_inputs.append((args[0].clone(),
                                                                                  [h.clone() for h in args[1]])))]
    real_update = comfy.utils.ProgressBar.update_absolute

    def update(bar, value, total=None, preview=None):  # what the pack reports (newer ComfyUIs throttle the hook)
        progress.append((value, bar.total if total is None else total))
        return real_update(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update)
    try:
        emb = layer.encoding.embed_references(tiny.pulid, tiny.eva, tiny.faces, images, "concat", "largest", 0, True)
    finally:
        for hook in hooks:
            hook.remove()
    n = images.shape[0]
    assert eva_batches == [n] and parser_batches == [n]  # one pass through each network for all the faces
    assert progress == [(i, n + 1) for i in range(1, n + 2)]  # a detection per image, then the batch
    assert emb.used == list(range(n)) and len(id_inputs) == 1
    id_cond, hidden = id_inputs[0]

    encoders = layer.encoding.FaceEncoders(tiny.faces.analysis, eva, parser)
    for i in range(n):
        single = encoders.encode(images[i:i + 1])[0]
        tol.assert_close(id_cond[i:i + 1], single.id_cond, torch.float32, tol.NETWORK)  # batched vs single
        for ours, alone in zip(hidden, single.hidden_states):
            tol.assert_close(ours[i:i + 1], alone, torch.float32, tol.NETWORK)
        tokens = tiny.pack.pulid_flux.encode_id(idformer, single.id_cond, single.hidden_states)
        chunk = emb.id_tokens[:, i * tiny.cfg.num_queries:(i + 1) * tiny.cfg.num_queries]
        tol.assert_close(chunk, tokens, torch.float32, tol.NETWORK)
    q = tiny.cfg.num_queries
    assert not torch.allclose(emb.id_tokens[:, :q], emb.id_tokens[:, q:2 * q])  # the photos differ


def test_encoders_leave_the_compute_device_only_when_that_frees_it(tiny):
    """Offloading a model whose offload device is its load device (the CPU) frees nothing and costs the next
    encoding a full load; one that really moves (GPU -> CPU, here CPU -> meta) is unloaded."""
    import comfy.model_management as mm

    layer = tiny.layer
    stays = layer.models.managed(torch.nn.Linear(2, 2), torch.float32, offload_device=torch.device("cpu"))
    moves = layer.models.managed(torch.nn.Linear(2, 2), torch.float32, offload_device=torch.device("meta"))
    mm.load_models_gpu([stays, moves])
    layer.models.offload(stays, moves)
    loaded = [m.model for m in mm.current_loaded_models]
    assert any(m is stays for m in loaded) and not any(m is moves for m in loaded)
    assert moves.model.inner.weight.device.type == "meta" and stays.model.inner.weight.device.type == "cpu"
