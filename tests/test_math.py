"""The ID-embedding and injection maths against straightforward float64 re-computations from the raw weights
(support/reference_math.py)."""
import copy

import pytest
import torch

from support import tolerance as tol
from pulid_flux import (OFFICIAL, TINY, PulidFlux, add_id_attention, encode_id, encode_uncond_id,
                        fuse_id_tokens, injection_points, make_id_cond, tokens_mask)
from support.pulid_fakes import random_state_dict
from support.reference_math import reference_ca, reference_idformer

D = torch.float64


def model_and_sd(cfg, seed=0):
    sd = random_state_dict(cfg, seed=seed, dtype=torch.float32)
    model = PulidFlux(cfg)
    model.load_state_dict(sd)
    return model.eval(), {k: v.to(D) for k, v in sd.items()}


@pytest.fixture(scope="module")
def official():
    return model_and_sd(OFFICIAL)


def inputs(cfg, batch=2, n=577, seed=5):
    g = torch.Generator().manual_seed(seed)
    id_cond = torch.randn(batch, cfg.id_cond_dim, generator=g)
    hidden = [torch.randn(batch, n, cfg.vit_dim, generator=g) for _ in range(cfg.num_scales)]
    return id_cond, hidden


def rel_err(a, b):
    return ((a.to(D) - b.to(D)).norm() / b.to(D).norm()).item()


@pytest.mark.parametrize("size", ["tiny", "official"])
def test_idformer_matches_float64_reference(size, official):
    cfg, (model, sd) = (TINY, model_and_sd(TINY)) if size == "tiny" else (OFFICIAL, official)
    id_cond, hidden = inputs(cfg, batch=2 if cfg is TINY else 1, n=577 if cfg is OFFICIAL else 33)
    want = reference_idformer(sd, cfg, id_cond.to(D), [h.to(D) for h in hidden])
    got = encode_id(copy.deepcopy(model.pulid_encoder).to(D), id_cond, hidden)
    assert got.shape == (id_cond.shape[0], cfg.num_queries, cfg.output_dim) and got.dtype == D
    assert rel_err(got, want) < tol.relative(D)
    # fp32 too (what CPU users compute in)
    got32 = encode_id(model.pulid_encoder, id_cond, hidden)
    assert got32.shape == (id_cond.shape[0], cfg.num_queries, cfg.output_dim) and got32.dtype == torch.float32
    assert rel_err(got32, want) < tol.relative(torch.float32)


@pytest.mark.parametrize("c", [0, 13, 19])
def test_cross_attention_matches_float64_reference(c, official):
    cfg = OFFICIAL
    model, sd = official
    g = torch.Generator().manual_seed(c)
    id_tokens = torch.randn(2, 32, 2048, generator=g)
    img = torch.randn(2, 64, 3072, generator=g)
    want = reference_ca(sd, c, cfg, id_tokens.to(D), img.to(D))
    assert rel_err(copy.deepcopy(model.pulid_ca[c]).to(D)(id_tokens.to(D), img.to(D)), want) < tol.relative(D)
    ca = model.pulid_ca[c]
    assert rel_err(ca(id_tokens, img), want) < tol.relative(torch.float32)
    # the in-place update used at block time: img + weight * CA(id, img)
    k, v = ca.id_kv(id_tokens)
    updated = add_id_attention(img.clone(), ca, k, v, 0.7)
    assert rel_err(updated, img.to(D) + 0.7 * want) < tol.relative(torch.float32, tol.OPS)


def test_update_in_half_precision_casts_back():
    model, sd = model_and_sd(TINY)
    ca = model.pulid_ca[3].to(torch.bfloat16)
    img = torch.randn(1, 16, TINY.img_dim, dtype=torch.float16)
    id_tokens = torch.randn(1, 8, TINY.output_dim)
    k, v = ca.id_kv(id_tokens.to(torch.bfloat16))
    out = add_id_attention(img.clone(), ca, k, v, 1.0)
    assert out.dtype == torch.float16
    want = img.to(D) + reference_ca(sd, 3, TINY, id_tokens.to(D), img.to(D))
    assert rel_err(out, want) < tol.relative(torch.bfloat16, tol.ROUNDING)


def test_uncond_embedding_is_encoder_on_zeros_and_not_zero():
    model, sd = model_and_sd(TINY)
    id_cond, hidden = inputs(TINY, batch=3, n=21)
    un = encode_uncond_id(model.pulid_encoder, id_cond, hidden)
    assert un.shape == (1, TINY.num_queries, TINY.output_dim)
    zeros = reference_idformer(sd, TINY, torch.zeros(1, TINY.id_cond_dim, dtype=D),
                               [torch.zeros(1, 21, TINY.vit_dim, dtype=D)] * 5)
    assert rel_err(un, zeros) < tol.relative(torch.float32)
    assert un.abs().max() > 1e-2


def test_id_cond_normalises_eva_only():
    arc = torch.randn(2, 512) * 20
    eva = torch.randn(2, 768) * 3
    c = make_id_cond(arc, eva)
    assert c.shape == (2, 1280)
    assert torch.equal(c[:, :512], arc)
    tol.assert_close(c[:, 512:].norm(dim=-1), torch.ones(2), torch.float32, tol.OPS)


def test_fusion_modes():
    t = torch.randn(3, 32, 2048)
    tol.assert_close(fuse_id_tokens(t, "mean"), t.to(D).mean(0, keepdim=True), torch.float32, tol.OPS)
    cat = fuse_id_tokens(t, "concat")
    assert cat.shape == (1, 96, 2048) and torch.equal(cat[0, 32:64], t[1])
    mt = fuse_id_tokens(t, "max_token")
    assert mt.shape == (1, 32, 2048)
    for j in range(32):
        best = max(range(3), key=lambda i: t[i, j].norm().item())
        assert torch.equal(mt[0, j], t[best, j])
    assert torch.equal(fuse_id_tokens(t, "max")[0], torch.maximum(torch.maximum(t[0], t[1]), t[2]))
    assert torch.equal(fuse_id_tokens(t[:1], "mean"), t[:1])
    with pytest.raises(ValueError, match="unknown fusion 'median'"):
        fuse_id_tokens(t, "median")


def test_injection_points_official_and_small_models():
    pts = injection_points(19, 38)
    assert len(pts) == 20
    assert [pts[("double_block", i)] for i in range(0, 19, 2)] == list(range(10))
    assert [pts[("single_block", i)] for i in range(0, 38, 4)] == list(range(10, 20))
    assert ("double_block", 1) not in pts and ("single_block", 2) not in pts
    assert injection_points(2, 4) == {("double_block", 0): 0, ("single_block", 0): 10}
    assert injection_points(1, 1) == {("double_block", 0): 0, ("single_block", 0): 10}
    with pytest.raises(ValueError, match="at most 19"):
        injection_points(20, 38)


def test_token_mask_resizes_per_batch_item():
    m = torch.zeros(2, 64, 64)
    m[0, :, :32] = 1  # left half
    m[1, 32:, :] = 1  # bottom half
    w = tokens_mask(m, 8, 4, batch=2)
    assert w.shape == (2, 32, 1)
    grid = w.reshape(2, 8, 4)
    assert torch.equal(grid[0], torch.tensor([[1., 1., 0., 0.]]).expand(8, 4))
    assert torch.equal(grid[1], torch.cat([torch.zeros(4, 4), torch.ones(4, 4)]))
    assert tokens_mask(m[0], 8, 4, batch=3).shape == (3, 32, 1)
    # token weights gate the update: masked-out tokens stay bit-identical
    model, _ = model_and_sd(TINY)
    ca = model.pulid_ca[0]
    img = torch.randn(2, 32, TINY.img_dim)
    k, v = ca.id_kv(torch.randn(1, 8, TINY.output_dim))
    out = add_id_attention(img.clone(), ca, k, v, 1.0, w)
    keep = w[..., 0] == 0
    assert torch.equal(out[keep], img[keep]) and not torch.equal(out[~keep], img[~keep])
