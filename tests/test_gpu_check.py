"""bench/gpu, the GPU check of issue 27: its own command at toy size on the CPU (so it cannot rot between the rare
runs on a lent GPU), and the prepared folder it carries there (within one device call's 64 MiB, wheels that install
on the GPU's CPython 3.12). Part of the real-ComfyUI tier: the prepared folder is copied from a ComfyUI checkout."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from support import comfy_harness as H

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_module(name: str):
    return importlib.import_module(f"bench.gpu.{name}")


@pytest.fixture(scope="module")
def prepared():
    """bench/gpu/carry/ as `python bench/gpu/prepare.py` leaves it, prepared here when missing or made by another
    recipe (CI starts from a fresh clone; pip reaches PyPI there)."""
    if H.comfyui_path() is None:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the real-ComfyUI tests")
    bootstrap, prepare = gpu_module("bootstrap"), gpu_module("prepare")
    try:
        current = bootstrap.read_manifest()["recipe"] == prepare.recipe()
    except SystemExit:
        current = False
    if not current:
        done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu", "prepare.py")], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return bootstrap.read_manifest()


def test_the_prepared_folder_fits_one_device_call(prepared):
    bootstrap, prepare = gpu_module("bootstrap"), gpu_module("prepare")
    sizes = prepare.sizes()
    assert 0 < sizes["carry"] and 0 < sizes["tracked"]
    assert sizes["total"] < bootstrap.LIMIT_BYTES, sizes
    assert prepared["comfyui_version"] == bootstrap.comfyui_version(prepared["comfyui_source"])
    copied = os.path.join(bootstrap.CARRY_COMFYUI, "comfy", "model_detection.py")
    with open(copied, "rb") as a, open(os.path.join(prepared["comfyui_source"], "comfy", "model_detection.py"),
                                       "rb") as b:
        assert a.read() == b.read()


def test_every_carried_wheel_installs_on_the_gpu_python(prepared):
    """One wheel per needed package, each with a tag CPython 3.12 on manylinux x86_64 accepts."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename

    prepare = gpu_module("prepare")
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    gpu_tags = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
    parsed = [parse_wheel_filename(name) for name in prepared["wheels"]]
    assert sorted(str(name) for name, *_ in parsed) == sorted(canonicalize_name(n) for n, _, _ in prepare.WHEELS)
    assert all(set(tags) & gpu_tags for _, _, _, tags in parsed), prepared["wheels"]


def _table(markdown: str) -> list[dict]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    columns = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return [dict(zip(columns, (c.strip() for c in line.strip().strip("|").split(" | ")))) for line in lines[1:]]


def _seconds(cell: str) -> float:
    value, unit = cell.split()
    return float(value) / (1000 if unit == "ms" else 1)


def test_the_check_runs_at_toy_size_and_prints_every_row(prepared, tmp_path):
    """The GPU command itself (`python -m bench.gpu`) with --toy: through the prepared folder when this suite's
    ComfyUI is the one it holds (what the GPU imports), else through COMFYUI_PATH (the check's code on the other
    supported ComfyUI)."""
    bootstrap = gpu_module("bootstrap")
    comfyui = H.comfyui_path()
    through_carry = bootstrap.comfyui_version(comfyui) == prepared["comfyui_version"]
    command = [sys.executable, "-m", "bench.gpu", "--toy", "--out", str(tmp_path)]
    if not through_carry:
        command += ["--comfyui", comfyui]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    with open(tmp_path / "gpu_check.md", encoding="utf-8") as f:
        markdown = f.read()
    assert markdown in done.stdout  # the table printed is the table written
    rows = _table(markdown)

    models, report = gpu_module("models"), gpu_module("report")
    toy = models.TOY
    expected = {(report.FLOPS, toy.dtypes[0][0], report.image_label(size), "1", "off") for size in toy.sizes}
    for label, _ in toy.dtypes:
        for size in toy.sizes:
            for cfg in (1.0, 3.5):
                for figure in (report.STEP, report.VRAM):
                    expected.add((figure, label, report.image_label(size), report.cfg_label(cfg), "off"))
    expected |= {(report.STEP, label, report.image_label(size), report.cfg_label(cfg), toy.compile_backend)
                 for label, size, cfg in toy.compile_cases}
    expected |= {(figure, "fp32", "—", "—", "—") for figure in
                 (report.ENCODE_APPLY, report.ENCODE_LOCATE, report.ENCODE_EMBED, report.ENCODE_ID)}
    keys = [(r["figure"], r["dtype"], r["image"], r["cfg"], r["compile"]) for r in rows]
    assert sorted(keys) == sorted(expected)
    assert not [r for r in rows if "skipped" in r["note"] or "error" in r["note"]]

    for row in rows:
        if row["figure"] == report.STEP:
            assert _seconds(row["plain"]) > 0 and _seconds(row["patched"]) > 0
            plain, patched = _seconds(row["plain"]), _seconds(row["patched"])
            assert float(row["patched / plain"]) == pytest.approx(patched / plain, rel=0.02)
            assert 1.0 < float(row["floor"]) < 1.05  # 2 cross-attentions of width 16 on 2+4 blocks of width 48
        if row["figure"] == report.FLOPS:
            # torch's FLOP counter agrees with the analytic count the floors use (bench/step_overhead.py)
            counted = dict(part.split() for part in row["note"].split(": ", 1)[1].split(" (")[0].split(", "))
            assert 0.97 < float(counted["plain"]) < 1.05 and 0.95 < float(counted["added"]) < 1.05, row
            assert float(row["÷ floor"]) == pytest.approx(1.0, abs=0.002)
        if row["compile"] == toy.compile_backend:
            # compiling the patched model breaks the graph no more often than compiling the plain one
            breaks = row["note"].split("graph breaks patched ", 1)[1].split(" (")[0]
            patched_breaks, plain_breaks = (int(n) for n in breaks.split(" / plain "))
            assert patched_breaks == plain_breaks, row["note"]
        if row["figure"] in (report.ENCODE_EMBED, report.ENCODE_ID):
            assert _seconds(row["plain"]) > 0 and float(row["÷ floor"]) > 0
    if through_carry:
        assert "all on the GPU image or carried" in markdown
    with open(tmp_path / "gpu_check.json", encoding="utf-8") as f:
        data = json.load(f)
    assert data["errors"] == [] and len(data["rows"]) == len(rows)
