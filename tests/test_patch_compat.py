"""Tier (a), other packs and tools around the patch: ControlNet's call convention, torch.compile, step caches."""
import pytest
import torch

from support import tolerance as tol
from support.mini_flux import MiniFlux
from pulid_flux import TINY, PulidFlux
from support.patch_inputs import app_for, id_tokens, inputs, patch_options, run
from support.pulid_fakes import random_state_dict


@pytest.fixture(scope="module")
def pulid():
    m = PulidFlux(TINY)
    m.load_state_dict(random_state_dict(TINY, seed=7, dtype=torch.float32))
    return m.eval()


def test_controlnet_control_dict_is_not_taken_for_transformer_options(pulid):
    """ComfyUI passes the diffusion model's arguments positionally; with a ControlNet `control` is a dict placed
    before transformer_options. Behind a forward that gives the blocks no transformer_options (TeaCache), the
    wrapper's record is all there is: taking `control` for it turned uncond_id/none into 'same'."""
    flux = MiniFlux(n_double=3, n_single=5)
    x, ctx = inputs(batch=2)
    g = torch.Generator().manual_seed(3)
    control = {"input": [torch.randn(2, 24, 48, generator=g) * 0.1 for _ in range(3)],
               "output": [torch.randn(2, 24, 48, generator=g) * 0.1]}
    cond, uncond = id_tokens(5), id_tokens(6)
    plain = run(flux, x, ctx, 0.5, {"cond_or_uncond": [1, 0]}, control=control)
    for mode in ("uncond_id", "none"):
        app = app_for(pulid, cond, uncond_tokens=uncond, uncond=mode)
        opts = dict(patch_options(flux, app), cond_or_uncond=[1, 0])  # uncond chunk first, as ComfyUI with cfg > 1
        with_options = run(flux, x, ctx, 0.5, opts, control=control)
        without = run(flux, x, ctx, 0.5, opts, control=control, pass_options=False)
        assert torch.equal(with_options, without), mode
        assert (with_options[1] - plain[1]).abs().max() > 1e-4  # the positive chunk gets the identity
        if mode == "none":
            assert torch.equal(without[0], plain[0])  # the negative chunk is left alone
        else:
            same = run(flux, x, ctx, 0.5, dict(patch_options(flux, app_for(pulid, cond)), cond_or_uncond=[1, 0]),
                       control=control, pass_options=False)
            assert (without[0] - same[0]).abs().max() > 1e-4  # the negative chunk got the uncond embedding


def test_compiled_model_gets_no_graph_break_from_the_patch(pulid):
    """ComfyUI's TorchCompileModel compiles the whole diffusion model (its DIFFUSION_MODEL wrappers and block
    patches included) and swaps it in at APPLY_MODEL level. The window is decided there, outside the compiled
    code, so the patched model has no more graph breaks than the plain one (float(sigma) per block had one each)."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    flux = MiniFlux(n_double=3, n_single=5)
    x, ctx = inputs(batch=2)
    app = app_for(pulid, id_tokens(16), start=0.2, end=0.8)

    def compiled_run(options, sigma):
        dynamo.reset()
        counters.clear()
        out = run(torch.compile(flux, backend="eager"), x, ctx, sigma, options)
        return out, sum(counters["graph_break"].values())

    plain, plain_breaks = compiled_run({}, 0.5)
    for sigma in (0.5, 0.9):  # inside and outside the window
        out, breaks = compiled_run(patch_options(flux, app), sigma)
        assert breaks == plain_breaks == 0, sigma
        tol.assert_close(out, run(flux, x, ctx, sigma, patch_options(flux, app)), torch.float32, tol.NETWORK)
    assert (out - compiled_run({}, 0.9)[0]).abs().max() == 0 and (compiled_run(patch_options(flux, app), 0.5)[0] - plain).abs().max() > 1e-4


def test_window_is_decided_once_per_call_even_without_the_apply_model_wrapper(pulid):
    """Callers that run the diffusion model directly (no APPLY_MODEL wrapper): the DIFFUSION_MODEL wrapper decides."""
    flux = MiniFlux(n_double=3, n_single=6)
    x, ctx = inputs()
    app = app_for(pulid, id_tokens(17), start=0.25, end=0.75)
    opts = patch_options(flux, app)
    decisions = []
    real = app._window_open
    app._window_open = lambda sigma, window: (decisions.append(float(sigma[0])), real(sigma, window))[1]
    for sigma, on in [(0.9, False), (0.5, True)]:
        t = torch.full((1,), sigma)
        with torch.no_grad():
            out = flux(x, t, ctx, transformer_options=dict(opts, sigmas=t))
            plain = flux(x, t, ctx, transformer_options={"sigmas": t})
        assert (not torch.equal(out, plain)) == on
    assert decisions == pytest.approx([0.9, 0.5])  # one decision per model call, none per block
    decisions.clear()
    run(flux, x, ctx, 0.5, opts)
    assert decisions == [0.5]


def test_step_caches_are_recognised():
    from pulid_flux.compat import step_cache_name

    class EasyCacheHolder:
        pass

    class LazyCacheHolder:
        pass

    class CachedTransformerBlocks(torch.nn.Module):
        pass

    flux = MiniFlux(n_double=1, n_single=1)
    assert step_cache_name(flux, {"easycache": EasyCacheHolder()}) == "EasyCache"
    assert step_cache_name(flux, {"easycache": LazyCacheHolder()}) == "LazyCache"
    assert step_cache_name(flux, {"rel_l1_thresh": 0.4}) == "TeaCache"
    assert step_cache_name(flux, {"wrappers": {"predict_noise": {"lazycache": [print]}}}) == "LazyCache"
    assert step_cache_name(flux, {"wrappers": {"diffusion_model": {"pulid": [print]}}, "sigmas": 1}) is None
    flux.forward_orig = lambda *a, **k: None  # TeaCache / WaveSpeed on Flux: the forward swapped in for the call
    assert step_cache_name(flux, {}) == "a replaced Flux forward_orig (TeaCache or first-block cache style)"
    del flux.forward_orig
    flux.double_blocks = torch.nn.ModuleList([CachedTransformerBlocks()])  # WaveSpeed on other classes
    assert step_cache_name(flux, {}) == "a first-block cache"
    assert step_cache_name(torch.compile(MiniFlux(n_double=1, n_single=1)), {}) is None  # compiled, not replaced


def test_step_cache_warning_once_and_only_with_a_window(pulid, caplog):
    import logging

    flux = MiniFlux(n_double=1, n_single=1)
    x, ctx = inputs()
    for start, end, expected in ((0.2, 0.8, 1), (0.0, 1.0, 0)):
        app = app_for(pulid, id_tokens(18), start=start, end=end)
        opts = dict(patch_options(flux, app), rel_l1_thresh=0.4)  # TeaCache's option on the model
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for sigma in (0.9, 0.5, 0.1):
                run(flux, x, ctx, sigma, opts)
        lines = [r.getMessage() for r in caplog.records if "reuses whole sampling steps" in r.getMessage()]
        assert len(lines) == expected, (start, end)
