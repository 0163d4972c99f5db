"""Tier (a): `python -m pulid_tools identity` finds model files where the loaders would, and says what is missing.
(The identity it writes is compared with the nodes' in tests/test_identity_comfyui.py.)"""
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# --- --report: the curation report without writing a file (only antelopev2 needed) -----------------------------
@pytest.fixture(scope="module")
def faces_only(tmp_path_factory):
    """A models folder with only the antelopev2 stand-in, and two copies of a photo (the stand-in ArcFace has random
    weights: only copies are reliably one person to it)."""
    from PIL import Image
    from skimage import data

    from support import encoder_fakes as fakes

    root = tmp_path_factory.mktemp("report")
    fakes.write_antelopev2(str(root / "models" / "insightface" / "models" / "antelopev2"))
    photos = []
    for name, rgb in (("a.png", data.astronaut()), ("b.png", data.astronaut())):  # two copies: consistent
        Image.fromarray(rgb).save(root / name)
        photos += ["--face", str(root / name)]
    return root, photos


def test_report_prints_the_table_and_writes_nothing(faces_only):
    root, photos = faces_only
    before = sorted(os.listdir(root))
    result = run("--report", *photos, "--models", str(root / "models"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["photo", "face", "det"] and lines[2].startswith("1 ") and lines[3].startswith("2 ")
    assert "curate 'off': 2 of 2 photos used (1, 2)" in result.stdout
    assert sorted(os.listdir(root)) == before


def test_report_as_json_has_a_consistency_per_photo_and_the_summary(faces_only):
    import json

    root, photos = faces_only
    result = run("--report", "--json", "--curate", "drop", *photos, "--models", str(root / "models"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [ref["file"].endswith(name) for ref, name in zip(report["references"], ("a.png", "b.png"))] == [True] * 2
    for ref in report["references"]:
        assert isinstance(ref["consistency"], float) and -1 <= ref["consistency"] <= 1 and ref["face_found"]
        assert {"yaw", "pitch", "sharpness", "face_px", "verdict", "kept"} <= set(ref)
    assert report["summary"]["mode"] == "drop" and report["summary"]["photos"] == 2
    assert report["summary"]["thresholds"]["min_consistency"] == 0.25


def test_report_that_leaves_nothing_exits_1_and_says_why(faces_only):
    root, photos = faces_only
    result = run("--report", "--curate", "drop", "--threshold", "min_face_px=4000", *photos, "--models",
                 str(root / "models"))
    assert result.returncode == 1 and "left no reference photo" in result.stderr and "set --curate" in result.stderr
    assert "curate 'drop': 0 of 2 photos used (none)" in result.stdout and "face too small" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--json"], "--json goes with --report"),
    (["--report", "--out", "x.safetensors"], "--report writes no file"),
    (["--report", "--threshold", "min_size=3"], "unknown threshold 'min_size'"),
    (["--report", "--threshold", "max_yaw=wide"], "'wide' is not a number"),
    (["--report", "--curate", "weight", "--fusion", "concat"], "--curate 'weight'"),
    (["--report", "--card", "x.png"], "--report writes no file"),
    ([], "give --out NAME.safetensors, --card NAME.png, or both"),
])
def test_report_options_are_checked(faces_only, args, message):
    root, photos = faces_only
    result = run(*args, *photos, "--models", str(root / "models"))
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_curate_modes_match_the_encoders():
    from encoders.curation.selection import CURATE_MODES

    assert identity_cli.CURATE_MODES == CURATE_MODES


@given(st.lists(st.text(max_size=30) | st.sampled_from(["min_consistency=nan", "max_yaw=-inf", "min_face_px=1e999",
                                                         "max_pitch=", "=0.3", "min_sharpness=0x10"]), max_size=4))
def test_threshold_arguments_give_settings_or_a_setup_error(items):
    """--threshold NAME=VALUE is parsed totally: a ReferenceSettings, or SetupError naming the argument."""
    import argparse

    from encoders.curation import selection

    args = argparse.Namespace(threshold=items, fusion="mean", face_order="largest", face_index=0, no_gray=False,
                              curate="drop")
    try:
        settings = identity_cli.reference_settings(args, selection)
    except identity_cli.SetupError as e:
        assert str(e).startswith("--")
    else:
        assert settings.curate == "drop"
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


# --- destinations checked before the encode, written as one (issue 26) -----------------------------------------
def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: a read-only folder, or where root writes anywhere, sysfs."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (str(folder), "/sys"):
        try:
            with open(os.path.join(candidate, ".probe"), "wb"):
                pass
            os.remove(os.path.join(candidate, ".probe"))
        except OSError:
            return candidate
    pytest.fail("no folder here refuses writes (not even /sys)")


def test_an_unusable_out_or_card_is_refused_before_anything_is_loaded(tmp_path):
    """Before: a raw PermissionError traceback on the temporary file, after the whole encode; `[Errno 17] File
    exists` for a path under a regular file. The models folder here is empty: a destination checked after the models
    were looked for would get 'no PuLID-Flux weights' instead."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    locked = unwritable_folder(tmp_path)
    good_out, good_card = tmp_path / "new" / "a.safetensors", tmp_path / "new2" / "a.png"
    folder_png = tmp_path / "cards.png"
    folder_png.mkdir()
    (tmp_path / "empty_models").mkdir()
    for args, expected in (
            (["--out", str(blocker / "sub" / "a.safetensors")],
             f"error: --out {blocker / 'sub' / 'a.safetensors'}: cannot create or write {blocker / 'sub'}: {blocker} "
             f"is a file, not a folder. Fix: give --out a path in a folder you can write to"),
            (["--out", str(good_out), "--card", str(blocker / "a.png")],
             f"error: --card {blocker / 'a.png'}: cannot create or write {blocker}: a file of that name is in the way "
             f"(not a folder). Fix: give --card a path in a folder you can write to"),
            (["--out", os.path.join(locked, "a.safetensors")], f"error: --out {os.path.join(locked, 'a.safetensors')}:"
                                                               f" cannot create or write {locked}"),
            (["--out", str(good_out), "--card", os.path.join(locked, "a.png")], f"error: --card "
                                                                                f"{os.path.join(locked, 'a.png')}"),
            (["--card", str(folder_png)], f"error: --card {folder_png}: is a folder; give a file name")):
        result = run("--face", "x.png", "--models", str(tmp_path / "empty_models"), *args)
        assert result.returncode == 1 and result.stderr.startswith(expected), (args, result.stderr)
        assert "Traceback" not in result.stderr and "Errno" not in result.stderr
        assert not good_out.parent.exists() and not good_card.parent.exists()  # no half of the pair, no new folder
    good = run("--face", "x.png", "--models", str(tmp_path / "empty_models"), "--out", str(good_out), "--card",
               str(good_card))
    assert good.returncode == 1 and "no PuLID-Flux weights" in good.stderr  # writable: on to the models
    assert not good_out.parent.exists() and not good_card.parent.exists()  # made for the check, removed on failure


def test_out_and_card_are_written_as_one(tmp_path, monkeypatch):
    """A failure while the pair is given its names takes back what was written: both files or neither, and a file
    that --overwrite was replacing keeps its old content."""
    from pulid_flux.identity import store as identity_store

    out, card = tmp_path / "a.safetensors", tmp_path / "a.png"
    real_link = identity_store._link_new
    calls = []

    def second_fails(tmp, path):
        calls.append(path)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied", path)
        real_link(tmp, path)

    monkeypatch.setattr(identity_store, "_link_new", second_fails)
    with pytest.raises(identity_store.NotWritten) as e:
        identity_store.write_files_together([(b"identity", str(out)), (b"card", str(card))])
    assert e.value.path == str(card) and os.listdir(tmp_path) == []  # the first file was taken back, no temp file
    out.write_bytes(b"old identity")
    card.mkdir()  # replacing a folder fails after the first file was replaced
    with pytest.raises(identity_store.NotWritten):
        identity_store.write_files_together([(b"new identity", str(out)), (b"card", str(card))], overwrite=True)
    assert out.read_bytes() == b"old identity" and sorted(os.listdir(tmp_path)) == ["a.png", "a.safetensors"]
    card.rmdir()
    assert identity_store.write_files_together([(b"new identity", str(out)), (b"card", str(card))],
                                               overwrite=True) == [str(out), str(card)]
    assert out.read_bytes() == b"new identity" and card.read_bytes() == b"card" and len(os.listdir(tmp_path)) == 2
