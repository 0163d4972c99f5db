"""The package the Comfy Registry gets: pyproject.toml's dependencies are requirements.txt's, [tool.comfy] is
complete and true (icon, tested ComfyUI range), .comfyignore keeps only development files out, nothing in the tree
calls exec/eval or puts two statements on a line (the registry's ruff rules S102/S307/E702), the shipped code
unpickles nothing, and only the files README "Network and security" names open connections or start programs.
The archive itself is built and installed by .ci/registry_check.py (CI's registry stage, with comfy-cli)."""
import ast
import io
import os
import re
import struct
import tokenize
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from pulid_tools import versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".pytest_cache", ".hypothesis"}
# Imports that open network connections or start programs (which may): README "Network and security" names every
# shipped file that has one.
NETWORK_OR_PROCESS = ("aiohttp", "socket", "ssl", "urllib.request", "http.client", "http.server", "requests",
                      "httpx", "websocket", "websockets", "ftplib", "smtplib", "subprocess")
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "marshal", "joblib", "shelve"}


def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def requirement_lines(text: str) -> list[str]:
    """requirements.txt's requirements, comments and blank lines dropped (options such as -r are not expected)."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [line for line in lines if line]


def by_name(lines: list[str]) -> dict[str, str]:
    parsed = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): str(r) for r in parsed}


def comfyignore_entries() -> list[str]:
    return [line.strip() for line in read(".comfyignore").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def python_files(shipped_only: bool) -> list[str]:
    """Every .py file of the working tree (what ruff sees), or only those the archive ships (.comfyignore's
    entries are top-level names, checked below, so leaving out those names is exactly what it does)."""
    ignored = {entry.rstrip("/") for entry in comfyignore_entries()} if shipped_only else set()
    found = []
    for folder, dirs, files in os.walk(REPO):
        rel_folder = os.path.relpath(folder, REPO)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not (rel_folder == "." and d in ignored))
        found += [os.path.relpath(os.path.join(folder, f), REPO).replace(os.sep, "/") for f in sorted(files)
                  if f.endswith(".py") and not (rel_folder == "." and f in ignored)]
    return found


def ruff_rule_findings(source: str) -> list[str]:
    """What ruff's S102 (exec), S307 (eval) and E702 (`a; b`) would flag, as 'line: rule'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
            found.append(f"{node.lineno}: {'S102 exec' if node.func.id == 'exec' else 'S307 eval'}")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.OP and token.string == ";":
            found.append(f"{token.start[0]}: E702 ;")
    return found


def unpickling_calls(source: str) -> list[str]:
    """Calls that may unpickle: pickle-family loaders, torch.load without weights_only=True,
    numpy.load(allow_pickle=True)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        owner, attr = node.func.value.id, node.func.attr
        true_keywords = {k.arg for k in node.keywords if isinstance(k.value, ast.Constant) and k.value.value is True}
        if owner in UNPICKLERS and attr in ("load", "loads", "Unpickler", "open"):
            found.append(f"{node.lineno}: {owner}.{attr}")
        elif owner == "torch" and attr == "load" and "weights_only" not in true_keywords:
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif owner in ("np", "numpy") and attr == "load" and "allow_pickle" in true_keywords:
            found.append(f"{node.lineno}: {owner}.load(allow_pickle=True)")
    return found


def network_or_process_imports(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return sorted({n for n in names for m in NETWORK_OR_PROCESS if n == m or n.startswith(m + ".")})


def readme_section(title: str) -> str:
    return read("README.md").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


# --- dependencies ---------------------------------------------------------------------------------------------

def test_pyproject_dependencies_are_requirements_txt():
    """ComfyUI-Manager installs requirements.txt; the registry reads [project].dependencies: one list, twice."""
    from_requirements = by_name(requirement_lines(read("requirements.txt")))
    from_pyproject = by_name(pyproject()["project"]["dependencies"])
    missing = sorted(set(from_requirements) - set(from_pyproject))
    extra = sorted(set(from_pyproject) - set(from_requirements))
    differ = sorted(f"{name}: {from_pyproject[name]} vs requirements.txt {from_requirements[name]}"
                    for name in set(from_requirements) & set(from_pyproject)
                    if from_pyproject[name] != from_requirements[name])
    assert (missing, extra, differ) == ([], [], []), "pyproject.toml [project].dependencies must list requirements.txt"


def test_the_dependency_comparison_sees_a_drift():
    assert by_name(["filelock>=3.10", "tqdm>=4.60"]) != by_name(["tqdm>=4.60"])
    assert by_name(["tqdm >= 4.60"]) == by_name(["tqdm>=4.60"]) != by_name(["tqdm>=4.61"])
    assert by_name(requirement_lines("# comment\nnumpy>=1.25  # why\n\n")) == {"numpy": "numpy>=1.25"}


# --- [tool.comfy] ---------------------------------------------------------------------------------------------

def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_tool_comfy_is_complete_and_its_icon_is_a_square_png_of_this_repository():
    data = pyproject()
    comfy = data["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    repo = data["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    found = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(repo)}/main/(.+)", comfy["Icon"])
    assert found, f"Icon must be a raw URL of a file of {repo} on main, not {comfy['Icon']!r}"
    width, height = png_size(os.path.join(REPO, found.group(1)))
    assert width == height <= 400  # the registry: square, at most 400 px


def test_requires_comfyui_is_the_range_ci_tests():
    oldest, newest = versions.TESTED_COMFYUI
    stated = pyproject()["tool"]["comfy"]["requires-comfyui"]
    assert stated == f">={oldest},<={newest}"
    assert SpecifierSet(stated).contains(oldest) and SpecifierSet(stated).contains(newest)
    assert not SpecifierSet(stated).contains("0.3.63") and not SpecifierSet(stated).contains("0.29.1")


# --- the archive's contents -----------------------------------------------------------------------------------

def test_comfyignore_keeps_out_development_files_only():
    entries = comfyignore_entries()
    plain = [e for e in entries if not re.fullmatch(r"[A-Za-z0-9_.-]+/?", e)]
    assert plain == [], "entries are top-level names (python_files() and the README rely on it)"
    ignored = {e.rstrip("/") for e in entries}
    assert {"tests", "bench", ".ci", "requirements-test.txt"} <= ignored
    needed = {"__init__.py", "nodes.py", "install.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE",
              "comfy_layer", "pulid_flux", "encoders", "pulid_tools", "examples", "example_workflows", "web",
              "locales", "assets"}
    assert ignored & needed == set()


# --- what the registry's scanner looks for --------------------------------------------------------------------

def test_no_file_in_the_tree_calls_exec_or_eval_or_chains_statements_with_semicolons():
    found = {path: ruff_rule_findings(read(path)) for path in python_files(shipped_only=False)}
    assert {path: hits for path, hits in found.items() if hits} == {}


def test_the_shipped_code_unpickles_nothing():
    found = {path: unpickling_calls(read(path)) for path in python_files(shipped_only=True)}
    assert {path: hits for path, hits in found.items() if hits} == {}


def test_only_the_files_readme_names_open_connections_or_start_programs():
    section = readme_section("Network and security")
    named = set(re.findall(r"`([\w./-]+\.py|[\w./-]+/)`", section))
    assert named, "README 'Network and security' names the files in backquotes"
    assert all(os.path.exists(os.path.join(REPO, n)) for n in named), f"README names files that do not exist: {named}"
    found = {path: network_or_process_imports(read(path)) for path in python_files(shipped_only=True)}
    users = {path: names for path, names in found.items() if names}
    unnamed = {path: names for path, names in users.items()
               if not any(path == n or (n.endswith("/") and path.startswith(n)) for n in named)}
    assert unnamed == {}
    assert any(path.startswith("pulid_tools/comfy_http/") for path in users)  # the scan does find the client


def test_the_scanners_find_what_they_look_for():
    assert ruff_rule_findings("x = 1\nexec('y = 2')\nprint(eval('x'))\na = 1; b = 2\nm.eval()\n") == \
        ["2: S102 exec", "3: S307 eval", "4: E702 ;"]
    assert ruff_rule_findings("s = 'a; b'  # c; d\n") == []
    assert unpickling_calls("pickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=True)\n"
                            "np.load(p, allow_pickle=True)\nnp.load(p)\nmarshal.loads(b)\n") == \
        ["1: pickle.loads", "2: torch.load without weights_only=True", "4: np.load(allow_pickle=True)",
         "6: marshal.loads"]
    assert network_or_process_imports("import urllib.parse\nfrom urllib import request\nimport socket\n"
                                      "from aiohttp import web\nfrom http import HTTPStatus\nimport subprocess\n") == \
        ["aiohttp", "aiohttp.web", "socket", "subprocess", "urllib.request"]
