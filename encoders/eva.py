"""EVA02-CLIP-L-14-336 image tower (timm) loaded from the BAAI checkpoint, the open_clip copy or timm weights."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import EncoderModelError, load_tensors, model_error, read_tensor_shapes

EVA_DOWNLOAD_HINT = (
    "PuLID-Flux needs EVA02-CLIP-L-14-336: download EVA02_CLIP_L_336_psz14_s6B.pt from "
    "https://huggingface.co/QuanSun/EVA-CLIP/tree/main or open_clip_model.safetensors from "
    "https://huggingface.co/timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/tree/main "
    "(keep eva02 in the file name) and put it in models/clip_vision/.")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# BAAI EVA-CLIP parameter names -> timm names (FACTS §3); everything else keeps its name.
BAAI_TO_TIMM_RENAMES = (
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
)


@dataclass(frozen=True)
class EvaConfig:
    """Architecture of the EVA02 CLIP image tower; tests use a narrow variant with the same key structure."""
    width: int = 1024
    depth: int = 24
    heads: int = 16
    embed_dim: int = 768  # projected CLS embedding
    image_size: int = 336
    patch_size: int = 14
    hidden_layers: tuple[int, ...] = (3, 7, 11, 15, 19)  # blocks whose outputs feed the IDFormer
    timm_name: str = "eva02_large_patch14_clip_336"

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


EVA02_CLIP_L_336 = EvaConfig()


def build_timm_eva(config: EvaConfig = EVA02_CLIP_L_336, device: str | torch.device = "meta") -> nn.Module:
    """The timm EVA02 CLIP tower for `config`, never touching a model hub (pretrained=False)."""
    import timm

    if max(config.hidden_layers) >= config.depth:
        raise ValueError(f"EvaConfig: hidden layer {max(config.hidden_layers)} needs depth > {config.depth}.")
    with torch.device(device):
        return timm.create_model(config.timm_name, pretrained=False, embed_dim=config.width, depth=config.depth,
                                 num_heads=config.heads, num_classes=config.embed_dim, img_size=config.image_size,
                                 patch_size=config.patch_size)


def expected_shapes(config: EvaConfig = EVA02_CLIP_L_336) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_timm_eva(config).state_dict().items()}


def baai_to_timm_keys(keys) -> dict[str, str]:
    """Map BAAI `visual.*` names to timm names; text tower, logit scale and rope buffers are dropped."""
    mapping = {}
    for key in keys:
        if not key.startswith("visual.") or ".rope." in f".{key[len('visual.'):]}":
            continue
        new = "." + key[len("visual."):]
        for old, replacement in BAAI_TO_TIMM_RENAMES:
            new = new.replace(old, replacement)
        mapping[key] = new[1:]
    return mapping


def detect_layout(keys) -> str | None:
    """'baai' (whole EVA-CLIP, visual.*), 'open_clip' (visual.trunk.*), 'timm' (bare), or None."""
    keys = set(keys)
    if "visual.trunk.pos_embed" in keys:
        return "open_clip"
    if "visual.pos_embed" in keys and any(k.startswith("visual.blocks.") for k in keys):
        return "baai"
    if "pos_embed" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    return None


def to_timm_keys(keys, layout: str) -> dict[str, str]:
    if layout == "baai":
        return baai_to_timm_keys(keys)
    if layout == "open_clip":
        prefix = "visual.trunk."
        return {k: k[len(prefix):] for k in keys if k.startswith(prefix)}
    return {k: k for k in keys}


def _describe_foreign(keys: list[str]) -> str:
    def has(*prefixes):
        return any(k.startswith(prefixes) for k in keys)

    if has("pulid_encoder.", "pulid_ca."):
        return "this is a PuLID-Flux weight file, not EVA-CLIP (load it with the PuLID model loader)."
    if has("id_adapter", "image_proj."):
        return "this is PuLID for SDXL, not EVA-CLIP."
    if has("model.diffusion_model.", "conditioner.", "first_stage_model.", "input_blocks.", "double_blocks."):
        return "this is a diffusion model checkpoint (SDXL/SD/Flux), not EVA-CLIP."
    if has("vision_model.", "visual.transformer.", "visual.conv1.", "text_model."):
        return "this is a different CLIP model (OpenAI/OpenCLIP ViT or a ComfyUI clip_vision file), not EVA02-CLIP."
    return "no EVA02 CLIP image tower found in it (expected visual.* / visual.trunk.* keys)."


def _shape_problem(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                   config: EvaConfig) -> str | None:
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if shapes[k] != expected[k])
    if not (missing or unexpected or wrong):
        return None
    pos, width = shapes.get("pos_embed"), shapes.get("cls_token", (0, 0, 0))[-1]
    depth = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    lines = []
    if pos and width == config.width and pos[1] != config.tokens:
        side = round((pos[1] - 1) ** 0.5) * config.patch_size
        lines.append(f"this EVA-CLIP works at {side} px ({pos[1]} tokens); PuLID-Flux needs the "
                     f"{config.image_size} px model ({config.tokens} tokens).")
    elif width and (width != config.width or depth != config.depth):
        lines.append(f"this EVA/ViT image tower has width {width} and {depth} blocks; expected width "
                     f"{config.width} and {config.depth} blocks (EVA02-CLIP-L-14-{config.image_size}).")
    else:
        lines.append("the EVA02-CLIP image tower does not have the expected keys and shapes.")
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"  {title} ({len(items)}): {', '.join(items[:5])}{more}")
    if wrong:
        lines.append(f"  wrong shapes ({len(wrong)}): " + ", ".join(
            f"{k}: file {list(shapes[k])}, expected {list(expected[k])}" for k in wrong[:5]))
    return "\n".join(lines)


def _check_keys(path: str, shapes_by_file_key: dict[str, tuple[int, ...]], config: EvaConfig) -> dict[str, str]:
    """Validate the file's image tower against `config`; returns file key -> timm key."""
    layout = detect_layout(shapes_by_file_key)
    if layout is None:
        raise model_error(path, _describe_foreign(list(shapes_by_file_key)), EVA_DOWNLOAD_HINT)
    mapping = to_timm_keys(shapes_by_file_key, layout)
    shapes = {new: tuple(shapes_by_file_key[old]) for old, new in mapping.items()}
    problem = _shape_problem(shapes, expected_shapes(config), config)
    if problem:
        raise model_error(path, problem, EVA_DOWNLOAD_HINT)
    return mapping


def read_eva_state_dict(path: str, config: EvaConfig = EVA02_CLIP_L_336) -> dict[str, torch.Tensor]:
    """The image tower's weights in timm names, validated; a safetensors file is checked before it is read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EncoderModelError(f"EVA-CLIP file not found: {path}\n  {EVA_DOWNLOAD_HINT}")
    if path.endswith(".safetensors"):
        mapping = _check_keys(path, read_tensor_shapes(path, EVA_DOWNLOAD_HINT), config)
        state = load_tensors(path, EVA_DOWNLOAD_HINT)
    else:
        state = load_tensors(path, EVA_DOWNLOAD_HINT)
        mapping = _check_keys(path, {k: tuple(v.shape) for k, v in state.items()}, config)
    return {new: state[old] for old, new in mapping.items()}


class EvaClipVision(nn.Module):
    """EVA02-CLIP image tower returning the projected CLS embedding and selected block outputs.

    Runs on whatever device/dtype the module currently has (`.to()` it as needed)."""

    def __init__(self, trunk: nn.Module, config: EvaConfig = EVA02_CLIP_L_336):
        super().__init__()
        self.trunk = trunk
        self.config = config
        self.image_size = config.image_size
        self.image_mean = OPENAI_MEAN
        self.image_std = OPENAI_STD

    @property
    def device(self) -> torch.device:
        return self.trunk.cls_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.trunk.cls_token.dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] RGB in [0,1] -> resized, normalized pixels on this module's device and dtype."""
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):
            # antialias off: what the official pipeline's torchvision 0.15 resize did on tensors
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=False)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalized pixels -> (embedding [B,embed_dim], not normalized; hidden states, each [B,tokens,width]:
        outputs of `config.hidden_layers` blocks with the CLS token, before the final norm)."""
        final, intermediates = self.trunk.forward_intermediates(
            pixels.to(self.device, self.dtype), indices=list(self.config.hidden_layers), return_prefix_tokens=True,
            norm=False, output_fmt="NLC")
        hidden = [torch.cat([prefix, spatial], dim=1) for spatial, prefix in intermediates]
        return self.trunk.forward_head(final), hidden


def eva_from_state_dict(state: dict[str, torch.Tensor], config: EvaConfig = EVA02_CLIP_L_336,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> EvaClipVision:
    """Build without random init (meta device), then load timm-named weights."""
    trunk = build_timm_eva(config).to_empty(device="cpu")
    for module in trunk.modules():  # rope tables are not in the checkpoint: compute them
        init_buffers = getattr(module, "init_non_persistent_buffers", None)
        if init_buffers is not None and module is not trunk:
            init_buffers()
    trunk.load_state_dict(state, strict=True)
    model = EvaClipVision(trunk, config).eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def load_eva_clip(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  config: EvaConfig = EVA02_CLIP_L_336) -> EvaClipVision:
    """EVA02-CLIP-L-14-336 image tower from EVA02_CLIP_L_336_psz14_s6B.pt (BAAI), open_clip_model.safetensors /
    open_clip_pytorch_model.bin (open_clip, visual.trunk.*) or a timm-named file. Raises EncoderModelError."""
    return eva_from_state_dict(read_eva_state_dict(path, config), config, device, dtype)
