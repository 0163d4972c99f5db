"""`python -m pulid_tools identity --face a.jpg [--face b.jpg ...] --models DIR --out NAME.safetensors`: encode a
person's identity file with no ComfyUI running (the pack's encoders/ and pulid_flux/ only), through the same encode
path as the nodes (encoders/references.py); --card NAME.png writes its identity card too (or instead). Prints the
paths written, and the identity's fingerprint on stderr. With --report instead of --out/--card: print each photo's
figures and verdict (the curation report) and write nothing; only InsightFace is loaded. --json prints it as JSON.

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
CURATE_MODES = ("off", "warn", "drop", "weight")  # encoders.curation.CURATE_MODES (not imported, as above)


class SetupError(Exception):
    """A model file that is not where the loaders look, with the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--face", action="append", required=True, metavar="IMAGE",
                        help="a photo of the person (repeat for several)")
    parser.add_argument("--models", required=True, metavar="DIR",
                        help="ComfyUI's models/ folder (or the ComfyUI folder)")
    parser.add_argument("--out", metavar="NAME.safetensors", help="the identity file to write (not with --report)")
    parser.add_argument("--card", metavar="NAME.png", help="the identity card to write: a PNG of the face that "
                        "carries the identity, for Load identity card (at least one of --out and --card)")
    parser.add_argument("--report", action="store_true", help="print each photo's figures and verdict (consistency, "
                        "yaw, pitch, sharpness, size) and write no file; loads only InsightFace")
    parser.add_argument("--json", action="store_true", help="with --report: print it as JSON (a 'references' list of "
                        "per-photo objects, each with 'consistency', and the set's 'summary')")
    parser.add_argument("--curate", default="off", choices=CURATE_MODES, help="which photos make the identity (as "
                        "the node's curate): off, warn, drop (leave out problem photos), weight (by consistency)")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help="a curation threshold as the node's input of that name, e.g. min_consistency=0.3 "
                             "(min_face_px, max_yaw, max_pitch, min_sharpness; README: Curation and copy detection)")
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


def reference_settings(args, selection):
    """The --fusion, --face-order, --face-index, --no-gray, --curate and --threshold choices, checked."""
    from encoders.references import ReferenceSettings

    limits = {}
    for item in args.threshold:
        name, _, value = item.partition("=")
        if name not in selection.THRESHOLD_INPUTS:
            raise SetupError(f"--threshold {item}: unknown threshold {name!r}; use one of "
                             f"{', '.join(selection.THRESHOLD_INPUTS)} as NAME=VALUE")
        try:
            limits[name] = float(value)
        except ValueError:
            raise SetupError(f"--threshold {item}: {value!r} is not a number") from None
    try:
        thresholds = selection.Thresholds(**limits)
    except ValueError as e:
        raise SetupError(f"--threshold: {e}") from None
    try:
        return ReferenceSettings(args.fusion, args.face_order, args.face_index, not args.no_gray, args.curate,
                                 thresholds)
    except ValueError as e:
        raise SetupError(str(e).replace("curate ", "--curate ").replace("fusion ", "--fusion ")) from None


def print_report(args) -> int:
    """--report: locate every photo (InsightFace only), curate, print the table (or JSON). Exit 0 when the photos
    can make an identity with these settings, 1 when none can (no face, or curation left none)."""
    from ..doctor.checks import import_pack_parts

    encoders, _ = import_pack_parts()
    import json

    from encoders.curation import report as curation_report
    from encoders.curation import selection
    from encoders.references import report_references

    settings = reference_settings(args, selection)
    folders = model_folders(args.models)
    root = find_insightface(folders, encoders)
    photos = [read_photo(p) for p in args.face]
    face_encoders = encoders.FaceEncoders(encoders.load_face_analysis(root, args.provider), None, None)
    report, error = report_references(face_encoders, photos, settings)
    if error is not None:
        print(f"error: {str(error).replace('set curate', 'set --curate')}", file=sys.stderr)
    for ref, path in zip(report["references"], args.face):
        ref["file"] = path
    print(json.dumps(report, indent=2) if args.json else curation_report.render_table(report))
    return 0 if report["summary"]["kept"] else 1


def check_outputs(args) -> tuple[str | None, str | None]:
    """--out and --card as absolute paths, checked before any model is loaded."""
    from pulid_flux.identity.store import IdentityNameError, identity_file_name

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
    for option, given, path in (("--out", args.out, out), ("--card", args.card, card)):
        if path and os.path.isdir(path):
            raise SetupError(f"{option} {given}: is a folder; give a file name ({option} "
                             f"{os.path.join(given, 'NAME.png' if option == '--card' else 'NAME.safetensors')})")
        if path and os.path.exists(path) and not args.overwrite:
            raise SetupError(f"{option} {path} exists: choose another name or add --overwrite")
    return out, card


def check_destinations(args, out: str | None, card: str | None) -> list[str]:
    """Both destinations' folders are created if needed and written to (a probe file) before any model is loaded,
    as batch checks --out: an encode that cannot be saved is refused at once. Returns the folders created (removed
    again when the command fails). Raises SetupError naming the argument and the fix."""
    from ..batch.manifest import OutputError, check_output_folder

    created: list[str] = []
    for option, given, path in (("--out", args.out, out), ("--card", args.card, card)):
        if not path:
            continue
        try:
            created += check_output_folder(os.path.dirname(path), option=f"{option} {given}")
        except OutputError as e:
            remove_folders(created)
            raise SetupError(f"{e}. Fix: give {option} a path in a folder you can write to") from None
    return created


def remove_folders(folders: list[str]) -> None:
    for folder in reversed(folders):  # deepest first; only the empty folders this command made
        try:
            os.rmdir(folder)
        except OSError:
            pass


def write_outputs(identity, out: str | None, card: str | None, overwrite: bool) -> list[str]:
    """--out and --card written as one (pulid_flux/identity/store.write_files_together): both, or neither."""
    from pulid_flux.identity.card import identity_card_bytes
    from pulid_flux.identity.file import identity_bytes
    from pulid_flux.identity.store import NotWritten, write_files_together

    files = [(make(identity), path) for make, path in ((identity_bytes, out), (identity_card_bytes, card)) if path]
    try:
        return write_files_together(files, overwrite)
    except NotWritten as e:
        from ..batch.manifest import os_reason

        option = "--out" if e.path == out else "--card"
        if isinstance(e.error, FileExistsError):
            raise SetupError(f"{option} {e.path} exists (it appeared while encoding): choose another name or add "
                             f"--overwrite; nothing was written") from None
        raise SetupError(f"{option} {e.path}: cannot write it: {os_reason(e.error)}; nothing was written (neither "
                         f"--out nor --card). Fix: give {option} a path in a folder you can write to") from None


def encode_identity_file(args) -> list[str]:
    """Everything the command does; returns the paths written. Raises SetupError. Both destinations are checked
    before any model is loaded; a failure leaves no file of the pair and no folder this command made."""
    from ..doctor.checks import import_pack_parts

    encoders, pulid_flux = import_pack_parts()
    from encoders.curation import selection

    settings = reference_settings(args, selection)
    out, card = check_outputs(args)
    created = check_destinations(args, out, card)
    try:
        return _encode_and_write(args, settings, out, card, encoders, pulid_flux)
    except BaseException:
        remove_folders(created)
        raise


def _encode_and_write(args, settings, out, card, encoders, pulid_flux) -> list[str]:
    import json

    import torch
    from tqdm import tqdm

    from encoders.curation import report as curation_report
    from encoders.curation import selection
    from encoders.references import NoUsableFace, encode_references
    from pulid_flux.curated_fusion import IdTokenMaker
    from pulid_flux.identity.build import build_identity, file_fingerprint

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
        maker = IdTokenMaker(model.pulid_encoder.to(device, dtype))
        bar.update(1)
        bar.set_description("encoding the photos")

        def progress(done: int, total: int) -> None:  # photos located, then BiSeNet/EVA-CLIP batches
            bar.total = 4 + total + 1
            bar.n = 4 + done
            bar.refresh()

        try:
            emb = encode_references(encoders.FaceEncoders(analysis, eva, parser), maker, photos, settings,
                                    report=True, progress=progress)
        except NoUsableFace as e:
            raise SetupError(f"{e.summary} Use photos where the face is clearly visible, or check "
                             f"--face-order/--face-index.".replace("reference image", "--face photo")) from None
        except selection.CurationError as e:
            raise SetupError(str(e).replace("curate ", "--curate ").replace("set curate", "set --curate")) from None
        for i, why in emb.skipped.items():
            tqdm.write(f"{args.face[i]}: skipped: {why}", file=sys.stderr)
        if settings.curate != "off":
            tqdm.write(curation_report.render_table(emb.report), file=sys.stderr)
        bar.set_description("ID encoder")
        uncond = maker.uncond(encoders.EVA02_CLIP_L_336.tokens).float().cpu()
        identity = build_identity(emb.id_tokens, uncond, emb.arcface, emb.preview,
                                  pulid_file=pulid_name, pulid_fingerprint=file_fingerprint(pulid_path),
                                  fusion=args.fusion, face_order=args.face_order, face_index=args.face_index,
                                  use_gray=not args.no_gray, references=len(emb.used),
                                  **{curation_report.METADATA_KEY: json.dumps(emb.report)})
        written = write_outputs(identity, out, card, args.overwrite)
        bar.n = bar.total
        bar.set_description("done")
    print(f"fingerprint {identity.fingerprint}", file=sys.stderr)
    return written


def run(args) -> int:
    if args.json and not args.report:
        print("error: --json goes with --report (it prints the report as JSON)", file=sys.stderr)
        return 1
    if args.report and (args.out or args.card):
        given = f"--out {args.out}" if args.out else f"--card {args.card}"
        print(f"error: --report writes no file: leave out {given} (or --report, to write the identity; "
              f"with --curate warn/drop/weight it prints the table too)", file=sys.stderr)
        return 1
    try:
        if args.report:
            return print_report(args)
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
