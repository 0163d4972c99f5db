"""Reading weight files without ever running code stored in them, and the error type for unusable files."""
from __future__ import annotations

import os

import torch

try:  # one wording for every refused or broken checkpoint, owned by the core's weight reader
    from ..pulid_flux.weights import torch_load_problem
except ImportError:  # encoders imported as a top-level package (tests, pulid_tools): so is pulid_flux
    from pulid_flux.weights import torch_load_problem

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Wrappers used by training scripts around the actual state dict (deepspeed, lightning, EVA-CLIP).
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema")


class EncoderModelError(ValueError):
    """A face/EVA/parsing model file or folder that is missing or unusable, with the fix in the message."""


def model_error(path: str, problem: str, hint: str) -> EncoderModelError:
    return EncoderModelError(f"{os.path.basename(os.fspath(path))}: {problem}\n  file: {path}\n  {hint}")


def read_tensor_shapes(path: str, hint: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a safetensors file, read from its header only (no tensor data)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise model_error(path, f"not a readable safetensors file ({e}); the file is corrupt or truncated.",
                          hint) from None


def load_tensors(path: str, hint: str) -> dict[str, torch.Tensor]:
    """Flat key -> tensor dict from .safetensors or a pickle checkpoint read with weights_only=True."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EncoderModelError(f"file not found: {path}\n  {hint}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:
            raise model_error(path, f"the safetensors file is corrupt or truncated ({e}).", hint) from None
    if not path.endswith(PICKLE_SUFFIXES):
        raise model_error(path, f"unsupported file type; expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}.",
                          hint)
    try:
        # weights_only: a checkpoint never gets to run code while it is read.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error: refused pickle or broken file, told apart below
        raise model_error(path, torch_load_problem(e, "use the original file or its .safetensors version."),
                          hint) from None
    return unwrap_state_dict(path, state, hint)


def unwrap_state_dict(path: str, state: object, hint: str) -> dict[str, torch.Tensor]:
    for _ in range(3):  # wrappers nest at most a couple of levels
        if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is not None:
                state = inner
    if not isinstance(state, dict) or not state:
        raise model_error(path, "it does not hold a dictionary of tensors.", hint)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise model_error(path, "it does not hold a dictionary of tensors.", hint)
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors
