"""Reference-image encoders for PuLID-Flux: InsightFace antelopev2, FFHQ alignment, BiSeNet parsing, EVA02-CLIP.

Importable without ComfyUI; heavy libraries (insightface, timm, facexlib) are imported when a model is loaded.
Test doubles live in the repo's `testing` package, not here."""
from .checkpoint import EncoderModelError
from .eva import EVA02_CLIP_L_336, EVA_DOWNLOAD_HINT, EvaClipVision, EvaConfig, load_eva_clip
from .faces import (ANTELOPEV2_DOWNLOAD_HINT, DEFAULT_DET_SIZES, FACE_ORDERS, DetectedFace, choose_face,
                    find_antelopev2, load_face_analysis, onnx_providers, order_faces)
from .images import FFHQ_TEMPLATE_512, align_face, to_rgb_list
from .parsing import BACKGROUND_LABELS, PARSER_DOWNLOAD_HINT, load_face_parser
from .pipeline import FaceEncoders, FaceResult, NoFace

__all__ = [
    "ANTELOPEV2_DOWNLOAD_HINT", "BACKGROUND_LABELS", "DEFAULT_DET_SIZES", "EVA02_CLIP_L_336", "EVA_DOWNLOAD_HINT",
    "FACE_ORDERS", "FFHQ_TEMPLATE_512", "PARSER_DOWNLOAD_HINT", "DetectedFace", "EncoderModelError", "EvaClipVision",
    "EvaConfig", "FaceEncoders", "FaceResult", "NoFace", "align_face", "choose_face", "find_antelopev2",
    "load_eva_clip", "load_face_analysis", "load_face_parser", "onnx_providers", "order_faces", "to_rgb_list",
]
