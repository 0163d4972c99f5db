"""The doctor's checks: find each model file where the pack looks for it, load it, and say what to fix.

Each check mirrors how the pack's loaders pick files (comfy_support.py), so a green check means the node
will find and load the same file. Heavy imports (torch, insightface...) happen inside the checks."""
from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass, field

from . import catalog
from .. import onnxruntime_setup
from .. import versions
from ..model_paths import ModelFolders, list_files

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PT_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pt2", ".pkl", ".sft"}
EVA_NAME_HINTS = ("eva02", "eva_clip", "eva-clip", "evaclip")  # comfy_support.EVA_NAME_HINTS
# The order comfy_support.eva_candidates uses: ComfyUI's home for image encoders first, then the older places.
EVA_FOLDERS = ("clip_vision", "pulid", "text_encoders")
PACKAGES = (("torch", "torch"), ("numpy", "numpy"), ("safetensors", "safetensors"), ("cv2", "opencv-python"),
            ("PIL", "Pillow"), ("onnxruntime", "onnxruntime"), ("insightface", "insightface"),
            ("facexlib", "facexlib"), ("timm", "timm"))


@dataclass
class Finding:
    status: str  # "ok", "warn" (works, but worth fixing) or "fail" (the pack will not work)
    title: str
    details: list[str] = field(default_factory=list)
    fix: list[str] = field(default_factory=list)
    seconds: float = 0.0


def import_pack_parts():
    """The pack's ComfyUI-free packages (encoders, pulid_flux), importable from the pack's root folder."""
    if PACK_ROOT not in sys.path:
        sys.path.append(PACK_ROOT)  # appended: never ahead of a ComfyUI root (both have a top-level `nodes`)
    encoders = importlib.import_module("encoders")
    pulid_flux = importlib.import_module("pulid_flux")
    for module in (encoders, pulid_flux):
        if not os.path.realpath(module.__file__).startswith(os.path.realpath(PACK_ROOT) + os.sep):
            raise ImportError(f"'{module.__name__}' was imported from {module.__file__}, not from this pack "
                              f"({PACK_ROOT}); run the doctor from the pack's folder.")
    return encoders, pulid_flux


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def error_lines(error: BaseException) -> list[str]:
    return [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]


def download_fix(model: catalog.ModelFile, folder: str) -> list[str]:
    target = os.path.join(folder, *model.name.split("/"))
    return [f"create the folder {os.path.dirname(target)}",
            f"download {model.url}", f"save it as {target}"]


def find_by_name(root: str, file_name: str, max_depth: int = 5) -> list[str]:
    """Folders under `root` (depth-limited: model trees can be huge) holding a file called `file_name`."""
    found = []
    root = os.path.abspath(root)
    for folder, dirs, files in os.walk(root, followlinks=True):
        depth = folder[len(root):].count(os.sep)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        if file_name in files:
            found.append(folder)
    return found


# --- ComfyUI itself -----------------------------------------------------------------------------------------
def check_comfyui(comfyui: str) -> Finding:
    """The ComfyUI version at `comfyui` (its comfyui_version.py, read as text) against the range CI tests."""
    oldest, newest = versions.TESTED_COMFYUI
    tested = f"the versions tested in CI: v{oldest} to v{newest}"
    found = versions.read_comfyui_version(comfyui)
    if found is None:
        return Finding("warn", "ComfyUI version unknown",
                       [f"{os.path.join(comfyui, 'comfyui_version.py')} is missing or holds no __version__ "
                        f"(every ComfyUI since v0.3 has it)"],
                       [f"pass --comfyui the ComfyUI folder (the one with main.py); {tested}"])
    where = versions.compare_to_tested(found)
    if where == "tested":
        return Finding("ok", f"ComfyUI {found}", [f"{comfyui}: within {tested}"])
    if where == "older":
        return Finding("warn", f"ComfyUI {found}", [f"{comfyui}: older than {tested}"],
                       ["update ComfyUI (git pull in its folder, or ComfyUI-Manager > Update ComfyUI)"])
    if where == "newer":
        return Finding("warn", f"ComfyUI {found}", [f"{comfyui}: newer than {tested}; it may well work"],
                       ["if a PuLID-Flux node fails, report it with this ComfyUI version"])
    return Finding("warn", f"ComfyUI {found}", [f"{comfyui}: this version cannot be compared with {tested}"])


# --- Python packages ----------------------------------------------------------------------------------
def check_packages() -> Finding:
    from importlib import metadata

    versions, problems, fix = [], [], []
    for module, dist in PACKAGES:
        try:
            importlib.import_module(module)
            try:
                versions.append(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                versions.append(dist)
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            problems.append(f"{dist} does not import: {first_line(e)}")
    status, builds = "fail" if problems else "ok", onnxruntime_builds()
    if builds:
        plan = onnxruntime_setup.plan(builds, onnxruntime_setup.cuda_present())
        install = f"in the pack's folder ({PACK_ROOT}): python install.py   (it would: " + "; ".join(
            " ".join(c[3:]) for c in onnxruntime_setup.pip_commands(plan)) + ")"
        if len(builds) > 1:
            listed = ", ".join(f"{name} {version}" for name, version in builds.items())
            problems.append(f"several onnxruntime builds are installed ({listed}); they share one import name and "
                            "break each other")
            status = "fail"
            fix.append(install)
        elif plan.changes:
            problems.append(f"{next(iter(builds))} runs InsightFace on the CPU while torch sees a CUDA GPU")
            status = "warn" if status == "ok" else status
            fix.append(install)
    details = problems + [", ".join(versions)]
    try:
        import onnxruntime

        details.append("onnxruntime providers: " + ", ".join(onnxruntime.get_available_providers()))
    except Exception:  # noqa: BLE001 - already reported above
        pass
    if any("does not import" in p for p in problems):
        fix.insert(0, "with the Python that runs ComfyUI, in the pack's folder: "
                      "python -m pip install -r requirements.txt")
    return Finding(status, "Python packages", details, fix)


def onnxruntime_builds() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in onnxruntime_setup.BUILDS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


# --- PuLID-Flux weights ---------------------------------------------------------------------------------
def _is_eva_name(relative: str) -> bool:
    return any(h in relative.lower().rsplit("/", 1)[-1] for h in EVA_NAME_HINTS)


def check_pulid(folders: ModelFolders, pulid_flux) -> tuple[Finding, object]:
    """Every weight file in the pulid folders, each read in full and validated like the loader does."""
    details, good, bad = [], [], 0
    looked = folders.get("pulid")
    for folder in looked:
        for rel in list_files(folder, PT_EXTENSIONS) if os.path.isdir(folder) else []:
            if _is_eva_name(rel) or rel.startswith("identities/"):
                continue  # EVA-CLIP may live here too (checked with EVA-CLIP); identities are not weights
            path = os.path.join(folder, rel)
            try:
                state, cfg = pulid_flux.read_state_dict(path)
            except Exception as e:  # noqa: BLE001 - every reason is reported with the file
                details += [f"{path}: cannot be used:"] + [f"  {line}" for line in error_lines(e)]
                bad += 1
                continue
            del state
            size = "official size" if cfg == pulid_flux.OFFICIAL else f"NOT the official size (image dim {cfg.img_dim})"
            details.append(f"{path}: loads ({size})")
            good.append((path, cfg))
    if good:
        official = all(cfg == pulid_flux.OFFICIAL for _, cfg in good)
        fix = [] if not bad else ["remove the files that cannot be used: they still show in the loader's list"]
        return Finding("ok" if official and not bad else "warn", "PuLID-Flux weights (Load PuLID-Flux Model)",
                       details, fix), good[0]
    fix = []
    elsewhere = [os.path.join(f, n) for n in ("pulid_flux_v0.9.1.safetensors", "pulid_flux_v0.9.0.safetensors")
                 for f in find_by_name(folders.models_dir, n) if f not in looked]
    if elsewhere:
        fix.append(f"move {elsewhere[0]} into {folders.target('pulid')}{os.sep}")
    else:
        fix += download_fix(catalog.PULID, folders.target("pulid"))
    details.append("looked in: " + ", ".join(looked))
    return Finding("fail", "PuLID-Flux weights (Load PuLID-Flux Model)", details, fix), None


# --- EVA-CLIP ---------------------------------------------------------------------------------------
def eva_candidates(folders: ModelFolders) -> list[tuple[str, str]]:
    """(choice as shown in the loader, full path), in the order the loader's 'auto' tries them."""
    found = []
    for name in EVA_FOLDERS:
        files = {}
        for folder in folders.get(name):
            for rel in list_files(folder, PT_EXTENSIONS) if os.path.isdir(folder) else []:
                files.setdefault(rel, os.path.join(folder, rel))  # the first folder wins, as in ComfyUI
        found += [(f"{name}/{rel}", files[rel]) for rel in sorted(files) if _is_eva_name(rel)]
    return found


def _unnamed_eva_files(folders: ModelFolders, encoders) -> list[str]:
    """safetensors files that hold an EVA-CLIP tower but lack a name the loader recognises."""
    from encoders.eva import detect_layout

    hits = []
    for name in EVA_FOLDERS:
        for folder in folders.get(name):
            for rel in list_files(folder, {".safetensors"}) if os.path.isdir(folder) else []:
                if _is_eva_name(rel):
                    continue
                path = os.path.join(folder, rel)
                try:
                    keys = encoders.checkpoint.read_tensor_shapes(path, "")
                except Exception:  # noqa: BLE001 - unreadable files are not ours to judge here
                    continue
                if detect_layout(keys) in ("baai", "open_clip"):
                    hits.append(path)
    return hits


def check_eva(folders: ModelFolders, encoders, config) -> tuple[Finding, object]:
    title = "EVA02-CLIP-L-14-336 (Load EVA-CLIP)"
    home = folders.target(catalog.EVA_CLIP.directory)
    candidates = eva_candidates(folders)
    details, model, auto_ok = [], None, False
    for i, (choice, path) in enumerate(candidates):
        try:
            loaded = encoders.load_eva_clip(path, "cpu", config=config)
        except Exception as e:  # noqa: BLE001
            details += [f"{path}: cannot be used:"] + [f"  {line}" for line in error_lines(e)]
            continue
        details.append(f"{path}: loads" + ("  <- used by eva_file 'auto'" if i == 0 else f"  (eva_file '{choice}')"))
        if not choice.startswith("clip_vision/"):
            clutter = " (in clip/ it shows in every text-encoder list)" if choice.startswith("text_enc") else ""
            details.append(f"  it works there; it could move to {home}{os.sep}, ComfyUI's folder for image encoders"
                           + clutter)
        auto_ok = auto_ok or i == 0
        model = model or loaded
    if model is not None:
        fix = [] if auto_ok else ["eva_file 'auto' takes the first file, which is broken: remove it, or select "
                                  "a working file in the loader's eva_file"]
        return Finding("ok" if auto_ok else "warn", title, details, fix), model
    fix = []
    for path in _unnamed_eva_files(folders, encoders):
        new = os.path.join(os.path.dirname(path), "EVA02_CLIP_L_336_" + os.path.basename(path))
        fix.append(f"{path} is EVA-CLIP, but the loader only lists names containing 'eva02' or 'eva_clip': "
                   f"rename it to {new}")
    if not fix:
        fix += download_fix(catalog.EVA_CLIP, home)
        fix.append("(the pack never downloads EVA-CLIP itself, so it also works offline)")
    looked = [f for name in EVA_FOLDERS for f in folders.get(name)]
    details.append("looked for names containing 'eva02' or 'eva_clip' in: " + ", ".join(looked))
    return Finding("fail", title, details, fix), None


# --- InsightFace antelopev2 ---------------------------------------------------------------------------
def check_antelopev2(folders: ModelFolders, encoders, provider: str) -> tuple[Finding, object]:
    title = "InsightFace antelopev2 (Load InsightFace)"
    roots = folders.get("insightface")
    details, status, fix, analysis, used = [], "fail", [], None, None
    for root in roots:
        expected = os.path.join(root, "models", "antelopev2")
        try:
            folder = encoders.find_antelopev2(root)
        except Exception as e:  # noqa: BLE001
            if os.path.isdir(root):
                details += [f"{root}:"] + [f"  {line}" for line in error_lines(e) if "Download antelopev2" not in line]
            continue
        try:
            analysis = encoders.load_face_analysis(root, provider)
        except Exception as e:  # noqa: BLE001
            details += [f"{folder}: found, but does not load:"] + [f"  {line}" for line in error_lines(e)]
            fix.append(f"replace the files in {folder} with fresh downloads")
            break
        used = folder
        details.append(f"{folder}: loads (detection + recognition, provider {provider})")
        status = "ok"
        if folder != expected:
            status = "warn"
            details.append("  this is the nested folder the release zip creates; it works, but other packs "
                           "(InstantID, PuLID SDXL) look one level up")
            fix.append(f"move the .onnx files from {folder}{os.sep} to {expected}{os.sep} and delete the empty "
                       f"folder {folder}")
        break
    detector = os.path.basename(catalog.DETECTOR.name)
    strays = [f for f in find_by_name(folders.models_dir, detector, 6) if f != used]
    target = os.path.join(folders.target("insightface"), "models", "antelopev2")
    if analysis is None and not fix:
        if strays:
            fix.append(f"antelopev2 files are in {strays[0]}: move scrfd_10g_bnkps.onnx and glintr100.onnx "
                       f"into {target}{os.sep}")
        else:
            fix += [f"create the folder {target}",
                    f"download {catalog.DETECTOR.url} and {catalog.RECOGNIZER.url} into it",
                    f"(or unzip {catalog.ANTELOPEV2_ZIP_URL} into {os.path.dirname(target)}{os.sep} and check "
                    f"that {os.path.join(target, detector)} exists: not antelopev2{os.sep}antelopev2)"]
        details.append("looked in: " + ", ".join(roots))
    elif strays:
        details.append("other copies (not used): " + ", ".join(strays))
    return Finding(status, title, details, fix), analysis


# --- BiSeNet face parsing --------------------------------------------------------------------------------
def check_parser(folders: ModelFolders, encoders) -> tuple[Finding, object]:
    title = "Face parsing BiSeNet (used by Apply PuLID-Flux)"
    looked = folders.get("facexlib")
    file_name = catalog.PARSER.name
    for folder in looked:
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            continue
        try:
            parser = encoders.load_face_parser(path)
        except Exception as e:  # noqa: BLE001
            return Finding("fail", title, [f"{path}: cannot be used:"] + [f"  {x}" for x in error_lines(e)],
                           download_fix(catalog.PARSER, folder)), None
        return Finding("ok", title, [f"{path}: loads"]), parser
    target = os.path.join(folders.target("facexlib"), file_name)
    strays = find_by_name(folders.models_dir, file_name)
    try:
        import facexlib

        package_weights = os.path.join(os.path.dirname(facexlib.__file__), "weights")
        if os.path.isfile(os.path.join(package_weights, file_name)):
            strays.append(package_weights)
    except ImportError:
        pass
    fix = ([f"copy {os.path.join(strays[0], file_name)} to {target}"] if strays
           else download_fix(catalog.PARSER, folders.target("facexlib")))
    return Finding("fail", title, ["looked in: " + ", ".join(looked)], fix), None


# --- files only the example workflows need ----------------------------------------------------------------
def check_workflow_models(folders: ModelFolders) -> Finding:
    details, fix = [], []
    for model in catalog.WORKFLOW_MODELS:
        where = [f for f in folders.get(model.directory) if os.path.isfile(os.path.join(f, model.name))]
        if where:
            details.append(f"{os.path.join(where[0], model.name)}: present")
        else:
            fix.append(f"{model.name}: download {model.url} into {folders.target(model.directory)}{os.sep} "
                       f"(or pick your own file in the loader)")
    flux = [rel for f in folders.get("diffusion_models") if os.path.isdir(f) for rel in list_files(f, PT_EXTENSIONS)]
    if flux:
        details.append("diffusion models you have: " + ", ".join(sorted(set(flux))[:8]))
    return Finding("warn" if fix else "ok", "Models of the example workflows (not loaded; any Flux.1 works)",
                   details, fix)


def timed(check, *args):
    start = time.perf_counter()
    result = check(*args)
    finding = result[0] if isinstance(result, tuple) else result
    finding.seconds = time.perf_counter() - start
    return result
