"""Identities that travel, over two real ComfyUI servers (COMFYUI_PATH) on 127.0.0.1 sharing one base directory's
tiny models (fp8 Flux): the first server has the identity file, the second only gets the card through ComfyUI's
own /upload/image, sent exactly as ComfyUI-Distributed's media sync sends it, and its card workflow gives the
first server's file workflow's latent bit for bit. A card that lost its chunk or was damaged gets a clear error;
a server without the identity refuses the prompt with the pack's message; each server logs the fingerprint."""
import io
import json
import os
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
    from pulid_flux.identity import build_identity

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
    from pulid_flux.identity_card import identity_card_bytes
    from pulid_flux.identity_file import identity_bytes
    from pulid_flux.identity_fingerprint import short_fingerprint

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

    on_second = media_sync_upload(second, "alice copy.png", card)
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
    from pulid_flux.identity_card import identity_card_bytes

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


def test_a_server_without_the_identity_refuses_the_prompt_saying_how_to_fix_it(servers):
    _, second = servers
    status, reply = queue(second, sampling_graph(load_file("bob.safetensors")))
    assert status == 400, reply
    (error,) = reply["node_errors"]["3"]["errors"]
    details = error["details"]
    assert details.startswith("identity_file - identity 'bob.safetensors' is not on this server"), details
    for fix in ("POST /pulid_flux/identities", "Load identity card", "pulid_identities", "extra_model_paths.yaml"):
        assert fix in details, fix
    assert "Value not in list" not in json.dumps(reply)  # ComfyUI's own list check gave way to the pack's message
