"""Reference photos for the curation tests, as the encoders would return them: real aligned crops (scikit-image's
astronaut, landmarks placed by hand) with synthetic ArcFace embeddings of chosen similarity, since the repo's
antelopev2 stand-in has random weights and says nothing about who is who."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from encoders.curation.figures import HEAD_MODEL_3D, rotation
from encoders.images import align_face
from encoders.pipeline import FaceResult, NoFace

# The astronaut's eye centres, nose tip and mouth corners in pixels of data.astronaut() (512x512), by hand.
ASTRONAUT_KPS = np.array([(202, 101.5), (246, 102.5), (225, 125), (207, 145), (246, 142.5)], np.float32)
ASTRONAUT_BBOX = np.array([170, 55, 280, 175], np.float32)


@functools.lru_cache(maxsize=None)
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def aligned(rgb: np.ndarray, kps: np.ndarray = ASTRONAUT_KPS) -> np.ndarray:
    return np.ascontiguousarray(align_face(np.ascontiguousarray(rgb[:, :, ::-1]), kps)[:, :, ::-1])


def person(seed: int, dim: int = 512) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def photo_of(identity: np.ndarray, similarity: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine to `identity` is exactly `similarity` (another photo of that person: its
    pairwise cosine to a second such photo is about similarity**2 ... similarity, noise being random)."""
    noise = np.random.default_rng([seed, 1]).standard_normal(identity.shape)  # never the identity's own stream
    noise -= (noise @ identity) * identity
    noise /= np.linalg.norm(noise)
    return similarity * identity + np.sqrt(1 - similarity ** 2) * noise


def face_result(arcface: np.ndarray, image: np.ndarray | None = None, kps=ASTRONAUT_KPS, bbox=ASTRONAUT_BBOX,
                raw_scale: float = 23.0, det_score: float = 0.9, face_count: int = 1) -> FaceResult:
    """A FaceResult as the encoders make it: id_cond = raw ArcFace (not unit length) then a unit EVA vector."""
    eva = torch.nn.functional.normalize(torch.randn(1, 768, generator=torch.Generator().manual_seed(1)), dim=-1)
    arc = torch.from_numpy(np.asarray(arcface, np.float64) * raw_scale).float().view(1, -1)
    crop = aligned(astronaut() if image is None else image, np.asarray(kps, np.float32))
    return FaceResult(id_cond=torch.cat([arc, eva], dim=-1), hidden_states=[], aligned=crop,
                      parsed=np.zeros_like(crop), bbox=np.asarray(bbox, np.float32),
                      kps=np.asarray(kps, np.float32), det_score=det_score, face_count=face_count,
                      found_by="detector 640 px")


def no_face(reason: str = "no face detected (detector sizes 640 px)") -> NoFace:
    return NoFace(reason)


def projected(yaw: float, pitch: float, roll: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
    """The average head's five landmarks turned by (yaw, pitch, roll) degrees, seen from far away."""
    return (HEAD_MODEL_3D @ rotation(yaw, pitch, roll).T)[:, :2] * scale + np.asarray(shift)


def perspective(yaw: float, pitch: float, distance: float) -> np.ndarray:
    """The same seen by a pinhole camera `distance` eye-distances away from the head's centre."""
    points = HEAD_MODEL_3D @ rotation(yaw, pitch).T
    depth = distance * 125.92 - points[:, 2]
    return points[:, :2] * (distance * 125.92) / depth[:, None]


def blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


# The six people of insightface's t1.jpg (1280x886): eye centres, nose tip, mouth corners, by hand (about +-2 px),
# left to right. The standing man (index 4) turns strongly away; the others look down a little.
GROUP_KPS = np.array([
    [(82.5, 332.5), (128.75, 307.5), (120, 346), (115, 367.5), (150, 351)],
    [(290, 212.5), (321, 194), (307.5, 227.5), (302.5, 240), (337.5, 232.5)],
    [(490, 317.5), (537.5, 332.5), (507.5, 352.5), (487.5, 366), (537.5, 375)],
    [(762.5, 396), (802.5, 397.5), (787.5, 427.5), (767.5, 441), (815, 441)],
    [(915, 112.5), (945, 115), (928.75, 152.5), (935, 167.5), (960, 169)],
    [(1145, 326), (1192.5, 323.75), (1172.5, 352.5), (1153.75, 363.75), (1193.75, 362.5)]], np.float32)


@functools.lru_cache(maxsize=None)
def group_photo() -> np.ndarray:
    import os

    import insightface

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    return np.ascontiguousarray(cv2.imread(path)[:, :, ::-1])
