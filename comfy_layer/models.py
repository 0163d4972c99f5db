"""The loaded models behind the loader nodes' outputs (PULIDFLUX, EVA_CLIP, FACEANALYSIS) and the face parser, each
handed to ComfyUI's model management (loaded on demand, offloaded under pressure)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..encoders import (EVA02_CLIP_L_336, EncoderModelError, find_antelopev2, load_eva_clip, load_face_analysis,
                        load_face_parser)
from ..encoders.eva import EVA_DOWNLOAD_HINT
from ..encoders.faces import ANTELOPEV2_DOWNLOAD_HINT, Antelopev2Misplaced
from ..encoders.parsing import PARSER_DOWNLOAD_HINT, PARSER_FILE
from ..pulid_flux import PulidFlux, encode_id, load_pulid_flux
from . import folders  # by module: tests and other packs may replace its functions

log = logging.getLogger("PuLID-Flux")

def compute_dtype(device: torch.device) -> torch.dtype:
    if mm.is_device_cpu(device):
        return torch.float32
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


class ManagedModule(torch.nn.Module):
    """A holder ModelPatcher may set its bookkeeping attributes on (device, lowvram counters...)."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def get_dtype(self) -> torch.dtype:  # ModelPatcher.model_dtype() asks for it
        return self.dtype


def managed(module: torch.nn.Module, dtype: torch.dtype, offload_device=None) -> comfy.model_patcher.ModelPatcher:
    """Hand a plain module to ComfyUI's model management (loaded on demand, offloaded under pressure);
    the module itself is `patcher.model.inner`."""
    return comfy.model_patcher.ModelPatcher(ManagedModule(module, dtype), load_device=mm.get_torch_device(),
                                            offload_device=offload_device or mm.unet_offload_device())


def offload(*patchers) -> None:
    """Unload these patchers from the compute device now (encoders are not needed while sampling). One whose
    offload device is its load device (the CPU, --gpu-only) stays loaded, as ComfyUI keeps its own models there:
    unloading would free nothing and cost the next encoding a full load (~75 ms on a CPU)."""
    moving = [p for p in patchers if p.load_device != p.offload_device]
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if any(loaded.model is p for p in moving) and loaded.model_unload():
            mm.current_loaded_models.pop(i)


# --- loaded model bundles (the node output types) ----------------------------------------------------------
@dataclass(eq=False)
class PulidModel:
    """PULIDFLUX: the ID encoder and the 20 cross-attentions as two managed models."""
    name: str
    model: PulidFlux
    encoder: comfy.model_patcher.ModelPatcher
    ca: comfy.model_patcher.ModelPatcher
    _uncond: tuple | None = field(default=None, init=False, repr=False)  # (weights key, tokens)

    def _encoder_key(self) -> tuple:
        """What the uncond tokens depend on: the compute device, and each encoder weight's identity, dtype and
        version, plus a value fingerprint (a weight copied in under inference mode keeps its version).
        Not data_ptr: ComfyUI moves the encoder to the GPU and back around every encoding, which changes it."""
        encoder = self.encoder.model.inner
        params = tuple((id(p), p.dtype, _param_version(p)) for p in encoder.parameters())
        latents, proj = encoder.latents.detach(), encoder.proj_out.detach()
        fingerprint = (float(latents.sum(dtype=torch.float64)), float(proj.reshape(-1)[::101].sum(dtype=torch.float64)))
        return self.encoder.load_device, params, fingerprint

    def uncond_tokens(self) -> torch.Tensor:
        """The uncond ID tokens of official true CFG: the ID encoder on zeros, [1,32,2048] float32 on the CPU.
        They depend only on the weights, so they are computed on first use and again only if the weights change
        (cast, replaced, reloaded). The tensor is shared: do not modify it."""
        key = self._encoder_key()
        if self._uncond is not None and self._uncond[0] == key:
            return self._uncond[1]
        mm.load_models_gpu([self.encoder])
        try:
            cfg = self.model.cfg
            tokens = encode_id(self.encoder.model.inner, torch.zeros(1, cfg.id_cond_dim),
                               [torch.zeros(1, EVA02_CLIP_L_336.tokens, cfg.vit_dim)] * cfg.num_scales)
            tokens = tokens.float().cpu()
        finally:
            offload(self.encoder)
        self._uncond = (self._encoder_key(), tokens)
        return tokens

    @classmethod
    def load(cls, file_name: str) -> "PulidModel":
        path = folder_paths.get_full_path("pulid", file_name)
        if path is None:
            raise FileNotFoundError(f"PuLID-Flux file '{file_name}' is not in any models/pulid folder "
                                    f"({', '.join(folders.folders_of('pulid'))}).")
        model = load_pulid_flux(path)
        dtype = compute_dtype(mm.get_torch_device())
        return cls(file_name, model, managed(model.pulid_encoder, dtype), managed(model.pulid_ca, dtype))


def _param_version(p: torch.Tensor):
    try:
        return p._version
    except RuntimeError:  # an inference tensor: the caller's value fingerprint stands in
        return None


@dataclass(eq=False)
class EvaModel:
    """EVA_CLIP."""
    path: str
    patcher: comfy.model_patcher.ModelPatcher

    @property
    def module(self):
        return self.patcher.model.inner

    @classmethod
    def load(cls, choice: str = "auto") -> "EvaModel":
        """The chosen file, or with 'auto' the first candidate that loads: a broken one (damaged, a link to nothing)
        is skipped with a warning, and only when none loads is it an error (saying why for each)."""
        failures = []
        for name, path in folders.find_eva_files(choice):
            try:
                if path is None:
                    raise EncoderModelError(folders.missing_eva_problem(name))
                module = load_eva_clip(path, "cpu", torch.float32)
            except (EncoderModelError, OSError) as e:
                failures.append((name, e))
                if choice == "auto":
                    log.warning("PuLID-Flux: skipping EVA-CLIP candidate %s: %s", name, str(e).splitlines()[0])
                continue
            return cls(path, managed(module, compute_dtype(mm.get_torch_device()), mm.text_encoder_offload_device()))
        if len(failures) == 1:
            raise failures[0][1]
        reasons = "".join(f"\n  - {name}: {str(e).splitlines()[0]}" for name, e in failures)
        raise EncoderModelError(f"None of the {len(failures)} EVA-CLIP files loads:{reasons}\n  {EVA_DOWNLOAD_HINT}")


@dataclass(eq=False)
class FaceAnalysisModel:
    """FACEANALYSIS: insightface antelopev2 on onnxruntime."""
    root: str
    provider: str
    analysis: object

    @classmethod
    def load(cls, provider: str) -> "FaceAnalysisModel":
        roots = folders.folders_of("insightface")
        errors, misplaced = [], []
        for root in roots:
            try:
                find_antelopev2(root)
            except Antelopev2Misplaced as e:  # the files exist: the message says what to move, keep all of it
                misplaced.append(str(e))
                continue
            except EncoderModelError as e:  # collected: the error lists every folder tried
                errors.append(str(e).splitlines()[0])
                continue
            return cls(root, provider, load_face_analysis(root, provider))
        if misplaced:
            raise FileNotFoundError(misplaced[0])
        raise FileNotFoundError("antelopev2 not found in any insightface folder: " + "; ".join(errors) +
                                f"\n  {ANTELOPEV2_DOWNLOAD_HINT} (insightface folders: {', '.join(roots)})")


_parsers: dict[str, comfy.model_patcher.ModelPatcher] = {}


def face_parser() -> comfy.model_patcher.ModelPatcher:
    """BiSeNet parsing_bisenet.pth from the facexlib model folders, loaded once."""
    for folder in folders.folders_of("facexlib"):
        path = os.path.join(folder, PARSER_FILE)
        if os.path.isfile(path):
            if path not in _parsers:
                _parsers[path] = managed(load_face_parser(path), torch.float32, mm.text_encoder_offload_device())
            return _parsers[path]
    raise FileNotFoundError(f"{PARSER_FILE} not found in {', '.join(folders.folders_of('facexlib'))}. "
                            f"{PARSER_DOWNLOAD_HINT}")
