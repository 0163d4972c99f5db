"""Test support for the face-region tests (Face mask, Crop face, Paste face): photos of any size, where the
generated detector (support.encoder_fakes) reports its faces in them (computed here from InsightFace's letterbox,
independently of the pack), and a parser stand-in with a known label map."""
from __future__ import annotations

import numpy as np
import torch

from support.encoder_fakes import FakeFace

DET_SIZE = 640  # the first detector size the pack tries; the fakes always answer there
MAX_SIDE = 1024  # the pack's detection limit (the official pipeline's reference size)


def photo(width: int, height: int) -> np.ndarray:
    """scikit-image's astronaut stretched to width x height, RGB uint8 (textured enough for the fake detector)."""
    import cv2
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA))


def as_image(*rgbs: np.ndarray) -> torch.Tensor:
    """RGB uint8 arrays of one size -> a ComfyUI IMAGE [B, H, W, 3] float32 in 0..1."""
    return torch.from_numpy(np.stack(rgbs)).float() / 255.0


def detector_scale(width: int, height: int) -> float:
    """Image pixels per detector-canvas pixel: the long side limited to 1024 (rounded down as the pack does), then
    InsightFace's letterbox into a 640 px square (top-left, the resized height rounded down)."""
    small_w, small_h = width, height
    if max(width, height) > MAX_SIDE:
        k = MAX_SIDE / max(width, height)
        small_w, small_h = max(1, int(width * k)), max(1, int(height * k))
    limit = small_w / width if width >= height else small_h / height
    if small_h / small_w > 1.0:
        new_h = DET_SIZE
    else:
        new_h = int(DET_SIZE * small_h / small_w)
    det_scale = new_h / small_h
    return 1.0 / (det_scale * limit)


def expected_box(face: FakeFace, width: int, height: int) -> np.ndarray:
    """x1, y1, x2, y2 in image pixels of a fake face."""
    return np.asarray(face.box, np.float64) * DET_SIZE * detector_scale(width, height)


def expected_kps(face: FakeFace, width: int, height: int) -> np.ndarray:
    return np.asarray(face.kps, np.float64) * DET_SIZE * detector_scale(width, height)


class LabelMapParser(torch.nn.Module):
    """A BiSeNet stand-in: whatever it is shown, its logits pick `labels` ([512, 512] ints), as parse_labels reads
    them (output[0] is [B, 19, H, W])."""

    def __init__(self, labels: np.ndarray):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 19)
                             .permute(2, 0, 1).float()[None])
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # parse_labels reads the device and dtype of a parameter

    def forward(self, x):
        return (self.logits.expand(x.shape[0], -1, -1, -1),)


def disk_labels(centre=(256.0, 300.0), radius: float = 60.0, label: int = 1) -> np.ndarray:
    """A [512, 512] label map: `label` on a disk (pixel centres at integer coordinates), background elsewhere."""
    ys, xs = np.mgrid[0:512, 0:512]
    return np.where((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2, label, 0)
