"""The ID-embedding and injection maths against straightforward float64 re-computations from the raw weights."""
import copy
import math

import pytest
import torch

from support import tolerance as tol
from pulid_flux import (OFFICIAL, TINY, PulidFlux, add_id_attention, encode_id, encode_uncond_id,
                        fuse_id_tokens, injection_points, make_id_cond, tokens_mask)
from support.pulid_fakes import random_state_dict

D = torch.float64


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def attention(q, k, v, heads):
    """Explicit multi-head attention with the official q*s, k*s, s = dim_head**-0.25."""
    b, n, inner = q.shape
    dh = inner // heads
    s = dh ** -0.25
    q = q.reshape(b, n, heads, dh)
    k = k.reshape(b, k.shape[1], heads, dh)
    v = v.reshape(b, v.shape[1], heads, dh)
    logits = torch.einsum("bnhd,bmhd->bhnm", q * s, k * s)
    w = torch.exp(logits - logits.amax(-1, keepdim=True))
    w = w / w.sum(-1, keepdim=True)
    return torch.einsum("bhnm,bmhd->bnhd", w, v).reshape(b, n, inner)


def mlp(x, sd, p):
    leaky = lambda t: torch.where(t > 0, t, 0.01 * t)
    x = leaky(layer_norm(x @ sd[p + "0.weight"].T + sd[p + "0.bias"], sd[p + "1.weight"], sd[p + "1.bias"]))
    x = leaky(layer_norm(x @ sd[p + "3.weight"].T + sd[p + "3.bias"], sd[p + "4.weight"], sd[p + "4.bias"]))
    return x @ sd[p + "6.weight"].T + sd[p + "6.bias"]


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_idformer(sd, cfg, id_cond, hidden):
    e = "pulid_encoder."
    B = id_cond.shape[0]
    x = mlp(id_cond, sd, e + "id_embedding_mapping.").reshape(B, cfg.num_id_tokens, cfg.dim)
    lat = torch.cat([sd[e + "latents"].expand(B, -1, -1), x], 1)
    per = cfg.depth // 5
    for scale in range(5):
        ctx = torch.cat([x, mlp(hidden[scale], sd, f"{e}mapping_{scale}.")], 1)
        for L in range(scale * per, (scale + 1) * per):
            p = f"{e}layers.{L}."
            c = layer_norm(ctx, sd[p + "0.norm1.weight"], sd[p + "0.norm1.bias"])
            l_ = layer_norm(lat, sd[p + "0.norm2.weight"], sd[p + "0.norm2.bias"])
            q = l_ @ sd[p + "0.to_q.weight"].T
            kv = torch.cat([c, l_], 1) @ sd[p + "0.to_kv.weight"].T
            k, v = kv[..., :kv.shape[-1] // 2], kv[..., kv.shape[-1] // 2:]
            lat = attention(q, k, v, cfg.heads) @ sd[p + "0.to_out.weight"].T + lat
            h = layer_norm(lat, sd[p + "1.0.weight"], sd[p + "1.0.bias"])
            lat = gelu(h @ sd[p + "1.1.weight"].T) @ sd[p + "1.3.weight"].T + lat
    return lat[:, :cfg.num_queries] @ sd[e + "proj_out"]


def reference_ca(sd, c, cfg, id_tokens, img):
    p = f"pulid_ca.{c}."
    x = layer_norm(id_tokens, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
    im = layer_norm(img, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    kv = x @ sd[p + "to_kv.weight"].T
    half = kv.shape[-1] // 2
    return attention(im @ sd[p + "to_q.weight"].T, kv[..., :half], kv[..., half:], cfg.ca_heads) @ sd[p + "to_out.weight"].T


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
