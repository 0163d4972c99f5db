"""Identities that travel, over two real ComfyUI servers (COMFYUI_PATH) on 127.0.0.1 sharing one base directory's
tiny models (fp8 Flux): the first server has the identity file, the second only gets the card through ComfyUI's
own /upload/image, sent exactly as ComfyUI-Distributed's media sync sends it, and its card workflow gives the
first server's file workflow's latent bit for bit. A card that lost its chunk or was damaged gets a clear error;
a server without the identity refuses the prompt with the pack's message; each server logs the fingerprint."""
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import torch
from PIL import Image

from support import server_harness as S

pytestmark = pytest.mark.comfyui
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def servers(tmp_path_factory, comfy_models):
    """Two servers, each with its own input/output/temp/user folders and its own identities folder (first in its
    extra_model_paths.yaml), so an identity on one is not on the other."""
    base = str(tmp_path_factory.mktemp("cards_base"))
    S.prepare_base_directory(base, comfy_models["root"])

    def own_identities_folder(n, folder):
        yaml = os.path.join(folder, "extra_model_paths.yaml")
        with open(yaml, "w", encoding="utf-8") as f:
            f.write(f"server{n}:\n    base_path: {folder}\n    pulid_identities: identities\n")
        return "--extra-model-paths-config", yaml

    with S.running_servers(base, 2, own_identities_folder) as started:
        yield started


@pytest.fixture(scope="module")
def identity():
    from pulid_flux.identity.build import build_identity

    g = torch.Generator().manual_seed(18)
    return build_identity(torch.randn(1, 32, 2048, generator=g), torch.randn(1, 32, 2048, generator=g),
                          torch.randn(1, 512, generator=g), torch.rand(1, 64, 128, 3, generator=g),
                          pulid_file="pulid_flux_v0.9.1.safetensors", pulid_fingerprint="0" * 32, fusion="mean")


# --- HTTP, as a client and as ComfyUI-Distributed do it --------------------------------------------------------
def media_sync_upload(server, file_name: str, data: bytes) -> str:
    """ComfyUI-Distributed's media sync (api/orchestration/media_sync.py): POST /upload/image with fields image
    (the bytes, image/png), type=input, subfolder, overwrite=true; the worker's path is subfolder/name."""
    status, reply = server.post("/upload/image", *S.form_data({"type": "input", "subfolder": "", "overwrite": "true"},
                                                        {"image": (file_name, data, "image/png")}))
    assert status == 200, reply
    return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]


def media_sync_read(server, value: str) -> bytes:
    """What media sync sends for a workflow's `image` value: ' [output]' (any annotation) dropped, the file read
    from the master's input folder (its folder_paths.get_annotated_filepath without an annotation)."""
    name = re.sub(r"\s*\[\w+\]$", "", value).strip()
    return output_file(server, {"filename": name, "subfolder": "", "type": "input"})


def upload_identity_file(server, name: str, data: bytes) -> None:
    status, reply = server.post("/pulid_flux/identities", *S.form_data({"overwrite": "true"},
                                                                 {"file": (name, data, "application/octet-stream")}))
    assert status == 200, reply


def queue(server, graph: dict):
    return server.post("/prompt", json.dumps({"prompt": graph}).encode(), "application/json")


def run(server, graph: dict) -> dict:
    """Queue and wait; the prompt's /history entry."""
    status, reply = queue(server, graph)
    assert status == 200, reply
    prompt_id = reply["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        history = server.get_json(f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.3)
    raise AssertionError(f"prompt {prompt_id} did not finish in {RUN_TIMEOUT_S} s:\n{server.log_tail()}")


def error_of(entry: dict) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    (_, info), = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return info["exception_message"]


def output_file(server, info: dict) -> bytes:
    query = urllib.parse.urlencode({k: info[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as r:  # what the UI's download gets
        return r.read()


# --- graphs ---------------------------------------------------------------------------------------------------
def sampling_graph(identity_node: dict, weight: float = 1.0) -> dict:
    """Tiny fp8 Flux, Apply identity, one sampling step, the latent saved (exact, no VAE)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux_test_1d1s.safetensors",
                                                     "weight_dtype": "fp8_e4m3fn"}},
        "2": {"class_type": "PulidFluxModelLoader", "inputs": {"pulid_file": "pulid_flux_v0.9.1.safetensors"}},
        "3": identity_node,
        "4": {"class_type": "PulidFluxApplyIdentity", "inputs": {"model": ["1", 0], "pulid_flux": ["2", 0],
                                                                 "identity": ["3", 0], "weight": weight,
                                                                 "start_at": 0.0, "end_at": 1.0}},
        "5": {"class_type": "PulidTestFluxConditioning", "inputs": {"text": "a portrait", "tokens": 8}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 7, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["5", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0],
                                                     "filename_prefix": f"cards/{uuid.uuid4().hex}"}},
    }


def load_file(name):
    return {"class_type": "PulidFluxLoadIdentity", "inputs": {"identity_file": name}}


def load_card(image):
    return {"class_type": "PulidFluxLoadIdentityCard", "inputs": {"image": image}}


def card_preview(image):
    """Load identity card and a Preview Image of its preview (a prompt needs an output node)."""
    return {"1": load_card(image), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}


def sampled_latent(server, graph) -> torch.Tensor:
    from safetensors.torch import load

    entry = run(server, graph)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    (info,) = entry["outputs"]["8"]["latents"]
    return load(output_file(server, info))["latent_tensor"]


# --- tests ------------------------------------------------------------------------------------------------------
def test_a_card_made_on_one_server_and_media_synced_to_another_samples_bit_identically(servers, identity):
    from pulid_flux.identity.card import identity_card_bytes
    from pulid_flux.identity.file import identity_bytes
    from pulid_flux.identity.fingerprint import short_fingerprint

    first, second = servers
    upload_identity_file(first, "alice.safetensors", identity_bytes(identity))
    saved = run(first, {"1": load_file("alice.safetensors"),
                        "2": {"class_type": "PulidFluxSaveIdentity", "inputs": {
                            "identity": ["1", 0], "name": "alice copy", "overwrite": True, "card": True}}})
    assert saved["status"]["status_str"] == "success", (saved["status"], first.log_tail())
    (shown,) = saved["outputs"]["2"]["images"]  # the UI shows the card as an image, downloadable
    assert (shown["filename"], shown["type"]) == ("alice copy.png", "output")
    card = output_file(first, shown)
    assert card == identity_card_bytes(identity)  # the card holds the file's exact bytes: same card everywhere

    # Media sync reads what the workflow names from the master's input folder, with any ' [output]' dropped, so
    # the card must be there too: whether chosen as 'alice copy.png' or 'alice copy.png [output]', it travels.
    for chosen in ("alice copy.png", "alice copy.png [output]"):
        assert run(first, card_preview(chosen))["status"]["status_str"] == "success"
    synced = media_sync_read(first, "alice copy.png [output]")
    assert synced == card
    on_second = media_sync_upload(second, "alice copy.png", synced)
    from_file = sampled_latent(first, sampling_graph(load_file("alice.safetensors")))
    from_card = sampled_latent(second, sampling_graph(load_card(on_second)))
    assert from_file.shape == (1, 16, 8, 8) and torch.equal(from_card, from_file)
    without = sampled_latent(second, sampling_graph(load_card(on_second), weight=0.0))
    assert not torch.equal(without, from_card)  # the identity is what the two runs share

    short = short_fingerprint(identity.fingerprint)
    for server, label in ((first, "alice.safetensors"), (second, "alice copy.png")):
        assert f"applying identity {label} ({short})" in server.log_tail(200_000), server.log_tail()
    fresh = media_sync_upload(second, "alice again.png", card)  # a name no cached node output holds
    loaded = run(second, card_preview(fresh))  # Load identity card's text names the fingerprint
    assert short in loaded["outputs"]["1"]["text"][0], loaded["outputs"]


def test_a_stripped_or_damaged_card_gets_a_clear_error(servers, identity):
    from pulid_flux.identity.card import identity_card_bytes

    _, second = servers
    card = identity_card_bytes(identity)
    resaved = io.BytesIO()
    Image.open(io.BytesIO(card)).save(resaved, "PNG")  # what an editor, a chat app or Save Image keeps
    stripped = media_sync_upload(second, "stripped.png", resaved.getvalue())
    message = error_of(run(second, card_preview(stripped)))
    assert message.startswith("stripped.png: is a PNG picture with no PuLID-Flux identity inside"), message
    assert "use the original card file" in message

    at = card.index(b"puLi") + 200
    damaged = media_sync_upload(second, "damaged.png", card[:at] + bytes([card[at] ^ 0x20]) + card[at + 1:])
    message = error_of(run(second, card_preview(damaged)))
    assert message.startswith("damaged.png: the identity chunk is damaged (its CRC does not match)"), message
    assert server_still_serves(second)


def server_still_serves(server) -> bool:
    return bool(server.get_json("/system_stats"))


MAX_MESSAGE_CHARS = 600  # readable in the frontend's error dialog; a Distributed master shows it per worker


def refusal(server, graph: dict, node: str = "1") -> str:
    """The pack's message in the 400 a client (the UI, a Distributed master) gets from POST /prompt for `node`."""
    status, reply = queue(server, graph)
    assert status == 400, reply
    error, *others = reply["node_errors"][node]["errors"]
    # ComfyUI files a refusal once per input VALIDATE_INPUTS takes (identity_file, fingerprint): only the first holds it
    assert [e["details"] for e in others] == [f"{e['extra_info']['input_name']} - (the refusal given for "
                                              f"{error['extra_info']['input_name']})" for e in others], others
    prefix = f"{error['extra_info']['input_name']} - "
    assert error["details"].startswith(prefix), error
    message = error["details"][len(prefix):]
    # the pack's message comes first and once in what ComfyUI sends, and is short enough to read
    assert len(message) < MAX_MESSAGE_CHARS and json.dumps(reply).count(json.dumps(message)[1:-1]) <= 2, reply
    assert message.count(" Fix") == 1 and "Value not in list" not in json.dumps(reply)
    return message


def preview_graph(identity_node: dict) -> dict:
    """Load identity (or card) and a Preview Image of its preview: a prompt with an image and no sampling."""
    return {"1": identity_node, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}


def pulid_tools(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=S.H.REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "pulid_tools", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def command_in(message: str) -> list[str]:
    """The `python -m pulid_tools ...` command a message recommends, as arguments after `-m pulid_tools`."""
    (command,) = re.findall(r"`python -m pulid_tools ([^`]+)`", message)
    return command.split()


def last_prompt(server) -> dict:
    history = server.get_json("/history")
    entry = max(history.values(), key=lambda e: e["prompt"][0])  # the highest queue number
    return entry["prompt"][2]


def test_a_server_without_the_identity_refuses_the_prompt_saying_how_to_fix_it(servers):
    _, second = servers
    message = refusal(second, sampling_graph(load_file("bob.safetensors")), node="3")
    assert message.startswith(f"identity 'bob.safetensors' is not on server "), message
    assert second.url in message  # the server that refused, as ComfyUI listens (a master shows several)
    for fix in ("--keep-name", "/pulid_flux/identities", "Load identity card", "pulid_identities",
                "extra_model_paths.yaml"):
        assert fix in message, fix
    # a card chosen from the master's output folder, not synced: the folder looked in and the one step
    card_message = refusal(second, card_preview("gone.png [output]"))
    assert card_message.startswith("identity card 'gone.png [output]' is not in the output folder of server ")
    assert second.url in card_message and "choose 'gone.png' in Load identity card's list" in card_message


def test_the_readme_fix_makes_a_refused_job_run_on_a_worker_without_the_identity(servers, identity, tmp_path):
    """A workflow made on the master names dana.safetensors; the worker refuses it and recommends a command; that
    command, exactly as the message and README give it, puts the file there under that name, and the master's
    workflow then runs on the worker (no content-addressed name that the workflow does not use)."""
    from pulid_flux.identity.file import identity_bytes

    first, second = servers
    data = identity_bytes(identity)
    upload_identity_file(first, "dana.safetensors", data)
    made_on_master = preview_graph(dict(load_file("dana.safetensors"), inputs={
        "identity_file": "dana.safetensors", "fingerprint": identity.fingerprint}))
    assert run(first, made_on_master)["status"]["status_str"] == "success"
    message = refusal(second, made_on_master)
    args = command_in(message)
    assert args == ["queue", "GRAPH.json", "--identity", "dana.safetensors", "--keep-name", "--server", second.url]
    (tmp_path / "dana.safetensors").write_bytes(data)  # the user's copy of the file, in the folder they run from
    (tmp_path / "GRAPH.json").write_text(json.dumps(made_on_master))  # the workflow, exported in API format
    result = pulid_tools(args + ["--out", "out", "--quiet"], tmp_path)
    assert result.returncode == 0, (result.stderr, second.log_tail())
    assert last_prompt(second)["1"]["inputs"] == {"identity_file": "dana.safetensors",
                                                  "fingerprint": identity.fingerprint}  # filled by the client
    entry = run(second, made_on_master)  # the master's workflow, unchanged, as ComfyUI-Distributed sends it
    assert entry["status"]["status_str"] == "success", (entry["status"], second.log_tail())
    assert f"dana.safetensors: fingerprint {identity.fingerprint}" in second.log_tail(200_000)  # what it loaded
    assert pulid_tools(args + ["--out", "out", "--quiet"], tmp_path).returncode == 0  # again: the same, kept


def test_a_stale_identity_file_on_a_worker_is_refused_naming_both_fingerprints(servers, identity, tmp_path):
    """The worker holds another person under the master's file name: a workflow carrying the master's fingerprint
    is refused there, a workflow without one (saved before the fingerprint existed) still runs, and the upload the
    message recommends (--keep-name --overwrite) makes it run."""
    from pulid_flux.identity.build import build_identity
    from pulid_flux.identity.file import identity_bytes

    first, second = servers
    g = torch.Generator().manual_seed(99)
    other = build_identity(torch.randn(1, 32, 2048, generator=g), torch.randn(1, 32, 2048, generator=g),
                           torch.randn(1, 512, generator=g), torch.rand(1, 64, 128, 3, generator=g),
                           pulid_file="pulid_flux_v0.9.1.safetensors", pulid_fingerprint="0" * 32, fusion="mean")
    assert other.fingerprint != identity.fingerprint
    upload_identity_file(first, "erin.safetensors", identity_bytes(identity))
    upload_identity_file(second, "erin.safetensors", identity_bytes(other))  # the stale copy on the worker
    status, reply = first.get_status_json("/pulid_flux/identities/fingerprint?name=erin.safetensors")
    assert (status, reply) == (200, {"name": "erin.safetensors", "fingerprint": identity.fingerprint})
    status, reply = first.get_status_json("/pulid_flux/identities/fingerprint?name=nobody.safetensors")
    assert (status, reply["fingerprint"]) == (200, None) and "is not on this server" in reply["error"]
    assert first.get_status_json("/pulid_flux/identities/fingerprint")[0] == 400

    chosen = {"identity_file": "erin.safetensors", "fingerprint": identity.fingerprint}

    def graph():  # a new output file name each time, so no run is answered from ComfyUI's cache
        return sampling_graph({"class_type": "PulidFluxLoadIdentity", "inputs": dict(chosen)})

    message = refusal(second, graph(), node="3")
    assert message.startswith("identity 'erin.safetensors' on server ") and second.url in message, message
    assert f"fingerprint {other.fingerprint} here, {identity.fingerprint} in the workflow" in message, message
    assert "--keep-name --overwrite" in message and "Load identity card" in message
    short = dict(chosen, fingerprint=identity.fingerprint[:18])  # as node text and logs show it
    assert identity.fingerprint[:18] in refusal(second, preview_graph({"class_type": "PulidFluxLoadIdentity",
                                                                       "inputs": short}))

    old_workflow = sampling_graph(load_file("erin.safetensors"))  # no fingerprint input: runs as before
    assert sampled_latent(second, old_workflow).shape == (1, 16, 8, 8)
    assert sampled_latent(first, graph()).shape == (1, 16, 8, 8)  # the master's own file matches

    (tmp_path / "erin.safetensors").write_bytes(identity_bytes(identity))
    (tmp_path / "GRAPH.json").write_text(json.dumps(preview_graph(load_file("erin.safetensors"))))
    args = command_in(message)
    assert args[-3:] == ["--overwrite", "--server", second.url]
    refused = pulid_tools(args[:-3] + ["--server", second.url, "--out", "out", "--quiet"], tmp_path)
    assert refused.returncode == 1 and (f"already has another erin.safetensors (fingerprint {other.fingerprint}; "
                                        f"yours is {identity.fingerprint}): give --overwrite") in refused.stderr
    result = pulid_tools(args + ["--out", "out", "--quiet"], tmp_path)
    assert result.returncode == 0, (result.stderr, second.log_tail())
    assert last_prompt(second)["1"]["inputs"]["fingerprint"] == identity.fingerprint
    assert torch.equal(sampled_latent(second, graph()), sampled_latent(first, graph()))
