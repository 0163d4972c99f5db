"""`python -m pulid_tools doctor` on ComfyUI folders laid out the ways users lay them out: empty, complete,
antelopev2 nested by the release zip, models elsewhere through extra_model_paths.yaml, and wrong files.

The models are the tiny stand-ins (tiny PuLID-Flux, narrow EVA-CLIP, fake antelopev2, random BiSeNet) so this
runs in seconds; test_server_e2e.py runs the doctor command on full-size files."""
import argparse
import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from support import encoder_fakes as enc_fakes
from pulid_flux import TINY
from support.pulid_fakes import write_pulid_file
from pulid_tools.doctor import catalog
from pulid_tools.doctor import command as doctor
from pulid_tools import model_paths
from pulid_tools import versions

COMFYUI = os.path.abspath(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None


def run_doctor(comfyui, *extra):
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    args = parser.parse_args(["--comfyui", str(comfyui), *extra])
    out = io.StringIO()
    code = doctor.run(args, eva_config=enc_fakes.TINY_EVA, out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def bisenet(tmp_path_factory):
    """BiSeNet is ~50 MB even with random weights: written once, copied where needed."""
    return enc_fakes.write_bisenet(str(tmp_path_factory.mktemp("bisenet") / "parsing_bisenet.pth"))


@pytest.fixture
def write_pack_models(bisenet):
    def write(models, nested_antelopev2=False):
        write_pulid_file(os.path.join(models, "pulid", "pulid_flux_v0.9.1.safetensors"), TINY, seed=1)
        enc_fakes.write_eva_baai(os.path.join(models, "clip_vision", "EVA02_CLIP_L_336_psz14_s6B.pt"),
                                 enc_fakes.TINY_EVA)
        enc_fakes.write_antelopev2(os.path.join(models, "insightface", "models", "antelopev2"),
                                   nested=nested_antelopev2)
        os.makedirs(os.path.join(models, "facexlib"), exist_ok=True)
        shutil.copy(bisenet, os.path.join(models, "facexlib", "parsing_bisenet.pth"))
    return write


@pytest.fixture
def comfyui(tmp_path):
    root = tmp_path / "ComfyUI"
    for sub in ("pulid", "clip_vision", "insightface", "facexlib"):
        (root / "models" / sub).mkdir(parents=True)
    (root / "comfyui_version.py").write_text(f'__version__ = "{versions.TESTED_COMFYUI[-1]}"\n')
    return root


def test_empty_install_names_every_folder_to_create_and_file_to_download(tmp_path):
    root = tmp_path / "ComfyUI"
    root.mkdir()
    code, out = run_doctor(root)
    assert code == 1
    models = os.path.join(str(root), "models")
    for model, folder in ((catalog.PULID, "pulid"), (catalog.EVA_CLIP, "clip_vision"), (catalog.PARSER, "facexlib")):
        assert f"create the folder {os.path.join(models, folder)}" in out
        assert f"download {model.url}" in out
        assert f"save it as {os.path.join(models, folder, model.name)}" in out
    antelope = os.path.join(models, "insightface", "models", "antelopev2")
    assert f"create the folder {antelope}" in out and catalog.DETECTOR.url in out and catalog.RECOGNIZER.url in out
    assert out.count("[FAIL]") == 4 and "[ok]   Python packages" in out
    assert "flux1-dev.safetensors: download" in out  # the workflows' models: a warning, not a failure


def test_complete_install_loads_everything_and_previews_a_face(comfyui, tmp_path, write_pack_models):
    from skimage import data

    write_pack_models(str(comfyui / "models"))
    face = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(face)
    pack_files = sorted(os.listdir(doctor.PACK_ROOT))
    code, out = run_doctor(comfyui, "--face", str(face))
    assert code == 0, out
    preview = comfyui / "output" / "pulid_doctor" / "pulid_face_preview.png"  # ComfyUI's output folder
    assert "[FAIL]" not in out and out.count("[ok]") == 6 and out.count("[warn]") == 2
    assert "pulid_flux_v0.9.1.safetensors: loads (NOT the official size" in out  # the tiny stand-in
    assert "EVA02_CLIP_L_336_psz14_s6B.pt: loads  <- used by eva_file 'auto'" in out
    assert "1 face(s) detected" in out and f"ID tokens from the PuLID encoder: [1, {TINY.num_queries}, " in out
    assert Image.open(preview).size == (1024, 512)
    detections = np.asarray(Image.open(preview.parent / "pulid_face_preview_detections.png"))
    assert detections.shape == data.astronaut().shape
    assert sorted(os.listdir(doctor.PACK_ROOT)) == pack_files  # nothing written into the pack


def test_nested_antelopev2_works_and_the_doctor_says_how_to_flatten_it(comfyui, write_pack_models):
    write_pack_models(str(comfyui / "models"), nested_antelopev2=True)
    code, out = run_doctor(comfyui)
    assert code == 0, out
    expected = os.path.join(str(comfyui), "models", "insightface", "models", "antelopev2")
    assert "[warn] InsightFace antelopev2" in out
    assert f"move the .onnx files from {os.path.join(expected, 'antelopev2')}{os.sep} to {expected}{os.sep}" in out


def test_antelopev2_one_folder_too_high_is_a_failure_with_the_move_to_make(comfyui, write_pack_models):
    models = str(comfyui / "models")
    write_pack_models(models)
    shutil.move(os.path.join(models, "insightface", "models", "antelopev2"),
                os.path.join(models, "insightface", "antelopev2"))
    code, out = run_doctor(comfyui)
    assert code == 1
    assert "[FAIL] InsightFace antelopev2" in out
    assert f"into {os.path.join(models, 'insightface', 'models', 'antelopev2')}" in out


def test_models_found_through_extra_model_paths_yaml(tmp_path, write_pack_models):
    root = tmp_path / "ComfyUI"
    root.mkdir()
    shared = tmp_path / "shared_models"
    for sub in ("pulid", "clip_vision", "insightface", "facexlib"):
        (shared / sub).mkdir(parents=True)
    write_pack_models(str(shared))
    (root / "extra_model_paths.yaml").write_text(
        "mine:\n  base_path: ../shared_models\n  pulid: pulid\n  clip_vision: clip_vision\n  insightface: insightface\n"
        "  facexlib: |\n    facexlib\n    other\n")
    code, out = run_doctor(root)
    assert code == 0, out
    assert os.path.join(str(shared), "pulid", "pulid_flux_v0.9.1.safetensors") + ": loads" in out


def test_folder_order_follows_comfyui(tmp_path):
    (tmp_path / "extra_model_paths.yaml").write_text(
        "a:\n  base_path: /data\n  is_default: true\n  unet: big\n  pulid: p1\nb:\n  clip: rel/clip\n")
    folders = model_paths.resolve(str(tmp_path), base_directory=str(tmp_path / "base"))
    models = str(tmp_path / "base" / "models")
    assert folders.get("diffusion_models") == [os.path.normpath("/data/big"), os.path.join(models, "unet"),
                                               os.path.join(models, "diffusion_models")]
    assert folders.get("pulid") == [os.path.normpath("/data/p1"), os.path.join(models, "pulid")]
    assert folders.get("clip") == [os.path.join(models, "text_encoders"), os.path.join(models, "clip"),
                                   str(tmp_path / "rel" / "clip")]
    (tmp_path / "extra_model_paths.yaml").write_text("a: [unclosed\n")
    with pytest.raises(model_paths.ConfigError, match="extra_model_paths.yaml: cannot be read"):
        model_paths.resolve(str(tmp_path))


def test_wrong_files_are_explained(comfyui, write_pack_models):
    from safetensors.torch import save_file

    models = str(comfyui / "models")
    write_pack_models(models)
    save_file({"id_adapter.body.weight": torch.zeros(2)}, os.path.join(models, "pulid", "pulid_v1.1.safetensors"))
    eva = os.path.join(models, "clip_vision", "EVA02_CLIP_L_336_psz14_s6B.pt")
    enc_fakes.write_eva_open_clip(os.path.join(models, "clip_vision", "open_clip_model.safetensors"),
                                  enc_fakes.TINY_EVA)
    os.remove(eva)
    with open(os.path.join(models, "facexlib", "parsing_bisenet.pth"), "wb") as f:
        f.write(b"not a checkpoint")
    code, out = run_doctor(comfyui)
    assert code == 1
    assert "pulid_v1.1.safetensors: cannot be used" in out and "PuLID for SDXL" in out
    assert "[warn] PuLID-Flux weights" in out  # the v0.9.1 file still works
    renamed = os.path.join(models, "clip_vision", "EVA02_CLIP_L_336_open_clip_model.safetensors")
    assert f"the loader only lists names containing 'eva02' or 'eva_clip': rename it to {renamed}" in out
    assert "[FAIL] Face parsing BiSeNet" in out and "parsing_bisenet.pth: cannot be used" in out


def test_doctor_names_the_comfyui_version_and_the_tested_range(tmp_path):
    root = tmp_path / "ComfyUI"
    root.mkdir()
    code, out = run_doctor(root)
    assert "[warn] ComfyUI version unknown" in out and "comfyui_version.py is missing" in out
    (root / "comfyui_version.py").write_text('__version__ = "0.31.2"\n')
    code, out = run_doctor(root)
    assert "[warn] ComfyUI 0.31.2" in out and "newer than the versions tested in CI: v0.3.64 to v0.29.0" in out
    assert f"PuLID-Flux doctor (pack version {versions.PACK_VERSION})" in out


@pytest.mark.skipif(not COMFYUI, reason="needs a real ComfyUI checkout (COMFYUI_PATH)")
def test_doctor_reads_the_version_of_the_real_checkout(tmp_path):
    """The checkout CI runs on is in the tested range (both ends are tested); nothing of it is imported."""
    expected = versions.read_comfyui_version(COMFYUI)
    assert expected in versions.TESTED_COMFYUI
    code, out = run_doctor(COMFYUI, "--base-directory", str(tmp_path))
    assert f"[ok]   ComfyUI {expected}\n" in out
    assert f"{COMFYUI}: within the versions tested in CI: v0.3.64 to v0.29.0" in out
    hints = hint_lines(out)  # an empty base directory: every model is missing, every hint names a folder in it
    assert len(hints) >= 10 and not [h for h in hints if COMFYUI in h]
    assert f"save it as {tmp_path / 'models' / 'clip_vision' / catalog.EVA_CLIP.name}" in hints


def test_eva_clip_is_looked_for_in_clip_vision_first_and_still_found_in_the_old_places(comfyui, write_pack_models):
    models = str(comfyui / "models")
    write_pack_models(models)
    home = os.path.join(models, "clip_vision", "EVA02_CLIP_L_336_psz14_s6B.pt")
    old = {folder: os.path.join(models, folder, f"eva02_clip_l_336_{folder}.pt") for folder in ("pulid", "clip")}
    for path in old.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(home, path)
    code, out = run_doctor(comfyui)
    assert code == 0, out
    lines = [line.strip() for line in out.splitlines()]
    used = lines.index(f"{home}: loads  <- used by eva_file 'auto'")
    assert lines[used + 1] == f"{old['pulid']}: loads  (eva_file 'pulid/eva02_clip_l_336_pulid.pt')"
    assert lines[used + 3] == f"{old['clip']}: loads  (eva_file 'text_encoders/eva02_clip_l_336_clip.pt')"
    target = os.path.join(models, "clip_vision")
    assert lines[used + 4] == (f"it works there; it could move to {target}{os.sep}, ComfyUI's folder for image "
                               "encoders (in clip/ it shows in every text-encoder list)")
    os.remove(home)
    os.remove(old["pulid"])
    code, out = run_doctor(comfyui)  # only the old README location left: found, used, and the move suggested
    assert code == 0, out
    assert "[ok]   EVA02-CLIP-L-14-336" in out and f"{old['clip']}: loads  <- used by eva_file 'auto'" in out
    assert f"it could move to {target}{os.sep}" in out


def test_readme_puts_eva_clip_in_clip_vision():
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
              encoding="utf-8") as f:
        row = next(line for line in f if line.startswith(f"| `{catalog.EVA_CLIP.name}` |"))
    assert row.split("|")[2].strip().startswith(f"`{catalog.EVA_CLIP.directory}/`") and "still work" in row


def face_args(*argv):
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    return parser.parse_args(["--comfyui", "/opt/ComfyUI", *argv])


def test_face_previews_go_to_out_or_comfyuis_output_folder():
    join = os.path.join
    assert doctor.face_output_dir(face_args()) == join(os.path.abspath("/opt/ComfyUI"), "output", "pulid_doctor")
    assert doctor.face_output_dir(face_args("--base-directory", "/data/comfy")) == join(
        os.path.abspath("/data/comfy"), "output", "pulid_doctor")
    assert doctor.face_output_dir(face_args("--base-directory", "/data/comfy", "--output-directory", "/srv/out")) == \
        join(os.path.abspath("/srv/out"), "pulid_doctor")
    assert doctor.face_output_dir(face_args("--output-directory", "/srv/out", "--out", "rel/dir")) == \
        os.path.abspath("rel/dir")


def hint_lines(out):
    """The fix lines of the report (each 'fix: ...' and its continuation lines)."""
    lines, in_fix = [], False
    for line in out.splitlines():
        text = line.strip()
        in_fix = text.startswith("fix: ") or (in_fix and line.startswith(" " * 14))
        if in_fix:
            lines.append(text.removeprefix("fix: "))
    return lines


def test_with_a_base_directory_every_hint_names_a_folder_comfyui_reads(tmp_path):
    """ComfyUI started with --base-directory reads models under it, plus the checkout's extra_model_paths.yaml;
    the hints must never send files into the checkout's own models/ folder."""
    checkout, base, shared = tmp_path / "ComfyUI", tmp_path / "data", tmp_path / "nas"
    checkout.mkdir()
    base.mkdir()
    (checkout / "comfyui_version.py").write_text('__version__ = "0.29.0"\n')
    (checkout / "extra_model_paths.yaml").write_text(f"nas:\n  base_path: {shared}\n  facexlib: facexlib\n")
    code, out = run_doctor(checkout, "--base-directory", str(base))
    assert code == 1
    hints = hint_lines(out)
    assert len(hints) >= 10 and not [h for h in hints if str(checkout) in h]
    models = os.path.join(str(base), "models")
    for model, folder in ((catalog.PULID, "pulid"), (catalog.EVA_CLIP, "clip_vision")):
        assert f"save it as {os.path.join(models, folder, model.name)}" in hints
    assert f"save it as {os.path.join(str(shared), 'facexlib', catalog.PARSER.name)}" in hints  # the yaml's folder
    assert f"create the folder {os.path.join(models, 'insightface', 'models', 'antelopev2')}" in hints
    assert any(h.endswith(f"into {os.path.join(models, 'diffusion_models')}{os.sep} (or pick your own file in the "
                          "loader)") for h in hints)


def test_models_directory_and_is_default_yaml_folders_are_named_in_hints(tmp_path):
    checkout, models = tmp_path / "ComfyUI", tmp_path / "ssd" / "models"
    checkout.mkdir()
    models.mkdir(parents=True)
    (checkout / "extra_model_paths.yaml").write_text(f"big:\n  base_path: {tmp_path / 'big'}\n  is_default: true\n"
                                                     "  pulid: pulid\n")
    code, out = run_doctor(checkout, "--models-directory", str(models))
    hints = hint_lines(out)
    assert f"save it as {tmp_path / 'big' / 'pulid' / catalog.PULID.name}" in hints
    assert f"save it as {models / 'clip_vision' / catalog.EVA_CLIP.name}" in hints
    assert not [h for h in hints if str(checkout) in h]


def test_a_pack_installed_under_a_base_directory_makes_that_the_base(tmp_path, monkeypatch):
    checkout, base = tmp_path / "ComfyUI", tmp_path / "data"
    pack = base / "custom_nodes" / "ComfyUI-PuLID-Flux"
    pack.mkdir(parents=True)
    (checkout / "custom_nodes").mkdir(parents=True)
    (checkout / "main.py").write_text("")
    assert doctor.installed_base_directory(str(pack), str(checkout)) == str(base)
    assert doctor.installed_base_directory(str(checkout / "custom_nodes" / "pack"), str(checkout)) is None
    assert doctor.installed_base_directory(str(tmp_path / "elsewhere" / "pack"), str(checkout)) is None
    (base / "main.py").write_text("")  # another ComfyUI checkout, not a base directory
    assert doctor.installed_base_directory(str(pack), str(checkout)) is None
    (base / "main.py").unlink()
    monkeypatch.setattr(doctor, "PACK_ROOT", str(pack))
    code, out = run_doctor(checkout)
    assert f"note: this pack is installed in {base / 'custom_nodes'}" in out
    assert f"save it as {base / 'models' / 'pulid' / catalog.PULID.name}" in hint_lines(out)
    assert not [h for h in hint_lines(out) if str(checkout) in h]


@pytest.mark.parametrize("builds, cuda, status, problem, would", [
    ({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.0"}, True, "fail", "several onnxruntime builds are installed",
     "uninstall -y onnxruntime; install --force-reinstall --no-deps onnxruntime-gpu==1.31.0)"),
    ({"onnxruntime": "1.32.0"}, True, "warn", "onnxruntime runs InsightFace on the CPU while torch sees a CUDA GPU",
     "uninstall -y onnxruntime; install onnxruntime-gpu>=1.17)"),
    ({"onnxruntime": "1.32.0"}, False, "ok", None, None),
])
def test_onnxruntime_builds_are_judged_by_install_py_s_rule(monkeypatch, builds, cuda, status, problem, would):
    from pulid_tools.doctor import checks as doctor_checks
    from pulid_tools import onnxruntime_setup

    monkeypatch.setattr(doctor_checks, "onnxruntime_builds", lambda: dict(builds))
    monkeypatch.setattr(onnxruntime_setup, "cuda_present", lambda: cuda)
    finding = doctor_checks.check_packages()
    assert finding.status == status
    if problem:
        assert finding.details[0].startswith(problem)
        assert finding.fix == [f"in the pack's folder ({doctor.PACK_ROOT}): python install.py   (it would: {would}"]
    else:
        assert finding.fix == []
