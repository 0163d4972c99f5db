"""The existing-picture workflows (examples/api/pulid_flux_face_fix, _face_swap, _identities_to_faces,
_kontext_edit) made runnable on a test server (test_server_faces.py): a models folder with a FLUX.1 Fill model, a
detector that finds two faces and two saved identities beside the session's files; the graphs with the test
conditioning node, the tiny models, two steps and small pictures; test-only nodes that save each face mask as
'mask > 0' (where a mask is exactly 0, Paste face promises the input's pixels); and the HTTP calls of a run."""
import json
import os
import time
import urllib.parse
import urllib.request

from support import server_harness as S

FLUX_UNET = "flux_test_1d1s.safetensors"
FILL_UNET = "flux_fill_test_1d1s.safetensors"
SIZE = 128  # first-pass and Kontext pictures
CROP = 256  # Crop face's smallest working size
RUN_TIMEOUT_S = 900  # the first prompt loads every model (full-size PuLID and EVA-CLIP): minutes on a busy CPU
OWN = ("diffusion_models", "insightface", "pulid")  # folders this module fills itself; the rest link to the session's


def two_faces():
    """A detector that reports two faces (left one smaller) on any photo-like picture, none on a flat one."""
    from support.encoder_fakes import FakeFace

    return (FakeFace((0.08, 0.22, 0.36, 0.58)), FakeFace((0.56, 0.14, 0.92, 0.62), 0.0041))


def write_models(folder: str, session_models: str, identities: dict) -> None:
    """`folder`: links to the session's model folders, a Fill model beside the session's FLUX.1, a two-face
    antelopev2, the session's PuLID file and `identities` ({name: identity file bytes}) in pulid/identities."""
    import torch
    from safetensors.torch import save_file

    from support import encoder_fakes
    from support import family_models as F

    for name in os.listdir(session_models):
        if name not in OWN:
            os.symlink(os.path.join(session_models, name), os.path.join(folder, name))
    for name in OWN:
        os.makedirs(os.path.join(folder, name))
    os.symlink(os.path.join(session_models, "diffusion_models", FLUX_UNET),
               os.path.join(folder, "diffusion_models", FLUX_UNET))
    save_file(F.flux1_fill(dtype=torch.float16), os.path.join(folder, "diffusion_models", FILL_UNET))
    encoder_fakes.write_antelopev2(os.path.join(folder, "insightface", "models", "antelopev2"), faces=two_faces())
    os.symlink(os.path.join(session_models, "pulid", "pulid_flux_v0.9.1.safetensors"),
               os.path.join(folder, "pulid", "pulid_flux_v0.9.1.safetensors"))
    os.makedirs(os.path.join(folder, "pulid", "identities"))
    for name, data in identities.items():
        with open(os.path.join(folder, "pulid", "identities", name), "wb") as f:
            f.write(data)


def _ids(graph: dict, class_type: str) -> list[str]:
    return sorted((k for k, v in graph.items() if v["class_type"] == class_type), key=int)


def by_title(graph: dict, title: str) -> str:
    (node_id,) = [k for k, v in graph.items() if v.get("_meta", {}).get("title") == title]
    return node_id


def runnable(example: str, images: dict) -> tuple[dict, dict]:
    """(graph, {face node id: id of the SaveImage that saves its mask > 0}) for `example` on the test models.
    `images`: {LoadImage / Load identity card title: uploaded file name}."""
    graph = S.graph_for_test_models(example + ".json")
    for node_id in _ids(graph, "UNETLoader"):
        fill = graph[node_id]["inputs"]["unet_name"] == "flux1-fill-dev.safetensors"
        graph[node_id]["inputs"].update(unet_name=FILL_UNET if fill else FLUX_UNET, weight_dtype="fp8_e4m3fn")
    for node_id in _ids(graph, "VAELoader"):
        graph[node_id]["inputs"]["vae_name"] = S.TEST_VAE
    for node_id in _ids(graph, "KSampler"):
        graph[node_id]["inputs"]["steps"] = 2
    for node_id in _ids(graph, "EmptySD3LatentImage"):
        graph[node_id]["inputs"].update(width=SIZE, height=SIZE)
    for node_id in _ids(graph, "PulidFluxCropFace"):
        graph[node_id]["inputs"]["size"] = CROP
    for node_id in _ids(graph, "FluxKontextImageScale"):  # Kontext's ~1 MP is minutes on a CPU: a small picture
        graph[node_id] = {"class_type": "ImageScale", "inputs": dict(
            graph[node_id]["inputs"], upscale_method="area", width=SIZE, height=SIZE, crop="disabled")}
    for title, file_name in images.items():
        graph[by_title(graph, title)]["inputs"]["image"] = file_name
    saved = {}
    for node_id in _ids(graph, "PulidFluxFaceMask") + _ids(graph, "PulidFluxCropFace"):
        source = [node_id, 0]
        if graph[node_id]["class_type"] == "PulidFluxCropFace":  # its mask at the picture's size: Face mask's
            inputs = {k: v for k, v in graph[node_id]["inputs"].items() if k not in ("context", "size")}
            inputs["on_no_face"] = "error"
            graph[f"{node_id}01"] = {"class_type": "PulidFluxFaceMask", "inputs": inputs}
            source = [f"{node_id}01", 0]
        graph[f"{node_id}02"] = {"class_type": "ThresholdMask", "inputs": {"mask": source, "value": 0.0}}
        graph[f"{node_id}03"] = {"class_type": "MaskToImage", "inputs": {"mask": [f"{node_id}02", 0]}}
        graph[f"{node_id}04"] = {"class_type": "SaveImage", "inputs": {"images": [f"{node_id}03", 0],
                                                                       "filename_prefix": f"mask_{node_id}"}}
        saved[node_id] = f"{node_id}04"
    return graph, saved


# --- HTTP ----------------------------------------------------------------------------------------------------
def upload(server, file_name: str, data: bytes) -> str:
    status, reply = server.post("/upload/image", *S.form_data({"type": "input", "overwrite": "true"},
                                                              {"image": (file_name, data, "image/png")}))
    assert status == 200, reply
    return reply["name"]


def run(server, graph: dict) -> dict:
    """Queue the graph and wait: its /history entry (asserting it ran without error)."""
    status, reply = server.post("/prompt", json.dumps({"prompt": graph}).encode(), "application/json")
    assert status == 200, reply
    prompt_id = reply["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        except TimeoutError:  # a server busy loading models can be slow to answer: ask again until the deadline
            continue
        if entry and entry.get("status", {}).get("completed") is not None:
            assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
            return entry
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish in {RUN_TIMEOUT_S} s:\n{server.log_tail()}")


def saved_png(server, entry: dict, node_id: str) -> bytes:
    """The PNG a SaveImage node wrote, as the UI downloads it (/view)."""
    (info,) = entry["outputs"][node_id]["images"]
    query = urllib.parse.urlencode({k: info[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as r:
        return r.read()


def save_node(graph: dict, prefix_start: str) -> str:
    (node_id,) = [k for k in _ids(graph, "SaveImage") if graph[k]["inputs"]["filename_prefix"].startswith(prefix_start)]
    return node_id

