"""Identity cards in ComfyUI: Save identity writes one to the output folder (the UI shows it, downloadable); Load
identity card reads one from the input folder, where the image upload widget, /upload/image and
ComfyUI-Distributed's media sync put it. The card format is pulid_flux/identity_card.py."""
from __future__ import annotations

import hashlib
import os

import folder_paths

from ..pulid_flux.identity_card import IdentityCardError, identity_card_bytes, load_identity_card
from ..pulid_flux.identity_file import Identity
from ..pulid_flux.identity_store import write_file_atomically

UPLOAD_FIX = ("upload the card to this server: drag it onto Load identity card, or POST /upload/image (ComfyUI-"
              "Distributed copies it to its workers by itself).")


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


def missing_card_message(image) -> str:
    return (f"identity card {image!r} is not in this server's input folder ({folder_paths.get_input_directory()}). "
            f"Fix: {UPLOAD_FIX}")


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
        raise IdentityCardError(str(image), "is not in this server's input folder "
                                f"({folder_paths.get_input_directory()}).", UPLOAD_FIX, reason="not_found")
    return load_identity_card(path)


def card_output_path(file_name: str) -> str:
    """Where Save identity writes the card of `file_name` (NAME.safetensors): NAME.png in the output folder."""
    return os.path.join(folder_paths.get_output_directory(), os.path.splitext(file_name)[0] + ".png")


def save_card(identity: Identity, path: str, overwrite: bool) -> dict:
    """Write the card; the UI's image entry for it (shown on the node, downloadable through /view)."""
    write_file_atomically(identity_card_bytes(identity), path, overwrite)
    return {"filename": os.path.basename(path), "subfolder": "", "type": "output"}
