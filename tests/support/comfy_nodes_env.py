"""The real-ComfyUI (COMFYUI_PATH) fixture `env` of the node tests (test_comfyui_nodes.py, test_comfyui_inputs.py,
test_comfyui_compat.py): the session's full-width model files loaded through the pack's loader nodes, and the
Apply and KSampler calls on them. A module that uses `env` imports it (module scope: loaded once per such module,
released when it ends); without COMFYUI_PATH it skips."""
import types

import pytest
import torch

from support import comfy_harness as H


def load_env(root, comfy_models, before_pack=lambda folder_paths: None):
    """ComfyUI and the pack imported into `root`, the session's model files loaded through the pack's loader nodes.
    `before_pack(folder_paths)` runs before the pack is imported (to add a model folder of the test's own)."""
    folder_paths = H.import_comfyui()
    H.register_folders(folder_paths, comfy_models["root"])
    before_pack(folder_paths)
    pack = H.import_pack(str(root))
    import nodes as comfy_nodes

    e = types.SimpleNamespace(pack=pack, comfy_nodes=comfy_nodes, folder_paths=folder_paths,
                              models=comfy_models["root"], N=pack.NODE_CLASS_MAPPINGS)
    e.model = comfy_nodes.UNETLoader().load_unet("flux_test_1d1s.safetensors", "default")[0]
    n = pack.nodes
    e.pulid = n.PulidFluxModelLoader().load_model("pulid_flux_v0.9.1.safetensors")[0]
    e.eva = n.PulidFluxEvaClipLoader().load_eva_clip()[0]
    e.faces = n.PulidFluxInsightFaceLoader().load_insightface("CPU")[0]
    e.image = H.face_photo()
    e.positive, e.negative = H.flux_conditioning(0), H.flux_conditioning(1)
    return e


@pytest.fixture(scope="module")
def env(tmp_path_factory, comfy_models):
    """The session's model files, loaded for one module at a time (released when the module ends)."""
    return load_env(tmp_path_factory.mktemp("comfy"), comfy_models)


def apply(env, model=None, weight=1.0, start_at=0.0, end_at=1.0, image=None, **kw):
    return env.pack.nodes.ApplyPulidFlux().apply_pulid_flux(
        model or env.model, env.pulid, env.eva, env.faces, env.image if image is None else image, weight, start_at,
        end_at, **kw)


def sample(env, model, steps=2, cfg=1.0, seed=3, positive=None, size=16):
    latent = {"samples": torch.zeros(1, 16, size, size)}
    out = env.comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", positive or env.positive,
                                          env.negative, latent, denoise=1.0)
    return out[0]["samples"]


def dit_patch(model, key=("double_block", 0)):
    return model.model_options["transformer_options"]["patches_replace"]["dit"][key]
