"""The identity routes and Face similarity's history output over a real ComfyUI server on 127.0.0.1
(COMFYUI_PATH). The server gets only what these tests need: the pack and the synthetic antelopev2."""
import json
import os
import time
import uuid

import pytest
import torch
from PIL import Image

from support import comfy_harness as H
from support import server_harness as S
from support import tolerance as tol

pytestmark = pytest.mark.comfyui
ROUTE = "/pulid_flux/identities"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    H.import_comfyui()
    from skimage import data

    from support import encoder_fakes as fakes

    base = str(tmp_path_factory.mktemp("identity_base"))
    os.makedirs(os.path.join(base, "custom_nodes"))
    os.symlink(H.REPO_ROOT, os.path.join(base, "custom_nodes", S.PACK_DIR_NAME))
    fakes.write_antelopev2(os.path.join(base, "models", "insightface", "models", "antelopev2"))
    os.makedirs(os.path.join(base, "input"))
    Image.fromarray(data.astronaut()).save(os.path.join(base, "input", "astronaut.png"))
    with S.ComfyServer(H.comfyui_path(), base) as srv:
        yield srv


@pytest.fixture(scope="module")
def identity_bytes(server):
    """An identity whose ArcFace is the astronaut's (other tensors random), as a file's bytes."""
    from skimage import data

    from encoders import load_face_analysis, similarity
    from pulid_flux.identity.build import build_identity
    from pulid_flux.identity.file import identity_bytes

    analysis = load_face_analysis(os.path.join(server.base, "models", "insightface"), "CPU")
    arcface, _ = similarity.reference_embedding(analysis, data.astronaut())
    g = torch.Generator().manual_seed(0)
    identity = build_identity(torch.randn(1, 32, 2048, generator=g), torch.randn(1, 32, 2048, generator=g), arcface,
                              torch.zeros(1, 512, 1024, 3), pulid_file="pulid_flux_v0.9.1.safetensors",
                              pulid_fingerprint="0" * 32, fusion="mean")
    return identity_bytes(identity)


def post(server, file_name, data, **fields):
    return server.post(ROUTE, *S.form_data(fields, {"file": (file_name, data, "application/octet-stream")}))


def identities_folder(server):
    return os.path.join(server.base, "models", "pulid", "identities")


def test_upload_list_and_no_overwrite_without_the_flag(server, identity_bytes):
    from pulid_flux.identity.file import read_identity_bytes

    fingerprint = read_identity_bytes(identity_bytes).fingerprint  # the route reports it, for Load identity's input
    assert server.get_json(ROUTE) == {"identities": []}
    assert post(server, "alice.safetensors", identity_bytes) == (200, {"name": "alice.safetensors",
                                                                      "bytes": len(identity_bytes),
                                                                      "fingerprint": fingerprint})
    with open(os.path.join(identities_folder(server), "alice.safetensors"), "rb") as f:
        assert f.read() == identity_bytes
    assert server.get_json(ROUTE) == {"identities": ["alice.safetensors"]}
    status, body = post(server, "alice.safetensors", identity_bytes)
    assert status == 409 and "alice.safetensors already exists" in body["error"] and "overwrite=true" in body["error"]
    assert post(server, "ignored.safetensors", identity_bytes, name="bob", overwrite="false")[0] == 200
    assert post(server, "x.safetensors", identity_bytes, name="bob", overwrite="true") == (
        200, {"name": "bob.safetensors", "bytes": len(identity_bytes), "fingerprint": fingerprint})
    assert server.get_json(ROUTE) == {"identities": ["alice.safetensors", "bob.safetensors"]}


def test_upload_refuses_traversal_names(server, identity_bytes):
    for file_name, fields in (("../../evil.safetensors", {}), ("ok.safetensors", {"name": "../evil"}),
                              ("ok.safetensors", {"name": "/tmp/evil"}), ("..\\evil.safetensors", {})):
        status, body = post(server, file_name, identity_bytes, **fields)
        assert status == 400 and "refused: it is a path" in body["error"], (file_name, fields, body)
    found = [os.path.join(d, f) for d, _, files in os.walk(server.base) for f in files if "evil" in f]
    assert found == [] and not os.path.exists("/tmp/evil.safetensors")


def test_upload_refuses_a_file_that_is_not_an_identity(server, identity_bytes):
    from safetensors.torch import save

    for data, message in ((os.urandom(3000), "not a safetensors file"),
                          (save({"pulid_ca.0.norm1.weight": torch.zeros(4)}), "It holds PuLID-Flux model weights"),
                          (identity_bytes[:len(identity_bytes) // 2], "the file is truncated")):
        status, body = post(server, "bad.safetensors", data)
        assert status == 400 and body["error"].startswith("not a PuLID-Flux identity: bad.safetensors: "), body
        assert message in body["error"], body
    assert "bad.safetensors" not in os.listdir(identities_folder(server))


def test_a_card_uploads_as_the_identity_file_it_carries_and_a_jpeg_copy_is_named(server, identity_bytes):
    """Before: a card was refused as 'not a safetensors file (first bytes 89 50 4e 47 ...)' (issue 26 item 9)."""
    import io

    import numpy as np

    from pulid_flux.identity.card import card_bytes
    from pulid_flux.identity.file import read_identity_bytes

    card = card_bytes(np.full((8, 8, 3), 60, np.uint8), identity_bytes)
    status, body = post(server, "Carded.png", card)
    carried = read_identity_bytes(identity_bytes, "Carded.safetensors").fingerprint
    assert (status, body) == (200, {"name": "Carded.safetensors", "bytes": len(identity_bytes),
                                    "fingerprint": carried})
    with open(os.path.join(identities_folder(server), "Carded.safetensors"), "rb") as f:
        assert f.read() == identity_bytes
    assert "Carded.safetensors" in server.get_json(ROUTE)["identities"]
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(card)).save(jpeg, "JPEG")
    status, body = post(server, "Carded copy.jpg", jpeg.getvalue())
    assert status == 400 and "Carded copy.jpg: is a JPEG picture, not an identity file or card" in body["error"]


def test_upload_refuses_an_oversize_body(server, identity_bytes):
    big = identity_bytes + b"\0" * (16 * 2**20)
    status, body = post(server, "big.safetensors", big)
    assert status == 413 and "over the 16 MB limit" in body["error"]
    assert "big.safetensors" not in os.listdir(identities_folder(server))
    assert server.get_json("/system_stats")  # still serving


def test_face_similarity_lands_in_history(server, identity_bytes):
    assert post(server, "astro.safetensors", identity_bytes, overwrite="true")[0] == 200
    graph = {
        "1": {"class_type": "PulidFluxLoadIdentity", "inputs": {"identity_file": "astro.safetensors"}},
        "2": {"class_type": "PulidFluxInsightFaceLoader", "inputs": {"provider": "CPU"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "4": {"class_type": "PulidFluxFaceSimilarity", "inputs": {"face_analysis": ["2", 0], "images": ["3", 0],
                                                                  "identity": ["1", 0]}},
    }
    status, reply = server.post("/prompt", json.dumps({"prompt": graph}).encode(), "application/json")
    assert status == 200, reply
    prompt_id = reply["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        history = server.get_json(f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.5)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    scores = entry["outputs"]["4"]["pulid_similarity"]
    assert len(scores) == 1
    tol.assert_close(scores[0], 1.0, torch.float32, tol.OPS)
    assert entry["outputs"]["4"]["text"][0].startswith("image 1: 1.0000")


def post_raw(server, body: bytes, content_type: str):
    return server.post(ROUTE, body, content_type)


def test_issue_15_uploads_get_4xx_on_the_real_server(server, identity_bytes):
    """The classes that answered 500 or were accepted on a real server before (issue 15)."""
    n = int.from_bytes(identity_bytes[:8], "little")
    header = json.loads(identity_bytes[8:8 + n])
    header["__metadata__"] = ["not", "an", "object"]
    text = json.dumps(header).encode()
    mistyped = len(text).to_bytes(8, "little") + text + identity_bytes[8 + n:]
    status, body = post(server, "typed.safetensors", mistyped)
    assert status == 400 and "'__metadata__' must map names to text" in body["error"], body
    status, body = post(server, "ok.safetensors", identity_bytes, name="abc\n")
    assert status == 400 and "control character (U+000A" in body["error"], body
    status, body = post(server, "ok.safetensors", identity_bytes, name="Zoë")
    assert status == 400 and "which is not ASCII" in body["error"], body
    boundary = uuid.uuid4().hex
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="twice.safetensors"\r\n\r\n'
            .encode() + identity_bytes + b"\r\n")
    status, body = post_raw(server, part + part + f"--{boundary}--\r\n".encode(),
                            f"multipart/form-data; boundary={boundary}")
    assert status == 400 and "the field 'file' is sent twice" in body["error"], body
    status, body = post_raw(server, part[:-50], f"multipart/form-data; boundary={boundary}")
    assert status == 400 and "cut short" in body["error"], body
    assert not {"typed.safetensors", "twice.safetensors"} & set(os.listdir(identities_folder(server)))
    assert not [f for f in os.listdir(identities_folder(server)) if "\n" in f]
    assert server.get_json("/system_stats")  # still serving
