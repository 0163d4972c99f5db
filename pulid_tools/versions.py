"""Versions, each from one place: the pack's (pyproject.toml, read at run time) and the range of ComfyUI versions
CI tests (the two checkouts .ci/run uses). The ComfyUI version of a checkout is read from its comfyui_version.py
as text: importing ComfyUI would start its setup."""
from __future__ import annotations

import ast
import os
import re

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Oldest and newest ComfyUI that CI runs the whole suite on (README "Compatibility" names both).
TESTED_COMFYUI = ("0.3.64", "0.29.0")


def read_pack_version(pyproject: str = os.path.join(PACK_ROOT, "pyproject.toml")) -> str:
    """`version` of the [project] table of pyproject.toml, or 'unknown' when the file is missing or has none."""
    try:
        with open(pyproject, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return "unknown"
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)  # tomllib is 3.11+
    found = re.search(r'^version\s*=\s*["\']([^"\']+)["\']', project.group(1), re.M) if project else None
    return found.group(1) if found else "unknown"


PACK_VERSION = read_pack_version()


def read_comfyui_version(comfyui: str) -> str | None:
    """`__version__` from `comfyui`/comfyui_version.py (ComfyUI's build writes it; v0.3.x and later have it), or None
    when the file is missing or does not assign a plain string."""
    try:
        with open(os.path.join(comfyui, "comfyui_version.py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        names = [t.id for t in getattr(node, "targets", ()) if isinstance(t, ast.Name)]
        if isinstance(node, ast.Assign) and "__version__" in names:
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return None


def version_key(version: str) -> tuple[int, ...] | None:
    """(0, 29, 0) for '0.29.0' (also 'v0.29.0', '0.29.0rc1' -> its release numbers); None if it has no number."""
    found = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


def compare_to_tested(version: str) -> str:
    """'older', 'tested' (within the CI range, ends included), 'newer', or 'unknown'."""
    key = version_key(version)
    if key is None:
        return "unknown"
    oldest, newest = (version_key(v) for v in TESTED_COMFYUI)
    width = max(len(key), len(oldest), len(newest))
    key, oldest, newest = (k + (0,) * (width - len(k)) for k in (key, oldest, newest))
    return "older" if key < oldest else "newer" if key > newest else "tested"
