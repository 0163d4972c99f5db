"""Save identity and uploads of one name at the same time, many times (issue 15: they shared one temporary name,
`.NAME.<pid>.tmp`, and some of them failed). Without overwrite exactly one of each pair wins and the other is refused
as existing; with overwrite both succeed; the final file is always a whole valid identity and no temporary file
remains. Tier (a) runs the node's code path without ComfyUI; tier (b) the real Save identity node in ComfyUI."""
import asyncio
import os
import threading

import pytest

from support import comfy_harness as H
from pulid_flux.identity import file as fmt
from support.identity_samples import GOOD, make_small_identity
from support.upload_server import UploadServer, multipart

ROUNDS = 20
SAVES = UPLOADS = 3  # at once in each round: node saves in threads, uploads on concurrent connections


def race(folder, save, server, rounds=ROUNDS):
    """save(overwrite) -> None or raises FileExistsError; the uploads go through the HTTP handler."""
    candidates = [fmt.read_identity_bytes(GOOD).id_tokens, make_small_identity(7).id_tokens]
    target = os.path.join(folder, "same.safetensors")
    for round_ in range(rounds):
        overwrite = round_ % 2 == 1
        if not overwrite and os.path.exists(target):
            os.remove(target)
        barrier, outcomes = threading.Barrier(SAVES + 1), []

        def run_node():
            barrier.wait()
            try:
                save(overwrite)
                outcomes.append("ok")
            except FileExistsError:
                outcomes.append("exists")
            except Exception as e:  # noqa: BLE001 - anything else is the bug
                outcomes.append(repr(e))

        threads = [threading.Thread(target=run_node) for _ in range(SAVES)]
        for thread in threads:
            thread.start()
        body, content_type = multipart([("overwrite", None, b"true" if overwrite else b"false"),
                                        ("file", "same.safetensors", GOOD)])
        barrier.wait()

        async def uploads():
            return await asyncio.gather(*[server._request(body, content_type, {}, len(body), False)
                                          for _ in range(UPLOADS)])

        answers = server.run(uploads())
        for thread in threads:
            thread.join()
        outcomes += [{200: "ok", 409: "exists"}.get(status, f"{status} {answer}") for status, answer in answers]
        if overwrite:
            assert outcomes == ["ok"] * (SAVES + UPLOADS), (round_, outcomes)
        else:  # exactly one writer wins, every other one is told the name exists
            assert sorted(outcomes) == ["exists"] * (SAVES + UPLOADS - 1) + ["ok"], (round_, outcomes)
        final = fmt.load_identity(target).id_tokens  # whole and valid: one of the two, never a mix
        assert any(final.equal(t) for t in candidates), round_
        assert os.listdir(folder) == ["same.safetensors"], os.listdir(folder)  # no temporary file remains


def test_save_and_upload_of_one_name_at_once(tmp_path):
    folder = str(tmp_path)
    server = UploadServer(folder)
    identity = make_small_identity(7)

    def save(overwrite):  # what Save identity does (comfy_layer.identities.save_to_folder), without ComfyUI
        from pulid_flux.identity.store import identity_file_name

        fmt.save_identity(identity, os.path.join(folder, identity_file_name("same")), overwrite)

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
    assert pack.comfy_layer.folders.save_folder() == folder
    identity = pack.pulid_flux.identity.file.read_identity_bytes(fmt.identity_bytes(make_small_identity(7)))
    node = pack.NODE_CLASS_MAPPINGS["PulidFluxSaveIdentity"]()
    server = UploadServer(folder, pack.pulid_flux.identity.upload.handle_upload)  # the handler the route registers
    try:
        race(folder, lambda overwrite: node.save(identity, "same", overwrite), server)
    finally:
        server.close()
        folder_paths.folder_names_and_paths["pulid_identities"][0].remove(folder)  # leave the registry as it was
