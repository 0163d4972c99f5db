"""PuLID-Flux modules with the official parameter names: the IDFormer and the ID cross-attentions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import OFFICIAL, PulidConfig


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Official: (q*s)(k*s)^T with s = dim_head**-0.25, softmax in float32. SDPA's scale dim_head**-0.5
    # is the same product; it accumulates the softmax in float32 for half inputs too.
    return F.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5)


class _AttentionLayers(nn.Module):
    """The official attention parameters: norm1 on the keys' side, norm2 on the queries' side, to_q, to_kv, to_out
    (registered in this order: the state dict keys follow it)."""

    def __init__(self, query_dim: int, kv_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(kv_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)


class PerceiverAttention(_AttentionLayers):
    """Latents attend to (context, latents); keys and values from both, queries from the latents."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__(dim, dim, heads, dim_head)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context = self.norm1(context)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((context, latents), dim=1)).chunk(2, dim=-1)
        out = _attend(*(_split_heads(t, self.heads) for t in (q, k, v)))
        return self.to_out(_merge_heads(out))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _mapping(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, d_out))


class IDFormer(nn.Module):
    """ID condition [B, id_cond_dim] + num_scales EVA hidden states [B, N, vit_dim] -> [B, num_queries, output_dim]."""

    def __init__(self, cfg: PulidConfig = OFFICIAL):
        super().__init__()
        self.cfg = cfg
        scale = cfg.dim ** -0.5
        self.latents = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.dim) * scale)
        self.proj_out = nn.Parameter(torch.randn(cfg.dim, cfg.output_dim) * scale)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(cfg.dim, cfg.heads, cfg.dim_head), _feed_forward(cfg.dim, cfg.ff_mult)])
            for _ in range(cfg.depth))
        for i in range(cfg.num_scales):
            setattr(self, f"mapping_{i}", _mapping(cfg.vit_dim, cfg.mapping_dim, cfg.dim))
        self.id_embedding_mapping = _mapping(cfg.id_cond_dim, cfg.mapping_dim, cfg.dim * cfg.num_id_tokens)

    def forward(self, id_cond: torch.Tensor, hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        cfg = self.cfg
        if len(hidden_states) != cfg.num_scales:
            raise ValueError(f"IDFormer needs {cfg.num_scales} EVA hidden states, got {len(hidden_states)}")
        id_tokens = self.id_embedding_mapping(id_cond).reshape(-1, cfg.num_id_tokens, cfg.dim)
        latents = torch.cat((self.latents.expand(id_cond.shape[0], -1, -1), id_tokens), dim=1)
        per = cfg.layers_per_scale
        for i, hidden in enumerate(hidden_states):
            context = torch.cat((id_tokens, getattr(self, f"mapping_{i}")(hidden)), dim=1)
            for attn, ff in self.layers[i * per:(i + 1) * per]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, :cfg.num_queries] @ self.proj_out


class IDCrossAttention(_AttentionLayers):
    """Image tokens [B, L, img_dim] attend to ID tokens [B, T, output_dim]; returns the update [B, L, img_dim].

    Split into `id_kv` (once per ID embedding) and `attend` (per block call) so the keys and values of the
    32 ID tokens need not be recomputed at every step."""

    def __init__(self, img_dim: int, id_dim: int, heads: int, dim_head: int):
        super().__init__(img_dim, id_dim, heads, dim_head)

    def id_kv(self, id_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def attend(self, img: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.to_q(self.norm2(img)), self.heads)
        if k.shape[0] != q.shape[0]:
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        return self.to_out(_merge_heads(_attend(q, k, v)))

    def forward(self, id_tokens: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        return self.attend(img, *self.id_kv(id_tokens))


class PulidFlux(nn.Module):
    """The whole file: `pulid_encoder` (IDFormer) and `pulid_ca` (the ID cross-attentions)."""

    def __init__(self, cfg: PulidConfig = OFFICIAL):
        super().__init__()
        self.cfg = cfg
        self.pulid_encoder = IDFormer(cfg)
        self.pulid_ca = nn.ModuleList(
            IDCrossAttention(cfg.img_dim, cfg.output_dim, cfg.ca_heads, cfg.ca_dim_head) for _ in range(cfg.num_ca))
