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
from ..pulid_flux.identity.build import build_identity, file_fingerprint, tensors_fingerprint
from ..pulid_flux.identity.file import Identity, IdentityFileError, load_identity, save_identity
from ..pulid_flux.identity.fingerprint import (FingerprintValueError, fingerprint_matches, requested_fingerprint,
                                               short_fingerprint)
from ..pulid_flux.identity.store import identity_file_name, missing_identity_message, stale_identity_message
from . import cards, encoding, this_server
from .folders import FOLDER, folders_of, save_folder
from .models import PulidModel

log = logging.getLogger("PuLID-Flux")
_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_file_fingerprints: dict[str, tuple[str, str]] = {}  # path -> (file_state, identity fingerprint)


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


def identity_file_fingerprint(file_name: str) -> str:
    """The fingerprint of the identity in a file of the identities folders, read once per version of the file
    (size and mtime). Raises FileNotFoundError (no such file here) or IdentityFileError (not a readable identity)."""
    path = folder_paths.get_full_path(FOLDER, file_name) if isinstance(file_name, str) else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(file_name)
    state = file_state(file_name)
    known = _file_fingerprints.get(path)
    if known is not None and known[0] == state:
        return known[1]
    fingerprint = load_identity(path).fingerprint
    _file_fingerprints[path] = (state, fingerprint)
    return fingerprint


class Refusal(str):
    """A VALIDATE_INPUTS message that ComfyUI shows once. ComfyUI writes the refusal into one error per input the
    method takes (Load identity: identity_file and fingerprint), calling str() on it for each, so the UI's error
    dialog would show the whole message twice: the first str() gives it, the later ones point at it."""
    told = False

    def __str__(self) -> str:
        if self.told:
            return "(the refusal given for identity_file)"
        self.told = True
        return str.__str__(self)


def identity_file_problem(file_name, fingerprint="") -> str | bool:
    """Load identity's VALIDATE_INPUTS: True, or the message a client gets from POST /prompt (ComfyUI then skips its
    own 'Value not in list' check for this input): this server lacks the identity, or its file of that name holds
    another identity than the one the workflow's fingerprint names (a stale copy on a worker)."""
    if not (isinstance(file_name, str) and folder_paths.get_full_path(FOLDER, file_name)):
        return missing_identity_message(str(file_name), folders_of(FOLDER), this_server.label())
    try:
        wanted = requested_fingerprint(fingerprint)
        if wanted is None:
            return True
        found = identity_file_fingerprint(file_name)
    except FileNotFoundError:  # removed since the check above
        return missing_identity_message(file_name, folders_of(FOLDER), this_server.label())
    except (FingerprintValueError, IdentityFileError, OSError) as e:
        return str(e)
    if fingerprint_matches(found, wanted):
        return True
    return stale_identity_message(file_name, found, wanted, this_server.label())


def load_from_folder(file_name: str) -> Identity:
    path = folder_paths.get_full_path(FOLDER, file_name)
    if path is None:
        raise IdentityFileError(file_name, f"not in any identities folder "
                                           f"({', '.join(folder_paths.get_folder_paths(FOLDER))}).",
                                "save it with Save identity or upload it (POST /pulid_flux/identities), then refresh "
                                "the list.")
    return load_identity(path)


def load_node(file_name: str, fingerprint: str = "") -> dict:
    """Load identity. With a fingerprint, the file must still hold that identity (it may have been replaced between
    the prompt's validation and its run)."""
    identity = load_from_folder(file_name)
    wanted = requested_fingerprint(fingerprint)
    if wanted is not None and not fingerprint_matches(identity.fingerprint, wanted):
        raise ValueError(stale_identity_message(file_name, identity.fingerprint, wanted, this_server.label()))
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
    """Save identity: the file in the identities folder and, with `card`, its card NAME.png in the input folder
    (where Load identity card lists it and ComfyUI-Distributed's media sync finds it) and in the output folder (shown
    on the node, downloadable). Without overwrite an existing file or card stops the node before anything is
    written; a picture in the input folder that is not a card is never replaced."""
    file_name = identity_file_name(name)
    path = os.path.join(save_folder(), file_name)
    card_paths = cards.card_save_paths(file_name)
    if card:
        cards.check_card_targets(card_paths, overwrite)
    ui = {"text": [save_identity(identity, path, overwrite)]}
    if card:
        ui["images"] = [cards.save_card(identity, card_paths, overwrite)]
        ui["text"].append(f"card: {card_paths[0]} (Load identity card lists it as {os.path.basename(card_paths[0])}; "
                          f"ComfyUI-Distributed copies it to its workers) and {card_paths[1]}")
    log.info("PuLID-Flux: saved %s (fingerprint %s)", file_name, short_fingerprint(identity.fingerprint))
    return {"ui": ui}
