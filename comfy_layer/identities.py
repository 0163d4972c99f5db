"""Identities in ComfyUI: encode one from photos (the embedding cache Apply uses), load and save them in the
identities folder (and as cards: cards.py), the fingerprint of the PuLID file behind a loaded model, and Face
similarity. Nodes that make or load an identity show its content fingerprint (UI text and the log)."""
from __future__ import annotations

import json
import logging
import os
import weakref

import numpy as np
import torch

import folder_paths

from ..encoders.curation.copying import describe, rank_best_of_n
from ..encoders.curation.report import METADATA_KEY, parse_report
from ..encoders.curation.selection import Thresholds
from ..pulid_flux.identity import build_identity, file_fingerprint, tensors_fingerprint
from ..pulid_flux.identity_file import Identity, IdentityFileError, load_identity, save_identity
from ..pulid_flux.identity_fingerprint import short_fingerprint
from ..pulid_flux.identity_store import exists_message, identity_file_name, missing_identity_message
from ..pulid_flux.inputs import check_images
from . import cards, encoding
from .folders import FOLDER, folders_of, save_folder
from .models import PulidModel

log = logging.getLogger("PuLID-Flux")
_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def pulid_fingerprint(pulid: PulidModel) -> str:
    """The content fingerprint of the PuLID-Flux file behind a loaded model; cached per loaded model."""
    found = _fingerprints.get(pulid)
    if found is None:
        path = folder_paths.get_full_path("pulid", pulid.name) if "pulid" in folder_paths.folder_names_and_paths else None
        found = file_fingerprint(path) if path and os.path.isfile(path) else tensors_fingerprint(pulid.model.state_dict())
        _fingerprints[pulid] = found
    return found


def encode_identity(pulid, eva, faces, image, fusion="mean", face_order="largest", face_index=0, use_gray=True,
                    curate="off", thresholds: Thresholds = Thresholds()) -> tuple[Identity, encoding.Embedding]:
    """The reference photos -> an identity (and the embedding with its full-size preview). Uses the embedding
    cache ApplyPulidFlux uses, so encoding the same photos twice costs nothing. The identity's metadata carries
    the curation report (METADATA_KEY): every photo's figures and verdict, and which were used. Raises NoFaceError,
    CurationError."""
    emb = encoding.embed_references(pulid, eva, faces, image, fusion, face_order, face_index, use_gray, curate,
                                    thresholds)
    if emb.arcface is None:  # the file format promises unit ArcFace rows; zeros would be refused on load
        raise ValueError("this embedding has no ArcFace vectors, so it cannot become an identity: encode the photos "
                         "again with Encode identity.")
    report = {} if emb.report is None else {METADATA_KEY: json.dumps(emb.report)}
    identity = build_identity(emb.id_tokens, pulid.uncond_tokens(), emb.arcface, emb.preview,
                              pulid_file=pulid.name, pulid_fingerprint=pulid_fingerprint(pulid), fusion=fusion,
                              face_order=face_order, face_index=face_index, use_gray=use_gray,
                              references=len(emb.used), **report)
    return identity, emb


def shown(identity: Identity, *images) -> dict:
    """A node's result with the identity's fingerprint as UI text and in the log: which identity this server used."""
    text = f"{identity.label}: fingerprint {identity.fingerprint}"
    log.info("PuLID-Flux: %s", text)
    return {"ui": {"text": [text]}, "result": (identity, *images)}


def encode_node(pulid, eva, faces, image, fusion="mean", face_order="largest", face_index=0, use_gray=True,
                curate="off", thresholds: Thresholds = Thresholds()) -> dict:
    identity, emb = encode_identity(pulid, eva, faces, image, fusion, face_order, face_index, use_gray, curate,
                                    thresholds)
    return shown(identity, emb.face_preview)


def identity_file_problem(file_name) -> str | bool:
    """Load identity's VALIDATE_INPUTS: True, or the message a client gets from POST /prompt when this server
    lacks the identity (ComfyUI then skips its own 'Value not in list' check for this input)."""
    if isinstance(file_name, str) and folder_paths.get_full_path(FOLDER, file_name):
        return True
    return missing_identity_message(str(file_name), folders_of(FOLDER))


def load_from_folder(file_name: str) -> Identity:
    path = folder_paths.get_full_path(FOLDER, file_name)
    if path is None:
        raise IdentityFileError(file_name, f"not in any identities folder "
                                           f"({', '.join(folder_paths.get_folder_paths(FOLDER))}).",
                                "save it with Save identity or upload it (POST /pulid_flux/identities), then refresh "
                                "the list.")
    return load_identity(path)


def load_node(file_name: str) -> dict:
    identity = load_from_folder(file_name)
    return shown(identity, identity.preview.float() / 255.0)


def load_card_node(image: str) -> dict:
    identity = cards.load_card(image)
    return shown(identity, identity.preview.float() / 255.0)


def file_state(file_name: str) -> str:
    """For IS_CHANGED: a file replaced on disk (overwrite) is read again."""
    path = folder_paths.get_full_path(FOLDER, file_name)
    if path is None:
        return "missing"
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def save_node(identity: Identity, name: str, overwrite: bool, card: bool = False) -> dict:
    """Save identity: the file in the identities folder and, with `card`, its card in the output folder (NAME.png,
    shown on the node). Without overwrite an existing file or card stops the node before anything is written."""
    file_name = identity_file_name(name)
    path = os.path.join(save_folder(), file_name)
    card_path = cards.card_output_path(file_name)
    if card and not overwrite and os.path.lexists(card_path):
        raise FileExistsError(exists_message(card_path))
    ui = {"text": [save_identity(identity, path, overwrite)]}
    if card:
        ui["images"] = [cards.save_card(identity, card_path, overwrite)]
    log.info("PuLID-Flux: saved %s (fingerprint %s)", file_name, short_fingerprint(identity.fingerprint))
    return {"ui": ui}


def face_similarity_node(faces, images, identity: Identity | None = None, reference=None,
                         copy_penalty: float = 0.0) -> dict:
    """Face similarity: each generated image's ArcFace cosine to the identity's mean ArcFace, or to the reference
    photo(s)' (one of the two must be given), its copy score against the closest single reference
    (encoders/curation/copying.py), and the best image by similarity - copy_penalty * copy score (with no penalty,
    by similarity alone, as before); the node's UI message and outputs."""
    from ..encoders import similarity

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
