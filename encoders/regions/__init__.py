"""Face regions in existing pictures (no ComfyUI): which faces (finding), their masks (masks: box, ellipse, grow,
feather; parts: BiSeNet parsing warped back), and crop and stitch (crops). The nodes Face mask, Crop face and
Paste face are these plus ComfyUI glue (comfy_layer/faces.py)."""
from .crops import FaceCrop, FaceCrops, crop_window, paste, working_size
from .finding import WHICH_FACES, ImageFaces, find_faces, locate_batch, pick_faces, rgb_uint8
from .masks import SHAPES, box_mask, ellipse_mask, feather_mask, grow_mask, refine
from .parts import FACE_PARTS, HAIR, HAIR_MARGIN, PARSING_MARGIN, limit_box, parsing_masks, shape_masks

__all__ = [
    "FACE_PARTS", "HAIR", "HAIR_MARGIN", "PARSING_MARGIN", "SHAPES", "WHICH_FACES", "FaceCrop", "FaceCrops",
    "ImageFaces", "box_mask", "crop_window", "ellipse_mask", "feather_mask", "find_faces", "grow_mask", "limit_box",
    "locate_batch", "parsing_masks", "paste", "pick_faces", "refine", "rgb_uint8", "shape_masks", "working_size",
]
