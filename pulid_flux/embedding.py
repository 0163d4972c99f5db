"""ID embeddings: from encoder features to the ID tokens Flux attends to, and fusing several references."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .model import IDFormer

FUSION_MODES = ("mean", "concat", "max_token", "max")


def make_id_cond(arcface_embedding: torch.Tensor, eva_embedding: torch.Tensor) -> torch.Tensor:
    """[B,512] raw ArcFace + [B,768] EVA-CLIP (L2-normalised here, as officially) -> [B,1280]."""
    return torch.cat((arcface_embedding, F.normalize(eva_embedding, dim=-1)), dim=-1)


@torch.no_grad()
def encode_id(encoder: IDFormer, id_cond: torch.Tensor, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B,1280] + num_scales x [B,N,1024] -> ID tokens [B,32,2048], computed in the encoder's dtype/device."""
    p = encoder.latents
    return encoder(id_cond.to(p), [h.to(p) for h in hidden_states])


@torch.no_grad()
def encode_uncond_id(encoder: IDFormer, id_cond: torch.Tensor, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """The negative ID embedding of official true CFG: the encoder on zeros of the same shapes (it is not zero)."""
    return encode_id(encoder, torch.zeros_like(id_cond[:1]), [torch.zeros_like(h[:1]) for h in hidden_states])


def fuse_id_tokens(tokens: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Several references' ID tokens [N,T,D] -> one embedding.

    mean: [1,T,D] average (default); concat: [1,N*T,D] all tokens side by side;
    max_token: [1,T,D] per token position the reference whose token has the largest norm;
    max: [1,T,D] element-wise maximum."""
    if tokens.dim() != 3 or tokens.shape[0] == 0:
        raise ValueError(f"fuse_id_tokens expects [N,T,D] with N >= 1, got {tuple(tokens.shape)}")
    if mode == "mean":
        return tokens.mean(dim=0, keepdim=True)
    if mode == "concat":
        return tokens.reshape(1, -1, tokens.shape[-1])
    if mode == "max_token":
        best = tokens.norm(dim=-1).argmax(dim=0)  # [T]
        return tokens[best, torch.arange(tokens.shape[1], device=tokens.device)].unsqueeze(0)
    if mode == "max":
        return tokens.max(dim=0, keepdim=True).values
    raise ValueError(f"unknown fusion '{mode}'; choose one of {', '.join(FUSION_MODES)}")
