"""ComfyUI nodes. Class names, input names and order match the original PuLID-Flux pack so saved workflows
load; inputs added since are optional and come after end_at."""
from __future__ import annotations

import logging

import torch

from . import comfy_support as support
from . import identity_support as ids
from .encoders import FACE_ORDERS
from .pulid_flux import FUSION_MODES
from .pulid_flux.inputs import EmptyBatchError, check_mask
from .pulid_flux.patch import UNCOND_MODES

log = logging.getLogger("PuLID-Flux")
CATEGORY = "pulid_flux"
ON_NO_FACE = ("error", "return model unchanged")

support.register_model_folders()


class PulidFluxModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pulid_file": (ids.pulid_model_files(), {
            "tooltip": "PuLID-Flux weights in models/pulid (pulid_flux_v0.9.1.safetensors or v0.9.0)."})}}

    RETURN_TYPES = ("PULIDFLUX",)
    OUTPUT_TOOLTIPS = ("The ID encoder and the 20 ID cross-attentions, managed with the diffusion model.",)
    FUNCTION = "load_model"
    CATEGORY = CATEGORY

    def load_model(self, pulid_file):
        return (support.PulidModel.load(pulid_file),)


class PulidFluxInsightFaceLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"provider": (["CPU", "CUDA", "ROCM", "CoreML", "auto"], {
            "default": "CPU", "tooltip": "onnxruntime execution provider for face detection and ArcFace. "
                                         "Falls back to CPU (with a log line) when unavailable."})}}

    RETURN_TYPES = ("FACEANALYSIS",)
    FUNCTION = "load_insightface"
    CATEGORY = CATEGORY

    def load_insightface(self, provider):
        return (support.FaceAnalysisModel.load(provider),)


class PulidFluxEvaClipLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"eva_file": (["auto"] + support.eva_candidates(), {
            "default": "auto", "tooltip": "EVA02-CLIP-L-14-336 (EVA02_CLIP_L_336_psz14_s6B.pt or the open_clip "
                                          "safetensors) in models/clip_vision (also models/pulid, models/clip). "
                                          "auto: the first that loads, in that order."})}}

    RETURN_TYPES = ("EVA_CLIP",)
    FUNCTION = "load_eva_clip"
    CATEGORY = CATEGORY

    def load_eva_clip(self, eva_file="auto"):
        return (support.EvaModel.load(eva_file),)


class ApplyPulidFlux:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Flux model; it is cloned, never changed."}),
                "pulid_flux": ("PULIDFLUX", {"tooltip": "From Load PuLID-Flux Model."}),
                "eva_clip": ("EVA_CLIP", {"tooltip": "From Load EVA-CLIP (PuLID-Flux)."}),
                "face_analysis": ("FACEANALYSIS", {"tooltip": "From Load InsightFace (PuLID-Flux)."}),
                "image": ("IMAGE", {"tooltip": "One or more reference photos (a batch); each needs one visible face."}),
                "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                                     "tooltip": "Strength of the identity (official range 0..3, default 1)."}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                       "tooltip": "Fraction of sampling before the ID applies; later starts "
                                                  "keep more of the prompt's composition (photoreal: ~0.15)."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                     "tooltip": "Fraction of sampling after which the ID stops."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Apply this identity only where the mask is white; two Apply "
                                                  "nodes with complementary masks give two people."}),
                "fusion": (list(FUSION_MODES), {"default": "mean", "tooltip": "How several reference images "
                           "combine: mean of their ID tokens, concat (all tokens), max_token, max."}),
                "face_order": (list(FACE_ORDERS), {"default": "largest", "tooltip": "Which face when a photo has "
                               "several: sort order, then face_index picks one."}),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Position in face_order."}),
                "use_gray": ("BOOLEAN", {"default": True, "tooltip": "Gray face for EVA-CLIP, as official PuLID."}),
                "uncond": (list(UNCOND_MODES), {"default": "same", "tooltip": "With CFG > 1: 'same' applies the ID "
                           "to the negative too (old packs), 'uncond_id' gives the negative the official uncond "
                           "ID embedding (true CFG), 'none' leaves the negative alone."}),
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": "When no reference image has a "
                               "usable face: stop with an error, or pass the model through unchanged (a warning "
                               "is logged)."}),
            },
        }

    RETURN_TYPES = ("MODEL", "IMAGE")
    RETURN_NAMES = ("MODEL", "face_preview")
    OUTPUT_TOOLTIPS = ("The model with the identity patched in (a clone).",
                       "Aligned face | the face EVA-CLIP saw, for each reference used.")
    FUNCTION = "apply_pulid_flux"
    CATEGORY = CATEGORY

    def apply_pulid_flux(self, model, pulid_flux, eva_clip, face_analysis, image, weight, start_at, end_at,
                         attn_mask=None, fusion="mean", face_order="largest", face_index=0, use_gray=True,
                         uncond="same", on_no_face="error"):
        ids.check_model(model, pulid_flux, weight, start_at, end_at)
        attn_mask = check_mask(attn_mask, "attn_mask")
        try:
            emb = ids.embed_references(pulid_flux, eva_clip, face_analysis, image, fusion, face_order, face_index,
                                       use_gray)
        except (support.NoFaceError, EmptyBatchError) as e:  # no photo with a face: what on_no_face is for
            if on_no_face == "error":
                raise
            summary = getattr(e, "summary", f"PuLID-Flux: {e}")
            log.warning("%s on_no_face is '%s': the model is returned without the identity.", summary, on_no_face)
            return (model, torch.zeros(1, 64, 128, 3))
        # the uncond tokens (one ID-encoder pass per PuLID model) only when true CFG reads them
        uncond_tokens = pulid_flux.uncond_tokens() if uncond == "uncond_id" else None
        patched = ids.patch_model(model, pulid_flux, emb.id_tokens, uncond_tokens, weight, start_at, end_at,
                                  attn_mask, uncond)
        return (patched, emb.preview)


NODE_CLASS_MAPPINGS = {
    "PulidFluxModelLoader": PulidFluxModelLoader,
    "PulidFluxInsightFaceLoader": PulidFluxInsightFaceLoader,
    "PulidFluxEvaClipLoader": PulidFluxEvaClipLoader,
    "ApplyPulidFlux": ApplyPulidFlux,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PulidFluxModelLoader": "Load PuLID-Flux Model",
    "PulidFluxInsightFaceLoader": "Load InsightFace (PuLID-Flux)",
    "PulidFluxEvaClipLoader": "Load EVA-CLIP (PuLID-Flux)",
    "ApplyPulidFlux": "Apply PuLID-Flux",
}
