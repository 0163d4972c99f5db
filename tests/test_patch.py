"""Tier (a): the block patches driven through ComfyUI's documented Flux protocol by a stand-in model."""
import copy

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


def reference(flux, pulid, x, ctx, sigma, tokens, weight, ref_latents=None, token_weights=None):
    """Straightforward: plain block calls, official `img = img + w * CA(id, img)` after the chosen blocks."""
    b, c, h, w_ = x.shape
    n = h * w_ // 4
    img = x.reshape(b, c, h // 2, 2, w_ // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c * 4)
    for r in ref_latents or []:
        img = torch.cat([img, r.reshape(b, c, r.shape[2] // 2, 2, r.shape[3] // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)], 1)
    w = weight if token_weights is None else weight * token_weights
    with torch.no_grad():
        vec = flux.time_in(torch.full((b, 1), sigma))
        img, txt = flux.img_in(img), flux.txt_in(ctx)
        for i, block in enumerate(flux.double_blocks):
            img, txt = block(img, txt, vec, None)
            if i % 2 == 0:
                img = torch.cat([img[:, :n] + w * pulid.pulid_ca[i // 2](tokens, img[:, :n]), img[:, n:]], 1)
        t = txt.shape[1]
        img = torch.cat((txt, img), 1)
        for i, block in enumerate(flux.single_blocks):
            img = block(img, vec, None)
            if i % 4 == 0:
                real = img[:, t:t + n]
                img = torch.cat([img[:, :t], real + w * pulid.pulid_ca[10 + i // 4](tokens, real), img[:, t + n:]], 1)
        out = flux.out(img[:, t:t + n])
    return out.reshape(b, h // 2, w_ // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w_)


def test_patched_forward_equals_reference_and_off_is_bit_identical(pulid):
    flux = MiniFlux(n_double=3, n_single=6)
    x, ctx = inputs(batch=2)
    tokens = id_tokens(1)
    plain = run(flux, x, ctx, 0.5, {})
    patched = run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens, 0.8)))
    want = reference(flux, pulid, x, ctx, 0.5, tokens, 0.8)
    tol.assert_close(patched, want, torch.float32, tol.NETWORK)
    assert (patched - plain).abs().max() > 1e-3
    # weight changes the output
    patched2 = run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens, 1.6)))
    assert (patched2 - patched).abs().max() > 1e-3
    # weight 0 and sigma outside the window leave the model bit-identical
    assert torch.equal(run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens, 0.0))), plain)
    assert torch.equal(run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens, 1.0, start=0.6))), plain)
    assert torch.equal(run(flux, x, ctx, 0.5, {}), plain)


def test_sigma_window_gates_steps(pulid):
    flux = MiniFlux(n_double=1, n_single=1)
    x, ctx = inputs()
    app = app_for(pulid, id_tokens(2), start=0.25, end=0.75)  # sigma window [0.25, 0.75] with patch_inputs.SHIFTED
    opts = patch_options(flux, app)
    for sigma, on in [(1.0, False), (0.8, False), (0.75, True), (0.5, True), (0.25, True), (0.2, False)]:
        changed = not torch.equal(run(flux, x, ctx, sigma, opts), run(flux, x, ctx, sigma, {}))
        assert changed == on, sigma


def test_outer_sample_wrapper_reads_the_schedule_at_sampling_time(pulid):
    app = app_for(pulid, id_tokens(2), start=0.5, end=1.0)
    assert app.sigma_range == (0.5, 0.0)

    class Sampling:
        percent_to_sigma = staticmethod(lambda p: 0.9 if p == 0.5 else 0.0)

    class Patcher:
        def get_model_object(self, name):
            assert name == "model_sampling"
            return Sampling()

    class Guider:
        model_patcher = Patcher()

    seen = {}

    class Executor:
        class_obj = Guider()

        def __call__(self, *a):
            seen["range"] = app.current_run({}).sigma_range
            return "samples"

    assert app.outer_sample(Executor(), 1, 2) == "samples"
    assert seen["range"] == (0.9, 0.0)
    assert app.sigma_range == (0.5, 0.0) and app.current_run({}).sigma_range == (0.5, 0.0)  # for that run only


def test_kontext_reference_tokens_and_text_are_untouched(pulid):
    flux = MiniFlux(n_double=1, n_single=1)
    x, ctx = inputs()
    ref = [torch.randn(1, 4, 4, 4)]
    tokens = id_tokens(3)
    got = run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens)), ref_latents=ref)
    want = reference(flux, pulid, x, ctx, 0.5, tokens, 1.0, ref_latents=ref)
    tol.assert_close(got, want, torch.float32, tol.NETWORK)
    # the recorded grid is the generated image's, not including the 4 reference tokens
    app = app_for(pulid, tokens)
    seen = []
    orig = app.inject
    app.inject = lambda out, args, ca, kind: (seen.append(app.current_call(args["transformer_options"]).info.img_tokens),
                                              orig(out, args, ca, kind))
    run(flux, x, ctx, 0.5, patch_options(flux, app), ref_latents=ref)
    assert seen == [24, 24]


def test_forward_without_transformer_options_falls_back_to_wrapper_state(pulid):
    """Forwards written by other packs (TeaCache) call block patches without transformer_options."""
    flux = MiniFlux(n_double=3, n_single=5)
    x, ctx = inputs()
    tokens = id_tokens(4)
    opts = patch_options(flux, app_for(pulid, tokens, start=0.0, end=0.4))
    with_opts = run(flux, x, ctx, 0.8, opts)
    without = run(flux, x, ctx, 0.8, opts, pass_options=False)
    assert torch.equal(with_opts, without)
    tol.assert_close(without, reference(flux, pulid, x, ctx, 0.8, tokens, 1.0), torch.float32, tol.NETWORK)
    # outside the window (sigma 0.5 < 0.6) it is off in both paths
    assert torch.equal(run(flux, x, ctx, 0.5, opts, pass_options=False), run(flux, x, ctx, 0.5, {}))


def test_uncond_modes_choose_per_chunk(pulid):
    flux = MiniFlux(n_double=1, n_single=1)
    x, ctx = inputs(batch=2)
    cond, uncond = id_tokens(5), id_tokens(6)
    layout = [1, 0]  # ComfyUI's cfg>1 batch: uncond chunk first
    outs = {}
    for mode in ("same", "uncond_id", "none"):
        app = app_for(pulid, cond, uncond_tokens=uncond, uncond=mode)
        outs[mode] = run(flux, x, ctx, 0.5, dict(patch_options(flux, app), cond_or_uncond=layout))
    plain = run(flux, x, ctx, 0.5, {})
    ref_cond = reference(flux, pulid, x, ctx, 0.5, cond, 1.0)
    ref_uncond = reference(flux, pulid, x, ctx, 0.5, uncond, 1.0)
    tol.assert_close(outs["same"], ref_cond, torch.float32, tol.NETWORK)
    tol.assert_close(outs["uncond_id"][1], ref_cond[1], torch.float32, tol.NETWORK)  # positive chunk: the ID embedding
    tol.assert_close(outs["uncond_id"][0], ref_uncond[0], torch.float32, tol.NETWORK)  # negative chunk: the uncond embedding
    assert torch.equal(outs["none"][0], plain[0])
    tol.assert_close(outs["none"][1], ref_cond[1], torch.float32, tol.NETWORK)


def test_mask_restricts_change_to_region_and_two_identities_compose(pulid):
    flux = MiniFlux(n_double=1, n_single=0)  # no single blocks: token mixing there would spread the change
    x, ctx = inputs(h=8, w=8)
    left = torch.zeros(1, 64, 64)
    left[..., :32] = 1
    a = app_for(pulid, id_tokens(7), mask=left)
    plain = run(flux, x, ctx, 0.5, {})
    out = run(flux, x, ctx, 0.5, patch_options(flux, a))
    diff = (out - plain).abs().amax(1)[0]  # [8,8] latent pixels
    assert diff[:, :4].min() > 0 and diff[:, 4:].max() == 0
    b = app_for(pulid, id_tokens(8), mask=1 - left)
    both = run(flux, x, ctx, 0.5, patch_options(flux, b, patch_options(flux, a)))
    only_b = run(flux, x, ctx, 0.5, patch_options(flux, b))
    assert torch.equal(both[..., :4], out[..., :4]) and torch.equal(both[..., 4:], only_b[..., 4:])


def test_soft_mask_equals_weighted_update_and_computes_only_needed_tokens(pulid, monkeypatch):
    from pulid_flux import patch as patch_mod, tokens_mask

    flux = MiniFlux(n_double=3, n_single=5)
    x, ctx = inputs(batch=2, h=8, w=8)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 4:20] = torch.linspace(0.2, 1.0, 16)  # soft, covering a quarter of the image
    tokens = id_tokens(13)
    sizes = []
    real = patch_mod.add_id_attention
    monkeypatch.setattr(patch_mod, "add_id_attention", lambda img, *a, **k: (sizes.append(img.shape[1]), real(img, *a, **k))[1])
    got = run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens, 0.9, mask=mask)))
    weights = tokens_mask(mask, 4, 4, 2)
    want = reference(flux, pulid, x, ctx, 0.5, tokens, 0.9, token_weights=weights)
    tol.assert_close(got, want, torch.float32, tol.NETWORK)
    needed = int((weights[0, :, 0] > 0).sum())
    assert needed == 6 and set(sizes) == {needed}  # only the 6 of 16 tokens with weight > 0 are computed


def test_chained_patches_and_foreign_patch_all_act(pulid):
    flux = MiniFlux(n_double=1, n_single=1)
    x, ctx = inputs()
    calls = []

    def foreign(args, extra):
        calls.append(1)
        out = extra["original_block"](args)
        out["img"] = out["img"] * 1.01
        return out

    t1, t2 = id_tokens(9), id_tokens(10)
    opts = {"patches_replace": {"dit": {("double_block", 0): foreign}}}
    opts = patch_options(flux, app_for(pulid, t1), opts)
    opts = patch_options(flux, app_for(pulid, t2), opts)
    out = run(flux, x, ctx, 0.5, opts)
    assert calls == [1]
    one = run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, t1)))
    assert not torch.equal(out, one)


def test_clones_share_patches_and_weights(pulid):
    flux = MiniFlux(n_double=1, n_single=1)
    app = app_for(pulid, id_tokens(11))
    opts = patch_options(flux, app)
    copies = [copy.deepcopy(opts) for _ in range(3)]
    for c in copies:
        p = c["patches_replace"]["dit"][("double_block", 0)]
        assert p is opts["patches_replace"]["dit"][("double_block", 0)] and p.app.ca is pulid.pulid_ca
    assert app.to(torch.float16) is app


def test_keys_values_are_computed_once_per_run(pulid):
    flux = MiniFlux(n_double=3, n_single=6)
    x, ctx = inputs()
    app = app_for(pulid, id_tokens(12))
    calls = []
    orig = type(pulid.pulid_ca[0]).id_kv
    type(pulid.pulid_ca[0]).id_kv = lambda self, t: (calls.append(1), orig(self, t))[1]
    try:
        opts = patch_options(flux, app)
        for sigma in (0.9, 0.5, 0.1):
            run(flux, x, ctx, sigma, opts)
    finally:
        type(pulid.pulid_ca[0]).id_kv = orig
    assert len(calls) == 4  # 2 double + 2 single injection points, once each for three steps


def test_a_region_smaller_than_a_token_counts_in_proportion(pulid):
    """Area scaling to the token grid: a 4x4 px white square in a 64x64 mask covers 1/16 of one 16x16 px token
    (bilinear point sampling missed it entirely: no token selected, and sampling crashed)."""
    from pulid_flux import tokens_mask

    flux = MiniFlux(n_double=3, n_single=5)
    x, ctx = inputs(h=8, w=8)  # 4x4 tokens
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:24, 36:40] = 1  # inside token (row 1, col 2)
    expected = torch.zeros(1, 16, 1)
    expected[0, 1 * 4 + 2, 0] = 16 / 256
    assert torch.equal(tokens_mask(mask, 4, 4, 1), expected)
    tokens = id_tokens(14)
    got = run(flux, x, ctx, 0.5, patch_options(flux, app_for(pulid, tokens, 0.9, mask=mask)))
    want = reference(flux, pulid, x, ctx, 0.5, tokens, 0.9, token_weights=expected)
    tol.assert_close(got, want, torch.float32, tol.NETWORK)
    assert (got - run(flux, x, ctx, 0.5, {})).abs().max() > 1e-4
    # soft and uneven: every mask pixel weighs in proportion to the area it covers
    soft = torch.rand(2, 24, 40, generator=torch.Generator().manual_seed(0))
    weights = tokens_mask(soft, 4, 5, 2)
    tol.assert_close(weights, soft.reshape(2, 4, 6, 5, 8).mean((2, 4)).reshape(2, 20, 1), torch.float32, tol.OPS)
    # enlarging (a mask smaller than the grid) still interpolates
    small = torch.tensor([[0.0, 1.0]])
    tol.assert_close(tokens_mask(small, 1, 4, 1).flatten(), torch.tensor([0.0, 0.25, 0.75, 1.0]), torch.float32, tol.OPS)


def test_mask_covering_no_token_adds_nothing_and_logs_once(pulid, caplog):
    import logging

    flux = MiniFlux(n_double=3, n_single=5)
    x, ctx = inputs(batch=2, h=8, w=8)
    app = app_for(pulid, id_tokens(15), mask=torch.zeros(1, 64, 64))
    opts = patch_options(flux, app)
    with caplog.at_level(logging.WARNING):
        for sigma in (0.9, 0.5, 0.1):
            assert torch.equal(run(flux, x, ctx, sigma, opts), run(flux, x, ctx, sigma, {}))
    lines = [r.getMessage() for r in caplog.records if "attn_mask" in r.getMessage()]
    assert lines == ["PuLID-Flux: the attn_mask covers no part of the image (all black at this size): this "
                     "identity adds nothing."]


@pytest.mark.parametrize("pass_options", [True, False], ids=["blocks_get_options", "forward_without_options"])
def test_model_calls_in_two_threads_keep_their_own_state(pulid, pass_options):
    """Two threads calling one application at once (clones sampled together, v0.29's MultiGPU twins): one at a
    sigma inside the window with a cond/uncond batch, one outside it with another grid. Each call's window
    decision, layout and text length must stay its own."""
    import threading

    flux = MiniFlux(n_double=3, n_single=5)
    app = app_for(pulid, id_tokens(20), start=0.25, end=0.75, uncond_tokens=id_tokens(21), uncond="uncond_id")
    opts = patch_options(flux, app)
    jobs = [(inputs(batch=2, seed=1), 0.5, dict(opts, cond_or_uncond=[1, 0])),
            (inputs(batch=1, h=12, w=8, seed=2), 0.9, opts)]
    serial = [run(flux, x, ctx, sigma, o, pass_options=pass_options) for (x, ctx), sigma, o in jobs]
    assert not torch.equal(serial[0], run(flux, *jobs[0][0], 0.5, {}))  # the identity acts in the first
    wrong = []

    def loop(i):
        (x, ctx), sigma, o = jobs[i]
        for _ in range(30):
            if not torch.equal(run(flux, x, ctx, sigma, o, pass_options=pass_options), serial[i]):
                wrong.append(i)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
