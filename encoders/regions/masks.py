"""Face masks from a detector box, and the exact grow and feather every face mask goes through.

Coordinates are those of the detector and OpenCV: pixel (col, row) has its centre at (col, row), and it is inside
a shape when its centre is. Distances are Euclidean, between pixel centres (OpenCV's exact distance transform).

- grow N > 0: a pixel joins the mask when its distance to the nearest mask pixel is at most N (a box grows by
  exactly N pixels on each side, its corners rounded with radius N). grow N < 0: a mask pixel stays when its
  distance to the nearest pixel outside the mask is more than |N| (a box shrinks by exactly |N| on each side).
  The image border is not an edge: a mask cut by the border keeps its pixels along it.
- feather F: 1 inside the grown mask, and at distance d from it max(0, 1 - d / (F + 1)): along a row or column
  exactly F pixels get a value between 0 and 1 (F/(F+1), ..., 1/(F+1)) and the next is 0. Pixels farther than
  grow + feather from the face's shape are exactly 0, so Paste face leaves them bit-identical.

All functions take and return numpy arrays of the image's size and work only inside the mask's bounding box
(widened by the reach), so a small face in a large image costs little."""
from __future__ import annotations

import math

import cv2
import numpy as np

SHAPES = ("box", "ellipse", "parsing")


def _pixel_span(low: float, high: float, limit: int) -> tuple[int, int]:
    """Half-open range [first, end) of pixel indices whose centres lie in [low, high], clipped to 0..limit."""
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        return 0, 0
    first = max(0, math.ceil(low))
    end = min(limit, math.floor(high) + 1)
    return first, max(first, end)


def box_mask(box, height: int, width: int) -> np.ndarray:
    """bool [height, width]: the pixels whose centres lie in the box (x1, y1, x2, y2), parts outside the image cut."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    mask = np.zeros((height, width), bool)
    c0, c1 = _pixel_span(x1, x2, width)
    r0, r1 = _pixel_span(y1, y2, height)
    mask[r0:r1, c0:c1] = True
    return mask


def ellipse_mask(box, height: int, width: int) -> np.ndarray:
    """bool [height, width]: the ellipse inscribed in the box (axes parallel to the image), pixel centres inside
    or on it. Always a subset of box_mask of the same box."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    mask = np.zeros((height, width), bool)
    c0, c1 = _pixel_span(x1, x2, width)
    r0, r1 = _pixel_span(y1, y2, height)
    if c1 <= c0 or r1 <= r0:
        return mask
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    u = ((np.arange(c0, c1) - cx) / rx) ** 2 if rx > 0 else np.zeros(c1 - c0)
    v = ((np.arange(r0, r1) - cy) / ry) ** 2 if ry > 0 else np.zeros(r1 - r0)
    mask[r0:r1, c0:c1] = v[:, None] + u[None, :] <= 1.0
    return mask


def bounds(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """(rows, cols) slices of the mask's bounding box widened by `margin` pixels and clipped to the image; None
    for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    return (slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)))


def _distance(zero_at: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from each pixel centre to the nearest pixel where `zero_at` is True (float32;
    a very large value when there is none)."""
    return cv2.distanceTransform(np.where(zero_at, 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """bool mask grown (pixels > 0) or shrunk (pixels < 0) by exactly that many pixels (see the module's text)."""
    mask = np.asarray(mask, bool)
    pixels = int(pixels)
    window = bounds(mask, max(pixels, 0) + 1)
    if pixels == 0 or window is None:
        return mask.copy()
    part = mask[window]
    grown = _distance(part) <= pixels if pixels > 0 else _distance(~part) > -pixels
    out = np.zeros_like(mask)
    out[window] = grown
    return out


def feather_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """float32 mask: 1 inside `mask`, a linear ramp max(0, 1 - d / (pixels + 1)) outside (see the module's text)."""
    mask = np.asarray(mask, bool)
    pixels = int(pixels)
    out = mask.astype(np.float32)
    window = bounds(mask, pixels + 1)
    if pixels <= 0 or window is None:
        return out
    ramp = 1.0 - _distance(mask[window]) / np.float32(pixels + 1)
    out[window] = np.clip(ramp, 0.0, 1.0)
    return out


def refine(mask: np.ndarray, grow: int = 0, feather: int = 0) -> np.ndarray:
    """The grown, then feathered float32 mask (0..1) of a bool face mask."""
    return feather_mask(grow_mask(mask, grow), feather)


def shape_mask(shape: str, box, height: int, width: int) -> np.ndarray:
    """bool [height, width] of one face for the box-derived shapes ('box', 'ellipse'); 'parsing' lives in
    regions.parts (it needs the face parser)."""
    if shape == "box":
        return box_mask(box, height, width)
    if shape == "ellipse":
        return ellipse_mask(box, height, width)
    raise ValueError(f"Unknown box shape {shape!r}: use 'box' or 'ellipse' ('parsing' needs the face parser).")
