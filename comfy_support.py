"""What the nodes need from ComfyUI: model folders, ModelPatcher-managed modules, encoding with load/offload,
and the embedding cache. Everything ComfyUI-specific lives here or in nodes.py."""
from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths

from .encoders import (EVA02_CLIP_L_336, EncoderModelError, FaceEncoders, NoFace, find_antelopev2, load_eva_clip,
                       load_face_analysis, load_face_parser)
from .encoders.eva import EVA_DOWNLOAD_HINT
from .encoders.faces import ANTELOPEV2_DOWNLOAD_HINT, Antelopev2Misplaced
from .encoders.parsing import PARSER_DOWNLOAD_HINT, PARSER_FILE
from .pulid_flux import PulidFlux, encode_id, fuse_id_tokens, load_pulid_flux
from .pulid_flux.inputs import check_images

log = logging.getLogger("PuLID-Flux")
PT_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin"}
EVA_NAME_HINTS = ("eva02", "eva_clip", "eva-clip", "evaclip")


def register_model_folders() -> None:
    """Append our default folders; keep whatever extra_model_paths.yaml registered first."""
    for name, subdir in (("pulid", "pulid"), ("insightface", "insightface"), ("facexlib", "facexlib")):
        default = os.path.join(folder_paths.models_dir, subdir)
        paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths) + ([default] if default not in paths else [])
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | PT_EXTENSIONS)


def _folders(name: str) -> list[str]:
    return list(folder_paths.get_folder_paths(name)) if name in folder_paths.folder_names_and_paths else []


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
                                    f"({', '.join(_folders('pulid'))}).")
        model = load_pulid_flux(path)
        dtype = compute_dtype(mm.get_torch_device())
        return cls(file_name, model, managed(model.pulid_encoder, dtype), managed(model.pulid_ca, dtype))


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
        for name, path in find_eva_files(choice):
            try:
                if path is None:
                    raise EncoderModelError(_missing_eva_problem(name))
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


# ComfyUI's home for the EVA-CLIP image tower is models/clip_vision. models/pulid and models/clip (text_encoders,
# where older instructions put it and where it clutters every text-encoder list) are still searched, in this order.
EVA_FOLDERS = ("clip_vision", "pulid", "text_encoders")


def eva_candidates() -> list[str]:
    """'folder/file name' of every file in the EVA folders whose name looks like EVA-CLIP, in EVA_FOLDERS order."""
    names = []
    for folder in EVA_FOLDERS:
        if folder in folder_paths.folder_names_and_paths:
            names += [f"{folder}/{n}" for n in folder_paths.get_filename_list(folder)
                      if any(h in n.lower().replace("\\", "/").rsplit("/", 1)[-1] for h in EVA_NAME_HINTS)]
    return names


def find_eva_files(choice: str = "auto") -> list[tuple[str, str | None]]:
    """(candidate, full path) for the choice, or for every candidate with 'auto'. The path is None when the name
    is listed but no file is there (a symbolic link to a missing file)."""
    candidates = eva_candidates()
    if choice != "auto":
        if choice not in candidates:
            raise FileNotFoundError(f"EVA-CLIP file '{choice}' is no longer in the model folders. {EVA_DOWNLOAD_HINT}")
        candidates = [choice]
    if not candidates:
        looked = ", ".join(f for name in EVA_FOLDERS for f in _folders(name))
        raise FileNotFoundError(f"No EVA02-CLIP file found (looked for names containing 'eva02' or 'eva_clip' in "
                                f"{looked}). {EVA_DOWNLOAD_HINT}")
    return [(c, folder_paths.get_full_path(*c.split("/", 1))) for c in candidates]


def _missing_eva_problem(candidate: str) -> str:
    """Why a listed EVA candidate has no file: most often a symbolic link whose target is gone."""
    folder, name = candidate.split("/", 1)
    for root in _folders(folder):
        path = os.path.join(root, name)
        if os.path.islink(path) and not os.path.exists(path):
            return (f"{name}: a symbolic link to a file that does not exist ({os.readlink(path)}).\n  file: {path}\n"
                    f"  Fix: restore the file it points to, or replace the link with the EVA-CLIP file itself.")
    return f"{name}: the file is no longer in the {folder} folders ({', '.join(_folders(folder))})."


@dataclass(eq=False)
class FaceAnalysisModel:
    """FACEANALYSIS: insightface antelopev2 on onnxruntime."""
    root: str
    provider: str
    analysis: object

    @classmethod
    def load(cls, provider: str) -> "FaceAnalysisModel":
        roots = _folders("insightface")
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
    for folder in _folders("facexlib"):
        path = os.path.join(folder, PARSER_FILE)
        if os.path.isfile(path):
            if path not in _parsers:
                _parsers[path] = managed(load_face_parser(path), torch.float32, mm.text_encoder_offload_device())
            return _parsers[path]
    raise FileNotFoundError(f"{PARSER_FILE} not found in {', '.join(_folders('facexlib'))}. {PARSER_DOWNLOAD_HINT}")


# --- encoding -----------------------------------------------------------------------------------------
@dataclass
class Embedding:
    id_tokens: torch.Tensor        # [1,T,2048], fused
    preview: torch.Tensor          # IMAGE [N,512,1024,3]: aligned | parsed, one row per face used
    used: list[int]                # indices of the reference images that had a face
    skipped: dict[int, str]        # index -> why not
    arcface: torch.Tensor | None = None  # [N,512] raw ArcFace of each used reference (identities keep it)


_cache: OrderedDict[tuple, Embedding] = OrderedDict()
CACHE_SIZE = 8
# Faces per BiSeNet/EVA-CLIP batch: all reference images of an ordinary Apply in one pass, while a very large
# batch of references still cannot hold every EVA activation at once.
EMBED_BATCH = 16


_known_images: dict[int, tuple[weakref.ref, int, str]] = {}


def _version(image: torch.Tensor):
    """Something that changes when the tensor is written in place. Inference tensors (ComfyUI runs nodes under
    torch.inference_mode()) keep no version counter, so a full sum and a strided sample stand in (a few ms)."""
    try:
        return image._version
    except RuntimeError:
        flat = image.reshape(-1)
        return float(flat.sum()), float(flat[::997].sum())


def _param_version(p: torch.Tensor):
    try:
        return p._version
    except RuntimeError:  # an inference tensor: the caller's value fingerprint stands in
        return None


def _image_key(image: torch.Tensor) -> str:
    """A content hash of the reference images. ComfyUI hands the same cached IMAGE tensor to a re-run node, so the
    tensor's identity and version short-cut the hash (50 ms for four 1024² images) when only weight/start/end change."""
    version = _version(image)
    known = _known_images.get(id(image))
    if known and known[0]() is image and known[1] == version:
        return known[2]
    data = image.detach().to("cpu", torch.float32).contiguous().numpy()
    key = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest() + str(tuple(image.shape))
    for k in [k for k, (ref, _, _) in _known_images.items() if ref() is None]:
        del _known_images[k]
    _known_images[id(image)] = (weakref.ref(image), version, key)
    return key


def embed_references(pulid: PulidModel, eva: EvaModel, faces: FaceAnalysisModel, image: torch.Tensor,
                     fusion: str, face_order: str, face_index: int, use_gray: bool) -> Embedding:
    """ID tokens for the reference images; cached, so changing only weight/start/end costs nothing. Raises
    InputError for an unusable IMAGE (EmptyBatchError for no image at all), NoFaceError when no image has a face."""
    check_images(image, "image")
    key = (id(pulid), id(eva), id(faces), _image_key(image), fusion, face_order, face_index, use_gray)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    parser = face_parser()
    patchers = (eva.patcher, parser, pulid.encoder)
    mm.load_models_gpu(list(patchers))
    try:
        encoders = FaceEncoders(faces.analysis, eva.module, parser.model.inner)
        bar = comfy.utils.ProgressBar(image.shape[0] + 1)  # detection per image, then the EVA-CLIP batch
        results = encoders.encode(image, order=face_order, index=face_index, use_gray=use_gray,
                                  batch_size=EMBED_BATCH, progress=bar.update_absolute)
        used = [i for i, r in enumerate(results) if not isinstance(r, NoFace)]
        skipped = {i: r.reason for i, r in enumerate(results) if isinstance(r, NoFace)}
        if not used:
            raise NoFaceError(skipped)
        ok = [results[i] for i in used]
        id_cond = torch.cat([r.id_cond for r in ok])
        hidden = [torch.cat([r.hidden_states[s] for r in ok]) for s in range(len(ok[0].hidden_states))]
        encoder = pulid.encoder.model.inner
        tokens = encode_id(encoder, id_cond, hidden)
        embedding = Embedding(
            id_tokens=fuse_id_tokens(tokens.float(), fusion).cpu(),
            preview=torch.stack([torch.from_numpy(np.concatenate([r.aligned, r.parsed], axis=1)) for r in ok]) / 255.0,
            used=used, skipped=skipped, arcface=id_cond[:, :512].float().cpu())
    finally:
        offload(*patchers)
    _cache[key] = embedding
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return embedding


class NoFaceError(ValueError):
    def __init__(self, skipped: dict[int, str]):
        lines = "; ".join(f"image {i + 1}: {why}" for i, why in skipped.items())
        self.summary = f"PuLID-Flux found no usable face in any reference image ({lines})."
        super().__init__(f"{self.summary} Use a photo where the face is clearly visible, check face_order/face_index, "
                         f"or set on_no_face to 'return model unchanged'.")
        self.skipped = skipped
