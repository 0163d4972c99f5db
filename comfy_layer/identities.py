"""Identities in ComfyUI: encode one from photos (the embedding cache Apply uses), load and save them in the
identities folder (and as cards: cards.py), and the fingerprint of the PuLID file behind a loaded model. Nodes that
make or load an identity show its content fingerprint (UI text and the log)."""
from __future__ import annotations

import json
import logging
import os
import weakref

import folder_paths

from ..encoders.curation.report import METADATA_KEY
from ..encoders.curation.selection import Thresholds
from ..pulid_flux.identity import build_identity, file_fingerprint, tensors_fingerprint
from ..pulid_flux.identity_file import Identity, IdentityFileError, load_identity, save_identity
from ..pulid_flux.identity_fingerprint import short_fingerprint
from ..pulid_flux.identity_store import exists_message, identity_file_name, missing_identity_message
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
