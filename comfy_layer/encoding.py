"""Reference photos -> the embedding Apply and Encode identity use: the encoders loaded for the pass and offloaded
after it, a progress bar, and a cache so re-running with other weight/start/end costs nothing."""
from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils

from ..encoders import FaceEncoders, NoFace
from ..pulid_flux import encode_id, fuse_id_tokens
from ..pulid_flux.inputs import check_images
from .models import EvaModel, FaceAnalysisModel, PulidModel, face_parser, offload

log = logging.getLogger("PuLID-Flux")


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


def embed_references(pulid, eva, faces, image, fusion="mean", face_order="largest", face_index=0,
                     use_gray=True) -> Embedding:
    """The cached embedding of the reference photos, with a warning for each photo skipped. Raises NoFaceError."""
    emb = cached_embedding(pulid, eva, faces, image, fusion, face_order, face_index, use_gray)
    for i, why in emb.skipped.items():
        log.warning("PuLID-Flux: reference image %d skipped: %s", i + 1, why)
    return emb


def cached_embedding(pulid: PulidModel, eva: EvaModel, faces: FaceAnalysisModel, image: torch.Tensor,
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
