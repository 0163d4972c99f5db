"""What the tier (a) patch tests (test_patch.py, test_patch_compat.py) feed the stand-in Flux: seeded ID tokens and
latents, a PulidApplication with a simple sigma schedule, the model_options ApplyPulidFlux would set, and one model
call made as ComfyUI makes it."""
import copy

import torch

from support.mini_flux import apply_model
from pulid_flux import TINY, injection_points
from pulid_flux.patch import IdBlockPatch, PulidApplication, SharedWrapper

SHIFTED = lambda p: 1.0 if p <= 0 else (0.0 if p >= 1 else 1.0 - p)  # a simple monotone schedule


def id_tokens(seed, n=1):
    return torch.randn(n, TINY.num_queries, TINY.output_dim, generator=torch.Generator().manual_seed(seed)) * 3


def patch_options(flux, app, options=None):
    """What ApplyPulidFlux puts into a clone's model_options, applied to a plain dict."""
    options = copy.deepcopy(options) if options else {}
    dit = options.setdefault("patches_replace", {}).setdefault("dit", {})
    for (kind, i), ca in injection_points(len(flux.double_blocks), len(flux.single_blocks)).items():
        dit[(kind, i)] = IdBlockPatch(app, ca, kind.split("_")[0], dit.get((kind, i)))
    for wrapper_type, fn in app.wrappers().items():
        options.setdefault("wrappers", {}).setdefault(wrapper_type, {}).setdefault("pulid", []).append(SharedWrapper(fn))
    return options


def inputs(batch=1, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, h, w, generator=g), torch.randn(batch, 5, 8, generator=g)


def run(flux, x, ctx, sigma, options, control=None, **kw):
    """One model call as ComfyUI makes it: APPLY_MODEL wrappers, then the diffusion model and its wrappers."""
    options = dict(options, sigmas=torch.full((x.shape[0],), sigma))
    with torch.no_grad():
        return apply_model(flux, x, torch.full((x.shape[0],), sigma), ctx, control, options, **kw)


def app_for(pulid, tokens, weight=1.0, start=0.0, end=1.0, **kw):
    return PulidApplication(pulid.pulid_ca, tokens, kw.pop("uncond_tokens", None), weight, start, end, SHIFTED, **kw)
