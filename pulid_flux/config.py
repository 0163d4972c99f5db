"""Architecture constants of PuLID-Flux, kept in one small object so tests can build tiny variants
with exactly the official key structure."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PulidConfig:
    # IDFormer (the ID encoder): turns one ID condition + 5 EVA hidden states into ID tokens.
    dim: int = 1024              # IDFormer width
    depth: int = 10              # perceiver layers, split evenly over the EVA scales
    heads: int = 16
    dim_head: int = 64
    num_id_tokens: int = 5       # tokens made from the ID condition itself
    num_queries: int = 32        # learned latents = ID tokens handed to Flux
    output_dim: int = 2048       # width of the ID tokens
    ff_mult: int = 4
    id_cond_dim: int = 1280      # ArcFace 512 + EVA-CLIP 768
    vit_dim: int = 1024          # EVA-CLIP hidden width
    mapping_dim: int = 1024      # hidden width of the mapping MLPs
    num_scales: int = 5          # EVA hidden states used (blocks 3, 7, 11, 15, 19)
    # ID cross-attention modules injected into Flux.
    img_dim: int = 3072          # Flux hidden size
    ca_heads: int = 16
    ca_dim_head: int = 128
    num_ca: int = 20             # 10 after double blocks, 10 after single blocks
    double_interval: int = 2     # a CA after double blocks 0, 2, ..., 18
    single_interval: int = 4     # a CA after single blocks 0, 4, ..., 36
    num_double_ca: int = 10

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value <= 0:  # bool is not accepted as an int here
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")
        if self.depth % self.num_scales:
            raise ValueError(f"depth {self.depth} must be a multiple of num_scales {self.num_scales}")

    @property
    def layers_per_scale(self) -> int:
        return self.depth // self.num_scales

    @property
    def inner_dim(self) -> int:
        return self.heads * self.dim_head

    @property
    def ca_inner_dim(self) -> int:
        return self.ca_heads * self.ca_dim_head

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PulidConfig":
        return cls(**json.loads(text))


OFFICIAL = PulidConfig()

# A structurally identical model with tiny widths, for fast tests.
TINY = PulidConfig(dim=32, depth=10, heads=2, dim_head=16, num_id_tokens=5, num_queries=8, output_dim=24,
                   ff_mult=4, id_cond_dim=1280, vit_dim=32, mapping_dim=20, num_scales=5,
                   img_dim=48, ca_heads=2, ca_dim_head=8)


def expected_shapes(cfg: PulidConfig = OFFICIAL) -> dict[str, tuple[int, ...]]:
    """Every key of a PuLID-Flux file and its shape, derived from the architecture."""
    shapes: dict[str, tuple[int, ...]] = {}
    enc = "pulid_encoder."
    shapes[enc + "latents"] = (1, cfg.num_queries, cfg.dim)
    shapes[enc + "proj_out"] = (cfg.dim, cfg.output_dim)
    for layer in range(cfg.depth):
        p = f"{enc}layers.{layer}."
        for norm in ("norm1", "norm2"):
            shapes[p + f"0.{norm}.weight"] = (cfg.dim,)
            shapes[p + f"0.{norm}.bias"] = (cfg.dim,)
        shapes[p + "0.to_q.weight"] = (cfg.inner_dim, cfg.dim)
        shapes[p + "0.to_kv.weight"] = (2 * cfg.inner_dim, cfg.dim)
        shapes[p + "0.to_out.weight"] = (cfg.dim, cfg.inner_dim)
        shapes[p + "1.0.weight"] = (cfg.dim,)
        shapes[p + "1.0.bias"] = (cfg.dim,)
        shapes[p + "1.1.weight"] = (cfg.dim * cfg.ff_mult, cfg.dim)
        shapes[p + "1.3.weight"] = (cfg.dim, cfg.dim * cfg.ff_mult)

    def mlp(prefix: str, d_in: int, d_out: int) -> None:
        h = cfg.mapping_dim
        for idx, (i, o) in zip((0, 3, 6), ((d_in, h), (h, h), (h, d_out))):
            shapes[f"{prefix}.{idx}.weight"] = (o, i)
            shapes[f"{prefix}.{idx}.bias"] = (o,)
        for idx in (1, 4):
            shapes[f"{prefix}.{idx}.weight"] = (h,)
            shapes[f"{prefix}.{idx}.bias"] = (h,)

    for scale in range(cfg.num_scales):
        mlp(f"{enc}mapping_{scale}", cfg.vit_dim, cfg.dim)
    mlp(f"{enc}id_embedding_mapping", cfg.id_cond_dim, cfg.dim * cfg.num_id_tokens)

    for c in range(cfg.num_ca):
        p = f"pulid_ca.{c}."
        shapes[p + "norm1.weight"] = (cfg.output_dim,)
        shapes[p + "norm1.bias"] = (cfg.output_dim,)
        shapes[p + "norm2.weight"] = (cfg.img_dim,)
        shapes[p + "norm2.bias"] = (cfg.img_dim,)
        shapes[p + "to_q.weight"] = (cfg.ca_inner_dim, cfg.img_dim)
        shapes[p + "to_kv.weight"] = (2 * cfg.ca_inner_dim, cfg.output_dim)
        shapes[p + "to_out.weight"] = (cfg.img_dim, cfg.ca_inner_dim)
    return shapes
