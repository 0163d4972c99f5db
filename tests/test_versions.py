"""One source for the pack's version (pyproject.toml) and for the ComfyUI range CI tests; the ComfyUI version is
read from a checkout's comfyui_version.py without importing ComfyUI."""
import os
import re
import tomllib

import pytest

from pulid_tools import versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT_DIRS = ("pulid_flux", "pulid_tools", "encoders")  # plus the root modules; not tests/testing/bench


def pyproject_version():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_the_pack_version_is_pyprojects_everywhere_it_is_reported():
    from pulid_flux.identity import build as identity

    assert versions.PACK_VERSION == pyproject_version() == identity.PACK_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions.PACK_VERSION)


def test_pack_version_reader_takes_the_project_table_only(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.other]\nversion = "9.9"\n\n[project]\nname = "x"\nversion = "1.2.3"\n'
                    '[tool.y]\nversion = "8"\n')
    assert versions.read_pack_version(str(path)) == "1.2.3"
    path.write_text('[project]\nname = "x"\n')
    assert versions.read_pack_version(str(path)) == "unknown"
    assert versions.read_pack_version(str(tmp_path / "missing.toml")) == "unknown"


def test_no_version_number_is_written_into_a_product_message():
    """Messages that need the pack's version take versions.PACK_VERSION; a literal ('needs version 0.2') goes stale."""
    literal = re.compile(r"\bversion\s+v?\d+\.\d+", re.I)
    offenders = []
    files = [os.path.join(REPO, n) for n in os.listdir(REPO) if n.endswith(".py")]
    for folder in PRODUCT_DIRS:
        files += [os.path.join(REPO, folder, n) for n in os.listdir(os.path.join(REPO, folder)) if n.endswith(".py")]
    for path in files:
        with open(path, encoding="utf-8") as f:
            offenders += [f"{os.path.relpath(path, REPO)}: {m.group(0)}" for m in literal.finditer(f.read())]
    assert offenders == []


@pytest.mark.parametrize("version, where", [
    ("0.3.64", "tested"), ("0.29.0", "tested"), ("0.10.2", "tested"), ("v0.3.65", "tested"), ("0.29", "tested"),
    ("0.3.63", "older"), ("0.2.9", "older"), ("0.29.1", "newer"), ("1.0.0", "newer"), ("0.30.0rc1", "newer"),
    ("main", "unknown"), ("", "unknown")])
def test_comfyui_versions_against_the_range_tested_in_ci(version, where):
    assert versions.compare_to_tested(version) == where


def test_comfyui_version_is_read_as_text_never_executed(tmp_path):
    (tmp_path / "comfyui_version.py").write_text('raise SystemExit("executed")\n__version__ = "0.12.3"\n')
    assert versions.read_comfyui_version(str(tmp_path)) == "0.12.3"
    (tmp_path / "comfyui_version.py").write_text("__version__ = compute()\n")
    assert versions.read_comfyui_version(str(tmp_path)) is None
    assert versions.read_comfyui_version(str(tmp_path / "nowhere")) is None


def test_readme_compatibility_names_the_tested_range():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        compatibility = f.read().split("## Compatibility", 1)[1].split("\n## ", 1)[0]
    oldest, newest = versions.TESTED_COMFYUI
    assert f"v{oldest}" in compatibility and f"v{newest}" in compatibility
