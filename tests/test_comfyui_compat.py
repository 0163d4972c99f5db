"""Tier (b), other packs and tools around the patch inside a real ComfyUI: ControlNet, EasyCache/LazyCache,
TorchCompileModel."""
import logging

import pytest
import torch

from support import tolerance as tol
from support.comfy_nodes_env import apply, dit_patch, env, sample  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.comfyui


def _ksample(env, model, positive, negative, steps=2, cfg=3.0, seed=3):
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    return env.comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative, latent,
                                           denoise=1.0)[0]["samples"]


def test_controlnet_does_not_turn_uncond_modes_into_same(env, monkeypatch):
    """With a ControlNet, Flux's forward gets a `control` dict before transformer_options. Behind forwards that
    give the blocks no transformer_options (TeaCache), what the DIFFUSION_MODEL wrapper recorded is all the patch
    has: it must be the real transformer_options, or uncond_id/none silently act as 'same'."""
    import comfy.controlnet

    class SmallControl(comfy.controlnet.ControlBase):  # a ControlNet's output: residuals per block
        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            g = torch.Generator().manual_seed(5)
            tokens = (x_noisy.shape[-2] // 2) * (x_noisy.shape[-1] // 2)
            add = torch.randn(1, tokens, 3072, generator=g).expand(x_noisy.shape[0], -1, -1) * 0.01
            return {"input": [add.to(x_noisy)], "output": [add.to(x_noisy)]}

    control = SmallControl()
    positive = [[env.positive[0][0], dict(env.positive[0][1], control=control)]]
    negative = [[env.negative[0][0], dict(env.negative[0][1], control=control)]]
    app_cls = env.pack.pulid_flux.patch.PulidApplication
    real_inject = app_cls.inject
    for mode in ("none", "uncond_id"):
        patched = apply(env, uncond=mode)[0]
        normal = _ksample(env, patched, positive, negative)
        monkeypatch.setattr(app_cls, "inject", lambda self, out, args, ca, kind: real_inject(
            self, out, {k: v for k, v in args.items() if k != "transformer_options"}, ca, kind))
        without_options = _ksample(env, patched, positive, negative)
        monkeypatch.setattr(app_cls, "inject", real_inject)
        assert torch.equal(normal, without_options), mode
    same = _ksample(env, apply(env, uncond="same")[0], positive, negative)
    assert (same - normal).abs().max() > 1e-5


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_step_cache_with_a_window_logs_once_per_run(env, caplog, cache):
    import comfy_extras.nodes_easycache as easycache

    node = easycache.EasyCacheNode if cache == "EasyCache" else easycache.LazyCacheNode
    cached = node.execute(apply(env, start_at=0.2, end_at=0.8)[0], 0.2, 0.15, 0.95, False).result[0]
    plain_window = apply(env, start_at=0.2, end_at=0.8)[0]
    full = node.execute(apply(env)[0], 0.2, 0.15, 0.95, False).result[0]
    for model, expected in ((cached, 1), (full, 0), (plain_window, 0), (cached, 1)):  # 1 line per run
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            sample(env, model, steps=4)
        lines = [r.getMessage() for r in caplog.records if "reuses whole sampling steps" in r.getMessage()]
        assert len(lines) == expected
    assert lines == [f"PuLID-Flux: {cache} reuses whole sampling steps, so start_at/end_at (0.2..0.8) do not hold on "
                     "the steps it reuses (they keep or lack the identity whatever the window). Lower the cache's "
                     "threshold, or start the cache after end_at."]


def test_torch_compiled_flux_gets_no_graph_break_from_the_patch(env, monkeypatch):
    """TorchCompileModel (set_torch_compile_wrapper) compiles the whole diffusion model: the patched model must
    not break the graph more often than the plain one (float(sigma) in the gate broke it at every injection
    point). PyTorch SDPA attention, as on a GPU: ComfyUI's CPU attention breaks the graph itself (psutil)."""
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention
    import torch._dynamo as dynamo
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", comfy.ldm.modules.attention.attention_pytorch)

    def compiled_breaks(model):
        m = model.clone()
        set_torch_compile_wrapper(model=m, backend="eager")
        dynamo.reset()
        counters.clear()
        out = sample(env, m, steps=2)
        return out, dict(counters["graph_break"])

    plain, plain_breaks = compiled_breaks(env.model)
    patched = apply(env, start_at=0.0, end_at=0.6)[0]
    out, breaks = compiled_breaks(patched)
    assert breaks == plain_breaks
    tol.assert_close(out, sample(env, patched, steps=2), torch.float32, tol.NETWORK)
    assert (out - plain).abs().max() > 1e-4


def test_patch_wrappers_are_comfyui_wrapper_types(env):
    import comfy.patcher_extension as ext

    patched = apply(env)[0]
    app = dit_patch(patched).app
    assert set(app.wrappers()) == {ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.APPLY_MODEL, ext.WrappersMP.DIFFUSION_MODEL}
    for wrapper_type in app.wrappers():
        assert len(patched.get_wrappers(wrapper_type, "pulid_flux")) == 1
