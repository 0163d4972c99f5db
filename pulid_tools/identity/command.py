"""`python -m pulid_tools identity --face a.jpg [--face b.jpg ...] --models DIR --out NAME.safetensors [--card
NAME.png]`: encode a person's identity file (and/or its identity card) with no ComfyUI running (the pack's encoders/
and pulid_flux/ only). Prints the paths written, and the identity's fingerprint on stderr.

--models is a ComfyUI models/ folder (or the ComfyUI folder itself); the model files are found where the
loaders would find them (extra_model_paths.yaml included): the PuLID-Flux weights in pulid/, EVA-CLIP as the
loader's 'auto' picks it, antelopev2 in insightface/models/, parsing_bisenet.pth in facexlib/. The result is the
same file Encode identity + Save identity write; put it in models/pulid/identities/ (or upload it with
POST /pulid_flux/identities) and pick it in Load identity."""
from __future__ import annotations

import argparse
import os
import sys

from ..model_paths import ConfigError, ModelFolders, list_files, resolve

PULID_PREFERRED = ("pulid_flux_v0.9.1.safetensors", "pulid_flux_v0.9.0.safetensors")
PT_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin"}
FUSIONS = ("mean", "concat", "max_token", "max")  # pulid_flux.FUSION_MODES (not imported: keeps --help light)
FACE_ORDERS = ("largest", "left-right", "right-left", "top-bottom", "bottom-top", "small-large", "large-small")


class SetupError(Exception):
    """A model file that is not where the loaders look, with the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--face", action="append", required=True, metavar="IMAGE",
                        help="a photo of the person (repeat for several)")
    parser.add_argument("--models", required=True, metavar="DIR",
                        help="ComfyUI's models/ folder (or the ComfyUI folder)")
    parser.add_argument("--out", metavar="NAME.safetensors", help="the identity file to write")
    parser.add_argument("--card", metavar="NAME.png", help="the identity card to write: a PNG of the face that "
                        "carries the identity, for Load identity card (at least one of --out and --card)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out / --card if they exist")
    parser.add_argument("--pulid", metavar="NAME", help="PuLID-Flux file as Load PuLID-Flux Model lists it "
                        "(default: pulid_flux_v0.9.1.safetensors, else v0.9.0, else the only one)")
    parser.add_argument("--eva", default="auto", metavar="CHOICE",
                        help="EVA-CLIP as Load EVA-CLIP lists it, e.g. text_encoders/EVA02_CLIP_L_336_psz14_s6B.pt "
                             "(default auto: the first that loads)")
    parser.add_argument("--fusion", default="mean", choices=FUSIONS, help="how several photos combine (as the node)")
    parser.add_argument("--face-order", default="largest", choices=FACE_ORDERS, help="which face (as the node)")
    parser.add_argument("--face-index", type=int, default=0, help="position in --face-order (as the node)")
    parser.add_argument("--no-gray", action="store_true", help="use_gray off (as the node's use_gray)")
    parser.add_argument("--provider", default="CPU", choices=["CPU", "CUDA", "ROCM", "CoreML", "auto"],
                        help="onnxruntime provider for the face models")
    parser.add_argument("--device", default="cpu", help="torch device for EVA-CLIP and the ID encoder (cpu, cuda)")


def model_folders(path: str) -> ModelFolders:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise SetupError(f"--models {path}: no such folder")
    if os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "models")):
        return resolve(path)  # the ComfyUI folder itself
    return resolve(os.path.dirname(path), models_dir=path)


def _files(folders: ModelFolders, name: str, extensions=PT_EXTENSIONS) -> dict[str, str]:
    """relative name -> path, the first folder winning, as ComfyUI's lists."""
    found: dict[str, str] = {}
    for folder in folders.get(name):
        for rel in list_files(folder, extensions) if os.path.isdir(folder) else []:
            found.setdefault(rel, os.path.join(folder, rel))
    return found


def find_pulid(folders: ModelFolders, choice: str | None) -> tuple[str, str]:
    from ..doctor.checks import _is_eva_name

    files = {k: v for k, v in _files(folders, "pulid").items()
             if not k.startswith("identities/") and not _is_eva_name(k)}
    if choice:
        if choice not in files:
            raise SetupError(f"--pulid {choice}: not in the pulid folders ({', '.join(folders.get('pulid'))}); "
                             f"found: {', '.join(sorted(files)) or 'nothing'}")
        return choice, files[choice]
    for name in PULID_PREFERRED:
        if name in files:
            return name, files[name]
    if len(files) == 1:
        return next(iter(files.items()))
    if not files:
        raise SetupError(f"no PuLID-Flux weights in {', '.join(folders.get('pulid'))}: download "
                         f"pulid_flux_v0.9.1.safetensors from https://huggingface.co/guozinan/PuLID into "
                         f"{folders.get('pulid')[-1]}")
    raise SetupError(f"several PuLID-Flux files ({', '.join(sorted(files))}): choose one with --pulid")


def find_eva(folders: ModelFolders, choice: str) -> list[str]:
    from ..doctor.checks import eva_candidates

    candidates = eva_candidates(folders)
    if choice != "auto":
        candidates = [c for c in candidates if c[0] == choice]
        if not candidates:
            raise SetupError(f"--eva {choice}: not found; choices: "
                             f"{', '.join(c for c, _ in eva_candidates(folders)) or 'none'}")
    if not candidates:
        raise SetupError("no EVA02-CLIP file (names containing 'eva02' or 'eva_clip') in "
                         f"{', '.join(f for n in ('pulid', 'clip_vision', 'text_encoders') for f in folders.get(n))}: "
                         "download EVA02_CLIP_L_336_psz14_s6B.pt into models/clip/ (python -m pulid_tools doctor "
                         "says more)")
    return [path for _, path in candidates]


def find_insightface(folders: ModelFolders, encoders) -> str:
    errors = []
    for root in folders.get("insightface"):
        try:
            encoders.find_antelopev2(root)
            return root
        except encoders.EncoderModelError as e:
            errors.append(str(e).splitlines()[0])
    raise SetupError("antelopev2 not found: " + "; ".join(errors))


def find_parser(folders: ModelFolders) -> str:
    for folder in folders.get("facexlib"):
        if os.path.isfile(os.path.join(folder, "parsing_bisenet.pth")):
            return os.path.join(folder, "parsing_bisenet.pth")
    raise SetupError(f"parsing_bisenet.pth not found in {', '.join(folders.get('facexlib'))}: download "
                     f"https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth")


def read_photo(path: str):
    import numpy as np
    from PIL import Image, ImageOps

    try:
        return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    except (OSError, ValueError) as e:
        raise SetupError(f"--face {path}: cannot read the image ({e})") from None


def check_outputs(args) -> tuple[str | None, str | None]:
    """--out and --card as absolute paths, checked before any model is loaded."""
    from pulid_flux.identity_store import IdentityNameError, identity_file_name

    if not args.out and not args.card:
        raise SetupError("give --out NAME.safetensors, --card NAME.png, or both")
    out = card = None
    if args.out:
        out = os.path.abspath(args.out)
        if not out.endswith(".safetensors"):
            raise SetupError(f"--out {args.out}: identity files end in .safetensors")
        try:  # the name rule of Save identity and the upload route: the file must be usable on any server
            identity_file_name(os.path.basename(out))
        except IdentityNameError as e:
            raise SetupError(f"--out {args.out}: {e}") from None
    if args.card:
        card = os.path.abspath(args.card)
        if not card.lower().endswith(".png"):
            raise SetupError(f"--card {args.card}: identity cards are PNG files (NAME.png)")
    for option, path in (("--out", out), ("--card", card)):
        if path and os.path.exists(path) and not args.overwrite:
            raise SetupError(f"{option} {path} exists: choose another name or add --overwrite")
    return out, card


def write_outputs(identity, out: str | None, card: str | None, overwrite: bool) -> list[str]:
    from pulid_flux.identity_card import identity_card_bytes
    from pulid_flux.identity_file import save_identity
    from pulid_flux.identity_store import write_file_atomically

    if out:
        save_identity(identity, out, overwrite=overwrite)
    if card:
        write_file_atomically(identity_card_bytes(identity), card, overwrite)
    return [p for p in (out, card) if p]


def encode_identity_file(args) -> list[str]:
    """Everything the command does; returns the paths written. Raises SetupError."""
    from ..doctor.checks import import_pack_parts

    encoders, pulid_flux = import_pack_parts()
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from pulid_flux.identity import build_identity, file_fingerprint

    out, card = check_outputs(args)
    folders = model_folders(args.models)
    pulid_name, pulid_path = find_pulid(folders, args.pulid)
    eva_paths = find_eva(folders, args.eva)
    root, parser_path = find_insightface(folders, encoders), find_parser(folders)
    photos = [read_photo(p) for p in args.face]
    device = torch.device(args.device)
    dtype = torch.float32
    bar = tqdm(total=4 + len(photos) + 1, desc="loading models", unit="step", file=sys.stderr, dynamic_ncols=True)
    with bar:
        analysis = encoders.load_face_analysis(root, args.provider)
        bar.update(1)
        eva = None
        for i, path in enumerate(eva_paths):  # 'auto': the first candidate that loads, as the loader does
            try:
                eva = encoders.load_eva_clip(path, device, dtype)
                break
            except encoders.EncoderModelError:
                if i == len(eva_paths) - 1:
                    raise
        bar.update(1)
        parser = encoders.load_face_parser(parser_path, device, dtype)
        bar.update(1)
        model = pulid_flux.load_pulid_flux(pulid_path)
        encoder = model.pulid_encoder.to(device, dtype)
        bar.update(1)
        face_encoders = encoders.FaceEncoders(analysis, eva, parser)
        results = []
        for path, rgb in zip(args.face, photos):
            bar.set_description(f"encoding {os.path.basename(path)}")
            results += face_encoders.encode(rgb, order=args.face_order, index=args.face_index,
                                            use_gray=not args.no_gray)
            bar.update(1)
        ok = [r for r in results if r.ok]
        for path, r in zip(args.face, results):
            if not r.ok:
                tqdm.write(f"{path}: skipped: {r.reason}", file=sys.stderr)
        if not ok:
            raise SetupError("no usable face in any --face photo: use photos where the face is clearly visible, or "
                             "check --face-order/--face-index")
        bar.set_description("ID encoder")
        id_cond = torch.cat([r.id_cond for r in ok])
        hidden = [torch.cat([r.hidden_states[s] for r in ok]) for s in range(len(ok[0].hidden_states))]
        tokens = pulid_flux.fuse_id_tokens(pulid_flux.encode_id(encoder, id_cond, hidden).float(), args.fusion).cpu()
        uncond = pulid_flux.encode_uncond_id(encoder, id_cond, hidden).float().cpu()
        preview = torch.stack([torch.from_numpy(np.concatenate([r.aligned, r.parsed], axis=1))
                               for r in ok])
        identity = build_identity(tokens, uncond, F.normalize(id_cond[:, :512].float(), dim=-1), preview,
                                  pulid_file=pulid_name, pulid_fingerprint=file_fingerprint(pulid_path),
                                  fusion=args.fusion, face_order=args.face_order, face_index=args.face_index,
                                  use_gray=not args.no_gray, references=len(ok))
        written = write_outputs(identity, out, card, args.overwrite)
        bar.update(1)
        bar.set_description("done")
    print(f"fingerprint {identity.fingerprint}", file=sys.stderr)
    return written


def run(args) -> int:
    try:
        written = encode_identity_file(args)
    except (SetupError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a model file that does not load: its own message says why
        if type(e).__name__ not in ("EncoderModelError", "PulidWeightsError", "FileExistsError"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(written))
    return 0
