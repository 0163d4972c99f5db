"""Tier (b): a patched model sampled by two threads at once gives what the two runs give one after the other.

v0.29's MultiGPU CFG split keeps a `deepclone_multigpu` twin of the patched model for each extra device and
samples the copies at the same time in a thread per device; other tools sample two clones of one patched model
at once. Either way the copies share the patch objects (ComfyUI deep-copies model_options, ours return
themselves): any per-sampling state held there is written by both threads. Full-width FLUX.1 with 1+1 blocks,
16x16 latents, 2 steps, built through ComfyUI's public loading path. Each thread gets its noise drawn beforehand,
as MultiGPU's threads do: ComfyUI draws noise by seeding torch's process-wide generator, which two threads drawing
at once race on (seen as a rare flake before), so any difference left here is a race of the patch's own."""
import ast
import os
import threading

import pytest
import torch

from support import comfy_harness as H
from support.comfy_patch_env import cenv, noise_for, patched, sample_from  # noqa: F401 - cenv: the module fixture

pytestmark = pytest.mark.comfyui
ROUNDS = 3  # concurrent repeats of each pair: a race shows up in at least one of them


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


def plain_sample(e, cfg, _cache={}):
    if cfg not in _cache:
        _cache[cfg] = sample_from(e, e.model, noise_for(1), 1, 0, cfg)
    return _cache[cfg]


def copies(model, kind):
    if kind == "two_clones":
        return model.clone(), model.clone()
    return model, model.deepclone_multigpu(new_load_device=model.load_device)


LEFT_HALF = torch.zeros(1, 128, 128)
LEFT_HALF[..., :64] = 1
CASES = {  # (Apply options, cfg): every piece of per-sampling state is in play in the second
    "one_pass": (dict(), 1.0),
    "true_cfg_uncond_id_mask_window": (dict(uncond="uncond_id", mask=LEFT_HALF, start_at=0.3, end_at=0.7), 3.0),
}


@pytest.mark.parametrize("kind", _copy_kinds())
@pytest.mark.parametrize("case", list(CASES))
def test_two_copies_sampled_at_once_equal_serial_runs(cenv, kind, case):
    options, cfg = CASES[case]
    a, b = copies(patched(cenv, **options), kind)
    jobs = [(a, noise_for(1), 1, 0), (b, noise_for(2), 2, 1)]  # (copy, noise, seed, positive): a prompt each
    serial = [sample_from(cenv, *job, cfg) for job in jobs]
    assert (serial[0] - plain_sample(cenv, cfg)).abs().max() > 1e-4  # the identity acts (else equality proves nothing)
    # As MultiGPU does (prepare_sampling, one thread): every copy loaded before the threads start, so no thread's
    # model management unloads the other's model mid-run (ComfyUI's loader is not made for concurrent calls).
    import comfy.model_management
    comfy.model_management.load_models_gpu([a, b, cenv.pulid.ca])
    for r in range(ROUNDS):
        results = [None, None]
        start = threading.Barrier(2)

        def run(i):
            start.wait()
            results[i] = sample_from(cenv, *jobs[i], cfg)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        differing = [i for i in range(2) if results[i] is None or not torch.equal(results[i], serial[i])]
        assert differing == [], f"round {r}: concurrent results {differing} differ from the serial runs"


def _own_weights(twin, app):
    held = twin.get_additional_models_with_key("pulid_flux")
    assert len(held) == 1 and held[0].load_device == twin.load_device
    ca = held[0].model.inner
    assert app.weights_for(twin.load_device) is ca and app.weights_for(torch.device("cpu")) is app.ca
    for mine, main in zip(ca.parameters(), app.ca.parameters()):
        assert torch.equal(mine, main) and mine.data_ptr() != main.data_ptr()
    return held[0]


def _twin_device():
    """A second device as ComfyUI keys it; nothing is sampled there."""
    return torch.device("cpu", 1)


def test_a_copy_on_another_device_carries_its_own_pulid_weights(cenv):
    """MultiGPU twins (v0.29) get their own cross-attentions, loaded with them on their device, one copy per device
    reused when ComfyUI matches the twins at sampling. Where ComfyUI has no MultiGPU, Apply registers nothing for
    it. (Each twin reloads the full-width Flux: one scenario per test keeps one twin alive at a time.)"""
    import comfy.model_patcher
    import comfy.patcher_extension as ext

    model = patched(cenv)
    app = model.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)].app
    if not hasattr(comfy.model_patcher.ModelPatcher, "deepclone_multigpu"):
        assert not any("multigpu" in k for k in model.callbacks)
        return
    assert ext.CallbacksMP.ON_DEEPCLONE_MULTIGPU in model.callbacks
    twin = model.deepclone_multigpu(new_load_device=_twin_device())
    weights = _own_weights(twin, app)
    main = model.clone()
    main.set_additional_models("multigpu", [twin])
    main.match_multigpu_clones()
    matched = main.get_additional_models_with_key("multigpu")[0]
    assert _own_weights(matched, app) is weights  # one copy per device, reused


if "multigpu_twin" in _copy_kinds():  # a ComfyUI without MultiGPU has no twin to make (not collected, not skipped)
    def test_a_twin_made_before_apply_gets_its_own_pulid_weights_when_matched(cenv):
        """MultiGPU node first, Apply after: the twin predates the patch and gets its cross-attentions when ComfyUI
        matches the twins at sampling."""
        base = cenv.model.clone()
        base.set_additional_models("multigpu", [base.deepclone_multigpu(new_load_device=_twin_device())])
        late = cenv.pack.comfy_layer.patching.patch_model(base, cenv.pulid, cenv.id_tokens, None, 1.0, 0.0, 1.0)
        late.match_multigpu_clones()
        late_app = late.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)].app
        _own_weights(late.get_additional_models_with_key("multigpu")[0], late_app)
