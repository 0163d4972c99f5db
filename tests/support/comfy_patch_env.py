"""The real-ComfyUI (COMFYUI_PATH) fixture `cenv` of test_comfyui_concurrent.py and test_comfyui_family.py: a
full-width FLUX.1 with 1+1 blocks loaded from a file through comfy.sd, random PuLID weights and fixed ID tokens,
patched through comfy_layer.patching directly (no encoders), and the KSampler call on it. A module that uses
`cenv` imports it (module scope: built once per such module); without COMFYUI_PATH it skips."""
import os
import shutil

import pytest
import torch

from support import comfy_harness as H
from support import family_models as F


@pytest.fixture(scope="module")
def cenv(tmp_path_factory):
    H.import_comfyui()
    import comfy.sd
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("concurrent")
    pack = H.import_pack(str(root))
    import nodes as comfy_nodes
    from pulid_flux import OFFICIAL, PulidFlux
    from support.pulid_fakes import random_state_dict

    unet = os.path.join(str(root), "flux1_1d1s.safetensors")
    save_file(F.flux1(), unet)  # a file: deepclone_multigpu reloads the model through the loader that made it

    class Env:
        pass

    e = Env()
    e.pack, e.nodes = pack, comfy_nodes
    e.model = comfy.sd.load_diffusion_model(unet)
    weights = PulidFlux(OFFICIAL)
    weights.load_state_dict(random_state_dict(OFFICIAL, seed=1, dtype=torch.float32))
    layer = pack.comfy_layer
    e.pulid = layer.models.PulidModel("test.safetensors", weights, layer.models.managed(weights.pulid_encoder, torch.float32),
                            layer.models.managed(weights.pulid_ca, torch.float32))
    g = torch.Generator().manual_seed(5)
    e.id_tokens = torch.randn(1, OFFICIAL.num_queries, OFFICIAL.output_dim, generator=g)
    e.uncond_tokens = torch.randn(1, OFFICIAL.num_queries, OFFICIAL.output_dim, generator=g)
    e.conds = [H.flux_conditioning(i) for i in range(3)]
    yield e
    shutil.rmtree(root, ignore_errors=True)  # 1 GB of full-width Flux: gone when the module is done, not at the end


def patched(e, weight=1.0, start_at=0.0, end_at=1.0, mask=None, uncond="same"):
    return e.pack.comfy_layer.patching.patch_model(e.model, e.pulid, e.id_tokens, e.uncond_tokens, weight, start_at,
                                               end_at, mask, uncond)


LATENT = torch.zeros(1, 16, 16, 16)


def sample(e, model, seed, cond, cfg):
    """KSampler's path: 2 euler steps from the seed's noise."""
    return e.nodes.common_ksampler(model, seed, 2, cfg, "euler", "simple", e.conds[cond], e.conds[2],
                                   {"samples": LATENT}, denoise=1.0)[0]["samples"]


def noise_for(seed):
    """The noise KSampler draws for a seed. ComfyUI draws it by seeding torch's process-wide generator
    (torch.manual_seed), so threads sampling at once must get theirs drawn beforehand: see sample_from."""
    import comfy.sample
    return comfy.sample.prepare_noise(LATENT, seed)


def sample_from(e, model, noise, seed, cond, cfg):
    """KSampler's path after its noise is drawn (common_ksampler's comfy.sample.sample call): safe in threads."""
    import comfy.sample
    return comfy.sample.sample(model, noise, 2, cfg, "euler", "simple", e.conds[cond], e.conds[2], LATENT,
                               denoise=1.0, seed=seed)
