"""End to end with a real ComfyUI server (COMFYUI_PATH): the pack's workflows in the template browser's list,
every graph against the server's /object_info, the API example queued through the headless client (an
image comes back), its two kinds of errors, and the doctor command on the server's full-size model files."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from support import comfy_harness as H
from support import server_harness as S
from support.workflow_checks import API_FILES, COMPAT_FILES, GGUF_NODES, UI_FILES, check_api_graph, check_ui_workflow

pytestmark = pytest.mark.comfyui
CLIENT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfy_models):
    base = str(tmp_path_factory.mktemp("comfy_base"))
    S.prepare_base_directory(base, comfy_models["root"])
    with S.ComfyServer(H.comfyui_path(), base) as srv:
        yield srv


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(folder / "black.png")
    return folder


@pytest.fixture(scope="module")
def test_graph(tmp_path_factory):
    """The basic API example with the text encoders swapped for the test conditioning node."""
    path = tmp_path_factory.mktemp("graphs") / "basic_for_tiny_models.json"
    path.write_text(json.dumps(S.graph_for_test_models()))
    return str(path)


def run_client(server, graph, *args):
    cmd = [sys.executable, "-m", "pulid_tools", "queue", graph, "--server", server.url,
           "--set", "1.unet_name=flux_test_1d1s.safetensors", "--set", f"3.vae_name={S.TEST_VAE}",
           "--set", "Image size.width=64", "--set", "Image size.height=64", "--set", "KSampler.steps=2",
           "--timeout", str(CLIENT_TIMEOUT_S - 30), *args]
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=H.REPO_ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    return result, time.monotonic() - start


def test_template_browser_lists_the_packs_workflows(server):
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed[S.PACK_DIR_NAME]) == sorted(os.path.basename(p)[:-5] for p in UI_FILES)
    served = server.get_json(f"/api/workflow_templates/{S.PACK_DIR_NAME}/pulid_flux_basic.json")
    with open(UI_FILES[0], encoding="utf-8") as f:
        assert served == json.load(f)


def test_every_graph_matches_the_servers_object_info(server):
    info = server.get_json("/object_info")
    for path in UI_FILES + COMPAT_FILES:
        with open(path, encoding="utf-8") as f:
            assert check_ui_workflow(json.load(f), info, True, allow_unknown=GGUF_NODES) == [], path
    for path in API_FILES:
        with open(path, encoding="utf-8") as f:
            assert check_api_graph(json.load(f), info, True) == [], path


def test_headless_client_queues_the_api_example_and_gets_an_image(server, photos, test_graph, tmp_path):
    prompt = "an astronaut, end-to-end test"
    result, seconds = run_client(server, test_graph, "--face", str(photos / "astronaut.png"), "--prompt", prompt,
                                 "--seed", "7", "--weight", "1.0", "--out", str(tmp_path / "out"))
    print(f"\nheadless client end to end on the tiny models: {seconds:.1f} s\n{result.stderr}")
    assert result.returncode == 0, result.stderr + server.log_tail()
    saved = result.stdout.split()
    image = next(p for p in saved if os.sep + "previews" + os.sep not in p)
    assert Image.open(image).size == (64, 64)
    preview = next(p for p in saved if os.sep + "previews" + os.sep in p)
    assert Image.open(preview).size == (1024, 512)  # aligned | parsed face from the Apply node
    assert "KSampler (node 13): 2/2" in result.stderr
    history = server.get_json("/history")
    queued = [entry["prompt"][2] for entry in history.values()]
    assert any(g["9"]["inputs"]["text"] == prompt and g["13"]["inputs"]["seed"] == 7 for g in queued)


def test_curation_report_in_the_preview_through_the_server(server, photos, test_graph, tmp_path):
    """curate 'warn' on a running server: the face preview row carries the verdict caption (green: consistent,
    kept) in a darkened band at its top."""
    with open(test_graph, encoding="utf-8") as f:
        graph = json.load(f)
    graph["8"]["inputs"]["curate"] = "warn"  # an input the basic example leaves at its default
    (tmp_path / "curated.json").write_text(json.dumps(graph))
    result, _ = run_client(server, str(tmp_path / "curated.json"), "--face", str(photos / "astronaut.png"),
                           "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr + server.log_tail()
    preview = next(p for p in result.stdout.split() if os.sep + "previews" + os.sep in p)
    band = np.asarray(Image.open(preview).convert("RGB"))[:40].reshape(-1, 3).astype(int)
    assert (np.abs(band - (0, 200, 0)).sum(axis=1) < 60).sum() > 20  # the caption 'photo 1: consistent, kept'


def test_a_bad_graph_gets_the_clients_clear_error(server, photos, test_graph):
    result, _ = run_client(server, test_graph, "--face", str(photos / "astronaut.png"), "--weight", "9")
    assert result.returncode == 1
    assert "ComfyUI refused the prompt: Prompt outputs failed validation" in result.stderr
    assert "[ApplyPulidFlux] (node 8)" in result.stderr and "weight" in result.stderr


def test_a_failing_prompt_gets_comfyuis_error_message(server, photos, test_graph):
    result, _ = run_client(server, test_graph, "--face", str(photos / "black.png"))
    assert result.returncode == 1
    assert "could not run the prompt: NoFaceError in Apply PuLID-Flux [ApplyPulidFlux] (node 8)" in result.stderr
    assert "found no usable face in any reference image" in result.stderr


def test_doctor_command_on_the_servers_full_size_models(server, photos, tmp_path):
    preview = tmp_path / "pulid_face_preview.png"
    server.free_models()  # the doctor loads its own full-size PuLID and EVA-CLIP: not beside the server's copies
    cmd = [sys.executable, "-m", "pulid_tools", "doctor", "--comfyui", H.comfyui_path(), "--base-directory",
           server.base, "--face", str(photos / "astronaut.png"), "--out", str(tmp_path)]
    result = subprocess.run(cmd, cwd=H.REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for title in ("Python packages", "PuLID-Flux weights", "EVA02-CLIP-L-14-336", "InsightFace antelopev2",
                  "Face parsing BiSeNet", "Face encoders on"):
        assert f"[ok]   {title}" in out, out
    assert "loads (official size)" in out and "ID tokens from the PuLID encoder: [1, 32, 2048]" in out
    assert Image.open(preview).size == (1024, 512)
