"""Parsing face masks: BiSeNet's labels on the 512 px FFHQ-aligned face (the crop PuLID encodes), warped back onto
the image with the inverse of the alignment's similarity transform.

Which labels (CelebAMask-HQ order): skin 1, brows 2/3, eyes 4/5, glasses 6 (so a face with glasses has no holes
around the eyes), nose 10, mouth 11, lips 12/13, and with include_hair hair 17. Ears, neck, clothes, hat and
background are never part of the mask.

The aligned crop is about twice the face box, and holds whatever is beside the face: a neighbour's cheek in a
group photo is labelled skin too. So the warped mask is limited to the face box grown by PARSING_MARGIN of the
box's longer side on every side (HAIR_MARGIN with hair): a documented bound every parsing mask stays inside."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ..images import align_face, ffhq_affine
from ..parsing import parse_labels
from .masks import box_mask, shape_mask

FACE_PARTS = (1, 2, 3, 4, 5, 6, 10, 11, 12, 13)
HAIR = 17
PARSING_MARGIN = 0.25
HAIR_MARGIN = 0.75
PARSER_BATCH = 8  # aligned faces per parser call: bounded memory for a photo with many faces


def parts(include_hair: bool = False) -> tuple[int, ...]:
    return FACE_PARTS + ((HAIR,) if include_hair else ())


def limit_box(box, include_hair: bool = False) -> tuple[float, float, float, float]:
    """The face box grown by the parsing margin: every parsing mask of that face lies inside it."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    pad = (HAIR_MARGIN if include_hair else PARSING_MARGIN) * max(x2 - x1, y2 - y1, 0.0)
    return x1 - pad, y1 - pad, x2 + pad, y2 + pad


def warp_back(aligned_mask: np.ndarray, affine: np.ndarray, height: int, width: int,
              limit=None) -> np.ndarray:
    """bool [height, width]: an aligned-space mask (bool [512, 512]) seen in the image. `affine` maps image pixels
    to aligned pixels (ffhq_affine); each image pixel samples the aligned mask there (bilinear, kept where >= 0.5).
    With `limit` (a box), only pixels whose centres lie in it can be set."""
    out = np.zeros((height, width), bool)
    area = box_mask(limit, height, width) if limit is not None else np.ones((height, width), bool)
    rows, cols = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
    if rows.size == 0 or not aligned_mask.any():
        return out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # The same pixel convention as align_face (cv2.warpAffine both ways), so the round trip adds no shift; only the
    # window's offset moves into the translation.
    local = np.asarray(affine, np.float64).copy()
    local[:, 2] += local[:, :2] @ np.array([c0, r0], np.float64)
    sampled = cv2.warpAffine(aligned_mask.astype(np.float32), local, (int(c1 - c0), int(r1 - r0)),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
    out[r0:r1, c0:c1] = (sampled >= 0.5) & area[r0:r1, c0:c1]
    return out


def label_mask(labels: np.ndarray, include_hair: bool = False) -> np.ndarray:
    """bool mask of the face parts in a label map."""
    return np.isin(labels, parts(include_hair))


def aligned_labels(parser: torch.nn.Module, rgb: np.ndarray, faces) -> list[np.ndarray]:
    """BiSeNet labels [512, 512] of each face's aligned crop (from its five landmarks, in the image's pixels)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    labels = []
    for start in range(0, len(faces), PARSER_BATCH):
        chunk = [align_face(bgr, face.kps)[:, :, ::-1] for face in faces[start:start + PARSER_BATCH]]
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(chunk))).permute(0, 3, 1, 2).float() / 255.0
        labels += list(parse_labels(parser, batch)[:, 0].cpu().numpy())
    return labels


def parsing_masks(parser: torch.nn.Module, rgb: np.ndarray, faces, include_hair: bool = False) -> list[np.ndarray]:
    """bool [H, W] parsing mask of each face of an RGB uint8 image (see the module's text)."""
    height, width = rgb.shape[:2]
    masks = []
    for face, labels in zip(faces, aligned_labels(parser, rgb, faces) if faces else []):
        masks.append(warp_back(label_mask(labels, include_hair), ffhq_affine(face.kps), height, width,
                               limit_box(face.bbox, include_hair)))
    return masks


def aligned_point_in_image(affine: np.ndarray, point) -> tuple[float, float]:
    """Where an aligned-space point (x, y) lies in the image (the inverse similarity transform)."""
    inverse = cv2.invertAffineTransform(np.asarray(affine, np.float64))
    x, y = inverse @ np.array([float(point[0]), float(point[1]), 1.0])
    return float(x), float(y)


def shape_masks(shape: str, faces, rgb: np.ndarray, parser: torch.nn.Module | None = None,
                include_hair: bool = False) -> list[np.ndarray]:
    """bool [H, W] mask of each face of an RGB uint8 image, for any shape ('parsing' needs the parser)."""
    if shape != "parsing":
        return [shape_mask(shape, face.bbox, *rgb.shape[:2]) for face in faces]
    if parser is None:
        raise ValueError("shape 'parsing' needs the face parser (BiSeNet).")
    return parsing_masks(parser, rgb, faces, include_hair)
