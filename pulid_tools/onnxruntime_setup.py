"""Exactly one onnxruntime build, the GPU one on a CUDA machine: the rule install.py applies after every
`pip install -r requirements.txt` (ComfyUI-Manager runs both on each install and update).

Why it is needed: the builds (`onnxruntime`, `onnxruntime-gpu`, ...) are different distributions that install the
same `onnxruntime` import package, so two of them overwrite each other's files. insightface 2.1 depends on the CPU
`onnxruntime`, so every re-run of requirements.txt brings it back beside `onnxruntime-gpu` and InsightFace quietly
loses the GPU. Standard library only: this runs before anything else of the pack is importable. Never touches torch."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass

CPU, GPU = "onnxruntime", "onnxruntime-gpu"
# Every build that installs the `onnxruntime` import package, the user's deliberate choices after the GPU one.
BUILDS = (CPU, GPU, "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-rocm", "onnxruntime-silicon",
          "onnxruntime-qnn")
MIN_VERSION = "1.17"  # as requirements.txt's onnxruntime line
CHOICE_ENV = "PULID_FLUX_ONNXRUNTIME"  # e.g. onnxruntime to keep the CPU build on a CUDA machine


@dataclass(frozen=True)
class Plan:
    keep: str                    # the one build left installed
    keep_version: str | None     # its installed version (None: not installed)
    uninstall: tuple[str, ...]   # every other build found
    install: bool                # `keep` is missing: install it
    reinstall: bool              # `keep` shared its files with an uninstalled build: put them back

    @property
    def changes(self) -> bool:
        return bool(self.uninstall) or self.install or self.reinstall


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def plan(installed: dict[str, str], cuda: bool, wanted: str | None = None) -> Plan:
    """What to do, given the installed distributions ({name: version}) and whether torch sees a CUDA GPU. Keeps a
    build the user chose (any but the CPU one, which requirements.txt drags in); else the GPU build on CUDA, the CPU
    build otherwise. `wanted` (a build name) overrides the choice."""
    names = {canonical(n): v for n, v in installed.items()}
    builds = [b for b in BUILDS if b in names]
    chosen = [b for b in builds if b != CPU]
    if wanted:
        keep = canonical(wanted)
        if keep not in BUILDS:
            raise ValueError(f"{CHOICE_ENV}={wanted!r} is not an onnxruntime build; use one of {', '.join(BUILDS)}")
    elif cuda and (GPU in builds or not chosen):
        keep = GPU
    else:
        keep = chosen[0] if chosen else CPU
    uninstall = tuple(b for b in builds if b != keep)
    return Plan(keep, names.get(keep), uninstall, install=keep not in builds,
                reinstall=keep in builds and bool(uninstall))


def pip_commands(p: Plan) -> list[list[str]]:
    pip = [sys.executable, "-m", "pip"]
    commands = [pip + ["uninstall", "-y", *p.uninstall]] if p.uninstall else []
    if p.install:
        commands.append(pip + ["install", f"{p.keep}>={MIN_VERSION}"])
    elif p.reinstall:  # dependencies untouched: only the files the uninstall deleted come back
        commands.append(pip + ["install", "--force-reinstall", "--no-deps", f"{p.keep}=={p.keep_version}"])
    return commands


def installed_distributions() -> dict[str, str]:
    from importlib import metadata

    return {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}


def cuda_present() -> bool:
    """torch (ComfyUI's) sees an NVIDIA GPU through CUDA (not ROCm); without torch, whether nvidia-smi exists."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - any broken torch: fall back to the driver's tool
        import shutil

        return shutil.which("nvidia-smi") is not None
    return torch.version.cuda is not None and torch.cuda.is_available()


def main(argv=None, run=subprocess.run, installed=installed_distributions, cuda=cuda_present, out=sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands without running them")
    args = parser.parse_args(argv)
    try:
        p = plan(installed(), cuda(), os.environ.get(CHOICE_ENV) or None)
    except ValueError as e:
        print(f"PuLID-Flux install: {e}", file=out)
        return 2
    if not p.changes:
        print(f"PuLID-Flux install: onnxruntime build {p.keep} is the only one installed; nothing to do", file=out)
        return 0
    for command in pip_commands(p):
        print("PuLID-Flux install: python " + " ".join(command[1:]), file=out)
        if not args.dry_run and run(command).returncode != 0:
            print("PuLID-Flux install: that command failed; run it by hand, then `python install.py` again",
                  file=out)
            return 1
    return 0
