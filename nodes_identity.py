"""Identity nodes: encode a person once, save/load/blend the identity, apply it without the encoders, and score
likeness. Thin: the work is in identity_support.py, pulid_flux/identity.py and encoders/similarity.py."""
from __future__ import annotations

from . import identity_support as ids
from .encoders import FACE_ORDERS
from .pulid_flux import FUSION_MODES
from .pulid_flux.identity import blend_identities
from .pulid_flux.inputs import check_images, check_mask
from .pulid_flux.patch import UNCOND_MODES

CATEGORY = "pulid_flux"
IDENTITY = "PULIDFLUX_IDENTITY"
ID_TIP = "A person's identity: from Encode identity, Load identity or Blend identities."

ids.register_identity_folder()


class PulidFluxEncodeIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pulid_flux": ("PULIDFLUX", {"tooltip": "From Load PuLID-Flux Model; the identity only works with "
                                                        "this PuLID-Flux file."}),
                "eva_clip": ("EVA_CLIP", {"tooltip": "From Load EVA-CLIP (PuLID-Flux)."}),
                "face_analysis": ("FACEANALYSIS", {"tooltip": "From Load InsightFace (PuLID-Flux)."}),
                "image": ("IMAGE", {"tooltip": "One or more photos of the person (a batch); each needs a visible face."}),
            },
            "optional": {
                "fusion": (list(FUSION_MODES), {"default": "mean", "tooltip": "How several photos combine (as in "
                           "Apply PuLID-Flux). Use 'mean' for identities you want to blend."}),
                "face_order": (list(FACE_ORDERS), {"default": "largest", "tooltip": "Which face when a photo has "
                               "several: sort order, then face_index picks one."}),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Position in face_order."}),
                "use_gray": ("BOOLEAN", {"default": True, "tooltip": "Gray face for EVA-CLIP, as official PuLID."}),
            },
        }

    RETURN_TYPES = (IDENTITY, "IMAGE")
    RETURN_NAMES = ("identity", "face_preview")
    OUTPUT_TOOLTIPS = ("The person's ID tokens, ArcFace vectors and preview: save it, blend it or apply it.",
                       "Aligned face | the face EVA-CLIP saw, for each photo used.")
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encode a person once from photos; Apply identity then needs neither EVA-CLIP nor InsightFace."

    def encode(self, pulid_flux, eva_clip, face_analysis, image, fusion="mean", face_order="largest", face_index=0,
               use_gray=True):
        identity, emb = ids.encode_identity(pulid_flux, eva_clip, face_analysis, image, fusion, face_order,
                                            face_index, use_gray)
        return (identity, emb.preview)


class PulidFluxApplyIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Flux model; it is cloned, never changed."}),
                "pulid_flux": ("PULIDFLUX", {"tooltip": "From Load PuLID-Flux Model: the file the identity was "
                                                        "made with (another one logs a warning)."}),
                "identity": (IDENTITY, {"tooltip": ID_TIP}),
                "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                                     "tooltip": "Strength of the identity (official range 0..3, default 1)."}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                       "tooltip": "Fraction of sampling before the ID applies (photoreal: ~0.15)."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                     "tooltip": "Fraction of sampling after which the ID stops."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Apply this identity only where the mask is white."}),
                "uncond": (list(UNCOND_MODES), {"default": "same", "tooltip": "With CFG > 1: 'same' applies the ID "
                           "to the negative too, 'uncond_id' gives the negative the official uncond ID embedding "
                           "(true CFG), 'none' leaves the negative alone."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the identity patched in (a clone); same result as Apply PuLID-Flux on the "
                       "same photos and settings.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, pulid_flux, identity, weight, start_at, end_at, attn_mask=None, uncond="same"):
        attn_mask = check_mask(attn_mask, "attn_mask")
        return (ids.apply_identity(model, pulid_flux, identity, weight, start_at, end_at, attn_mask, uncond),)


class PulidFluxSaveIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity": (IDENTITY, {"tooltip": ID_TIP}),
            "name": ("STRING", {"default": "person", "tooltip": "File name in models/pulid/identities (.safetensors "
                                                                "is added); a plain name, no folders."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of that name; "
                                                                   "otherwise the node stops with an error."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY

    def save(self, identity, name, overwrite=False):
        path = ids.save_to_folder(identity, name, overwrite)
        return {"ui": {"text": [path]}}


class PulidFluxLoadIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"identity_file": (ids.identity_files(), {
            "tooltip": "An identity in models/pulid/identities (or an extra_model_paths.yaml pulid_identities "
                       "folder)."})}}

    RETURN_TYPES = (IDENTITY, "IMAGE")
    RETURN_NAMES = ("identity", "preview")
    OUTPUT_TOOLTIPS = ("The saved identity, bit-identical to the one that was saved.",
                       "The saved face preview (aligned | parsed, 128 px), one row per photo.")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, identity_file):
        return ids.file_state(identity_file)

    def load(self, identity_file):
        identity = ids.load_from_folder(identity_file)
        return (identity, identity.preview.float() / 255.0)


class PulidFluxBlendIdentities:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity_a": (IDENTITY, {"tooltip": "First person (ratio 0 gives exactly this identity)."}),
            "identity_b": (IDENTITY, {"tooltip": "Second person (ratio 1 gives exactly this identity); made with "
                                                 "the same PuLID-Flux file."}),
            "ratio": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Share of identity_b: (1 - ratio) * A + ratio * B of the ID tokens."}),
        }}

    RETURN_TYPES = (IDENTITY,)
    OUTPUT_TOOLTIPS = ("A new face mixing the two people.",)
    FUNCTION = "blend"
    CATEGORY = CATEGORY

    def blend(self, identity_a, identity_b, ratio):
        return (blend_identities(identity_a, identity_b, ratio),)


class PulidFluxFaceSimilarity:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_analysis": ("FACEANALYSIS", {"tooltip": "From Load InsightFace (PuLID-Flux): detection and "
                                                              "ArcFace."}),
                "images": ("IMAGE", {"tooltip": "The generated images to score (a batch)."}),
            },
            "optional": {
                "identity": (IDENTITY, {"tooltip": "Compare with this identity's ArcFace (the mean of its photos)."}),
                "reference": ("IMAGE", {"tooltip": "Or compare with the largest face of these photos (used when "
                                                   "no identity is connected)."}),
            },
        }

    RETURN_TYPES = ("FLOAT", "STRING", "INT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("similarity", "report", "best_index", "best_image", "annotated")
    OUTPUT_IS_LIST = (True, False, False, False, False)
    OUTPUT_TOOLTIPS = ("ArcFace cosine similarity per image (1 = same face; 0 when no face was found), a list.",
                       "The scores as text, one line per image.",
                       "Index in the batch of the most similar image.",
                       "The most similar image.",
                       "Every image with its face boxes and scores drawn (best face green).")
    OUTPUT_NODE = True
    FUNCTION = "score"
    CATEGORY = CATEGORY

    def score(self, face_analysis, images, identity=None, reference=None):
        check_images(images, "images")
        if identity is None and reference is not None:
            check_images(reference, "reference")
        scores, text, best, annotated = ids.face_similarity(face_analysis, images, identity, reference)
        values = [float(s.score) for s in scores]
        return {"ui": {"pulid_similarity": values, "text": [text]},
                "result": (values, text, best, images[best:best + 1].clone(), annotated)}


NODE_CLASS_MAPPINGS = {
    "PulidFluxEncodeIdentity": PulidFluxEncodeIdentity,
    "PulidFluxApplyIdentity": PulidFluxApplyIdentity,
    "PulidFluxSaveIdentity": PulidFluxSaveIdentity,
    "PulidFluxLoadIdentity": PulidFluxLoadIdentity,
    "PulidFluxBlendIdentities": PulidFluxBlendIdentities,
    "PulidFluxFaceSimilarity": PulidFluxFaceSimilarity,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PulidFluxEncodeIdentity": "Encode identity (PuLID-Flux)",
    "PulidFluxApplyIdentity": "Apply identity (PuLID-Flux)",
    "PulidFluxSaveIdentity": "Save identity (PuLID-Flux)",
    "PulidFluxLoadIdentity": "Load identity (PuLID-Flux)",
    "PulidFluxBlendIdentities": "Blend identities (PuLID-Flux)",
    "PulidFluxFaceSimilarity": "Face similarity (PuLID-Flux)",
}
