"""Face similarity in ComfyUI: how much each generated image looks like the person (ArcFace cosine to an identity
or to reference photos) and how much it copies one reference photo (encoders/curation/copying.py)."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders.curation.copying import describe, rank_best_of_n
from ..encoders.curation.report import METADATA_KEY, parse_report
from ..pulid_flux.identity.file import Identity
from ..pulid_flux.inputs import check_copy_penalty, check_images


def face_similarity_node(faces, images, identity: Identity | None = None, reference=None,
                         copy_penalty: float = 0.0) -> dict:
    """Face similarity: each generated image's ArcFace cosine to the identity's mean ArcFace, or to the reference
    photo(s)' (one of the two must be given), its copy score against the closest single reference
    (encoders/curation/copying.py), and the best image by similarity - copy_penalty * copy score (with no penalty,
    by similarity alone, as before); the node's UI message and outputs."""
    from ..encoders import similarity

    check_copy_penalty(copy_penalty)
    check_images(images, "images")
    notes = []
    if identity is not None:
        target, refs, ref_kps = identity.mean_arcface(), identity.arcface, reference_landmarks(identity)
    elif reference is not None:
        check_images(reference, "reference")
        refs, ref_kps, notes = similarity.reference_faces(faces.analysis, reference)
        target = torch.nn.functional.normalize(refs.mean(0), dim=0)
    else:
        raise ValueError("Face similarity needs an identity or a reference image: connect one of them.")
    scores = similarity.score_images(faces.analysis, images, target)
    copies = similarity.copy_scores(scores, refs, ref_kps)
    values = [float(s.score) for s in scores]
    copy_values = [0.0 if c is None else float(c.copy) for c in copies]
    best = rank_best_of_n(values, copy_values, copy_penalty)[0]
    lines = [f"image {i + 1}: {describe(c)}" for i, c in enumerate(copies) if c is not None]
    ranking = (f"best by similarity - {copy_penalty:g} x copy_score: image {best + 1}" if copy_penalty else "")
    text = "\n".join(notes + [similarity.report(scores)] + lines + ([ranking] if ranking else []))
    rgb = (images.detach().cpu().float().clamp(0, 1)[..., :3] * 255).round().to(torch.uint8).numpy()
    annotated = torch.from_numpy(np.stack([similarity.annotate(rgb[i], s) for i, s in enumerate(scores)])) / 255.0
    return {"ui": {"pulid_similarity": values, "pulid_copy_score": copy_values, "text": [text]},
            "result": (values, text, best, images[best:best + 1].clone(), annotated.float(), copy_values)}


def reference_landmarks(identity: Identity):
    """The five landmarks [N,5,2] of the photos an identity was made from, from the curation report in its
    metadata; None when the file has no (readable) report or it does not match the ArcFace rows (older files,
    blends): the copy score then has no pose part."""
    report, _ = parse_report(identity.meta.get(METADATA_KEY))
    if report is None or "blend" in identity.meta:  # a blend keeps A's metadata, not its own photos' landmarks
        return None
    kps = [ref["kps"] for ref in report["references"] if ref["kept"]]
    if not kps or any(k is None for k in kps) or len(kps) != identity.arcface.shape[0]:
        return None
    return np.asarray(kps, np.float64)
