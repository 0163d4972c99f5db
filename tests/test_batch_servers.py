"""`python -m pulid_tools batch` against three real ComfyUI servers (COMFYUI_PATH) on 127.0.0.1 sharing one
base directory's tiny models: the work is shared, a server killed mid-batch loses and repeats nothing, an
interrupted batch resumes with exactly the missing jobs, a refused graph stops at once, a no-face job fails
alone. Scores come from a test similarity node that answers like the pack's Face similarity node."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from support import comfy_harness as H
from support import server_harness as S
from pulid_tools.batch.command import summary

pytestmark = pytest.mark.comfyui
RUN_TIMEOUT_S = 600  # generous: a busy 2-core machine; a healthy run takes a fraction of it
# fp8 weights: a quarter of the float32 Flux in each server's memory (the batch logic does not need float32 maths)
TINY = ["--set", "1.unet_name=flux_test_1d1s.safetensors", "--set", "1.weight_dtype=fp8_e4m3fn",
        "--set", f"3.vae_name={S.TEST_VAE}",
        "--set", "Image size.width=64", "--set", "Image size.height=64", "--set", "KSampler.steps=1"]

# Answers in /history like PulidFluxFaceSimilarity (the shared contract): {"pulid_similarity": [float per image]}.
# The score is the image's mean brightness: deterministic, different per seed.
SIMILARITY_NODE = '''
class PulidTestFaceSimilarity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "reference": ("IMAGE",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "score"
    CATEGORY = "testing"

    def score(self, images, reference):
        return {"ui": {"pulid_similarity": [float(x) for x in images.float().mean(dim=(1, 2, 3))]}}


NODE_CLASS_MAPPINGS = {"PulidTestFaceSimilarity": PulidTestFaceSimilarity}
'''


@pytest.fixture(scope="module")
def servers(tmp_path_factory, comfy_models):
    base = str(tmp_path_factory.mktemp("batch_base"))
    S.prepare_base_directory(base, comfy_models["root"])
    os.makedirs(os.path.join(base, "custom_nodes", "pulid_test_similarity"))
    with open(os.path.join(base, "custom_nodes", "pulid_test_similarity", "__init__.py"), "w") as f:
        f.write(SIMILARITY_NODE)
    with S.running_servers(base, 3) as started:
        yield started


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """graph.json: the basic example without PuLID (tiny Flux, test conditioning, TAESD) and with the test
    similarity node, so three servers fit a CI runner's memory; pulid.json: the whole example (the
    no-face test runs it on one server)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("batch_inputs")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(folder / "black.png")
    with open(os.path.join(H.REPO_ROOT, "examples", "api", "pulid_flux_basic.json"), encoding="utf-8") as f:
        graph = json.load(f)
    del graph["2"]
    graph["9"]["class_type"] = "PulidTestFluxConditioning"
    graph["9"]["inputs"] = {"text": graph["9"]["inputs"]["text"], "tokens": 8}
    (folder / "pulid.json").write_text(json.dumps(graph))
    for node_id in ("4", "5", "6", "8", "16"):
        del graph[node_id]
    graph["13"]["inputs"]["model"] = ["1", 0]
    graph["17"] = {"class_type": "PulidTestFaceSimilarity", "inputs": {"images": ["14", 0], "reference": ["7", 0]},
                   "_meta": {"title": "Face similarity (test)"}}
    (folder / "graph.json").write_text(json.dumps(graph))
    return folder


def prompts_file(folder, name, lines):
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def batch_cmd(servers, files, prompts, out, *extra, graph="graph.json"):
    return [sys.executable, "-m", "pulid_tools", "batch", str(files / graph), "--prompts", prompts,
            "--out", str(out), "--face", str(files / "astronaut.png"), "--quiet", *TINY, *extra,
            *[x for s in servers for x in ("--server", s.url)]]


def run_batch(*args, **kw):
    start = time.monotonic()
    result = subprocess.run(batch_cmd(*args, **kw), cwd=H.REPO_ROOT, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)
    return result, time.monotonic() - start


def records(out):
    path = os.path.join(out, "manifest.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def wait_for_records(out, n, process, timeout=RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while sum(r["status"] == "done" for r in records(out)) < n:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.1)


def images_in(out):
    return sorted(f for f in os.listdir(out) if f.endswith(".png"))


def test_a_no_face_job_fails_with_the_message_and_the_others_finish(servers, files, tmp_path):
    """First: one server loads the PuLID encoders while the others are still light."""
    lines = [json.dumps({"prompt": "a knight, no face test"}),
             json.dumps({"prompt": "a chef, no face test", "face": str(files / "black.png")}),
             json.dumps({"prompt": "a pilot, no face test"})]
    out = tmp_path / "out"
    result, _ = run_batch(servers[:1], files, prompts_file(tmp_path, "p.jsonl", lines), out, "--seeds", "1",
                          graph="pulid.json")  # one server loads the encoders
    assert result.returncode == 1, result.stderr
    failed = [r for r in records(out) if r["status"] == "failed"]
    assert [(r["prompt"], r["seed"]) for r in failed] == [("a chef, no face test", 0)]
    assert all("NoFaceError in Apply PuLID-Flux [ApplyPulidFlux] (node 8)" in r["error"]
               and "found no usable face" in r["error"] for r in failed)
    assert sorted(r["prompt"] for r in summary(str(out / "manifest.jsonl")).values()) == [
        "a knight, no face test", "a pilot, no face test"]
    assert "2 done, 1 failed, 0 not run" in result.stderr


def test_three_servers_share_twelve_jobs_with_scores_and_keep_best(servers, files, tmp_path):
    prompts = prompts_file(tmp_path, "p.txt", ["a knight in armour", "a chef in a kitchen", "a pilot by a plane"])
    out = tmp_path / "out"
    result, seconds = run_batch(servers, files, prompts, out, "--seeds", "4", "--keep-best", "2")
    print(f"\n3 servers x 12 jobs (first jobs load the models): {seconds:.1f} s\n{result.stderr}")
    assert result.returncode == 0, result.stderr + servers[0].log_tail()
    done = summary(str(out / "manifest.jsonl"))
    assert len(done) == 12 and {r["server"] for r in done.values()} == {s.url for s in servers}
    assert sorted((r["prompt"], r["seed"]) for r in done.values()) == sorted(
        (p, s) for p in ("a knight in armour", "a chef in a kitchen", "a pilot by a plane") for s in range(4))
    for prompt in ("a knight in armour", "a chef in a kitchen", "a pilot by a plane"):
        ranked = sorted((r for r in done.values() if r["prompt"] == prompt), key=lambda r: -r["score"])
        image = np.asarray(Image.open(out / "rejected" / ranked[3]["files"][0]), np.float32) / 255
        assert abs(image.mean() - ranked[3]["score"]) < 2e-3  # the score of that very image
        assert [os.path.exists(out / r["files"][0]) for r in ranked] == [True, True, False, False]
    assert len(images_in(out)) == 6 and len(images_in(out / "rejected")) == 6


def test_a_refused_graph_stops_at_once_with_comfyuis_message(servers, files, tmp_path):
    prompts = prompts_file(tmp_path, "p.txt", ["a knight", "a chef"])
    result, seconds = run_batch(servers, files, prompts, tmp_path / "out", "--seeds", "3", "--set", "KSampler.steps=0")
    assert result.returncode == 1 and seconds < 20, result.stderr
    assert "ComfyUI refused the prompt: Prompt outputs failed validation" in result.stderr
    assert "KSampler (node 13): Value 0 smaller than min of 1: steps" in result.stderr
    assert summary(str(tmp_path / "out" / "manifest.jsonl")) == {}


def test_an_output_comfyui_drops_as_invalid_fails_queue_and_batch_with_its_reason(servers, files, tmp_path):
    """SaveImage fed a VAE: ComfyUI answers 200 with node_errors and would run the similarity node alone."""
    drop = ["--set", '15.images=["3", 0]']
    expected = ["ComfyUI dropped output(s) of the prompt as invalid: Save Image [SaveImage] (node 15)",
                "Save Image [SaveImage] (node 15): Return type mismatch between linked nodes"]
    prompts = prompts_file(tmp_path, "p.txt", ["a knight", "a chef"])
    result, seconds = run_batch(servers[:1], files, prompts, tmp_path / "out", "--seeds", "2", *drop)
    assert result.returncode == 1 and seconds < 60, result.stderr
    assert all(text in result.stderr for text in expected), result.stderr
    assert summary(str(tmp_path / "out" / "manifest.jsonl")) == {}
    queue = subprocess.run([sys.executable, "-m", "pulid_tools", "queue", str(files / "graph.json"), "--server",
                            servers[0].url, "--face", str(files / "astronaut.png"), "--out", str(tmp_path / "q"),
                            "--quiet", *TINY, *drop], cwd=H.REPO_ROOT, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)
    assert queue.returncode == 1 and all(text in queue.stderr for text in expected), queue.stderr
    assert queue.stdout == "" and not (tmp_path / "q").exists()


def queues_idle(servers):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(not (q := s.get_json("/queue"))["queue_running"] and not q["queue_pending"] for s in servers):
            return sum(len(s.get_json("/history")) for s in servers)
        time.sleep(0.2)
    raise AssertionError("the servers kept running prompts after the client stopped")


def test_interrupted_batch_resumes_with_exactly_the_missing_jobs(servers, files, tmp_path):
    prompts = prompts_file(tmp_path, "p.txt", ["a diver", "a painter", "a farmer"])
    out = tmp_path / "out"
    process = subprocess.Popen(batch_cmd(servers, files, prompts, out, "--seeds", "3"),
                               cwd=H.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_records(out, 4, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and "interrupted: run the same command again" in err, err
    first = summary(str(out / "manifest.jsonl"))
    assert 4 <= len(first) < 9 and sorted(images_in(out)) == sorted(f for r in first.values() for f in r["files"])
    history_before = queues_idle(servers)  # cancelled prompts left the servers' queues
    result, _ = run_batch(servers, files, prompts, out, "--seeds", "3", "--per-server", "2")
    assert result.returncode == 0, result.stderr
    assert f"9 jobs ({len(first)} already done" in result.stderr
    done = [r for r in records(out) if r["status"] == "done"]
    assert len(done) == 9 and len({r["key"] for r in done}) == 9  # nothing ran twice
    assert queues_idle(servers) - history_before == 9 - len(first)  # exactly the missing jobs were queued
    assert len(images_in(out)) == 9


def test_a_server_killed_mid_batch_loses_and_repeats_nothing(servers, files, tmp_path):
    """Last in this module: it kills one of the module's servers."""
    prompts = prompts_file(tmp_path, "p.txt", ["a sailor", "a baker", "a boxer"])
    out = tmp_path / "out"
    process = subprocess.Popen(batch_cmd(servers, files, prompts, out, "--seeds", "4"), cwd=H.REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_records(out, 2, process)
        victim = servers[2]
        os.kill(victim.process.pid, signal.SIGKILL)
        _, err = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    label = victim.url.split("://")[1]  # dropped, or only set aside if the others finished first
    assert f"{label}: dropped after 3 failures in a row" in err or f"{label}: cannot reach ComfyUI" in err, err
    done = [r for r in records(out) if r["status"] == "done"]
    assert len(done) == 12 and len({r["key"] for r in done}) == 12  # all complete, none twice
    assert images_in(out) == sorted(f for r in done for f in r["files"])  # manifest and files agree
    assert not [f for f in os.listdir(out) if f.endswith(".part")]
