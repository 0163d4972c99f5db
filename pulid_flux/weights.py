"""Loading PuLID-Flux weight files: validate every key and shape before building anything."""
from __future__ import annotations

import os
import pickle
import re

import torch

from .config import OFFICIAL, PulidConfig, expected_shapes
from .model import PulidFlux
from .safetensors_file import SafetensorsFileError, load_tensors, read_header

DOWNLOAD_HINT = ("Download pulid_flux_v0.9.1.safetensors (or v0.9.0) from https://huggingface.co/guozinan/PuLID "
                 "into ComfyUI/models/pulid/.")
CONFIG_METADATA_KEY = "pulid_config"  # written only by this project's test fixtures for tiny variants
_PREFIXES = ("pulid_encoder.", "pulid_ca.")


class PulidWeightsError(SafetensorsFileError):
    """A PuLID-Flux file that cannot be used, with the reason and what to download instead."""
    wrong_kind_fix = DOWNLOAD_HINT
    damaged_fix = "download the file again: " + DOWNLOAD_HINT


def _fail(path: str, problem: str) -> PulidWeightsError:
    return PulidWeightsError(path, problem)


def torch_load_problem(error: Exception, advice: str) -> str:
    """Why torch.load(weights_only=True) failed, in one line without torch's ANSI codes: a refused pickle (it needs
    code or objects other than tensors; `advice` ends that sentence) or a truncated/broken file (an interrupted
    download: the zip reader, EOFError and the like). encoders/checkpoint.py uses it too."""
    text = str(error)
    # Bytes that are no pickle at all (another kind of file, or garbage) fail the same way as a refused pickle, but
    # on an opcode the unpickler does not know, not on a global: those are broken files, not code.
    if (isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text
            and "Unsupported operand" not in text):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        such = f" (pickled code such as {found.group(1)})" if found else ""
        return f"refused: it holds Python objects other than tensors{such}, which is refused for safety; {advice}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = re.split(r"(?<=[^.\s]{2})\. ", first, maxsplit=1)[0]  # torch's first sentence only
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"the file is truncated or broken ({detail}); download it again."


def _describe_foreign(path: str, keys: list[str]) -> str | None:
    def has(*prefixes):
        return any(k.startswith(prefixes) for k in keys)

    if has("id_adapter.", "id_adapter_attn_layers."):
        return "this is PuLID for SDXL (pulid_v1.1.safetensors / pulid_v1.bin), not PuLID-Flux."
    if has("ip_adapter.") and has("image_proj.mapping_", "image_proj.body."):
        return ("this is PuLID for SDXL in cubiq's PuLID_ComfyUI layout (ip-adapter_pulid_sdxl_fp16.safetensors), not "
                "PuLID-Flux; it belongs to that pack's loader.")
    if has("ip_adapter.", "image_proj."):
        return "this is an IP-Adapter model, not PuLID-Flux weights (it belongs in models/ipadapter)."
    if has("double_blocks.", "single_blocks.", "model.diffusion_model.double_blocks."):
        return "this is a Flux diffusion model, not PuLID-Flux weights (load it with the diffusion model loader)."
    if has("model.diffusion_model.", "input_blocks.", "conditioner.", "cond_stage_model."):
        return "this is a Stable Diffusion / SDXL checkpoint, not PuLID-Flux weights."
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
        raise PulidWeightsError(path, "PuLID-Flux weights not found.")
    if path.endswith(".safetensors"):
        header = read_header(path, PulidWeightsError)
        cfg = _config_from_metadata(path, header.metadata)
        validate_keys(path, header.shapes, cfg)  # before reading a gigabyte of data
        return load_tensors(path, PulidWeightsError), cfg
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
