"""Identity cards in ComfyUI: Save identity writes one to the input folder (where Load identity card lists it and
ComfyUI-Distributed's media sync, which copies input files only, finds it) and to the output folder (the UI shows
it, downloadable); Load identity card reads one from the input folder, where the image upload widget,
/upload/image and media sync put it (or from the folder a 'NAME.png [output]' value names). The card format is
pulid_flux/identity/card.py."""
from __future__ import annotations

import hashlib
import os

import folder_paths

from ..pulid_flux.identity.card import IdentityCardError, identity_card_bytes, load_identity_card, read_card_file
from ..pulid_flux.identity.file import Identity
from ..pulid_flux.identity.store import exists_message, write_file_atomically
from . import this_server

UPLOAD_FIX = ("upload the card to this server: drag it onto Load identity card, or POST /upload/image (ComfyUI-"
              "Distributed copies it to its workers by itself).")
OUTPUT_FIX = ("a card in an output folder is not copied to other servers (ComfyUI-Distributed copies input files "
              "only): choose {name} in Load identity card's list (Save identity also writes the card to the input "
              "folder), or drag the card onto Load identity card.")
ANNOTATIONS = ("input", "output", "temp")


def card_files() -> list[str]:
    """The PNG files in the input folder, for the node's list (the upload widget adds new ones)."""
    folder = folder_paths.get_input_directory()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if n.lower().endswith(".png") and os.path.isfile(os.path.join(folder, n)))


def _inside(path: str, folders) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath((os.path.realpath(f), real)) == os.path.realpath(f) for f in folders)


def card_path(image) -> str | None:
    """The card file an `image` value names ('name.png', 'sub/name.png', 'name.png [output]'), inside ComfyUI's
    input, output or temp folder, or None."""
    if not isinstance(image, str) or not image.strip() or "\x00" in image:
        return None
    try:
        path = folder_paths.get_annotated_filepath(image)
    except ValueError:  # v0.29 refuses traversal itself
        return None
    folders = (folder_paths.get_input_directory(), folder_paths.get_output_directory(),
               folder_paths.get_temp_directory())
    return path if _inside(path, folders) and os.path.isfile(path) else None


def _folder_named(image) -> tuple[str, str]:
    """('input'|'output'|'temp', that folder) for a value like 'NAME.png' or 'NAME.png [output]'."""
    text = image.strip() if isinstance(image, str) else ""
    kind = next((k for k in ANNOTATIONS if text.endswith(f"[{k}]")), "input")
    return kind, getattr(folder_paths, f"get_{kind}_directory")()


def _missing(image) -> tuple[str, str]:
    """(problem, fix) for a card this server does not have: the folder looked in and the one step that fixes it."""
    kind, folder = _folder_named(image)
    problem = f"is not in the {kind} folder of server {this_server.label()} ({folder})."
    if kind == "input":
        return problem, UPLOAD_FIX
    stem = image.strip()[:-len(f"[{kind}]")].strip() if isinstance(image, str) else str(image)
    return problem, OUTPUT_FIX.format(name=repr(os.path.basename(stem)))


def missing_card_message(image) -> str:
    problem, fix = _missing(image)
    return f"identity card {image!r} {problem} Fix: {fix}"


def card_problem(image) -> str | bool:
    """VALIDATE_INPUTS: True, or why the prompt is refused."""
    return True if card_path(image) else missing_card_message(image)


def card_state(image) -> str:
    """IS_CHANGED: the file's sha256, so a card replaced under the same name (an upload with overwrite, a media
    sync after the card changed) is read again."""
    path = card_path(image)
    if path is None:
        return "missing"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_card(image) -> Identity:
    path = card_path(image)
    if path is None:
        raise IdentityCardError(str(image), *_missing(image), reason="not_found")
    return load_identity_card(path)


def card_save_paths(file_name: str) -> tuple[str, str]:
    """Where Save identity writes the card of `file_name` (NAME.safetensors): NAME.png in the input folder (usable
    here and copied to ComfyUI-Distributed's workers) and in the output folder (shown on the node)."""
    card_name = os.path.splitext(file_name)[0] + ".png"
    return (os.path.join(folder_paths.get_input_directory(), card_name),
            os.path.join(folder_paths.get_output_directory(), card_name))


def _is_card(path: str) -> bool:
    """Whether the pack's card reader reads an identity from the file (a photo whose compressed bytes happen to hold
    the chunk's name is not one)."""
    try:
        read_card_file(path)
    except IdentityCardError:
        return False
    return True


def check_card_targets(paths, overwrite: bool) -> None:
    """Before anything is written: without overwrite no card file may exist; with it, only cards are replaced (a
    photo the user put in the input folder under that name is kept)."""
    for path in paths:
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(exists_message(path))
        if overwrite and os.path.isfile(path) and not _is_card(path):
            raise FileExistsError(f"{os.path.basename(path)} in {os.path.dirname(path)} is a picture that is not an "
                                  f"identity card, so it is kept even with overwrite; choose another name.")


def save_card(identity: Identity, paths, overwrite: bool) -> dict:
    """Write the card to every path; the UI's image entry for the last (the output folder's: shown on the node,
    downloadable through /view)."""
    data = identity_card_bytes(identity)
    for path in paths:
        write_file_atomically(data, path, overwrite)
    return {"filename": os.path.basename(paths[-1]), "subfolder": "", "type": "output"}
