"""Where and how ID attention enters Flux: the block -> CA index map and the image-token update."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import OFFICIAL, PulidConfig
from .model import IDCrossAttention

FLUX_DOUBLE_BLOCKS = 19
FLUX_SINGLE_BLOCKS = 38


def double_block_ca(i: int, cfg: PulidConfig = OFFICIAL) -> int | None:
    """CA index after double block i (0, 2, ..., 18 -> 0..9), or None."""
    return i // cfg.double_interval if i % cfg.double_interval == 0 else None


def single_block_ca(i: int, cfg: PulidConfig = OFFICIAL) -> int | None:
    """CA index after single block i (0, 4, ..., 36 -> 10..19), or None."""
    return cfg.num_double_ca + i // cfg.single_interval if i % cfg.single_interval == 0 else None


def injection_points(n_double: int, n_single: int, cfg: PulidConfig = OFFICIAL) -> dict[tuple[str, int], int]:
    """{("double_block", i) | ("single_block", i): CA index} for a Flux-family model of that size."""
    if n_double > FLUX_DOUBLE_BLOCKS or n_single > FLUX_SINGLE_BLOCKS:
        raise ValueError(f"PuLID-Flux fits Flux.1 (at most {FLUX_DOUBLE_BLOCKS} double and {FLUX_SINGLE_BLOCKS} "
                         f"single blocks); this model has {n_double} and {n_single}.")
    points = {("double_block", i): double_block_ca(i, cfg) for i in range(n_double)}
    points.update({("single_block", i): single_block_ca(i, cfg) for i in range(n_single)})
    return {k: v for k, v in points.items() if v is not None}


def tokens_mask(mask: torch.Tensor, height: int, width: int, batch: int) -> torch.Tensor:
    """A mask [H,W] or [B,H,W] (any resolution, 0..1) -> per image token weights [batch, height*width, 1].

    height/width are the latent token grid (latent size / 2 for Flux's 2x2 patches). Shrinking averages the mask
    over each token's area (a small region is kept, with a weight in proportion to what it covers); growing is
    bilinear."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3:
        raise ValueError(f"attn_mask must be [H,W] or [B,H,W], got {tuple(mask.shape)}")
    m = mask[:, None].float()
    for axis, size in ((2, height), (3, width)):  # one axis at a time: each shrinks or grows on its own
        if m.shape[axis] == size:
            continue
        target = (size, m.shape[3]) if axis == 2 else (m.shape[2], size)
        if m.shape[axis] > size:  # area: a white region covering part of a token counts in proportion
            m = F.interpolate(m, size=target, mode="area")
        else:
            m = F.interpolate(m, size=target, mode="bilinear", align_corners=False)
    m = m.reshape(m.shape[0], height * width, 1).clamp_(0, 1)
    if m.shape[0] not in (1, batch):
        # A mask batch shorter than the latent batch repeats, as ComfyUI does for masks elsewhere.
        m = m.repeat((batch + m.shape[0] - 1) // m.shape[0], 1, 1)[:batch]
    return m.expand(batch, -1, -1) if m.shape[0] == 1 else m


def add_id_attention(img: torch.Tensor, ca: IDCrossAttention, k: torch.Tensor, v: torch.Tensor,
                     weight: float | torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """img [B,L,D] += weight * CA(id, img), in place, computed in the CA's dtype and cast back.

    k, v: the CA's keys/values of the ID tokens (`ca.id_kv(id_tokens)`), batch 1 or B.
    weight: a float or a per-item tensor [B]; token_weights: optional [B,L,1] region mask."""
    w = ca.to_q.weight
    # Same device/dtype as the CA weights (another dtype for fp8/GGUF models; another device if partly offloaded).
    update = ca.attend(img.to(w.device, w.dtype), k.to(w.device), v.to(w.device))
    scale = weight if not isinstance(weight, torch.Tensor) else weight.to(update).view(-1, 1, 1)
    if token_weights is not None:
        update = update * token_weights.to(update)
    img.add_((update * scale).to(img.device, img.dtype))
    return img
