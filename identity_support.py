"""ComfyUI glue for identities: the identities model folder, encode (shared with ApplyPulidFlux), apply (the one
patching path behind ApplyPulidFlux and Apply identity), load/save in the folder, and the PuLID file fingerprint.
The maths and the file format live in pulid_flux/identity.py and encoders/similarity.py."""
from __future__ import annotations

import copy
import logging
import os
import weakref

import torch

import comfy.model_patcher
import comfy.patcher_extension
import folder_paths

from . import comfy_support as support
from .pulid_flux import injection_points
from .pulid_flux.family import check_flux1
from .pulid_flux.identity import (Identity, IdentityFileError, build_identity, file_fingerprint, load_identity,
                                  save_identity, tensors_fingerprint)
from .pulid_flux.identity_store import identity_file_name
from .pulid_flux.patch import IdBlockPatch, PulidApplication, SharedWrapper, check_apply_inputs

log = logging.getLogger("PuLID-Flux")
FOLDER = "pulid_identities"
WRAPPER_KEY = "pulid_flux"
_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register_identity_folder() -> None:
    """`pulid_identities` -> models/pulid/identities (appended after any extra_model_paths.yaml entry)."""
    default = os.path.join(folder_paths.models_dir, "pulid", "identities")
    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | {".safetensors"})


def pulid_model_files() -> list[str]:
    """The PuLID-Flux loader's list: the pulid folders' files, without the identities kept in models/pulid/identities."""
    return [n for n in folder_paths.get_filename_list("pulid") if not n.replace("\\", "/").startswith("identities/")]


def identity_files() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def save_folder() -> str:
    """Where Save identity and the upload route write: the first identities folder (an extra_model_paths.yaml
    `pulid_identities` entry when there is one, else models/pulid/identities)."""
    return folder_paths.get_folder_paths(FOLDER)[0]


def pulid_fingerprint(pulid: support.PulidModel) -> str:
    """The content fingerprint of the PuLID-Flux file behind a loaded model; cached per loaded model."""
    found = _fingerprints.get(pulid)
    if found is None:
        path = folder_paths.get_full_path("pulid", pulid.name) if "pulid" in folder_paths.folder_names_and_paths else None
        found = file_fingerprint(path) if path and os.path.isfile(path) else tensors_fingerprint(pulid.model.state_dict())
        _fingerprints[pulid] = found
    return found


def check_flux(model) -> tuple[int, int]:
    """(double, single) blocks of a FLUX.1-family model; refuses every other family (pulid_flux/family.py)."""
    return check_flux1(getattr(model, "model", None))


def check_model(model, pulid, weight, start_at, end_at) -> dict:
    """The checks Apply runs before any work; returns the injection points for this Flux model."""
    n_double, n_single = check_flux(model)
    hidden = getattr(model.model.diffusion_model, "hidden_size", pulid.model.cfg.img_dim)
    if hidden != pulid.model.cfg.img_dim:
        raise ValueError(f"This Flux model has hidden size {hidden}; {pulid.name} is made for "
                         f"{pulid.model.cfg.img_dim}.")
    check_apply_inputs(weight, start_at, end_at)
    return injection_points(n_double, n_single, pulid.model.cfg)


def embed_references(pulid, eva, faces, image, fusion="mean", face_order="largest", face_index=0,
                     use_gray=True) -> support.Embedding:
    """The cached embedding of the reference photos, with a warning for each photo skipped. Raises NoFaceError."""
    emb = support.embed_references(pulid, eva, faces, image, fusion, face_order, face_index, use_gray)
    for i, why in emb.skipped.items():
        log.warning("PuLID-Flux: reference image %d skipped: %s", i + 1, why)
    return emb


def encode_identity(pulid, eva, faces, image, fusion="mean", face_order="largest", face_index=0,
                    use_gray=True) -> tuple[Identity, support.Embedding]:
    """The reference photos -> an identity (and the embedding with its full-size preview). Uses the embedding
    cache ApplyPulidFlux uses, so encoding the same photos twice costs nothing. Raises NoFaceError."""
    emb = embed_references(pulid, eva, faces, image, fusion, face_order, face_index, use_gray)
    if emb.arcface is None:  # the file format promises unit ArcFace rows; zeros would be refused on load
        raise ValueError("this embedding has no ArcFace vectors, so it cannot become an identity: encode the photos "
                         "again with Encode identity.")
    identity = build_identity(emb.id_tokens, pulid.uncond_tokens(), emb.arcface, emb.preview,
                              pulid_file=pulid.name, pulid_fingerprint=pulid_fingerprint(pulid), fusion=fusion,
                              face_order=face_order, face_index=face_index, use_gray=use_gray,
                              references=len(emb.used))
    return identity, emb


def check_identity_matches(pulid, identity: Identity) -> None:
    """Shapes must fit the PuLID model (error); another PuLID file of the same shape only gets a warning."""
    width = pulid.model.cfg.output_dim
    if identity.id_tokens.shape[-1] != width or identity.uncond_tokens.shape[1] != pulid.model.cfg.num_queries:
        raise ValueError(f"{identity.label}: its ID tokens {list(identity.id_tokens.shape)} do not fit {pulid.name} "
                         f"(width {width}, {pulid.model.cfg.num_queries} tokens). Encode the identity again with "
                         f"{pulid.name}.")
    if identity.pulid_fingerprint != pulid_fingerprint(pulid):
        log.warning("PuLID-Flux: %s was made with %s (fingerprint %s), but it is applied with %s (fingerprint %s): "
                    "the likeness will suffer. Load %s in Load PuLID-Flux Model, or encode the identity again with "
                    "%s.", identity.label, identity.meta.get("pulid_file", "?"), identity.pulid_fingerprint[:12],
                    pulid.name, pulid_fingerprint(pulid)[:12], identity.meta.get("pulid_file", "?"), pulid.name)


def apply_identity(model, pulid, identity: Identity, weight, start_at, end_at, attn_mask=None, uncond="same"):
    """A patched clone of the Flux model: the identity's ID tokens through the PuLID cross-attentions. Needs no
    encoder: neither EVA-CLIP, InsightFace, BiSeNet nor the ID encoder is loaded."""
    check_flux(model)  # the model's family first: an identity cannot make a FLUX.2 model servable
    check_identity_matches(pulid, identity)
    return patch_model(model, pulid, identity.id_tokens, identity.uncond_tokens, weight, start_at, end_at,
                       attn_mask, uncond)


def patch_model(model, pulid, id_tokens, uncond_tokens, weight, start_at, end_at, attn_mask=None, uncond="same"):
    """The one patching path of ApplyPulidFlux and Apply identity: a clone with the ID block patches and wrappers.
    uncond_tokens are read only with uncond='uncond_id' (ApplyPulidFlux passes None otherwise)."""
    points = check_model(model, pulid, weight, start_at, end_at)
    app = PulidApplication(pulid.model.pulid_ca, id_tokens, uncond_tokens if uncond == "uncond_id" else None,
                           weight, start_at, end_at, model.get_model_object("model_sampling").percent_to_sigma,
                           mask=attn_mask, uncond=uncond, models=[pulid.ca])
    patched = model.clone()
    dit = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for (kind, i), ca_index in points.items():
        patch = IdBlockPatch(app, ca_index, kind.split("_")[0], dit.get((kind, i)))
        patched.set_model_patch_replace(patch, "dit", kind, i)
    for wrapper_type, fn in app.wrappers().items():  # OUTER_SAMPLE, APPLY_MODEL, DIFFUSION_MODEL
        patched.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, SharedWrapper(fn))
    twin_weights = TwinWeights(app, pulid)
    for event in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES"):  # v0.29's MultiGPU; absent before
        if hasattr(comfy.patcher_extension.CallbacksMP, event):
            patched.add_callback_with_key(getattr(comfy.patcher_extension.CallbacksMP, event), WRAPPER_KEY, twin_weights)
    return patched


class TwinWeights:
    """MultiGPU (v0.29) samples a copy of the patched model on each extra device, in its own thread, with the same
    patch objects. This gives each such copy its own PuLID cross-attentions, a model ComfyUI loads on the copy's
    device with it (an additional model of the copy), and tells the application to use them for work on that
    device. One copy per device, reused while any model copy holds it."""

    def __init__(self, app: PulidApplication, pulid: support.PulidModel):
        self.app, self.pulid = app, pulid
        self.copies: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()  # device -> ModelPatcher

    def __call__(self, original, copy_patcher) -> None:
        device = copy_patcher.load_device
        if device == self.pulid.ca.load_device:
            return
        weights = self.copies.get(device)
        if weights is None:
            weights = self._copy_for(device)
            self.copies[device] = weights
        held = copy_patcher.get_additional_models_with_key(WRAPPER_KEY)
        if not any(m is weights for m in held):
            copy_patcher.set_additional_models(WRAPPER_KEY, held + [weights])
        self.app.add_weights_for(device, weights.model.inner)

    def _copy_for(self, device):
        """A ModelPatcher of a copy of the cross-attentions, made on the offload device (never a second copy on the
        main device), loaded on `device` by ComfyUI when the model copy is."""
        source = self.pulid.ca
        offload = source.offload_device
        memo = {id(t): (torch.nn.Parameter(t.detach().to(offload, copy=True), requires_grad=False)
                        if isinstance(t, torch.nn.Parameter) else t.detach().to(offload, copy=True))
                for t in list(source.model.inner.parameters()) + list(source.model.inner.buffers())}
        inner = copy.deepcopy(source.model.inner, memo)
        return comfy.model_patcher.ModelPatcher(support.ManagedModule(inner, source.model.dtype), load_device=device,
                                                offload_device=offload)


def load_from_folder(file_name: str) -> Identity:
    path = folder_paths.get_full_path(FOLDER, file_name)
    if path is None:
        raise IdentityFileError(file_name, f"not in any identities folder "
                                           f"({', '.join(folder_paths.get_folder_paths(FOLDER))}).",
                                "save it with Save identity or upload it (POST /pulid_flux/identities), then refresh "
                                "the list.")
    return load_identity(path)


def file_state(file_name: str) -> str:
    """For IS_CHANGED: a file replaced on disk (overwrite) is read again."""
    path = folder_paths.get_full_path(FOLDER, file_name)
    if path is None:
        return "missing"
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def save_to_folder(identity: Identity, name: str, overwrite: bool) -> str:
    file_name = identity_file_name(name)
    return save_identity(identity, os.path.join(save_folder(), file_name), overwrite)


def face_similarity(faces, images, identity: Identity | None = None, reference=None):
    """(scores, report text, best index, annotated IMAGE batch) for the generated IMAGE batch, against the
    identity's mean ArcFace or the reference photo(s)' (one of the two must be given)."""
    import numpy as np

    from .encoders import similarity

    notes = []
    if identity is not None:
        target = identity.mean_arcface()
    elif reference is not None:
        rows, notes = similarity.reference_embedding(faces.analysis, reference)
        target = torch.nn.functional.normalize(rows.mean(0), dim=0)
    else:
        raise ValueError("Face similarity needs an identity or a reference image: connect one of them.")
    scores = similarity.score_images(faces.analysis, images, target)
    text = "\n".join(notes + [similarity.report(scores)])
    best = max(range(len(scores)), key=lambda i: scores[i].score)
    rgb = (images.detach().cpu().float().clamp(0, 1)[..., :3] * 255).round().to(torch.uint8).numpy()
    annotated = np.stack([similarity.annotate(rgb[i], s) for i, s in enumerate(scores)])
    return scores, text, best, torch.from_numpy(annotated).float() / 255.0
