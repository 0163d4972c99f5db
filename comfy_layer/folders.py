"""ComfyUI's model folders for the pack: registering ours (pulid, insightface, facexlib, pulid_identities) and the
file lists the loaders offer (PuLID weights, EVA-CLIP candidates, identities)."""
from __future__ import annotations

import os

import folder_paths

from ..encoders.eva import EVA_DOWNLOAD_HINT

PT_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin"}
EVA_NAME_HINTS = ("eva02", "eva_clip", "eva-clip", "evaclip")
FOLDER = "pulid_identities"  # ComfyUI folder name of saved identities


def register_model_folders() -> None:
    """Append our default folders (models/pulid, insightface, facexlib, pulid/identities); keep whatever
    extra_model_paths.yaml registered first."""
    for name, subdir, extensions in (("pulid", "pulid", PT_EXTENSIONS), ("insightface", "insightface", PT_EXTENSIONS),
                                     ("facexlib", "facexlib", PT_EXTENSIONS),
                                     (FOLDER, os.path.join("pulid", "identities"), {".safetensors"})):
        default = os.path.join(folder_paths.models_dir, subdir)
        paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths) + ([default] if default not in paths else [])
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)


def folders_of(name: str) -> list[str]:
    return list(folder_paths.get_folder_paths(name)) if name in folder_paths.folder_names_and_paths else []


def pulid_model_files() -> list[str]:
    """The PuLID-Flux loader's list: the pulid folders' files, without the identities kept in models/pulid/identities."""
    return [n for n in folder_paths.get_filename_list("pulid") if not n.replace("\\", "/").startswith("identities/")]


def identity_files() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def save_folder() -> str:
    """Where Save identity and the upload route write: the first identities folder (an extra_model_paths.yaml
    `pulid_identities` entry when there is one, else models/pulid/identities)."""
    return folder_paths.get_folder_paths(FOLDER)[0]


# ComfyUI's home for the EVA-CLIP image tower is models/clip_vision. models/pulid and models/clip (text_encoders,
# where older instructions put it and where it clutters every text-encoder list) are still searched, in this order.
EVA_FOLDERS = ("clip_vision", "pulid", "text_encoders")


def eva_candidates() -> list[str]:
    """'folder/file name' of every file in the EVA folders whose name looks like EVA-CLIP, in EVA_FOLDERS order."""
    names = []
    for folder in EVA_FOLDERS:
        if folder in folder_paths.folder_names_and_paths:
            names += [f"{folder}/{n}" for n in folder_paths.get_filename_list(folder)
                      if any(h in n.lower().replace("\\", "/").rsplit("/", 1)[-1] for h in EVA_NAME_HINTS)]
    return names


def find_eva_files(choice: str = "auto") -> list[tuple[str, str | None]]:
    """(candidate, full path) for the choice, or for every candidate with 'auto'. The path is None when the name
    is listed but no file is there (a symbolic link to a missing file)."""
    candidates = eva_candidates()
    if choice != "auto":
        if choice not in candidates:
            raise FileNotFoundError(f"EVA-CLIP file '{choice}' is no longer in the model folders. {EVA_DOWNLOAD_HINT}")
        candidates = [choice]
    if not candidates:
        looked = ", ".join(f for name in EVA_FOLDERS for f in folders_of(name))
        raise FileNotFoundError(f"No EVA02-CLIP file found (looked for names containing 'eva02' or 'eva_clip' in "
                                f"{looked}). {EVA_DOWNLOAD_HINT}")
    return [(c, folder_paths.get_full_path(*c.split("/", 1))) for c in candidates]


def missing_eva_problem(candidate: str) -> str:
    """Why a listed EVA candidate has no file: most often a symbolic link whose target is gone."""
    folder, name = candidate.split("/", 1)
    for root in folders_of(folder):
        path = os.path.join(root, name)
        if os.path.islink(path) and not os.path.exists(path):
            return (f"{name}: a symbolic link to a file that does not exist ({os.readlink(path)}).\n  file: {path}\n"
                    f"  Fix: restore the file it points to, or replace the link with the EVA-CLIP file itself.")
    return f"{name}: the file is no longer in the {folder} folders ({', '.join(folders_of(folder))})."
