"""ComfyUI nodes: declarations only. Each node reads its inputs and calls one function of comfy_layer/. Class names,
input names and order match the original PuLID-Flux pack so saved workflows load; inputs added since are optional
and come after end_at. Inputs several nodes share are declared once, in comfy_layer/inputs.py."""
from __future__ import annotations

from .comfy_layer import cards, folders, identities, patching, similarity
from .comfy_layer import faces as face_nodes  # not `faces`: that is an input name of the face nodes
from .comfy_layer import inputs as I
from .comfy_layer.models import EvaModel, FaceAnalysisModel, PulidModel
from .pulid_flux.identity.build import blend_identities

# The node library's folders (ComfyUI splits on "/"; locales/*/main.json names each part). Changing a category
# moves a node in the library only: saved workflows refer to class names.
LOADERS, APPLY, IDENTITIES = "pulid_flux/loaders", "pulid_flux/apply", "pulid_flux/identities"
FACES_CATEGORY = "pulid_flux/faces"
ON_NO_FACE = ("error", "return model unchanged")

folders.register_model_folders()


class PulidFluxModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pulid_file": (folders.pulid_model_files(), {
            "tooltip": "PuLID-Flux weights in models/pulid (pulid_flux_v0.9.1.safetensors or v0.9.0)."})}}

    RETURN_TYPES = ("PULIDFLUX",)
    OUTPUT_TOOLTIPS = ("The ID encoder and the 20 ID cross-attentions, managed with the diffusion model.",)
    FUNCTION = "load_model"
    CATEGORY = LOADERS
    DESCRIPTION = ("Load the PuLID-Flux weights from models/pulid: the ID encoder and the 20 ID cross-attentions "
                   "that Apply PuLID-Flux adds to Flux.")

    def load_model(self, pulid_file):
        return (PulidModel.load(pulid_file),)


class PulidFluxInsightFaceLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"provider": (["CPU", "CUDA", "ROCM", "CoreML", "auto"], {
            "default": "CPU", "tooltip": "onnxruntime execution provider for face detection and ArcFace. "
                                         "Falls back to CPU (with a log line) when unavailable."})}}

    RETURN_TYPES = ("FACEANALYSIS",)
    OUTPUT_TOOLTIPS = ("Face detection (SCRFD) and ArcFace, for Apply PuLID-Flux, Encode identity and Face similarity.",)
    FUNCTION = "load_insightface"
    CATEGORY = LOADERS
    DESCRIPTION = ("Load InsightFace antelopev2 (face detection and ArcFace identity vectors) from "
                   "models/insightface/models/antelopev2.")

    def load_insightface(self, provider):
        return (FaceAnalysisModel.load(provider),)


class PulidFluxEvaClipLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"eva_file": (["auto"] + folders.eva_candidates(), {
            "default": "auto", "tooltip": "EVA02-CLIP-L-14-336 (EVA02_CLIP_L_336_psz14_s6B.pt or the open_clip "
                                          "safetensors) in models/clip_vision (also models/pulid, models/clip). "
                                          "auto: the first that loads, in that order."})}}

    RETURN_TYPES = ("EVA_CLIP",)
    OUTPUT_TOOLTIPS = ("EVA02-CLIP-L-14-336's vision tower, for Apply PuLID-Flux and Encode identity.",)
    FUNCTION = "load_eva_clip"
    CATEGORY = LOADERS
    DESCRIPTION = "Load EVA02-CLIP-L-14-336, the image encoder that describes the face's appearance for PuLID."

    def load_eva_clip(self, eva_file="auto"):
        return (EvaModel.load(eva_file),)


class ApplyPulidFlux:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": I.MODEL, "pulid_flux": I.PULID_FLUX, "eva_clip": I.EVA_CLIP,
                         "face_analysis": I.FACE_ANALYSIS, "image": I.PHOTOS, **I.sampling_window()},
            "optional": {
                "attn_mask": I.ATTN_MASK, **I.encoding_options(), "uncond": I.UNCOND,
                "on_no_face": (list(ON_NO_FACE), {"default": "error", "tooltip": "When no reference image has a "
                               "usable face: stop with an error, or pass the model through unchanged (a warning "
                               "is logged)."}),
                **I.curation_options(),
            },
        }

    RETURN_TYPES = ("MODEL", "IMAGE")
    RETURN_NAMES = ("MODEL", "face_preview")
    OUTPUT_TOOLTIPS = ("The model with the identity patched in (a clone).",
                       "Aligned face | the face EVA-CLIP saw, for each reference used; with curate on, every photo "
                       "with its verdict and figures (dropped ones framed red).")
    FUNCTION = "apply_pulid_flux"
    CATEGORY = APPLY
    DESCRIPTION = ("Give a Flux model a person's identity from one or more face photos: returns a patched clone of "
                   "the MODEL and a preview of the faces it used.")

    def apply_pulid_flux(self, model, pulid_flux, eva_clip, face_analysis, image, weight, start_at, end_at,
                         attn_mask=None, fusion="mean", face_order="largest", face_index=0, use_gray=True,
                         uncond="same", on_no_face="error", **curation):
        return patching.apply_photos(model, pulid_flux, eva_clip, face_analysis, image, weight, start_at, end_at,
                                     attn_mask, fusion, face_order, face_index, use_gray, uncond, on_no_face,
                                     *I.curation_choice(**curation))


class PulidFluxEncodeIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pulid_flux": I.PULID_FLUX, "eva_clip": I.EVA_CLIP, "face_analysis": I.FACE_ANALYSIS,
                             "image": I.PHOTOS},
                "optional": {**I.encoding_options(), **I.curation_options()}}

    RETURN_TYPES = (I.IDENTITY, "IMAGE")
    RETURN_NAMES = ("identity", "face_preview")
    OUTPUT_TOOLTIPS = ("The person's ID tokens, ArcFace vectors and preview (and every photo's figures in its "
                       "metadata): save it, blend it or apply it.",
                       "Aligned face | the face EVA-CLIP saw, for each photo used; with curate on, every photo "
                       "with its verdict and figures (dropped ones framed red).")
    FUNCTION = "encode"
    CATEGORY = IDENTITIES
    DESCRIPTION = "Encode a person once from photos; Apply identity then needs neither EVA-CLIP nor InsightFace."

    def encode(self, pulid_flux, eva_clip, face_analysis, image, fusion="mean", face_order="largest", face_index=0,
               use_gray=True, **curation):
        return identities.encode_node(pulid_flux, eva_clip, face_analysis, image, fusion, face_order, face_index,
                                      use_gray, *I.curation_choice(**curation))


class PulidFluxApplyIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": I.MODEL, "pulid_flux": I.PULID_FLUX, "identity": I.IDENTITY_IN,
                             **I.sampling_window()},
                "optional": {"attn_mask": I.ATTN_MASK, "uncond": I.UNCOND}}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the identity patched in (a clone); same result as Apply PuLID-Flux on the "
                       "same photos and settings.",)
    FUNCTION = "apply"
    CATEGORY = APPLY
    DESCRIPTION = ("Give a Flux model a saved or encoded identity; needs neither EVA-CLIP nor InsightFace, and gives "
                   "the same image as Apply PuLID-Flux on the same photos.")

    def apply(self, model, pulid_flux, identity, weight, start_at, end_at, attn_mask=None, uncond="same"):
        return (patching.apply_identity(model, pulid_flux, identity, weight, start_at, end_at, attn_mask, uncond),)


class PulidFluxSaveIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity": I.IDENTITY_IN,
            "name": ("STRING", {"default": "person", "tooltip": "File name in models/pulid/identities (.safetensors "
                                                                "is added); a plain name, no folders."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of that name; "
                                                                   "otherwise the node stops with an error."}),
        }, "optional": {
            "card": ("BOOLEAN", {"default": False, "tooltip": "Also write an identity card, NAME.png in the input "
                                 "folder (Load identity card lists it; ComfyUI-Distributed copies it to its workers) "
                                 "and in the output folder: a picture of the face that carries the identity."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = IDENTITIES
    DESCRIPTION = ("Save an identity as a small file in models/pulid/identities, and optionally as an identity card "
                   "(a PNG that carries it).")

    def save(self, identity, name, overwrite=False, card=False):
        return identities.save_node(identity, name, overwrite, card)


class PulidFluxLoadIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"identity_file": (folders.identity_files(), {
            "tooltip": "An identity in models/pulid/identities (or an extra_model_paths.yaml pulid_identities "
                       "folder)."})},
                "optional": {"fingerprint": ("STRING", {"default": "", "tooltip": (
                    "The fingerprint of the identity chosen (filled when you pick identity_file, and by pulid_tools "
                    "queue/batch). A server whose file of that name holds another identity refuses the prompt. "
                    "Empty: no check.")})}}

    RETURN_TYPES = (I.IDENTITY, "IMAGE")
    RETURN_NAMES = ("identity", "preview")
    OUTPUT_TOOLTIPS = ("The saved identity, bit-identical to the one that was saved.",
                       "The saved face preview (aligned | parsed, 128 px), one row per photo.")
    FUNCTION = "load"
    CATEGORY = IDENTITIES
    DESCRIPTION = "Load an identity saved in models/pulid/identities: no photos, EVA-CLIP or InsightFace needed."

    @classmethod
    def IS_CHANGED(cls, identity_file, fingerprint=""):
        return identities.file_state(identity_file)

    @classmethod
    def VALIDATE_INPUTS(cls, identity_file, fingerprint=""):  # named here: ComfyUI leaves the list check to it
        problem = identities.identity_file_problem(identity_file, fingerprint)
        return True if problem is True else identities.Refusal(problem)

    def load(self, identity_file, fingerprint=""):
        return identities.load_node(identity_file, fingerprint)


class PulidFluxLoadIdentityCard(PulidFluxLoadIdentity):
    """Load identity's outputs, from a card in the input folder instead of a file in the identities folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (cards.card_files(), {
            "image_upload": True, "tooltip": "An identity card (.png from Save identity's card or `python -m "
                                             "pulid_tools identity --card`) in ComfyUI's input folder: upload or drag "
                                             "it here. Copies re-saved by other programs lose the identity."})}}

    OUTPUT_TOOLTIPS = ("The identity inside the card, bit-identical to the identity file it was made from.",
                       PulidFluxLoadIdentity.OUTPUT_TOOLTIPS[1])
    DESCRIPTION = ("Load an identity from an identity card (a PNG that carries it), e.g. on a ComfyUI-Distributed "
                   "worker.")

    @classmethod
    def IS_CHANGED(cls, image):
        return cards.card_state(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return cards.card_problem(image)

    def load(self, image):
        return identities.load_card_node(image)


class PulidFluxBlendIdentities:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity_a": (I.IDENTITY, {"tooltip": "First person (ratio 0 gives exactly this identity)."}),
            "identity_b": (I.IDENTITY, {"tooltip": "Second person (ratio 1 gives exactly this identity); made with "
                                                   "the same PuLID-Flux file."}),
            "ratio": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Share of identity_b: (1 - ratio) * A + ratio * B of the ID tokens."}),
        }}

    RETURN_TYPES = (I.IDENTITY,)
    OUTPUT_TOOLTIPS = ("A new face mixing the two people.",)
    FUNCTION = "blend"
    CATEGORY = IDENTITIES
    DESCRIPTION = "Mix two identities into a new face: (1 - ratio) x A + ratio x B of their ID tokens."

    def blend(self, identity_a, identity_b, ratio):
        return (blend_identities(identity_a, identity_b, ratio),)


class PulidFluxFaceSimilarity:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"face_analysis": I.FACE_ANALYSIS,
                         "images": ("IMAGE", {"tooltip": "The generated images to score (a batch)."})},
            "optional": {
                "identity": (I.IDENTITY, {"tooltip": "Compare with this identity's ArcFace (the mean of its photos)."}),
                "reference": ("IMAGE", {"tooltip": "Or compare with the largest face of these photos (used when "
                                                   "no identity is connected)."}),
                "copy_penalty": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                                 "Best-of-N: rank by similarity - copy_penalty x copy_score. 0 ranks by similarity "
                                 "alone (as before); about 0.5 prefers a likeness that does not copy one photo."}),
            },
        }

    RETURN_TYPES = ("FLOAT", "STRING", "INT", "IMAGE", "IMAGE", "FLOAT")
    RETURN_NAMES = ("similarity", "report", "best_index", "best_image", "annotated", "copy_score")
    OUTPUT_IS_LIST = (True, False, False, False, False, True)
    OUTPUT_TOOLTIPS = ("ArcFace cosine similarity per image (1 = same face; 0 when no face was found), a list.",
                       "The scores as text, one line per image, with each image's copy score.",
                       "Index in the batch of the best image (the most similar, less copy_penalty x copy_score).",
                       "The best image.",
                       "Every image with its face boxes and scores drawn (best face green).",
                       "Copy score per image, a list, 0..1: how much the face copies the closest single reference "
                       "photo (identity and pose) beyond how alike the references are to each other. 0 = no closer "
                       "than another photo of the person, 1 = the reference itself; high similarity with a low "
                       "copy score is the goal. 0 when no face was found.")
    OUTPUT_NODE = True
    FUNCTION = "score"
    CATEGORY = IDENTITIES
    DESCRIPTION = ("Score how much each generated image looks like the person (ArcFace similarity) and how much it "
                   "copies one reference photo; picks the best image.")

    def score(self, face_analysis, images, identity=None, reference=None, copy_penalty=0.0):
        return similarity.face_similarity_node(face_analysis, images, identity, reference, copy_penalty)


class PulidFluxFaceMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": I.FACE_IMAGE, "face_analysis": I.FACE_ANALYSIS, **I.face_picking(),
                             **I.mask_shaping()},
                "optional": {"include_hair": I.INCLUDE_HAIR,
                             "on_no_face": (list(face_nodes.MASK_ON_NO_FACE), {
                                 "default": "error", "tooltip": "An image without the face: stop with an error naming "
                                 "the image, or give it an empty mask (one warning in the log)."})}}

    RETURN_TYPES = ("MASK", "INT")
    RETURN_NAMES = ("mask", "face_count")
    OUTPUT_TOOLTIPS = ("The face mask of each image, at the image's own size (0..1): for Apply's attn_mask, "
                       "inpainting or any mask node.",
                       "How many faces were detected in the whole batch (whichever were masked).")
    FUNCTION = "mask"
    CATEGORY = FACES_CATEGORY
    DESCRIPTION = ("Find the faces in a picture and mask the chosen one (or all): box, ellipse or the face's own "
                   "outline, grown and feathered in pixels.")

    def mask(self, image, face_analysis, faces, face_order, face_index, shape, grow, feather, include_hair=False,
             on_no_face="error"):
        return face_nodes.face_mask_node(face_analysis, image, faces, face_order, face_index, shape, grow, feather,
                                         include_hair, on_no_face)


class PulidFluxCropFace:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": I.FACE_IMAGE, "face_analysis": I.FACE_ANALYSIS, **I.face_picking(),
            "context": I.CONTEXT, "size": I.CROP_SIZE,
            **I.mask_shaping()},
            "optional": {"include_hair": I.INCLUDE_HAIR,
                         "on_no_face": (list(face_nodes.CROP_ON_NO_FACE), {
                             "default": "error", "tooltip": "An image without the face: stop with an error naming the "
                             "image, or skip it (Paste face leaves it as it was)."})}}

    RETURN_TYPES = ("IMAGE", "MASK", face_nodes.FACE_CROP)
    RETURN_NAMES = ("crops", "crop_masks", "crop_info")
    OUTPUT_TOOLTIPS = ("One square crop per face, size x size, image by image (faces 'all' gives several per image).",
                       "Each crop's face mask, cut and resized the same way.",
                       "Where each crop came from, with its face mask: connect it to Paste face.")
    FUNCTION = "crop"
    CATEGORY = FACES_CATEGORY
    DESCRIPTION = ("Cut the chosen face (or every face) out with some context, at a working size for a second pass; "
                   "Paste face puts the result back.")

    def crop(self, image, face_analysis, faces, face_order, face_index, context, size, shape, grow, feather,
             include_hair=False, on_no_face="error"):
        return face_nodes.crop_face_node(face_analysis, image, faces, face_order, face_index, context, size, shape,
                                         grow, feather, include_hair, on_no_face)


class PulidFluxPasteFace:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image batch the crops were cut from (the one Crop face received)."}),
            "crops": ("IMAGE", {"tooltip": "The processed crops, one per crop of crop_info (any size: each is resized "
                                "back to its window)."}),
            "crop_info": (face_nodes.FACE_CROP, {"tooltip": "Crop face's crop_info."})},
            "optional": {"mask": ("MASK", {"tooltip": "Replaces crop_info's face masks: one per crop (or one for "
                                           "all) at the crops' size."})}}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The image with each crop pasted back through its feathered mask; where the mask is 0 the "
                       "pixels are bit-identical to the input.",)
    FUNCTION = "paste"
    CATEGORY = FACES_CATEGORY
    DESCRIPTION = ("Put processed face crops back into the picture they were cut from, through their face masks; "
                   "everything outside the masks stays bit-identical.")

    def paste(self, image, crops, crop_info, mask=None):
        return (face_nodes.paste_face_node(image, crops, crop_info, mask),)


NODES = {  # class name (saved in workflows) -> (class, display name)
    "PulidFluxModelLoader": (PulidFluxModelLoader, "Load PuLID-Flux Model"),
    "PulidFluxInsightFaceLoader": (PulidFluxInsightFaceLoader, "Load InsightFace (PuLID-Flux)"),
    "PulidFluxEvaClipLoader": (PulidFluxEvaClipLoader, "Load EVA-CLIP (PuLID-Flux)"),
    "ApplyPulidFlux": (ApplyPulidFlux, "Apply PuLID-Flux"),
    "PulidFluxEncodeIdentity": (PulidFluxEncodeIdentity, "Encode identity (PuLID-Flux)"),
    "PulidFluxApplyIdentity": (PulidFluxApplyIdentity, "Apply identity (PuLID-Flux)"),
    "PulidFluxSaveIdentity": (PulidFluxSaveIdentity, "Save identity (PuLID-Flux)"),
    "PulidFluxLoadIdentity": (PulidFluxLoadIdentity, "Load identity (PuLID-Flux)"),
    "PulidFluxLoadIdentityCard": (PulidFluxLoadIdentityCard, "Load identity card (PuLID-Flux)"),
    "PulidFluxBlendIdentities": (PulidFluxBlendIdentities, "Blend identities (PuLID-Flux)"),
    "PulidFluxFaceSimilarity": (PulidFluxFaceSimilarity, "Face similarity (PuLID-Flux)"),
    "PulidFluxFaceMask": (PulidFluxFaceMask, "Face mask (PuLID-Flux)"),
    "PulidFluxCropFace": (PulidFluxCropFace, "Crop face (PuLID-Flux)"),
    "PulidFluxPasteFace": (PulidFluxPasteFace, "Paste face (PuLID-Flux)"),
}
NODE_CLASS_MAPPINGS = {name: cls for name, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for name, (_, title) in NODES.items()}
