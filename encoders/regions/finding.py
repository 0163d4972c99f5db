"""Every face of an image in the image's own pixels, and the faces a node works on (the chosen one or all).

Detection is the reference pipeline's (encoders/pipeline.py): the long side limited to 1024 px, the detector sizes
tried in turn, then a copy padded with the alignment gray (faces filling the frame)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..faces import DEFAULT_DET_SIZES, DetectedFace, choose_face, detect_faces, order_faces
from ..images import limit_long_side, pad_for_detection, size_problem

WHICH_FACES = ("chosen", "all")


def find_faces(analysis, rgb: np.ndarray, det_sizes=DEFAULT_DET_SIZES, pad_retry: bool = True) -> list[DetectedFace]:
    """Faces of an RGB uint8 image, boxes and landmarks in its own pixels, in detection order; [] when none (or the
    image is too small to hold one)."""
    if size_problem(*rgb.shape[:2]):
        return []
    small, scale = limit_long_side(rgb)
    frame = np.ascontiguousarray(small[:, :, ::-1])  # insightface works in BGR
    faces, _ = detect_faces(analysis, frame, det_sizes)
    offset = 0
    if not faces and pad_retry:
        padded, pad = pad_for_detection(frame)
        faces, _ = detect_faces(analysis, padded, det_sizes)
        offset = pad
    return [DetectedFace(((f.bbox - offset) / scale).astype(np.float32), ((f.kps - offset) / scale).astype(np.float32),
                         f.det_score) for f in faces]


def rgb_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """A ComfyUI IMAGE [B, H, W, C] (float 0..1, or uint8 0..255; C = 1, 3, 4) -> HxWx3 uint8 RGB arrays with
    encoders.images.to_rgb_list's values (round half to even, clipped; gray repeated, alpha dropped), except that a
    uint8 tensor is taken as 0..255 (to_rgb_list reads a uint8 tensor as float)."""
    pixels = images.detach().cpu()
    pixels = pixels[..., :3] if pixels.shape[-1] != 1 else pixels.expand(*pixels.shape[:-1], 3)
    if pixels.dtype == torch.uint8:
        return [np.ascontiguousarray(item) for item in pixels.numpy()]
    scaled = np.rint(pixels.float().numpy() * np.float32(255.0))
    return [np.clip(item, 0, 255).astype(np.uint8) for item in scaled]


@dataclass
class ImageFaces:
    """One image of a batch: every face found, the ones picked, and why none was picked."""
    index: int
    height: int
    width: int
    found: list[DetectedFace]
    picked: list[DetectedFace] = field(default_factory=list)
    reason: str = ""


def pick_faces(found: list[DetectedFace], which: str = "chosen", order: str = "largest",
               index: int = 0) -> tuple[list[DetectedFace], str]:
    """'chosen': the face at `index` in `order` (choose_face); 'all': every face, in `order`. Returns (faces, '')
    or ([], reason)."""
    if which == "all":
        ordered = order_faces(found, order)
        return ordered, "" if ordered else "no face detected"
    if which != "chosen":
        raise ValueError(f"Unknown faces choice {which!r}: use one of {', '.join(WHICH_FACES)}.")
    face, reason = choose_face(found, order, index)
    return ([face], "") if face is not None else ([], reason)


def locate_batch(analysis, rgb_images: list[np.ndarray], which: str = "chosen", order: str = "largest",
                 index: int = 0, progress=None) -> list[ImageFaces]:
    """find_faces + pick_faces for each image; `progress(done, total)` after each."""
    located = []
    for i, rgb in enumerate(rgb_images):
        found = find_faces(analysis, rgb)
        picked, reason = pick_faces(found, which, order, index)
        if not found:
            reason = size_problem(*rgb.shape[:2]) or reason
        located.append(ImageFaces(i, rgb.shape[0], rgb.shape[1], found, picked, reason))
        if progress is not None:
            progress(i + 1, len(rgb_images))
    return located
