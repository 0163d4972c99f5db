"""Tier (a): `python -m pulid_tools identity` finds model files where the loaders would, and says what is missing.
(The identity it writes is compared with the nodes' in tests/test_identity_comfyui.py.)"""
import os
import subprocess
import sys

import pytest

from support import comfy_harness as H
from pulid_tools.identity import command as identity_cli


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pulid_tools", "identity", *args], cwd=H.REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_help_names_the_options():
    result = subprocess.run([sys.executable, "-m", "pulid_tools", "identity", "--help"], cwd=H.REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--face", "--models", "--out", "--card", "--overwrite", "--pulid", "--eva", "--fusion"):
        assert option in result.stdout


def test_missing_models_say_where_to_put_them(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    photo = tmp_path / "face.png"
    photo.write_bytes(b"")
    result = run("--face", str(photo), "--models", str(models), "--out", str(tmp_path / "a.safetensors"))
    assert result.returncode == 1
    assert "error: no PuLID-Flux weights in " + str(models / "pulid") in result.stderr
    assert "pulid_flux_v0.9.1.safetensors" in result.stderr
    assert not (tmp_path / "a.safetensors").exists()


def test_models_folder_or_comfyui_folder_and_yaml_entries(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "pulid" / "identities").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    shared = tmp_path / "shared_pulid"
    shared.mkdir()
    (shared / "pulid_flux_v0.9.0.safetensors").write_bytes(b"x")
    (comfy / "models" / "pulid" / "identities" / "alice.safetensors").write_bytes(b"x")
    (comfy / "extra_model_paths.yaml").write_text(f"mine:\n  pulid: {shared}\n")
    for where in (comfy, comfy / "models"):
        folders = identity_cli.model_folders(str(where))
        assert folders.get("pulid") == [str(shared), str(comfy / "models" / "pulid")]
        assert folders.get("pulid_identities") == [str(comfy / "models" / "pulid" / "identities")]
        # identity files are not PuLID weights; v0.9.0 is found where the loader lists it
        assert identity_cli.find_pulid(folders, None) == ("pulid_flux_v0.9.0.safetensors",
                                                          str(shared / "pulid_flux_v0.9.0.safetensors"))
    with pytest.raises(identity_cli.SetupError, match="--pulid other.safetensors: not in the pulid folders"):
        identity_cli.find_pulid(folders, "other.safetensors")
    odd = tmp_path / "my_models"
    (odd / "pulid").mkdir(parents=True)
    assert identity_cli.model_folders(str(odd)).get("pulid")[-1] == str(odd / "pulid")


def test_out_must_be_safetensors_and_is_not_overwritten(tmp_path):
    existing = tmp_path / "a.safetensors"
    existing.write_bytes(b"keep")
    result = run("--face", "x.png", "--models", str(tmp_path), "--out", str(existing))
    assert result.returncode == 1 and "exists: choose another name or add --overwrite" in result.stderr
    assert existing.read_bytes() == b"keep"
    result = run("--face", "x.png", "--models", str(tmp_path), "--out", str(tmp_path / "a.pt"))
    assert result.returncode == 1 and "identity files end in .safetensors" in result.stderr
    assert os.listdir(tmp_path) == ["a.safetensors"]


def test_out_follows_the_identity_name_rule(tmp_path):
    """One name rule for the node, the route and the CLI: a file the CLI writes can be uploaded and loaded."""
    for name, problem in (("Zoë.safetensors", "which is not ASCII"), ("con.safetensors", "reserved device name"),
                          ("abc\n.safetensors", "control character (U+000A")):
        result = run("--face", "x.png", "--models", str(tmp_path), "--out", str(tmp_path / name))
        assert result.returncode == 1 and problem in result.stderr and "Rule: " in result.stderr, result.stderr
    assert os.listdir(tmp_path) == []


def test_card_is_a_png_not_overwritten_and_one_output_is_needed(tmp_path):
    existing = tmp_path / "a.png"
    existing.write_bytes(b"keep")
    result = run("--face", "x.png", "--models", str(tmp_path), "--card", str(existing))
    assert result.returncode == 1 and f"--card {existing} exists: choose another name or add --overwrite" in \
        result.stderr
    result = run("--face", "x.png", "--models", str(tmp_path), "--out", str(tmp_path / "b.safetensors"),
                 "--card", str(tmp_path / "b.jpg"))
    assert result.returncode == 1 and "identity cards are PNG files" in result.stderr
    result = run("--face", "x.png", "--models", str(tmp_path))
    assert result.returncode == 1 and "give --out NAME.safetensors, --card NAME.png, or both" in result.stderr
    assert os.listdir(tmp_path) == ["a.png"] and existing.read_bytes() == b"keep"
