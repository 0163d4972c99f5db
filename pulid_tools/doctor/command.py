"""`python -m pulid_tools doctor --comfyui PATH [--face IMAGE]`: is every model file the pack needs where
ComfyUI will look, does each one load, and (with --face) what do the encoders make of a photo.

Run it with the Python environment ComfyUI uses, from the pack's folder. Exit status 0 when the pack can
run (warnings allowed), 1 when something is missing or broken."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import checks
from .. import versions
from .checks import Finding
from ..model_paths import ConfigError, resolve

MARKS = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}  # ASCII: Windows consoles may lack the glyphs
PREVIEW_NAME, DETECTIONS_NAME = "pulid_face_preview.png", "pulid_face_preview_detections.png"
PACK_ROOT = checks.PACK_ROOT


def installed_base_directory(pack_root: str, comfyui: str) -> str | None:
    """DIR when this pack sits in DIR/custom_nodes and DIR is not the ComfyUI folder itself: ComfyUI then loads it
    only when started with --base-directory DIR, so DIR is where it reads models and writes output."""
    custom_nodes = os.path.dirname(os.path.abspath(pack_root))
    home = os.path.dirname(custom_nodes)
    if os.path.basename(custom_nodes) != "custom_nodes" or os.path.isfile(os.path.join(home, "main.py")):
        return None
    return None if os.path.realpath(home) == os.path.realpath(comfyui) else home


def face_output_dir(args) -> str:
    """--out, else ComfyUI's output folder (--output-directory, else BASE/output) / pulid_doctor: never the pack."""
    if args.out:
        return os.path.abspath(args.out)
    output = args.output_directory or os.path.join(args.base_directory or args.comfyui, "output")
    return os.path.join(os.path.abspath(output), "pulid_doctor")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--comfyui", required=True, metavar="PATH",
                        help="ComfyUI's program folder (the one with main.py and comfyui_version.py)")
    parser.add_argument("--base-directory", metavar="DIR",
                        help="as ComfyUI's --base-directory: models, output... are under DIR (default: found from "
                             "where this pack is installed, else PATH)")
    parser.add_argument("--models-directory", metavar="DIR", help="as ComfyUI's --models-directory (v0.29+)")
    parser.add_argument("--output-directory", metavar="DIR", help="as ComfyUI's --output-directory")
    parser.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML",
                        help="as ComfyUI's option (PATH/extra_model_paths.yaml is always read when it exists)")
    parser.add_argument("--face", metavar="IMAGE", help="run the face encoders on this photo and write previews")
    parser.add_argument("--face-order", default="largest", help="which face when there are several (as the node)")
    parser.add_argument("--face-index", type=int, default=0, help="position in --face-order (as the node)")
    parser.add_argument("--out", metavar="DIR", help=f"where --face writes {PREVIEW_NAME} and {DETECTIONS_NAME} "
                                                     "(default: ComfyUI's output folder, sub-folder pulid_doctor)")
    parser.add_argument("--provider", default="CPU", choices=["CPU", "CUDA", "ROCM", "CoreML", "auto"],
                        help="onnxruntime provider for the face models (as Load InsightFace)")


def print_finding(f: Finding, out) -> None:
    took = f"  ({f.seconds:.1f} s)" if f.seconds >= 0.5 else ""
    print(f"{MARKS[f.status]} {f.title}{took}", file=out)
    for line in f.details:
        print(f"         {line}", file=out)
    for i, line in enumerate(f.fix):
        print(f"         {'fix: ' if i == 0 else '     '}{line}", file=out)


def check_face(image_path: str, face_analysis, eva, parser, id_encoder, order: str, index: int,
               out_dir: str) -> Finding:
    """The encoders on a real photo: detection, choice, alignment, parsing, EVA-CLIP (+ the ID encoder when the
    PuLID weights loaded), with the aligned | parsed preview the Apply node also outputs."""
    import cv2
    import numpy as np
    from PIL import Image, ImageOps

    from encoders import FaceEncoders
    from encoders.faces import detect_faces, order_faces
    from encoders.images import limit_long_side

    title = f"Face encoders on {image_path}"
    try:
        rgb = np.asarray(ImageOps.exif_transpose(Image.open(image_path)).convert("RGB"))
    except (OSError, ValueError) as e:
        return Finding("fail", title, [f"cannot read the image: {e}"])
    result = FaceEncoders(face_analysis, eva, parser).encode(rgb, order=order, index=index)[0]
    small, scale = limit_long_side(rgb)
    faces, _ = detect_faces(face_analysis, np.ascontiguousarray(small[:, :, ::-1]))
    canvas = np.ascontiguousarray(rgb[:, :, ::-1])
    for i, face in enumerate(order_faces(faces, order)):
        x1, y1, x2, y2 = (face.bbox / scale).astype(int).tolist()
        colour = (0, 200, 0) if i == index else (0, 160, 255)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, max(2, rgb.shape[1] // 400))
        cv2.putText(canvas, str(i), (x1, max(0, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, max(0.6, rgb.shape[1] / 1000),
                    colour, 2)
    preview_path, detections_path = os.path.join(out_dir, PREVIEW_NAME), os.path.join(out_dir, DETECTIONS_NAME)
    os.makedirs(out_dir, exist_ok=True)
    cv2.imwrite(detections_path, canvas)
    details = [f"{len(faces)} face(s) detected; numbers in {detections_path} are face_index for face_order "
               f"'{order}'"]
    if not result.ok:
        return Finding("fail", title, details + [f"no usable face: {result.reason}"],
                       ["use a photo where the face is clearly visible, or choose another face_order/face_index"])
    Image.fromarray(np.concatenate([result.aligned, result.parsed], axis=1)).save(preview_path)
    x1, y1, x2, y2 = result.bbox.round().astype(int).tolist()
    details += [f"face {index}: box ({x1}, {y1})-({x2}, {y2}), score {result.det_score:.2f}, found by "
                f"{result.found_by}", f"aligned | parsed preview (what EVA-CLIP sees): {preview_path}"]
    if id_encoder is not None:
        try:
            import pulid_flux

            tokens = pulid_flux.encode_id(id_encoder, result.id_cond, result.hidden_states)
            details.append(f"ID tokens from the PuLID encoder: {list(tokens.shape)}")
        except Exception as e:  # noqa: BLE001
            return Finding("fail", title, details + [f"the PuLID encoder rejects the features: {e}"])
    return Finding("ok", title, details)


def diagnose(args, eva_config=None, out=None) -> list[Finding]:
    """All checks, printed as they finish. `eva_config` lets tests use a narrow EVA-CLIP stand-in."""
    out = out or sys.stdout
    if not args.base_directory:
        args.base_directory = installed_base_directory(PACK_ROOT, args.comfyui)
        if args.base_directory:
            print(f"note: this pack is installed in {os.path.join(args.base_directory, 'custom_nodes')}, which ComfyUI "
                  f"reads when started with --base-directory {args.base_directory}: using that base directory "
                  f"(pass --base-directory to choose another)", file=out)
    try:
        folders = resolve(args.comfyui, args.base_directory, args.extra_model_paths_config, args.models_directory)
    except ConfigError as e:
        finding = Finding("fail", "extra_model_paths.yaml", [str(e)], ["fix the file's syntax or remove it"])
        print_finding(finding, out)
        return [finding]
    if not os.path.isdir(folders.models_dir):
        print(f"note: {folders.models_dir} does not exist; is {args.comfyui} a ComfyUI folder?", file=out)
    print(f"PuLID-Flux doctor (pack version {versions.PACK_VERSION}): models under {folders.models_dir}; "
          f"extra_model_paths.yaml: {', '.join(folders.yaml_files) or 'none'}", file=out)
    findings = []
    for check, *check_args in ((checks.check_comfyui, os.path.abspath(args.comfyui)), (checks.check_packages,)):
        findings.append(checks.timed(check, *check_args))
        print_finding(findings[-1], out)
    try:
        encoders, pulid_flux = checks.import_pack_parts()
    except Exception as e:  # noqa: BLE001
        findings.append(Finding("fail", "The pack's encoders", [f"cannot import them: {e}"],
                                ["run the doctor with ComfyUI's Python, from the pack's folder"]))
        print_finding(findings[-1], out)
        return findings
    config = eva_config or encoders.EVA02_CLIP_L_336
    loaded = {}
    for key, check, extra in (("pulid", checks.check_pulid, (pulid_flux,)),
                              ("eva", checks.check_eva, (encoders, config)),
                              ("faces", checks.check_antelopev2, (encoders, args.provider)),
                              ("parser", checks.check_parser, (encoders,))):
        finding, loaded[key] = checks.timed(check, folders, *extra)
        findings.append(finding)
        print_finding(finding, out)
    findings.append(checks.timed(checks.check_workflow_models, folders))
    print_finding(findings[-1], out)
    if args.face:
        needed = [k for k in ("faces", "eva", "parser") if loaded[k] is None]
        if needed:
            finding = Finding("fail", f"Face encoders on {args.face}",
                              ["skipped: " + ", ".join(needed) + " did not load (see above)"])
        else:
            pulid = None
            if loaded["pulid"] is not None:
                pulid = pulid_flux.load_pulid_flux(loaded["pulid"][0]).pulid_encoder.float()
            start = time.perf_counter()
            finding = check_face(args.face, loaded["faces"], loaded["eva"], loaded["parser"], pulid,
                                 args.face_order, args.face_index, face_output_dir(args))
            finding.seconds = time.perf_counter() - start
        findings.append(finding)
        print_finding(finding, out)
    return findings


def run(args, eva_config=None, out=None) -> int:
    out = out or sys.stdout
    findings = diagnose(args, eva_config, out)
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    verdict = "the pack can run" if not fails else "the pack cannot run until the problems marked FAIL are fixed"
    print(f"\n{fails} problem(s), {warns} warning(s): {verdict}.", file=out)
    return 1 if fails else 0
