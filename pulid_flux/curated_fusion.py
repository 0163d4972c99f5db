"""Fusing several references' ID tokens after curation: keep some rows, or weight them. Built on
embedding.fuse_id_tokens, so without curation the result is exactly today's. IdTokenMaker hands the ID encoder and
this fusion to the one encode path (encoders/references.py)."""
from __future__ import annotations

from typing import Sequence

import torch

from .embedding import encode_id, fuse_id_tokens
from .model import IDFormer


def fuse_curated(tokens: torch.Tensor, fusion: str = "mean", rows: Sequence[int] | None = None,
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """ID tokens [N,T,D] of N references -> one embedding, like fuse_id_tokens, after curation.

    rows: the rows to keep (None: all). Keeping every row in order returns fuse_id_tokens(tokens, fusion) itself,
        bit for bit; keeping some gives exactly the fusion of those references alone.
    weights: one per kept row (None: the plain fusion). A weighted mean, sum(w_i * t_i) / sum(w_i), computed in
        float64 and returned in the tokens' dtype; only for fusion 'mean' (a weighted concat or maximum has no
        meaning). Weights must be finite, >= 0 and not all 0."""
    if tokens.dim() != 3 or tokens.shape[0] == 0:
        raise ValueError(f"fuse_curated expects ID tokens [N,T,D] with N >= 1, got {tuple(tokens.shape)}")
    if rows is not None:
        rows = [int(r) for r in rows]
        if not rows or any(not 0 <= r < tokens.shape[0] for r in rows):
            raise ValueError(f"fuse_curated: rows {rows} must be a non-empty selection of 0..{tokens.shape[0] - 1}")
        if rows != list(range(tokens.shape[0])):
            tokens = tokens[rows]
    if weights is None:
        return fuse_id_tokens(tokens, fusion)
    if fusion != "mean":
        raise ValueError(f"curate 'weight' makes a weighted mean, so it needs fusion 'mean' (got '{fusion}'); "
                         f"use curate 'drop' to leave photos out with fusion '{fusion}'.")
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64, device=tokens.device)
    if w.numel() != tokens.shape[0] or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fuse_curated: weights {list(weights)} must be {tokens.shape[0]} finite numbers >= 0, "
                         f"not all 0")
    fused = (tokens.double() * (w / w.sum()).view(-1, 1, 1)).sum(dim=0, keepdim=True)
    return fused.to(tokens.dtype)


class IdTokenMaker:
    """The PuLID ID encoder as encoders.references.encode_references uses it (that package does not import this
    one): ID tokens for a batch of faces, then their fusion after curation."""

    def __init__(self, encoder: IDFormer):
        self.encoder = encoder

    def encode(self, id_cond: torch.Tensor, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        return encode_id(self.encoder, id_cond, hidden_states)

    def uncond(self, eva_tokens: int) -> torch.Tensor:
        """The uncond ID tokens of official true CFG: the encoder on zeros shaped like one face's inputs (the ID
        condition, and num_scales EVA hidden states of `eva_tokens` tokens). Not zero; [1,Q,D] in its dtype."""
        cfg = self.encoder.cfg
        return encode_id(self.encoder, torch.zeros(1, cfg.id_cond_dim),
                         [torch.zeros(1, eva_tokens, cfg.vit_dim)] * cfg.num_scales)

    def fuse(self, tokens: torch.Tensor, fusion: str = "mean", weights: Sequence[float] | None = None) -> torch.Tensor:
        return fuse_curated(tokens, fusion, None, weights)
