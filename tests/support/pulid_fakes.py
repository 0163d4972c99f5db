"""Seeded random PuLID-Flux files in the official layout, for tests and benchmarks (never shipped as files)."""
from __future__ import annotations

import os

import torch

from pulid_flux.config import OFFICIAL, PulidConfig, expected_shapes
from pulid_flux.weights import CONFIG_METADATA_KEY


def random_state_dict(cfg: PulidConfig = OFFICIAL, seed: int = 0,
                      dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Random weights with sane magnitudes: norms near 1, matrices ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(cfg).items():
        if key.endswith("bias"):
            t = torch.randn(shape, generator=gen) * 0.02
        elif len(shape) == 1:  # LayerNorm weight
            t = 1.0 + torch.randn(shape, generator=gen) * 0.1
        else:
            t = torch.randn(shape, generator=gen) * shape[-1] ** -0.5
            if key.endswith("proj_out"):  # [dim, out] used as x @ proj_out
                t = torch.randn(shape, generator=gen) * shape[0] ** -0.5
        state[key] = t.to(dtype)
    return state


def write_pulid_file(path: str, cfg: PulidConfig = OFFICIAL, seed: int = 0,
                     dtype: torch.dtype = torch.float16) -> str:
    """Write a random PuLID-Flux file (.safetensors, or .pt/.pth/.bin as a plain tensor dict)."""
    from safetensors.torch import save_file

    state = random_state_dict(cfg, seed, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        metadata = None if cfg == OFFICIAL else {CONFIG_METADATA_KEY: cfg.to_json()}
        save_file(state, path, metadata=metadata)
    else:
        torch.save(state, path)
    return path
