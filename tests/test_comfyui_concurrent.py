"""Tier (b): a patched model sampled by two threads at once gives what the two runs give one after the other.

v0.29's MultiGPU CFG split keeps a `deepclone_multigpu` twin of the patched model for each extra device and
samples the copies at the same time in a thread per device; other tools sample two clones of one patched model
at once. Either way the copies share the patch objects (ComfyUI deep-copies model_options, ours return
themselves): any per-sampling state held there is written by both threads. Full-width FLUX.1 with 1+1 blocks,
16x16 latents, 2 steps, built through ComfyUI's public loading path."""
import ast
import os
import threading

import pytest
import torch

import comfy_harness as H
import family_models as F

pytestmark = pytest.mark.comfyui
ROUNDS = 2  # concurrent repeats of each pair: a race shows up in at least one of them


def _copy_kinds() -> list[str]:
    """Two clones everywhere; the MultiGPU twin where ComfyUI's ModelPatcher has `deepclone_multigpu`
    (parametrized, not skipped). Read from the source at collection: importing ComfyUI here would make the pack's
    own __init__ (which imports its nodes when `comfy` is importable) fail as pytest's package."""
    kinds = ["two_clones"]
    root = H.comfyui_path()
    source = os.path.join(root or "", "comfy", "model_patcher.py")
    if root and os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        patcher = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelPatcher"]
        if any(isinstance(m, ast.FunctionDef) and m.name == "deepclone_multigpu" for c in patcher for m in c.body):
            kinds.append("multigpu_twin")
    return kinds


@pytest.fixture(scope="module")
def cenv(tmp_path_factory):
    H.import_comfyui()
    import comfy.sd
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("concurrent")
    pack = H.import_pack(str(root))
    import nodes as comfy_nodes
    from pulid_flux import OFFICIAL, PulidFlux
    from testing.pulid_fakes import random_state_dict

    unet = os.path.join(str(root), "flux1_1d1s.safetensors")
    save_file(F.flux1(), unet)  # a file: deepclone_multigpu reloads the model through the loader that made it

    class Env:
        pass

    e = Env()
    e.pack, e.nodes = pack, comfy_nodes
    e.model = comfy.sd.load_diffusion_model(unet)
    weights = PulidFlux(OFFICIAL)
    weights.load_state_dict(random_state_dict(OFFICIAL, seed=1, dtype=torch.float32))
    cs = pack.comfy_support
    e.pulid = cs.PulidModel("test.safetensors", weights, cs.managed(weights.pulid_encoder, torch.float32),
                            cs.managed(weights.pulid_ca, torch.float32))
    g = torch.Generator().manual_seed(5)
    e.id_tokens = torch.randn(1, OFFICIAL.num_queries, OFFICIAL.output_dim, generator=g)
    e.uncond_tokens = torch.randn(1, OFFICIAL.num_queries, OFFICIAL.output_dim, generator=g)
    e.conds = [H.flux_conditioning(i) for i in range(3)]
    return e


def patched(e, weight=1.0, start_at=0.0, end_at=1.0, mask=None, uncond="same"):
    return e.pack.identity_support.patch_model(e.model, e.pulid, e.id_tokens, e.uncond_tokens, weight, start_at,
                                               end_at, mask, uncond)


def sample(e, model, seed, cond, cfg):
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    return e.nodes.common_ksampler(model, seed, 2, cfg, "euler", "simple", e.conds[cond], e.conds[2], latent,
                                   denoise=1.0)[0]["samples"]


def plain_sample(e, cfg, _cache={}):
    if cfg not in _cache:
        _cache[cfg] = sample(e, e.model, 1, 0, cfg)
    return _cache[cfg]


def copies(model, kind):
    if kind == "two_clones":
        return model.clone(), model.clone()
    return model, model.deepclone_multigpu(new_load_device=model.load_device)


LEFT_HALF = torch.zeros(1, 128, 128)
LEFT_HALF[..., :64] = 1
CASES = {
    "one_pass": (dict(), 1.0),
    "true_cfg_uncond_id": (dict(uncond="uncond_id"), 3.0),
    "mask": (dict(mask=LEFT_HALF), 1.0),
    "window": (dict(start_at=0.3, end_at=0.7), 1.0),
}


@pytest.mark.parametrize("kind", _copy_kinds())
@pytest.mark.parametrize("case", list(CASES))
def test_two_copies_sampled_at_once_equal_serial_runs(cenv, kind, case):
    options, cfg = CASES[case]
    a, b = copies(patched(cenv, **options), kind)
    jobs = [(a, 1, 0), (b, 2, 1)]  # (copy, seed, positive): each thread its own prompt
    serial = [sample(cenv, m, seed, cond, cfg) for m, seed, cond in jobs]
    assert (serial[0] - plain_sample(cenv, cfg)).abs().max() > 1e-4  # the identity acts (else equality proves nothing)
    differing = []
    for r in range(ROUNDS):
        results = [None, None]
        start = threading.Barrier(2)

        def run(i):
            start.wait()
            m, seed, cond = jobs[i]
            results[i] = sample(cenv, m, seed, cond, cfg)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        differing += [(r, i) for i in range(2) if results[i] is None or not torch.equal(results[i], serial[i])]
    assert differing == [], f"{len(differing)} of {2 * ROUNDS} concurrent results differ from serial: {differing}"
