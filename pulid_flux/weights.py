"""Loading PuLID-Flux weight files: validate every key and shape before building anything."""
from __future__ import annotations

import json
import os
import pickle
import re

import torch

from .config import OFFICIAL, PulidConfig, expected_shapes
from .model import PulidFlux

DOWNLOAD_HINT = ("Download pulid_flux_v0.9.1.safetensors (or v0.9.0) from https://huggingface.co/guozinan/PuLID "
                 "into ComfyUI/models/pulid/.")
CONFIG_METADATA_KEY = "pulid_config"  # written only by this project's test fixtures for tiny variants
_PREFIXES = ("pulid_encoder.", "pulid_ca.")


class PulidWeightsError(ValueError):
    """A PuLID-Flux file that cannot be used, with the reason and what to download instead."""


def _fail(path: str, problem: str) -> PulidWeightsError:
    return PulidWeightsError(f"{os.path.basename(path)}: {problem}\n  file: {path}\n  {DOWNLOAD_HINT}")


def _read_safetensors_header(path: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Keys, shapes and metadata without reading tensor data; raises on a truncated or corrupt header."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _fail(path, f"the file is only {size} bytes: truncated or not a safetensors file.")
        n = int.from_bytes(raw, "little")
        if n <= 0 or 8 + n > size:
            raise _fail(path, "the safetensors header is corrupt or the file is truncated.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _fail(path, "the safetensors header is not valid JSON: the file is corrupt.") from None
    if not isinstance(header, dict):
        raise _fail(path, "the safetensors header is corrupt: it is not a table of tensors.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "the safetensors header is corrupt: its metadata is not a table of strings.")
    for key, info in header.items():
        problem = _entry_problem(info)
        if problem:
            raise _fail(path, f"the safetensors header is corrupt: the entry of '{key}' {problem}.")
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + n + end > size:
        raise _fail(path, f"the file is truncated: it has {size:,} bytes, its header describes {8 + n + end:,}.")
    return {k: tuple(v["shape"]) for k, v in header.items()}, metadata


def _is_int(x) -> bool:
    return type(x) is int and x >= 0


def _entry_problem(info) -> str | None:
    """What is wrong with one tensor entry of a safetensors header, or None."""
    if not isinstance(info, dict):
        return "is not an object"
    if not isinstance(info.get("dtype"), str):
        return "has no dtype"
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        return "has no valid shape (a list of non-negative integers)"
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        return "has no valid data_offsets (begin and end, begin <= end)"
    return None


def torch_load_problem(error: Exception, advice: str) -> str:
    """Why torch.load(weights_only=True) failed, in one line (same wording as encoders.checkpoint, which this
    package does not import): a refused pickle (`advice` ends that sentence) or a truncated/broken file."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        such = f" (pickled code such as {found.group(1)})" if found else ""
        return f"refused: it holds Python objects other than tensors{such}, which is refused for safety; {advice}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = re.split(r"(?<=[^.\s]{2})\. ", first, maxsplit=1)[0]  # torch's first sentence only
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"the file is truncated or broken ({detail}); download it again."


def _describe_foreign(path: str, keys: list[str]) -> str | None:
    if any(k.startswith(("id_adapter", "id_adapter_attn_layers")) for k in keys):
        return "this is PuLID for SDXL (pulid_v1.1.safetensors / pulid_v1.bin), not PuLID-Flux."
    if any(k.startswith(("double_blocks.", "model.diffusion_model.", "single_blocks.")) for k in keys):
        return "this is a Flux diffusion model, not PuLID-Flux weights (load it with the diffusion model loader)."
    if any(k.startswith(("visual.", "vision_model.", "blocks.")) for k in keys):
        return "this is a CLIP image encoder (EVA-CLIP?), not PuLID-Flux weights."
    return None


def validate_keys(path: str, shapes: dict[str, tuple[int, ...]], cfg: PulidConfig) -> None:
    foreign = _describe_foreign(path, list(shapes))
    if foreign and not any(k.startswith(_PREFIXES) for k in shapes):
        raise _fail(path, foreign)
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k}: file {list(shapes[k])}, expected {list(expected[k])}"
             for k in sorted(set(expected) & set(shapes)) if tuple(shapes[k]) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"not a PuLID-Flux v0.9 weight file ({len(expected)} tensors expected, {len(shapes)} found)."]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"  {title} ({len(items)}): {', '.join(items[:5])}{more}")
    raise _fail(path, "\n".join(lines))


def _config_from_metadata(path: str, metadata: dict[str, str]) -> PulidConfig:
    text = metadata.get(CONFIG_METADATA_KEY)
    if not text:
        return OFFICIAL
    try:
        return PulidConfig.from_json(text)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"corrupt file: its '{CONFIG_METADATA_KEY}' metadata is invalid ({e}).") from None


def read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], PulidConfig]:
    """Validated state dict (stored dtypes kept) and the architecture it describes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PulidWeightsError(f"PuLID-Flux weights not found: {path}\n  {DOWNLOAD_HINT}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        shapes, metadata = _read_safetensors_header(path)
        cfg = _config_from_metadata(path, metadata)
        validate_keys(path, shapes, cfg)  # before reading a gigabyte of data
        try:
            return load_file(path, device="cpu"), cfg
        except SafetensorError as e:
            raise _fail(path, f"the file is corrupt ({e}).") from None
    if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        try:
            # weights_only: a checkpoint never gets to run code while it is read.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - every reader error means the same: the file cannot be used
            raise _fail(path, torch_load_problem(e, "use the .safetensors release.")) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise _fail(path, "it does not hold a flat dictionary of tensors.")
        validate_keys(path, {k: tuple(v.shape) for k, v in state.items()}, OFFICIAL)
        return state, OFFICIAL
    raise _fail(path, "unsupported file type: use the .safetensors release.")


def load_pulid_flux(path: str) -> PulidFlux:
    """Build the PuLID-Flux model from a file, keeping the file's dtype (cast it where you compute)."""
    state, cfg = read_state_dict(path)
    with torch.device("meta"):
        model = PulidFlux(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
