"""Seeded random FLUX.1 diffusion models in the official (Black Forest Labs) key layout, for tests and benchmarks.

ComfyUI reads a model's architecture from its key names and shapes (comfy/model_detection.py), so a file written
from this table loads through ComfyUI's own path (UNETLoader, `comfy.sd.load_diffusion_model_state_dict`) and
gets whatever config the ComfyUI version at hand derives for FLUX.1. No ComfyUI import is needed here."""
from __future__ import annotations

import torch

FULL_WIDTH = dict(hidden=3072, heads=24, context_in_dim=4096, vec_in_dim=768)  # the width ComfyUI detects for FLUX.1


def flux1_shapes(double: int = 1, single: int = 1, hidden: int = 3072, heads: int = 24, context_in_dim: int = 4096,
                 vec_in_dim: int = 768, in_channels: int = 16, patch: int = 2, mlp_ratio: float = 4.0,
                 guidance: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of a FLUX.1 diffusion model (dev with `guidance`, schnell without) and its shape."""
    head_dim, mlp = hidden // heads, int(hidden * mlp_ratio)
    patch_in = in_channels * patch * patch
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out_features: int, in_features: int) -> None:
        shapes[name + ".weight"] = (out_features, in_features)
        shapes[name + ".bias"] = (out_features,)

    def mlp_embedder(name: str, in_features: int) -> None:
        linear(name + ".in_layer", hidden, in_features)
        linear(name + ".out_layer", hidden, hidden)

    linear("img_in", hidden, patch_in)
    mlp_embedder("time_in", 256)
    mlp_embedder("vector_in", vec_in_dim)
    if guidance:
        mlp_embedder("guidance_in", 256)
    linear("txt_in", hidden, context_in_dim)
    for i in range(double):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            linear(p + "mod.lin", 6 * hidden, hidden)
            linear(p + "attn.qkv", 3 * hidden, hidden)
            shapes[p + "attn.norm.query_norm.scale"] = (head_dim,)
            shapes[p + "attn.norm.key_norm.scale"] = (head_dim,)
            linear(p + "attn.proj", hidden, hidden)
            linear(p + "mlp.0", mlp, hidden)
            linear(p + "mlp.2", hidden, mlp)
    for i in range(single):
        p = f"single_blocks.{i}."
        linear(p + "linear1", 3 * hidden + mlp, hidden)
        linear(p + "linear2", hidden, hidden + mlp)
        shapes[p + "norm.query_norm.scale"] = (head_dim,)
        shapes[p + "norm.key_norm.scale"] = (head_dim,)
        linear(p + "modulation.lin", 3 * hidden, hidden)
    linear("final_layer.linear", patch_in, hidden)
    linear("final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return shapes


def random_flux1_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype,
                        std: float = 0.02) -> torch.Tensor:
    """One weight of a random FLUX.1: matrices ~ N(0, std), biases 0, RMSNorm scales 1, made on the generator's
    device (bench/gpu fills a model built on the GPU with it, one tensor at a time)."""
    device = gen.device
    if key.endswith(".scale"):
        return torch.ones(shape, dtype=dtype, device=device)
    if len(shape) == 1:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=gen, device=device).mul_(std).to(dtype)


def random_flux1_state_dict(double: int = 1, single: int = 1, seed: int = 0, dtype: torch.dtype = torch.float16,
                            std: float = 0.02, **widths) -> dict[str, torch.Tensor]:
    """Random weights (random_flux1_tensor). One tensor at a time, so a full-width model never exists twice in
    memory."""
    gen = torch.Generator().manual_seed(seed)
    return {key: random_flux1_tensor(key, shape, gen, dtype, std)
            for key, shape in flux1_shapes(double, single, **widths).items()}
