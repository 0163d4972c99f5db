"""Reference photos -> the embedding Apply and Encode identity use: the encoders loaded for the pass and offloaded
after it, a progress bar, and a cache so re-running with other weight/start/end costs nothing."""
from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict

import torch

import comfy.model_management as mm
import comfy.utils

from ..encoders import FaceEncoders
from ..encoders.curation.selection import Thresholds
from ..encoders.references import NoUsableFace, ReferenceEncoding, ReferenceSettings, encode_references
from ..pulid_flux.curated_fusion import IdTokenMaker
from ..pulid_flux.inputs import check_images
from .models import EvaModel, FaceAnalysisModel, PulidModel, face_parser, offload

log = logging.getLogger("PuLID-Flux")


Embedding = ReferenceEncoding  # what embed_references returns (encoders/references.py)
_cache: OrderedDict[tuple, Embedding] = OrderedDict()
CACHE_SIZE = 8


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
                     use_gray=True, curate="off", thresholds: Thresholds = Thresholds()) -> Embedding:
    """The cached embedding of the reference photos, with a warning for each photo skipped and, when curating, for
    each photo used despite a problem. Raises NoFaceError, CurationError (drop/weight left no photo)."""
    settings = ReferenceSettings(fusion, face_order, face_index, use_gray, curate, thresholds)
    emb = cached_embedding(pulid, eva, faces, image, settings)
    for i, why in emb.skipped.items():
        log.warning("PuLID-Flux: reference image %d skipped: %s", i + 1, why)
    if curate != "off":
        for ref in emb.report["references"]:
            if ref["kept"] and ref["problems"]:
                log.warning("PuLID-Flux: reference image %d used (curate '%s'): %s", ref["index"] + 1, curate,
                            "; ".join(ref["problems"]))
    return emb


def cached_embedding(pulid: PulidModel, eva: EvaModel, faces: FaceAnalysisModel, image: torch.Tensor,
                     settings: ReferenceSettings) -> Embedding:
    """ID tokens for the reference images (encoders/references.py, the one encode path), with the curation report;
    cached per photos, models and settings (curation included), so changing only weight/start/end costs nothing.
    Raises InputError for an unusable IMAGE (EmptyBatchError for no image at all), NoFaceError when no image has
    a face, CurationError when curation leaves none."""
    check_images(image, "image")
    key = (id(pulid), id(eva), id(faces), _image_key(image), settings)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    parser = face_parser()
    patchers = (eva.patcher, parser, pulid.encoder)
    mm.load_models_gpu(list(patchers))
    try:
        encoders = FaceEncoders(faces.analysis, eva.module, parser.model.inner)
        bar = comfy.utils.ProgressBar(image.shape[0] + 1)  # detection per image, then the EVA-CLIP batch
        embedding = encode_references(encoders, IdTokenMaker(pulid.encoder.model.inner), image, settings,
                                      report=True, progress=bar.update_absolute)
    except NoUsableFace as e:
        raise NoFaceError(e.skipped) from None
    finally:
        offload(*patchers)
    _cache[key] = embedding
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return embedding


class NoFaceError(NoUsableFace):
    def __init__(self, skipped: dict[int, str]):
        super().__init__(skipped, "Use a photo where the face is clearly visible, check face_order/face_index, or "
                                  "set on_no_face to 'return model unchanged'.")
