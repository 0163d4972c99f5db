"""Input images to uint8 RGB arrays, the official 1024 px size limit, and FFHQ 512 alignment."""
from __future__ import annotations

import cv2
import numpy as np
import torch

MAX_REFERENCE_SIDE = 1024
MIN_FACE_SIDE = 16  # below this no detector finds a face, and a side may scale to 0 px (OpenCV refuses that)
ALIGNED_SIZE = 512
# facexlib's FFHQ 5-point template for a 512 px crop (eyes, nose, mouth corners).
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]])
BORDER_BGR = (135, 133, 132)  # gray fill outside the photo, given in BGR order as facexlib does


def _to_rgb_uint8(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):  # an empty image is refused later, as "no face"
        raise ValueError(f"{where}: expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {tuple(image.shape)}.")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"{where}: expected uint8 (0..255) or float (0..1) pixels, got {image.dtype}.")
        # round: the exact inverse of ComfyUI's LoadImage (uint8 / 255)
        image = np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])  # alpha dropped, as PIL's convert('RGB') does


def to_rgb_list(images) -> list[np.ndarray]:
    """A ComfyUI IMAGE tensor [B,H,W,C] (float 0..1, C = 1/3/4), a numpy image (HxW[xC] uint8 RGB/RGBA/gray or
    float 0..1), a [B,H,W,C] array, or a list of these -> list of HxWx3 uint8 RGB arrays."""
    if isinstance(images, (list, tuple)):
        return [rgb for item in images for rgb in to_rgb_list(item)]
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float32).numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError("images: expected a ComfyUI IMAGE tensor, a numpy array or a list, "
                        f"got {type(images).__name__}.")
    if images.ndim == 4:
        return [_to_rgb_uint8(img, f"image {i}") for i, img in enumerate(images)]
    return [_to_rgb_uint8(images, "image")]


def limited_size(height: int, width: int, max_side: int = MAX_REFERENCE_SIDE) -> tuple[int, int]:
    """(height, width) once the long side is at most `max_side`; no side drops below 1 px."""
    if max(height, width) <= max_side:
        return height, width
    k = max_side / max(height, width)
    return max(1, int(height * k)), max(1, int(width * k))


def size_problem(height: int, width: int, max_side: int = MAX_REFERENCE_SIDE) -> str | None:
    """Why an image of this size cannot hold a usable face (a side under MIN_FACE_SIDE px, before or after the long
    side is limited), or None. OpenCV cannot resize a side to 0 px, which the detector would ask for."""
    small_h, small_w = limited_size(height, width, max_side)
    if min(small_h, small_w) >= MIN_FACE_SIDE:
        return None
    scaled = f" ({small_w}x{small_h} px once the long side is scaled to {max_side} px)" \
        if (small_h, small_w) != (height, width) else ""
    return (f"the image is {width}x{height} px{scaled}: too small or too narrow to hold a face (each side needs at "
            f"least {MIN_FACE_SIDE} px)")


def limit_long_side(rgb: np.ndarray, max_side: int = MAX_REFERENCE_SIDE) -> tuple[np.ndarray, float]:
    """Downscale so the long side is at most `max_side` (Lanczos, as the official pipeline); returns the scale."""
    h, w = rgb.shape[:2]
    new_h, new_w = limited_size(h, w, max_side)
    if (new_h, new_w) == (h, w):
        return rgb, 1.0
    scale = new_w / w if w >= h else new_h / h
    return cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4), scale


def ffhq_affine(kps: np.ndarray) -> np.ndarray:
    """2x3 similarity transform taking the 5 keypoints onto the FFHQ 512 template (LMEDS, as facexlib)."""
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(kps, np.float32).reshape(5, 2), FFHQ_TEMPLATE_512,
                                            method=cv2.LMEDS)
    if matrix is None:
        raise ValueError(f"the 5 face keypoints are degenerate, no alignment possible: {np.round(kps, 1).tolist()}")
    return matrix


def align_face(bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """512x512 FFHQ-aligned crop of a BGR image (BGR out), byte-identical to facexlib's align_warp_face."""
    return cv2.warpAffine(bgr, ffhq_affine(kps), (ALIGNED_SIZE, ALIGNED_SIZE), borderMode=cv2.BORDER_CONSTANT,
                          borderValue=BORDER_BGR)


def pad_for_detection(bgr: np.ndarray, fraction: float = 0.25) -> tuple[np.ndarray, int]:
    """Image with a border of the alignment fill colour: faces filling the whole frame are often missed by
    the detector, and the same fill keeps the aligned crop identical to aligning the unpadded image."""
    pad = max(1, int(round(fraction * max(bgr.shape[:2]))))
    return cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=BORDER_BGR), pad
