"""Patching a Flux model with PuLID through ComfyUI's ModelPatcher: the checks Apply runs first, the one patching path
behind Apply PuLID-Flux and Apply identity, and the per-device weights of MultiGPU copies (v0.29)."""
from __future__ import annotations

import copy
import logging
import weakref

import torch

import comfy.model_patcher
import comfy.patcher_extension

from ..encoders.curation.selection import Thresholds
from ..pulid_flux import OFFICIAL, injection_points
from ..pulid_flux.family import check_flux1
from ..pulid_flux.identity.file import Identity
from ..pulid_flux.identity.fingerprint import short_fingerprint
from ..pulid_flux.weights import DOWNLOAD_HINT
from ..pulid_flux.inputs import EmptyBatchError, check_apply_inputs, check_mask
from ..pulid_flux.patch import IdBlockPatch, PulidApplication, SharedWrapper
from . import encoding
from .identities import pulid_fingerprint
from .models import ManagedModule, PulidModel

log = logging.getLogger("PuLID-Flux")
WRAPPER_KEY = "pulid_flux"


def check_model(model, pulid: PulidModel) -> dict:
    """The model a patch is for: FLUX.1 family (pulid_flux/family.py refuses every other) and the PuLID file's width.
    Returns the injection points for this model's blocks."""
    n_double, n_single = check_flux1(getattr(model, "model", None))
    hidden = getattr(model.model.diffusion_model, "hidden_size", pulid.model.cfg.img_dim)
    if hidden != pulid.model.cfg.img_dim:
        raise ValueError(f"This Flux model has hidden size {hidden}; {pulid.name} is made for "
                         f"{pulid.model.cfg.img_dim}. {width_fix(hidden)}")
    return injection_points(n_double, n_single, pulid.model.cfg)


def width_fix(hidden: int) -> str:
    """What to load when the PuLID-Flux file and the model differ in width: FLUX.1's file, or the fix for a model of
    another width."""
    if hidden == OFFICIAL.img_dim:
        return (f"Fix: FLUX.1 models (hidden size {hidden}) take pulid_flux_v0.9.1.safetensors, made for hidden size "
                f"{OFFICIAL.img_dim}. {DOWNLOAD_HINT} Then pick it in Load PuLID-Flux Model.")
    return (f"Fix: PuLID-Flux weights exist for FLUX.1 only (hidden size {OFFICIAL.img_dim}): connect a FLUX.1 model, "
            f"and pulid_flux_v0.9.1.safetensors (in ComfyUI/models/pulid/) in Load PuLID-Flux Model.")


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


def apply_photos(model, pulid, eva, faces, image, weight, start_at, end_at, attn_mask=None, fusion="mean",
                 face_order="largest", face_index=0, use_gray=True, uncond="same", on_no_face="error", curate="off",
                 thresholds: Thresholds = Thresholds()):
    """Apply PuLID-Flux: (patched clone, face preview). The model and the numbers are checked before any encoding.
    A curation that leaves no photo (CurationError) is an error whatever on_no_face says: the photos have faces,
    and the message says how to go on."""
    points = check_model(model, pulid)
    check_apply_inputs(weight, start_at, end_at)
    attn_mask = check_mask(attn_mask, "attn_mask")
    try:
        emb = encoding.embed_references(pulid, eva, faces, image, fusion, face_order, face_index, use_gray, curate,
                                        thresholds)
    except (encoding.NoFaceError, EmptyBatchError) as e:  # no photo with a face: what on_no_face is for
        if on_no_face == "error":
            raise
        summary = getattr(e, "summary", f"PuLID-Flux: {e}")
        log.warning("%s on_no_face is '%s': the model is returned without the identity.", summary, on_no_face)
        return model, torch.zeros(1, 64, 128, 3)
    # the uncond tokens (one ID-encoder pass per PuLID model) only when true CFG reads them
    uncond_tokens = pulid.uncond_tokens() if uncond == "uncond_id" else None
    patched = _patch(model, pulid, points, emb.id_tokens, uncond_tokens, weight, start_at, end_at, attn_mask, uncond)
    return patched, emb.face_preview


def apply_identity(model, pulid, identity: Identity, weight, start_at, end_at, attn_mask=None, uncond="same"):
    """Apply identity: a patched clone with the identity's ID tokens. Needs no encoder: neither EVA-CLIP,
    InsightFace, BiSeNet nor the ID encoder is loaded."""
    points = check_model(model, pulid)  # the family first: an identity cannot make a FLUX.2 model servable
    check_apply_inputs(weight, start_at, end_at)
    attn_mask = check_mask(attn_mask, "attn_mask")
    check_identity_matches(pulid, identity)
    log.info("PuLID-Flux: applying identity %s (%s)", identity.label, short_fingerprint(identity.fingerprint))
    return _patch(model, pulid, points, identity.id_tokens, identity.uncond_tokens, weight, start_at, end_at,
                  attn_mask, uncond)


def patch_model(model, pulid, id_tokens, uncond_tokens, weight, start_at, end_at, attn_mask=None, uncond="same"):
    """A patched clone for ID tokens the caller made; the model is checked, the numbers are trusted."""
    return _patch(model, pulid, check_model(model, pulid), id_tokens, uncond_tokens, weight, start_at, end_at,
                  attn_mask, uncond)


def _patch(model, pulid, points, id_tokens, uncond_tokens, weight, start_at, end_at, attn_mask, uncond):
    """The one patching path: a clone with the ID block patches and wrappers. uncond_tokens are read only with
    uncond='uncond_id'."""
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

    def __init__(self, app: PulidApplication, pulid: PulidModel):
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
        return comfy.model_patcher.ModelPatcher(ManagedModule(inner, source.model.dtype), load_device=device,
                                                offload_device=offload)
