"""Pack what the GPU check needs and the GPU machine lacks into bench/gpu/carry/ (git-ignored), and print its size
beside the tracked files' (one device call carries 64 MiB in all):

  python bench/gpu/prepare.py [--comfyui PATH]     # default: ../shared/comfyui-0.29 beside the repository

- carry/comfyui/: ComfyUI's Python code that the check imports (copied from the checkout; never committed);
- carry/wheels/: the packages ComfyUI and the pack import that the GPU image does not have, as wheels for
  CPython 3.12 on manylinux x86_64 (pip download; no dependencies: the image has them);
- carry/manifest.json: the ComfyUI version, the wheels, the sizes, and this script's recipe hash (the test
  re-prepares when the recipe changes).

Standard library and pip only, so any Python with pip can run it. Found by running the check (`--toy` records
every third-party module that ComfyUI, the pack and the carried packages import and names the ones the GPU image
lacks): ComfyUI's `comfy` package imports ~185 of its modules (model_base imports every architecture, one of them
comfy_kitchen's), but no other heavy package once comfy_api.latest (PyAV) and comfy.sd (torchaudio, every VAE) are
left out."""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bootstrap  # noqa: E402 - standard library only

# ComfyUI code the check imports: whole packages (their .py files) and single modules.
COMFY_PACKAGES = ("comfy", "comfy_api/torch_helpers")
COMFY_MODULES = ("folder_paths.py", "comfyui_version.py", "node_helpers.py")  # node_helpers: comfy/hooks.py
# Import-time needs the GPU image lacks: (distribution, pin when the ComfyUI checkout does not pin it, importer).
WHEELS = (
    ("comfy-aimdo", "0.4.10", "comfy/model_management.py, ops.py, model_patcher.py (module level)"),
    # 29 MB (a CUDA library linking no libtorch): comfy/ldm/joyimage/model.py imports it at module level, and
    # model_base imports every architecture; the fp8_e4m3fn weight_dtype (manual cast) does not run it
    ("comfy-kitchen", "0.2.22", "comfy/ldm/joyimage/model.py (module level, through comfy/model_base.py)"),
    ("torchsde", "0.2.6", "comfy/k_diffusion/sampling.py (KSampler)"),
    ("trampoline", "0.1.2", "torchsde"),
    ("insightface", "2.1", "encoders/faces.py (face analysis)"),
    ("facexlib", "0.3.0", "encoders/parsing.py (BiSeNet)"),
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64")


def recipe() -> str:
    """Changes when this script or the bootstrap's expectations change: the test then prepares again."""
    digest = hashlib.sha256()
    for name in ("prepare.py", "bootstrap.py"):
        with open(os.path.join(HERE, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def default_source() -> str | None:
    beside = os.path.join(os.path.dirname(bootstrap.REPO_ROOT), "shared", "comfyui-0.29")
    for candidate in (os.environ.get("PULID_GPU_COMFYUI"), beside, os.environ.get("COMFYUI_PATH")):
        if candidate and os.path.isfile(os.path.join(candidate, "comfy", "model_detection.py")):
            return os.path.abspath(candidate)
    return None


def copy_comfyui(source: str, target: str) -> tuple[int, int]:
    """The .py files of COMFY_PACKAGES and COMFY_MODULES, same layout. Returns (files, bytes)."""
    if os.path.isdir(target):
        shutil.rmtree(target)
    files = []
    for package in COMFY_PACKAGES:
        for folder, dirs, names in os.walk(os.path.join(source, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py")]
    files += [os.path.join(source, m) for m in COMFY_MODULES]
    total = 0
    for path in files:
        dest = os.path.join(target, os.path.relpath(path, source))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(path, dest)  # contents only: the checkout's read-only bits stay behind
        total += os.path.getsize(dest)
    return len(files), total


def pins(source: str) -> list[str]:
    """name==version for each wheel: the ComfyUI checkout's own pin where it has one (comfy-aimdo)."""
    pinned = {}
    try:
        with open(os.path.join(source, "requirements.txt"), encoding="utf-8") as f:
            for line in f:
                match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
                if match:
                    pinned[match.group(1).lower().replace("_", "-")] = match.group(2)
    except OSError:
        pass
    return [f"{name}=={pinned.get(name, version)}" for name, version, _ in WHEELS]


def wheel_matches(path: str, requirement: str) -> bool:
    name, version = requirement.split("==")
    base = os.path.basename(path).lower()
    return base.startswith(f"{name.replace('-', '_')}-{version}-")


def download_wheels(requirements: list[str], folder: str) -> list[str]:
    """pip download for CPython 3.12 / manylinux x86_64, no dependencies; wheels already there are kept."""
    os.makedirs(folder, exist_ok=True)
    present = glob.glob(os.path.join(folder, "*.whl"))
    for path in present:  # drop versions no longer wanted: two of one package stop the install
        if not any(wheel_matches(path, r) for r in requirements):
            os.remove(path)
    wanted = [r for r in requirements if not any(wheel_matches(p, r) for p in glob.glob(os.path.join(folder, "*.whl")))]
    if wanted:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--python-version", "3.12", "--implementation", "cp", "-d", folder]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        subprocess.run(command + wanted, check=True)
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.whl")))


def untracked_bytes() -> int:
    """Untracked files git does not ignore: they travel too."""
    try:
        out = subprocess.run(["git", "-C", bootstrap.REPO_ROOT, "ls-files", "-z", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    paths = [os.path.join(bootstrap.REPO_ROOT, n) for n in out.decode().split("\0") if n]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p) and not os.path.islink(p))


def repo_commit() -> str:
    try:
        return subprocess.run(["git", "-C", bootstrap.REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def prepare(source: str, carry: str = bootstrap.CARRY) -> dict:
    version = bootstrap.comfyui_version(source)
    files, comfy_bytes = copy_comfyui(source, os.path.join(carry, "comfyui"))
    wheels = download_wheels(pins(source), os.path.join(carry, "wheels"))
    manifest = {"comfyui_version": version, "comfyui_source": source, "comfyui_files": files,
                "comfyui_bytes": comfy_bytes, "wheels": wheels, "recipe": recipe(), "repo_commit": repo_commit()}
    with open(os.path.join(carry, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    manifest["carry_bytes"] = bootstrap.folder_bytes(carry)
    return manifest


def sizes(carry: str = bootstrap.CARRY) -> dict:
    carried = bootstrap.folder_bytes(carry)
    tracked, untracked = bootstrap.tracked_bytes(), untracked_bytes()
    return {"carry": carried, "tracked": tracked, "untracked": untracked, "total": carried + tracked + untracked}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Pack bench/gpu/carry/ for the GPU check.")
    ap.add_argument("--comfyui", help="ComfyUI checkout to copy (default: $PULID_GPU_COMFYUI, "
                                      "../shared/comfyui-0.29, $COMFYUI_PATH)")
    args = ap.parse_args(argv)
    source = os.path.abspath(args.comfyui) if args.comfyui else default_source()
    if not source or not os.path.isfile(os.path.join(source, "comfy", "model_detection.py")):
        print("No ComfyUI checkout: pass --comfyui PATH (v0.29 is what the GPU check is made for).", file=sys.stderr)
        return 2
    manifest = prepare(source)
    if not manifest["comfyui_version"].startswith("0.29"):
        print(f"note: ComfyUI {manifest['comfyui_version']} copied; the check is made for v0.29", file=sys.stderr)
    s = sizes()
    mib = 2 ** 20
    print(f"prepared {bootstrap.CARRY}: ComfyUI {manifest['comfyui_version']} ({manifest['comfyui_files']} files, "
          f"{manifest['comfyui_bytes'] / mib:.1f} MiB), wheels {', '.join(manifest['wheels'])}")
    print(f"size: carry {s['carry'] / mib:.1f} MiB + tracked files {s['tracked'] / mib:.1f} MiB + untracked "
          f"{s['untracked'] / mib:.1f} MiB = {s['total'] / mib:.1f} MiB of {bootstrap.LIMIT_BYTES / mib:.0f} MiB")
    if s["total"] > bootstrap.LIMIT_BYTES:
        print("TOO LARGE for one device call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
