"""Likeness versus copying for generated faces, and best-of-N ranking with an optional copy penalty.

A generated face should look like the person (likeness) without reproducing one reference photo (copying). Real
photos of one person are not that alike to ArcFace (median cosine about 0.46 on WithAnyone's MultiID-Bench), so
a generated face far closer to one reference than the references are to each other, in the same pose and
expression, is a copy of that photo rather than a better likeness."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .figures import ARCFACE_DIM, pairwise_spread, unit_rows

# The baseline for one reference, which has no pairwise cosine of its own: the median ArcFace cosine of real
# photos of one person (WithAnyone's MultiID-Bench).
TYPICAL_SAME_PERSON_COSINE = 0.46
# Landmark distance (see landmark_distance) at which two faces no longer share a pose: 0.11 is what a 20 degree
# turn (yaw or pitch) of the average face gives (0.054 for 10 degrees); expressions (an open mouth) count too.
POSE_TOLERANCE = 0.11


def landmark_distance(kps, ref_kps) -> float | None:
    """How far the five landmarks `kps` are from `ref_kps` once the best similarity transform (scale, rotation,
    shift; no mirroring) has mapped one onto the other: the RMS residual over the RMS radius of `ref_kps` about
    its centre. 0 = the same pose and expression at any size, place or roll; at most 1 (a transform with scale 0
    leaves the radius). None for non-finite or degenerate points."""
    a = np.asarray(kps, np.float64).reshape(-1, 2)
    b = np.asarray(ref_kps, np.float64).reshape(-1, 2)
    if a.shape != (5, 2) or b.shape != (5, 2) or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    spread_a, spread_b = float((a ** 2).sum()), float((b ** 2).sum())
    if spread_a < 1e-12 or spread_b < 1e-12:
        return None
    u, s, vt = np.linalg.svd(a.T @ b)  # Umeyama: the best rotation's correlation is s summed, sign-fixed
    s[-1] *= np.sign(np.linalg.det(u @ vt)) or 1.0
    residual = max(0.0, spread_b - float(s.sum()) ** 2 / spread_a)
    return min(1.0, math.sqrt(residual / spread_b))


@dataclass(frozen=True)
class CopyFigures:
    """One generated face against the references. See likeness_and_copy for the formulas."""
    likeness: float  # cosine to the identity's mean ArcFace, -1..1
    closest: int  # index of the closest single reference (by ArcFace cosine)
    closest_cosine: float
    baseline: float  # the references' median pairwise cosine (TYPICAL_SAME_PERSON_COSINE for one reference)
    identity_copy: float  # 0..1
    pose_closeness: float | None  # 0..1; None without landmarks
    copy: float  # 0..1


def likeness_and_copy(face_arcface, ref_arcface, face_kps=None, ref_kps=None) -> CopyFigures:
    """face_arcface: [512] ArcFace of the generated face; ref_arcface: [N,512] of the references (raw or unit);
    face_kps / ref_kps: its five landmarks and [N,5,2] the references' (optional, any pixel frame each).

    likeness = cos(face, mean of the references' unit ArcFace vectors) (the similarity Face similarity reports).
    identity_copy = clamp((cos(face, closest reference) - baseline) / (1 - baseline), 0, 1): 0 when the face is no
        closer to its closest reference than real photos of the person are to each other, 1 when the two
        embeddings are the same.
    pose_closeness = clamp(1 - landmark_distance(face, closest reference) / POSE_TOLERANCE, 0, 1).
    copy = sqrt(identity_copy * pose_closeness) (identity_copy alone without landmarks), 0..1: high only when
        the face is both unusually close to one reference in identity and in the same pose and expression; 1 for
        the reference itself. High likeness with low copy is the goal."""
    face_arcface, ref_arcface = (np.asarray(v.detach().cpu().double() if hasattr(v, "detach") else v, np.float64)
                                 for v in (face_arcface, ref_arcface))  # torch or numpy
    if np.size(face_arcface) != ARCFACE_DIM or np.size(ref_arcface) == 0 or np.size(ref_arcface) % ARCFACE_DIM:
        raise ValueError(f"likeness_and_copy needs one {ARCFACE_DIM}-value ArcFace embedding for the face and "
                         f"[N,{ARCFACE_DIM}] for N >= 1 references; got {np.shape(face_arcface)} and "
                         f"{np.shape(ref_arcface)}.")
    refs = unit_rows(ref_arcface)
    face = unit_rows(face_arcface)[0]
    mean = refs.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    likeness = float(face @ mean / norm) if norm > 0 else 0.0
    cosines = refs @ face
    closest = int(np.argmax(cosines))
    baseline = pairwise_spread(refs)[1] if len(refs) > 1 else TYPICAL_SAME_PERSON_COSINE
    baseline = min(baseline, 1.0 - 1e-6)  # identical references: any excess is a full copy
    identity_copy = float(np.clip((cosines[closest] - baseline) / (1.0 - baseline), 0.0, 1.0))
    pose = None
    if face_kps is not None and ref_kps is not None:
        distance = landmark_distance(face_kps, np.asarray(ref_kps, np.float64).reshape(-1, 5, 2)[closest])
        pose = None if distance is None else float(np.clip(1.0 - distance / POSE_TOLERANCE, 0.0, 1.0))
    copy = identity_copy if pose is None else math.sqrt(identity_copy * pose)
    return CopyFigures(likeness, closest, float(cosines[closest]), float(baseline), identity_copy, pose, copy)


def describe(figures: CopyFigures) -> str:
    """One line for Face similarity's report, e.g. 'likeness 0.612, copy 0.05 (closest reference 2: cosine
    0.512 against the references' 0.460 to each other; pose 0.31)'."""
    pose = "" if figures.pose_closeness is None else f"; pose {figures.pose_closeness:.2f}"
    return (f"likeness {figures.likeness:.3f}, copy {figures.copy:.2f} (closest reference {figures.closest + 1}: "
            f"cosine {figures.closest_cosine:.3f} against the references' {figures.baseline:.3f} to each other"
            f"{pose})")


def rank_best_of_n(likeness: Sequence[float], copy: Sequence[float] | None = None,
                   copy_penalty: float = 0.0) -> list[int]:
    """Image indices, best first, by likeness - copy_penalty * copy. The default (no penalty) is today's ranking
    by likeness alone; ties keep the earlier image first (as max() picks the first); an image whose score is not
    finite (NaN, inf) ranks after every finite one (rank_scores)."""
    if copy_penalty and copy is None:
        raise ValueError("rank_best_of_n: a copy penalty needs the copy scores.")
    if copy is not None and len(copy) != len(likeness):
        raise ValueError(f"rank_best_of_n: {len(likeness)} likeness scores but {len(copy)} copy scores.")
    return rank_scores([float(x) - (copy_penalty * float(copy[i]) if copy_penalty else 0.0)
                        for i, x in enumerate(likeness)])


def rank_scores(scores: Sequence[float]) -> list[int]:
    """Indices, highest score first, ties in index order. Every ranking of scores goes through here: NaN compares
    false with everything, so sorted() and max() would leave it (and all after it) wherever it happened to be;
    here a non-finite score ranks last."""
    def key(i: int):
        value = float(scores[i])
        return (0, -value, i) if math.isfinite(value) else (1, 0.0, i)

    return sorted(range(len(scores)), key=key)
