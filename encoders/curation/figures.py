"""Per-reference figures from what the encode path already has (no extra model): the face found, its detector
score and size, head yaw/pitch from the five landmarks, sharpness of the aligned face, and how consistent each
photo's ArcFace embedding is with the others (leave-one-out), plus the set's spread of pairwise cosines."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..images import FFHQ_TEMPLATE_512

ARCFACE_DIM = 512  # id_cond = cat(raw ArcFace [512], EVA [768]): the first 512 values are ArcFace

# The five landmarks (eye centres, nose tip, mouth corners) of an average face in 3D: x right, y down, z toward
# the camera, in pixels of the 512 px FFHQ-aligned crop. x, y: the FFHQ alignment template (the frontal face the
# aligner maps every face to), centred. z: the depths of the same points in insightface's 68-point mean face
# (data/objects/meanshape_68.pkl: eye centre = mean of each eye's six points, nose tip = point 30, mouth
# corners = 48 and 54), relative to their centroid, in units of its eye distance, times the template's eye
# distance (125.92 px): the nose tip stands 0.53 eye distances in front of the eyes, the mouth corners 0.12.
_DEPTH_PER_EYE_DISTANCE = np.array([-0.1541, -0.1541, 0.3800, -0.0359, -0.0359])
HEAD_MODEL_3D = np.column_stack([
    FFHQ_TEMPLATE_512 - FFHQ_TEMPLATE_512.mean(axis=0),
    _DEPTH_PER_EYE_DISTANCE * np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0])])

# Sharpness is measured on the aligned crop scaled to 128 px, about what ArcFace sees (112 px): at 512 px every face
# from an ordinary photo is an upscale and reads as soft. Region: brows to chin, cheek to cheek (the template puts
# the eyes at y 240, the mouth at y 371 of 512), so background, hair and the gray fill stay out of it.
SHARPNESS_SIZE = 128
SHARPNESS_REGION = (slice(44, 108), slice(36, 92))


def rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Head rotation (degrees) in HEAD_MODEL_3D's frame: R = Rz(roll) @ Ry(yaw) @ Rx(pitch). Positive yaw moves
    the nose toward the image's right, positive pitch moves it up (the face looks up), roll turns in the image."""
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def head_pose(kps) -> tuple[float, float] | None:
    """(yaw, pitch) in degrees of the head whose five landmarks (pixels, any scale or position) are `kps`, or
    None when the points do not fit an upright face seen from the front (degenerate or non-finite input).

    Method: the scaled-orthographic projection that maps HEAD_MODEL_3D onto the landmarks best (an affine fit in
    least squares), its two rows made orthonormal (polar decomposition), completed to a rotation by their cross
    product; yaw and pitch are read from the rotation's third row, so in-image roll does not change them.
    Range: yaw -90..90, pitch -90..90 (see `rotation` for the signs). Exact for an average face seen from far
    away; on real faces a person's own proportions (nose length, mouth height) and the camera's perspective add
    an error of roughly +-10 degrees (more for pitch, which an open mouth also shifts), and beyond about 60
    degrees of yaw the detector's landmarks of the hidden side are guesses."""
    pts = np.asarray(kps, dtype=np.float64).reshape(-1, 2) if np.size(kps) == 10 else None
    if pts is None or not np.isfinite(pts).all():
        return None
    centred = pts - pts.mean(axis=0)
    if np.sqrt((centred ** 2).sum(axis=1).mean()) < 1e-6:
        return None
    affine, *_ = np.linalg.lstsq(HEAD_MODEL_3D, centred, rcond=None)  # (3,2): centred 2D = model @ affine
    if not np.isfinite(affine).all():  # coordinates near the float limits
        return None
    u, s, vt = np.linalg.svd(affine.T, full_matrices=False)
    if s[-1] <= 1e-9 * s[0]:
        return None
    r1, r2 = u @ vt  # nearest pair of orthonormal rows
    r3 = np.cross(r1, r2)
    if r3[2] <= 0:  # the fit faces away from the camera: left and right swapped, not a face
        return None
    # r3 = third row of Rz(roll) Ry(yaw) Rx(pitch) = (-sin yaw, cos yaw sin pitch, cos yaw cos pitch)
    yaw = math.degrees(math.atan2(-r3[0], math.hypot(r3[1], r3[2])))
    pitch = math.degrees(math.atan2(r3[1], r3[2]))
    return yaw, pitch


def sharpness(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of the gray aligned face (512 px crop scaled to SHARPNESS_SIZE, then
    SHARPNESS_REGION) over the variance of the gray values: the share of the face's contrast that sits in the
    finest detail, so brightness and contrast do not change it. 0 for a flat face; the 3x3 Laplacian bounds it by
    64. Measured on scikit-image's astronaut (a 115 px face box): 0.39 sharp, 0.27 / 0.11 / 0.027 after a
    Gaussian blur of 0.5 / 1 / 2 px, 0.16 / 0.048 from the photo at half / quarter size (small faces are soft)."""
    gray = cv2.cvtColor(np.ascontiguousarray(aligned[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gray = cv2.resize(gray, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    laplacian = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)[SHARPNESS_REGION]
    variance = float(gray[SHARPNESS_REGION].astype(np.float64).var())
    return float(laplacian.astype(np.float64).var() / variance) if variance > 1e-8 else 0.0


def face_size(bbox) -> float:
    """The side of a square of the detector box's area, in pixels of the input photo."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(bbox).reshape(4))
    return math.sqrt(max(0.0, x2 - x1) * max(0.0, y2 - y1))


@dataclass(frozen=True)
class ReferenceFigures:
    """One reference photo. Figures are None where they cannot exist (no face; consistency with one photo)."""
    index: int  # position of the photo in the reference batch, 0-based
    face_found: bool
    reason: str = ""  # why no face was used (the encoder's words)
    face_count: int = 0  # faces the detector found in the photo
    bbox: tuple[float, float, float, float] | None = None  # the face used: x1, y1, x2, y2 in photo pixels
    kps: tuple[tuple[float, float], ...] | None = None  # its five landmarks in photo pixels
    det_score: float | None = None
    face_px: float | None = None  # face_size(bbox)
    yaw: float | None = None
    pitch: float | None = None
    sharpness: float | None = None
    consistency: float | None = None  # ArcFace cosine to the mean of the other photos' (leave-one-out)
    consistency_note: str = ""  # why consistency is None


@dataclass(frozen=True)
class FigureSet:
    """Figures of every reference photo, in batch order, and the spread of the set."""
    references: tuple[ReferenceFigures, ...]
    pairwise_min: float | None  # of the ArcFace cosines between photos with a face; None under two faces
    pairwise_median: float | None
    arcface: np.ndarray = field(repr=False, compare=False)  # [faces, 512] float64 unit rows, faces in batch order
    consistency_note: str = ""  # why there is no consistency (under two photos with a face)

    @property
    def found(self) -> list[int]:
        return [r.index for r in self.references if r.face_found]


def unit_rows(arcface) -> np.ndarray:
    """[N,512] (torch or numpy, any float dtype) -> float64 rows of length 1 (a zero row stays zero)."""
    rows = np.asarray(arcface.detach().cpu().double() if hasattr(arcface, "detach") else arcface, np.float64)
    rows = rows.reshape(-1, ARCFACE_DIM)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def leave_one_out(unit: np.ndarray) -> list[float] | None:
    """Cosine of each unit row to the mean of the other rows; None for fewer than two rows. The mean of the
    others is taken as it is (not the mean of all minus this one), so two copies of one photo give exactly 1."""
    if len(unit) < 2:
        return None
    scores = []
    for i in range(len(unit)):
        others = np.delete(unit, i, axis=0).mean(axis=0)
        norm = np.linalg.norm(others)
        scores.append(float(unit[i] @ others / norm) if norm > 0 else 0.0)
    return scores


def pairwise_spread(unit: np.ndarray) -> tuple[float | None, float | None]:
    """(min, median) of the cosines of every pair of unit rows; (None, None) under two rows."""
    if len(unit) < 2:
        return None, None
    cosines = (unit @ unit.T)[np.triu_indices(len(unit), k=1)]
    return float(cosines.min()), float(np.median(cosines))


def _has_face(item) -> bool:
    return bool(getattr(item, "ok", True))  # NoFace.ok is False; the encoder's first stage has no `ok`


def _arcface(item) -> np.ndarray:
    if hasattr(item, "id_cond"):  # FaceResult: id_cond = cat(raw ArcFace, EVA)
        return item.id_cond.reshape(-1)[:ARCFACE_DIM].detach().cpu().double().numpy()
    return np.asarray(item.arcface, np.float64).reshape(-1)


def _aligned_rgb(item) -> np.ndarray:
    return item.aligned if hasattr(item, "aligned") else np.ascontiguousarray(item.aligned_bgr[:, :, ::-1])


def measure_references(results) -> FigureSet:
    """Figures for one reference batch, one item per photo in batch order (see pipeline.py): FaceResult or NoFace
    (what FaceEncoders.encode returns), or the encoder's first stage (FaceEncoders.locate: raw `arcface`,
    `aligned_bgr`, bbox, kps, det_score, face_count), which holds everything the figures need. Curating after
    locate and before BiSeNet/EVA-CLIP leaves the dropped photos out of those batches too, so the kept photos'
    embedding is then exactly what they give alone, and the dropped ones cost no EVA-CLIP pass."""
    found = [(i, r) for i, r in enumerate(results) if _has_face(r)]
    unit = unit_rows(np.stack([_arcface(r) for _, r in found])) if found else np.zeros((0, ARCFACE_DIM))
    consistency = leave_one_out(unit)
    note = "" if consistency is not None else (
        "only one photo with a face: nothing to compare it with" if found else "no photo with a face")
    figures = []
    for i, result in enumerate(results):
        if not _has_face(result):
            figures.append(ReferenceFigures(i, False, result.reason, int(result.face_count)))
            continue
        row = len([j for j, _ in found if j < i])
        pose = head_pose(result.kps)
        figures.append(ReferenceFigures(
            index=i, face_found=True, face_count=int(result.face_count),
            bbox=tuple(float(v) for v in np.asarray(result.bbox).reshape(4)),
            kps=tuple((float(x), float(y)) for x, y in np.asarray(result.kps, np.float64).reshape(5, 2)),
            det_score=float(result.det_score), face_px=face_size(result.bbox),
            yaw=None if pose is None else pose[0], pitch=None if pose is None else pose[1],
            sharpness=sharpness(_aligned_rgb(result)),
            consistency=None if consistency is None else consistency[row], consistency_note=note))
    low, median = pairwise_spread(unit)
    return FigureSet(tuple(figures), low, median, unit, note)
