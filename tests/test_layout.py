"""The layout README's `## Layout` promises, checked on the tracked files: what may sit at the top level, module
size, which packages may import ComfyUI, and that tests take their helpers from tests/support only."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = ("comfy_layer", "pulid_flux", "encoders", "pulid_tools")
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
                 "node_helpers", "latent_preview"}


def tracked_python() -> list[str]:
    """The pack's Python files, relative to the repository: top level, the product packages, tests (no git needed:
    CI's virtual environments live in .venv/ and are never walked)."""
    found = [name for name in os.listdir(REPO) if name.endswith(".py")]
    for top in (*PRODUCT, "tests"):
        for folder, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            found += [os.path.relpath(os.path.join(folder, f), REPO).replace(os.sep, "/") for f in files
                      if f.endswith(".py")]
    return found


def imported_roots(path: str) -> set[str]:
    """Top-level names of the absolute imports in a file (relative imports stay inside the pack)."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_top_level_python_is_the_entry_and_the_nodes():
    # install.py: ComfyUI-Manager runs that fixed name after every install and update (README "GPU face analysis")
    assert sorted(p for p in tracked_python() if "/" not in p) == ["__init__.py", "install.py", "nodes.py"]


def test_no_product_module_is_over_400_lines():
    long = {}
    for path in tracked_python():
        if "/" not in path or path.split("/")[0] in PRODUCT:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                lines = sum(1 for _ in f)
            if lines > 400:
                long[path] = lines
    assert long == {}


def test_only_the_comfyui_layer_imports_comfyui():
    found = {p: sorted(imported_roots(p) & COMFY_MODULES) for p in tracked_python()
             if p.split("/")[0] in ("pulid_flux", "encoders", "pulid_tools")}
    assert {p: names for p, names in found.items() if names} == {}


def test_tests_take_shared_helpers_from_support_only():
    crossing = {p: sorted(r for r in imported_roots(p) if r.startswith("test_")) for p in tracked_python()
                if p.startswith("tests/")}
    assert {p: names for p, names in crossing.items() if names} == {}
