"""Straightforward re-computations of the PuLID ID encoder (IDFormer) and the ID cross-attention from the raw
weights (a state dict under the checkpoint's key names), which the tests run in float64: the references of
test_math.py and test_comfyui_embedding.py."""
import math

import torch


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
