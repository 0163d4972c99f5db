"""Face similarity, the PuLID paper's likeness metric: cosine similarity of ArcFace embeddings (InsightFace
antelopev2 recognition) between a reference and each face found in a generated image. No ComfyUI imports."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .curation.copying import CopyFigures, likeness_and_copy, rank_scores
from .faces import DEFAULT_DET_SIZES, DetectedFace, arcface_embedding, detect_faces, order_faces
from .images import limit_long_side, to_rgb_list


@dataclass
class FaceScore:
    """One generated image: the best cosine similarity over its faces (0.0 when none), and every face found."""
    score: float
    faces: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (bbox x1,y1,x2,y2 in pixels, cosine)
    note: str = ""
    arcface: np.ndarray | None = field(default=None, repr=False)  # raw ArcFace of the best face (for the copy score)
    kps: np.ndarray | None = field(default=None, repr=False)  # its five landmarks in pixels of the image

    @property
    def best_box(self) -> np.ndarray | None:
        return self.faces[rank_scores([f[1] for f in self.faces])[0]][0] if self.faces else None


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors (computed in float64)."""
    return float(F.cosine_similarity(a.double().reshape(1, -1), b.double().reshape(1, -1)).item())


def _faces_with_embeddings(analysis, rgb: np.ndarray, det_sizes) -> list[tuple[DetectedFace, np.ndarray, float]]:
    """Faces of one image (found as the encoders find them: the long side limited to 1024 px, BGR), each with its
    raw ArcFace embedding, boxes scaled back to the input image."""
    small, scale = limit_long_side(rgb)
    frame = np.ascontiguousarray(small[:, :, ::-1])
    faces, _ = detect_faces(analysis, frame, det_sizes)
    return [(face, arcface_embedding(analysis, frame, face), scale) for face in order_faces(faces, "largest")]


def reference_faces(analysis, images, det_sizes=DEFAULT_DET_SIZES) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Reference photo(s) -> ([N,512] L2-normalised ArcFace, [N,5,2] landmarks in photo pixels, notes) of the
    largest face of each (images without a face are skipped, with a note). Raises ValueError when no image has a
    face."""
    rows, kps, notes = [], [], []
    for i, rgb in enumerate(to_rgb_list(images)):
        found = _faces_with_embeddings(analysis, rgb, det_sizes)
        if not found:
            notes.append(f"reference {i + 1}: no face detected, skipped")
            continue
        face, embedding, scale = found[0]
        rows.append(torch.from_numpy(embedding).float())
        kps.append(face.kps / scale)
    if not rows:
        raise ValueError("Face similarity: no face detected in any reference image; connect a photo with a clearly "
                         "visible face, or an identity.")
    return F.normalize(torch.stack(rows), dim=-1), np.stack(kps), notes


def reference_embedding(analysis, images, det_sizes=DEFAULT_DET_SIZES) -> tuple[torch.Tensor, list[str]]:
    """reference_faces without the landmarks."""
    rows, _, notes = reference_faces(analysis, images, det_sizes)
    return rows, notes


def score_images(analysis, images, reference: torch.Tensor, det_sizes=DEFAULT_DET_SIZES) -> list[FaceScore]:
    """Per image: cosine(ArcFace of each detected face, reference), the best of them as the score.

    reference: [512] (normalised or not). A face-less image scores 0.0 with a note."""
    ref = reference.detach().reshape(-1).float().cpu()
    scores = []
    for rgb in to_rgb_list(images):
        found = _faces_with_embeddings(analysis, rgb, det_sizes)
        if not found:
            scores.append(FaceScore(0.0, [], "no face detected"))
            continue
        faces = [(face.bbox / scale, cosine(torch.from_numpy(emb), ref)) for face, emb, scale in found]
        top = rank_scores([f[1] for f in faces])[0]
        note = f"{len(faces)} faces, best shown" if len(faces) > 1 else ""
        face, embedding, scale = found[top]
        scores.append(FaceScore(faces[top][1], faces, note, embedding, face.kps / scale))
    return scores


def copy_scores(scores: list[FaceScore], ref_arcface, ref_kps=None) -> list[CopyFigures | None]:
    """Likeness and copy (curation/copying.py) of each image's best face against the references' ArcFace rows
    [N,512] and, when known, their landmarks [N,5,2] (without them the copy score is the identity part alone).
    None for an image without a face."""
    return [None if s.arcface is None else likeness_and_copy(s.arcface, ref_arcface, s.kps if ref_kps is not None
                                                             else None, ref_kps) for s in scores]


def annotate(rgb: np.ndarray, result: FaceScore) -> np.ndarray:
    """A copy of the uint8 RGB image with each face's box and cosine drawn (best face green, others orange)."""
    canvas = np.ascontiguousarray(rgb.copy())
    h, w = canvas.shape[:2]
    thick = max(1, round(max(h, w) / 300))
    font = max(0.35, max(h, w) / 900)
    best = result.best_box
    for box, score in result.faces:
        colour = (0, 200, 0) if best is not None and box is best else (255, 160, 0)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thick)
        cv2.putText(canvas, f"{score:.3f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, font, colour, thick)
    if not result.faces:
        cv2.putText(canvas, "no face: 0.000", (4, max(14, int(20 * font))), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (255, 60, 60), thick)
    return canvas


def report(scores: list[FaceScore]) -> str:
    """One line per image plus the best, e.g. 'image 1: 0.731'."""
    lines = [f"image {i + 1}: {s.score:.4f}" + (f" ({s.note})" if s.note else "") for i, s in enumerate(scores)]
    best = rank_scores([s.score for s in scores])[0] if scores else 0
    if scores:
        lines.append(f"best: image {best + 1} ({scores[best].score:.4f}); ArcFace cosine similarity, 1 = same face")
    return "\n".join(lines)
