"""End to end on a real ComfyUI server (COMFYUI_PATH): the four existing-picture workflows of examples/api/ (face
fix, face swap with FLUX.1 Fill, one identity per face, Kontext edit) queued as shipped, on the test models
(support/face_workflows.py says what is swapped for them). Face fix and face swap: the PNG the server saved is
bit-identical to the uploaded PNG wherever the face mask is 0, and differs inside it."""
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from support import comfy_harness as H
from support import face_workflows as W
from support import identity_samples as samples
from support import server_harness as S

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfy_models):
    base, models = str(tmp_path_factory.mktemp("faces_base")), str(tmp_path_factory.mktemp("faces_models"))
    identities = {f"{side}.safetensors": samples.fmt.identity_bytes(samples.make_full_size_identity(seed=seed))
                  for side, seed in (("left", 11), ("right", 12))}
    W.write_models(models, comfy_models["root"], identities)
    S.prepare_base_directory(base, models)
    with S.ComfyServer(H.comfyui_path(), base, extra_args=("--preview-method", "none")) as srv:
        yield srv
        with open(srv.log_path, encoding="utf-8", errors="replace") as f:
            times = [line.split("Prompt executed in ")[1].split()[0] for line in f if "Prompt executed in" in line]
        print("\nserver run times (s):", times)
    shutil.rmtree(models, ignore_errors=True)  # 1 GB: gone when the module is done


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def uploads(server):
    """The astronaut as the picture to change (320x256, not square) and as the reference photo, and an identity
    card: uploaded through /upload/image as a browser does. {name: PNG bytes}."""
    from skimage import data

    from pulid_flux.identity.card import card_bytes

    astronaut = data.astronaut()
    picture = np.asarray(Image.fromarray(astronaut).resize((320, 256), Image.LANCZOS))
    identity = samples.fmt.identity_bytes(samples.make_full_size_identity(seed=13))
    files = {"picture.png": png(picture), "face.png": png(astronaut),
             "person.png": card_bytes(np.full((64, 128, 3), 180, np.uint8), identity)}
    for name, content in files.items():
        assert W.upload(server, name, content) == name
    return files


def changed_only_inside_the_mask(server, graph, entry, crop_node, picture: bytes) -> float:
    """Asserts the saved result equals the picture wherever Crop face's mask is 0 and differs inside; the mask's
    share of the picture."""
    result = pixels(W.saved_png(server, entry, W.save_node(graph, "PuLID-Flux")))
    inside = pixels(W.saved_png(server, entry, crop_node))[..., 0] > 0
    before = pixels(picture)
    assert result.shape == before.shape == inside.shape + (3,)
    assert np.array_equal(result[~inside], before[~inside])  # bit-identical outside the mask
    assert (result[inside] != before[inside]).any(axis=-1).mean() > 0.5  # the face was sampled again
    return inside.mean()


def test_face_fix_changes_the_face_only(server, uploads):
    graph, masks = W.runnable("pulid_flux_face_fix", {"Picture to fix": "picture.png",
                                                      "Reference photo (the person)": "face.png"})
    entry = W.run(server, graph)
    share = changed_only_inside_the_mask(server, graph, entry, masks[W.by_title(graph, "Crop face")],
                                         uploads["picture.png"])
    assert 0.02 < share < 0.5
    denoise = [n["inputs"]["denoise"] for n in graph.values() if n["class_type"] == "KSampler"]
    assert denoise == [0.4]


def test_face_swap_with_flux_fill_and_an_identity_card_changes_the_face_only(server, uploads):
    graph, masks = W.runnable("pulid_flux_face_swap", {"Photo": "picture.png",
                                                       "The new face (identity card)": "person.png"})
    assert graph[W.by_title(graph, "Load Flux model")]["inputs"]["unet_name"] == W.FILL_UNET
    entry = W.run(server, graph)
    share = changed_only_inside_the_mask(server, graph, entry, masks[W.by_title(graph, "Crop face")],
                                         uploads["picture.png"])
    assert 0.02 < share < 0.5
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        assert "PuLID-Flux: applying identity person.png" in f.read()


def test_identities_to_faces_gives_each_face_its_own_identity(server, uploads):
    graph, masks = W.runnable("pulid_flux_identities_to_faces", {})
    for side in ("left", "right"):  # grow 32 is for the workflow's 1152x896; these faces are 128 px apart
        graph[W.by_title(graph, f"Face mask ({side})")]["inputs"]["grow"] = 4
    entry = W.run(server, graph)
    result = pixels(W.saved_png(server, entry, W.save_node(graph, "PuLID-Flux")))
    assert result.shape == (W.SIZE, W.SIZE, 3)
    left, right = (pixels(W.saved_png(server, entry, masks[W.by_title(graph, f"Face mask ({side})")]))[..., 0] > 0
                   for side in ("left", "right"))
    assert left.any() and right.any() and not (left & right).any()  # one region per face, apart
    columns = np.arange(W.SIZE)
    assert (left.sum(0) * columns).sum() / left.sum() < (right.sum(0) * columns).sum() / right.sum()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert "applying identity left.safetensors" in log and "applying identity right.safetensors" in log


def test_kontext_edit_with_the_face_mask_as_attn_mask(server, uploads):
    graph, masks = W.runnable("pulid_flux_kontext_edit", {"Photo to edit": "picture.png",
                                                          "Reference photo (the new face)": "face.png"})
    assert any(n["class_type"] == "ReferenceLatent" for n in graph.values())
    entry = W.run(server, graph)
    result = pixels(W.saved_png(server, entry, W.save_node(graph, "PuLID-Flux")))
    assert result.shape == (W.SIZE, W.SIZE, 3)
    face = pixels(W.saved_png(server, entry, masks[W.by_title(graph, "Face mask (the face being replaced)")]))
    assert 0.02 < (face[..., 0] > 0).mean() < 0.5
