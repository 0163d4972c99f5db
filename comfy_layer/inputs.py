"""Every node input that more than one node has, declared once: type, default, range and tooltip. Nodes build their
INPUT_TYPES from these, so the same input reads the same everywhere. Widget order is part of saved workflows:
nodes list these in their historical order, and inputs added later come after end_at, optional."""
from __future__ import annotations

import math

from ..encoders import FACE_ORDERS
from ..encoders.curation.selection import CURATE_MODES, THRESHOLD_INPUTS, Thresholds
from ..encoders.regions import SHAPES, WHICH_FACES
from ..pulid_flux import FUSION_MODES
from ..pulid_flux.patch import UNCOND_MODES

IDENTITY = "PULIDFLUX_IDENTITY"

MODEL = ("MODEL", {"tooltip": "A Flux model; it is cloned, never changed."})
PULID_FLUX = ("PULIDFLUX", {"tooltip": "From Load PuLID-Flux Model. An identity works with the PuLID-Flux file it "
                                       "was made with (another one logs a warning)."})
EVA_CLIP = ("EVA_CLIP", {"tooltip": "From Load EVA-CLIP (PuLID-Flux)."})
FACE_ANALYSIS = ("FACEANALYSIS", {"tooltip": "From Load InsightFace (PuLID-Flux): face detection and ArcFace."})
PHOTOS = ("IMAGE", {"tooltip": "One or more reference photos of the person (a batch); each needs a visible face."})
IDENTITY_IN = (IDENTITY, {"tooltip": "A person's identity: from Encode identity, Load identity or Blend identities."})

WEIGHT = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                    "tooltip": "Strength of the identity (official range 0..3, default 1)."})
START_AT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                      "tooltip": "Fraction of sampling before the ID applies; later starts keep more of the prompt's "
                                 "composition (photoreal: ~0.15)."})
END_AT = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "Fraction of sampling after which the ID stops."})
ATTN_MASK = ("MASK", {"tooltip": "Apply this identity only where the mask is white; two Apply nodes with "
                                 "complementary masks give two people."})
UNCOND = (list(UNCOND_MODES), {"default": "same", "tooltip": "With CFG > 1: 'same' applies the ID to the negative "
          "too (old packs), 'uncond_id' gives the negative the official uncond ID embedding (true CFG), 'none' leaves "
          "the negative alone."})

FUSION = (list(FUSION_MODES), {"default": "mean", "tooltip": "How several reference photos combine: mean of their "
          "ID tokens, concat (all tokens), max_token, max. Use 'mean' for identities you want to blend."})
FACE_ORDER = (list(FACE_ORDERS), {"default": "largest", "tooltip": "Which face when a photo has several: sort "
              "order, then face_index picks one."})
FACE_INDEX = ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Position in face_order."})
USE_GRAY = ("BOOLEAN", {"default": True, "tooltip": "Gray face for EVA-CLIP, as official PuLID."})


def encoding_options() -> dict:
    """The optional inputs that choose how photos are encoded (Apply PuLID-Flux and Encode identity), in order."""
    return {"fusion": FUSION, "face_order": FACE_ORDER, "face_index": FACE_INDEX, "use_gray": USE_GRAY}


def sampling_window() -> dict:
    """weight, start_at, end_at: the required inputs of both Apply nodes, in order."""
    return {"weight": WEIGHT, "start_at": START_AT, "end_at": END_AT}


CURATE = (list(CURATE_MODES), {"default": "off", "tooltip": "Which photos make the identity. off: all, as before; "
          "warn: all, and each photo's verdict is logged and drawn on face_preview; drop: photos that look like "
          "another person, or are too small, strongly turned or blurred (the thresholds below) are left out before "
          "encoding; weight: all, weighted by how consistent each is with the others (fusion 'mean')."})
_DEFAULT_THRESHOLDS = Thresholds()
CURATION_THRESHOLDS = {name: ("FLOAT", {"default": getattr(_DEFAULT_THRESHOLDS, name), "min": low, "max": high,
                                        "step": step, "tooltip": f"curate: {tooltip}"})
                       for name, (low, high, step, tooltip) in THRESHOLD_INPUTS.items()}


def curation_options() -> dict:
    """curate and its thresholds (Apply PuLID-Flux and Encode identity, after all their older optional inputs)."""
    return {"curate": CURATE, **CURATION_THRESHOLDS}


def curation_choice(curate: str = "off", **thresholds) -> tuple[str, Thresholds]:
    """The curation inputs as the node received them -> (mode, Thresholds); missing thresholds keep their defaults
    (a workflow saved before they existed). The thresholds are checked (Thresholds refuses NaN, naming it) only where
    they are used: with curate 'off' they choose nothing, so one that is not a finite number is left at its default
    instead of stopping the node."""
    given = {k: v for k, v in thresholds.items() if k in THRESHOLD_INPUTS}
    if curate == "off":
        given = {k: v for k, v in given.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return curate, Thresholds(**given)


# --- Face mask, Crop face, Paste face (issue 24) ------------------------------------------------------------------
FACE_IMAGE = ("IMAGE", {"tooltip": "The picture(s) whose faces to find: any batch, any size."})
FACES = (list(WHICH_FACES), {"default": "chosen", "tooltip": "chosen: the face at face_index in face_order, in each "
         "image; all: every face found."})
SHAPE = (list(SHAPES), {"default": "ellipse", "tooltip": "box: the detector's face box; ellipse: the ellipse inside "
         "that box; parsing: the face's own outline (skin, brows, eyes, glasses, nose, mouth; BiSeNet on the aligned "
         "face, needs parsing_bisenet.pth)."})
GROW = ("INT", {"default": 0, "min": -512, "max": 1024, "step": 1, "tooltip": "Pixels of the image to grow the mask "
        "by on every side (negative shrinks it)."})
FEATHER = ("INT", {"default": 0, "min": 0, "max": 1024, "step": 1, "tooltip": "Pixels of the image over which the "
           "grown mask fades linearly to 0 outside its edge; beyond that the mask is exactly 0."})
INCLUDE_HAIR = ("BOOLEAN", {"default": False, "tooltip": "parsing only: include the hair in the mask."})
CONTEXT = ("FLOAT", {"default": 2.0, "min": 1.0, "max": 8.0, "step": 0.05, "tooltip": "Crop side as a multiple of "
           "the face box's longer side (centred on the face, kept inside the image, at most the image's shorter "
           "side)."})
CROP_SIZE = ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 16, "tooltip": "Every crop is resized to "
             "size x size pixels (a multiple of 16: Flux's latent grid)."})


def face_picking() -> dict:
    """faces, face_order, face_index: which faces Face mask and Crop face work on, in order."""
    return {"faces": FACES, "face_order": FACE_ORDER, "face_index": FACE_INDEX}


def mask_shaping() -> dict:
    """shape, grow, feather: the face mask of Face mask and Crop face, in order."""
    return {"shape": SHAPE, "grow": GROW, "feather": FEATHER}
