"""Save identity and uploads of one name at the same time, many times (issue 15: they shared one temporary name,
`.NAME.<pid>.tmp`, and some of them failed). Without overwrite exactly one of each pair wins and the other is refused
as existing; with overwrite both succeed; the final file is always a whole valid identity and no temporary file
remains. Tier (a) runs the node's code path without ComfyUI; tier (b) the real Save identity node in ComfyUI."""
import os
import threading

import pytest

import comfy_harness as H
from pulid_flux import identity as ident
from test_identity_files import GOOD, make_identity
from test_identity_upload import UploadServer, multipart

ROUNDS = 25


def race(folder, save, server, rounds=ROUNDS):
    """save(overwrite) -> None or raises FileExistsError; the upload goes through the HTTP handler."""
    candidates = [ident.read_identity_bytes(GOOD).id_tokens, make_identity(7).id_tokens]
    target = os.path.join(folder, "same.safetensors")
    for round_ in range(rounds):
        overwrite = round_ % 5 == 4
        if not overwrite and os.path.exists(target):
            os.remove(target)
        barrier, node = threading.Barrier(2), {}

        def run_node():
            barrier.wait()
            try:
                save(overwrite)
                node["outcome"] = "ok"
            except FileExistsError:
                node["outcome"] = "exists"
            except Exception as e:  # noqa: BLE001 - anything else is the bug
                node["outcome"] = repr(e)

        thread = threading.Thread(target=run_node)
        thread.start()
        barrier.wait()
        body, content_type = multipart([("overwrite", None, b"true" if overwrite else b"false"),
                                        ("file", "same.safetensors", GOOD)])
        status, answer = server.post(body, content_type)
        thread.join()
        upload = {200: "ok", 409: "exists"}.get(status, f"{status} {answer}")
        outcomes = sorted([node["outcome"], upload])
        assert outcomes == (["ok", "ok"] if overwrite else ["exists", "ok"]), (round_, node, status, answer)
        final = ident.load_identity(target).id_tokens  # whole and valid: one of the two, never a mix
        assert any(final.equal(t) for t in candidates), round_
        assert os.listdir(folder) == ["same.safetensors"], os.listdir(folder)  # no temporary file remains


def test_save_and_upload_of_one_name_at_once(tmp_path):
    folder = str(tmp_path)
    server = UploadServer(folder)
    identity = make_identity(7)

    def save(overwrite):  # what Save identity does (identity_support.save_to_folder), without ComfyUI
        from pulid_flux.identity_store import identity_file_name

        ident.save_identity(identity, os.path.join(folder, identity_file_name("same")), overwrite)

    try:
        race(folder, save, server)
    finally:
        server.close()


@pytest.mark.comfyui
def test_save_identity_node_and_upload_of_one_name_at_once(tmp_path):
    folder_paths = H.import_comfyui()
    folder = str(tmp_path / "identities")
    os.makedirs(folder)
    folder_paths.add_model_folder_path("pulid_identities", folder, is_default=True)
    pack = H.import_pack(str(tmp_path))
    assert pack.identity_support.save_folder() == folder
    identity = pack.pulid_flux.identity.read_identity_bytes(ident.identity_bytes(make_identity(7)))
    node = pack.NODE_CLASS_MAPPINGS["PulidFluxSaveIdentity"]()
    server = UploadServer(folder, pack.pulid_flux.identity_upload.handle_upload)  # the handler the route registers
    try:
        race(folder, lambda overwrite: node.save(identity, "same", overwrite), server)
    finally:
        server.close()
