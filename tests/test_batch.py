"""Batch jobs, the manifest, identity uploads through the contract's route and the batch runner against
aiohttp stand-ins of ComfyUI on 127.0.0.1 (no ComfyUI needed; real servers: test_batch_servers.py)."""
import asyncio
import json
import os

import pytest

from support.aio_fake_comfy import FakeComfy, fake_fingerprint, identity_bytes
from support.batch_fixtures import BASIC, IDENTITY_GRAPH, PNG, face, fake  # noqa: F401 - face, fake: fixtures
from pulid_tools.comfy_http import api as comfy_api
from pulid_tools.comfy_http import graph as graphs
from pulid_tools.__main__ import main
from pulid_tools.batch.command import summary
from pulid_tools.batch.jobs import make_jobs


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- jobs ----------------------------------------------------------------------------------------------
def test_jobs_are_prompts_times_seeds_with_stable_keys(tmp_path, face):
    base = graphs.load_graph(BASIC)
    prompts = write(tmp_path / "p.txt", "# a comment\na knight\n\na chef\n")
    jobs, dup = make_jobs(base, prompts, 3, [face], None, ["KSampler.steps=4"])
    assert [(j.prompt, j.seed, j.prompt_no) for j in jobs] == [
        ("a knight", 0, 2), ("a knight", 1, 2), ("a knight", 2, 2), ("a chef", 0, 4), ("a chef", 1, 4), ("a chef", 2, 4)]
    assert dup == 0 and len({j.key for j in jobs}) == 6
    assert jobs[4].graph["9"]["inputs"]["text"] == "a chef" and jobs[4].graph["13"]["inputs"]["seed"] == 1
    assert jobs[0].graph["13"]["inputs"]["steps"] == 4 and jobs[0].graph["7"]["inputs"]["image"].startswith("sha256:")
    again, _ = make_jobs(base, prompts, 3, [face], None, ["KSampler.steps=4"])
    assert [j.key for j in again] == [j.key for j in jobs]  # same arguments, same keys
    (tmp_path / "me.png").write_bytes(PNG + b"other photo")
    other, _ = make_jobs(base, prompts, 3, [face], None, ["KSampler.steps=4"])
    assert not {j.key for j in other} & {j.key for j in jobs}  # the photo's bytes are part of the key


def test_jsonl_fields_per_job(tmp_path, face):
    black = tmp_path / "black.png"
    black.write_bytes(PNG + b"black")
    lines = [{"prompt": "a knight", "weight": 0.8, "KSampler.steps": 6},
             {"prompt": "a chef", "seed": 77, "set": {"Image size.width": 512}, "face": str(black)},
             {"prompt": "a knight", "weight": 0.8, "KSampler.steps": 6}]
    prompts = write(tmp_path / "p.jsonl", "\n".join(json.dumps(x) for x in lines))
    jobs, dup = make_jobs(graphs.load_graph(BASIC), prompts, 2, [face], None, [])
    assert dup == 2 and [(j.prompt, j.seed) for j in jobs] == [("a knight", 0), ("a knight", 1), ("a chef", 77)]
    assert (jobs[0].graph["8"]["inputs"]["weight"], jobs[0].graph["13"]["inputs"]["steps"]) == (0.8, 6)
    assert jobs[2].graph["12"]["inputs"]["width"] == 512 and jobs[2].faces == (str(black),)
    bad = write(tmp_path / "bad.jsonl", '{"prompt": "x", "steps": 3}\n')
    with pytest.raises(graphs.GraphError, match="bad.jsonl:1: unknown field.*steps"):
        make_jobs(graphs.load_graph(BASIC), bad, 1, [face], None, [])


# --- identity upload (the contract's route) ---------------------------------------------------------------
def upload(url, path):
    async def go():
        async with comfy_api.ComfyAPI(url) as api:
            return (await api.upload_identity(path)).name
    return asyncio.run(go())


def test_identity_upload_is_content_addressed_and_idempotent(fake, tmp_path):
    path = tmp_path / "Ada Lovelace.safetensors"
    path.write_bytes(identity_bytes("ada"))
    name = upload(fake.url, str(path))
    digest = comfy_api.content_digest(str(path))[:12]
    assert name == f"Ada_Lovelace-{digest}.safetensors" and fake.identities[name] == identity_bytes("ada")
    assert upload(fake.url, str(path)) == name  # exists with the same bytes: overwritten with them, no error
    path.write_bytes(identity_bytes("bob"))
    assert upload(fake.url, str(path)) != name and len(fake.identities) == 2  # new bytes, new name


def test_identity_upload_refusals_are_clear(fake, tmp_path):
    path = tmp_path / "photo.safetensors"
    path.write_bytes(b"not an identity at all")  # no safetensors file: refused here, before anything is sent
    with pytest.raises(graphs.GraphError, match=r"--identity photo.safetensors: not a safetensors file"):
        upload(fake.url, str(path))
    assert fake.identities == {}
    header = b'{"__metadata__": {"format": "another"}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)  # a safetensors file: the server's reader decides
    with pytest.raises(comfy_api.ComfyError, match=r"uploading identity .*photo.safetensors to http://127.0.0.1:\d+ "
                                                   r"refused: photo-\w+.safetensors is not a PuLID-Flux identity"):
        upload(fake.url, str(path))
    old = FakeComfy(identities=False)
    try:
        path.write_bytes(identity_bytes())
        with pytest.raises(comfy_api.ComfyError, match="has no /pulid_flux/identities route: update "
                                                       "ComfyUI-PuLID-Flux"):
            upload(old.url, str(path))
    finally:
        old.close()


def test_queue_identity_uploads_and_fills_the_load_identity_node(fake, tmp_path, capsys):
    path = tmp_path / "ada.safetensors"
    path.write_bytes(identity_bytes("ada"))
    assert main(["queue", IDENTITY_GRAPH, "--server", fake.url, "--identity", str(path), "--prompt", "a knight",
                 "--out", str(tmp_path / "out"), "--timeout", "20", "--quiet"]) == 0
    (_, graph), = fake.prompts
    loads = [n for n in graph.values() if n["class_type"] == "PulidFluxLoadIdentity"]
    assert loads and all(n["inputs"]["identity_file"] == comfy_api.identity_upload_name(str(path)) for n in loads)
    assert list(fake.identities) == [comfy_api.identity_upload_name(str(path))]
    assert main(["queue", BASIC, "--server", fake.url, "--identity", str(path), "--dry-run"]) == 2
    assert "--identity needs a PulidFluxLoadIdentity node" in capsys.readouterr().err



def test_keep_name_uploads_under_the_files_own_name_and_never_replaces_another_identity(fake, tmp_path, capsys):
    """--keep-name: the name a workflow saved on another server uses (dana.safetensors); the same identity there
    is kept, another one is refused naming both fingerprints unless --overwrite; the graph carries the fingerprint."""
    path = tmp_path / "dana.safetensors"
    path.write_bytes(identity_bytes("dana"))
    queue = ["queue", IDENTITY_GRAPH, "--server", fake.url, "--identity", str(path), "--keep-name", "--prompt", "x",
             "--out", str(tmp_path / "out"), "--timeout", "20", "--quiet"]

    def loads():
        graph = fake.prompts[-1][1]
        return [(n["inputs"]["identity_file"], n["inputs"]["fingerprint"]) for n in graph.values()
                if n["class_type"] == "PulidFluxLoadIdentity"]

    assert main(queue) == 0 and fake.identities == {"dana.safetensors": identity_bytes("dana")}
    assert loads() == [("dana.safetensors", fake_fingerprint(identity_bytes("dana")))]
    assert main(queue) == 0 and len(fake.prompts) == 2  # the same identity already there: used as it is
    fake.identities["dana.safetensors"] = identity_bytes("stale")  # another person under that name
    capsys.readouterr()
    assert main(queue) == 1 and len(fake.prompts) == 2
    err = capsys.readouterr().err
    assert (f"already has another dana.safetensors (fingerprint {fake_fingerprint(identity_bytes('stale'))}; yours "
            f"is {fake_fingerprint(identity_bytes('dana'))}): give --overwrite") in err, err
    assert fake.identities["dana.safetensors"] == identity_bytes("stale")
    assert main(queue + ["--overwrite"]) == 0 and fake.identities["dana.safetensors"] == identity_bytes("dana")
    prompts = write(tmp_path / "p.txt", "a knight\n")
    fake.identities["dana.safetensors"] = identity_bytes("stale")
    batch = ["batch", IDENTITY_GRAPH, "--server", fake.url, "--identity", str(path), "--keep-name", "--prompts",
             prompts, "--out", str(tmp_path / "batch"), "--timeout", "20", "--quiet"]
    assert main(batch) == 1 and "give --overwrite" in capsys.readouterr().err
    assert main(batch + ["--overwrite"]) == 0 and loads() == [("dana.safetensors", fake_fingerprint(identity_bytes("dana")))]
    for bad in (["--overwrite"], ["--keep-name"]):
        args = ["queue", IDENTITY_GRAPH, "--dry-run", *bad] + ([] if bad == ["--keep-name"] else
                                                               ["--identity", str(path)])
        assert main(args) == 2
    assert "--overwrite goes with --keep-name" in capsys.readouterr().err


def test_an_identity_card_works_wherever_an_identity_file_does(fake, tmp_path, capsys):
    """The identity inside the card is uploaded, under the name its file would get; a card without one is refused
    before anything is sent (queue and batch)."""
    import io

    import numpy as np
    from PIL import Image

    from pulid_flux.identity.card import card_bytes

    from support.identity_samples import GOOD

    data = GOOD  # a real identity file: the client reads a card's identity with the pack's reader before sending
    card, file = tmp_path / "ada.png", tmp_path / "ada.safetensors"
    card.write_bytes(card_bytes(np.full((4, 8, 3), 200, np.uint8), data))
    file.write_bytes(data)
    name = comfy_api.identity_upload_name(str(file))
    assert upload(fake.url, str(card)) == name and fake.identities == {name: data}
    assert main(["queue", IDENTITY_GRAPH, "--server", fake.url, "--identity", str(card), "--prompt", "a knight",
                 "--out", str(tmp_path / "out"), "--timeout", "20", "--quiet"]) == 0
    (_, graph), = fake.prompts
    assert [n["inputs"]["identity_file"] for n in graph.values() if n["class_type"] == "PulidFluxLoadIdentity"] == [name]
    resaved = io.BytesIO()
    Image.open(card).save(resaved, "PNG")  # a copy that lost the identity chunk
    stripped = tmp_path / "ada copy.png"
    stripped.write_bytes(resaved.getvalue())
    capsys.readouterr()
    prompts = write(tmp_path / "p.txt", "a knight\n")
    for command in (["queue", IDENTITY_GRAPH, "--server", fake.url, "--out", str(tmp_path / "out2")],
                    ["batch", IDENTITY_GRAPH, "--server", fake.url, "--prompts", prompts, "--out", str(tmp_path / "b")]):
        assert main([*command, "--identity", str(stripped)]) == 2
        err = capsys.readouterr().err
        assert "--identity ada copy.png: is a PNG picture with no PuLID-Flux identity inside" in err, err
        assert f"file: {stripped}" in err and "Fix: use the original card file" in err
    assert len(fake.prompts) == 1 and list(fake.identities) == [name]  # nothing more was sent

# --- the batch over stand-ins ------------------------------------------------------------------------------
def test_batch_over_two_servers_records_scores_keeps_the_best_and_resumes(tmp_path, face, capsys):
    servers = [FakeComfy(run_s=0.05), FakeComfy(run_s=0.02)]
    prompts = write(tmp_path / "p.txt", "a knight\na chef\n")
    out = tmp_path / "out"
    args = ["batch", BASIC, "--face", face, "--prompts", prompts, "--seeds", "4", "--out", str(out),
            "--per-server", "2", "--keep-best", "2", "--quiet"]
    try:
        assert main(args + [x for s in servers for x in ("--server", s.url)]) == 0
        done = summary(str(out / "manifest.jsonl"))
        assert len(done) == 8 and all(len(s.prompts) for s in servers)
        assert sum(len(s.uploads) for s in servers) == 2  # the photo once per server
        for prompt in ("a knight", "a chef"):
            records = sorted((r for r in done.values() if r["prompt"] == prompt), key=lambda r: -r["score"])
            assert [r["score"] for r in records] == [r["scores"][0] for r in records]
            assert [os.path.exists(out / r["files"][0]) for r in records] == [True, True, False, False]
            assert [os.path.exists(out / "rejected" / r["files"][0]) for r in records] == [False, False, True, True]
        before = sum(len(s.prompts) for s in servers)
        assert main(args + ["--server", servers[0].url]) == 0  # nothing left to do
        assert sum(len(s.prompts) for s in servers) == before
        assert "8 jobs (8 already done" in capsys.readouterr().err
    finally:
        for s in servers:
            s.close()


def test_an_unreachable_server_is_dropped_and_the_others_do_the_work(tmp_path, face, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    server = FakeComfy()
    prompts = write(tmp_path / "p.txt", "a knight\na chef\na pilot\n")
    try:
        assert main(["batch", BASIC, "--face", face, "--prompts", prompts, "--seeds", "2", "--out",
                     str(tmp_path / "out"), "--server", dead, "--server", server.url, "--quiet"]) == 0
    finally:
        server.close()
    err = capsys.readouterr().err
    assert f"{dead}: cannot reach ComfyUI at http://{dead}" in err and "set aside, tried again in 1 s" in err
    assert len(summary(str(tmp_path / "out" / "manifest.jsonl"))) == 6 and len(server.prompts) == 6


def test_when_every_server_is_dropped_the_reasons_are_in_the_last_line(tmp_path, face, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    prompts = write(tmp_path / "p.txt", "a knight\n")
    assert main(["batch", BASIC, "--face", face, "--prompts", prompts, "--seeds", "2", "--out",
                 str(tmp_path / "out"), "--server", dead, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{dead}: dropped after 3 failures in a row (last: cannot reach ComfyUI at http://{dead}" in err
    assert f"error: no server left to run the remaining 2 job(s); {dead}: cannot reach ComfyUI" in err


def test_a_refused_graph_stops_the_batch_with_comfyuis_message(fake, tmp_path, face, capsys):
    prompts = write(tmp_path / "p.txt", "a knight\na chef\n")
    assert main(["batch", BASIC, "--face", face, "--prompts", prompts, "--seeds", "3", "--out", str(tmp_path / "o"),
                 "--server", fake.url, "--set", "8.weight=9", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "ComfyUI refused the prompt: Prompt outputs failed validation" in err
    assert "Apply PuLID-Flux [ApplyPulidFlux] (node 8): Value bigger than max of 5.0: weight" in err
    assert len(fake.prompts) == 0  # refused at once, no retry storm


def test_a_manifest_cut_short_by_a_crash_keeps_every_whole_record(tmp_path):
    from pulid_tools.batch.manifest import Manifest

    whole = {"key": "a" * 32, "status": "done", "prompt": "x", "files": ["a.png"], "scores": None}
    failed = {"key": "b" * 32, "status": "failed", "prompt": "x", "error": "no face"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(whole) + "\n" + json.dumps(failed) + "\n"
                                             + '{"key": "' + "c" * 32 + '", "status": "do')
    manifest = Manifest(str(tmp_path))
    assert list(manifest.done) == ["a" * 32] and not manifest.is_done("b" * 32)  # failed jobs run again
    assert manifest.warnings == [f"{tmp_path / 'manifest.jsonl'}:3: damaged record skipped (not a whole JSON record "
                                 "(cut short by a crash?)); its job runs again"]
    manifest.append(dict(whole, key="d" * 32))
    manifest.close()
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "d" * 32 and len(lines) == 4  # the new record on a line of its own
    assert list(Manifest(str(tmp_path)).done) == ["a" * 32, "d" * 32]


def test_one_batch_at_a_time_per_out_folder_and_a_dead_batch_frees_it(fake, tmp_path, face, capsys):
    import subprocess
    import sys

    from pulid_tools.batch.manifest import Manifest, OutputError

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pulid_tools.batch.manifest import "
                               "Manifest; m = Manifest(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "held"
        prompts = write(tmp_path / "p.txt", "a knight\n")
        assert main(["batch", BASIC, "--face", face, "--prompts", prompts, "--seeds", "2", "--out", str(out),
                     "--server", fake.url, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"error: --out {out}: another batch is writing there now" in err and "another --out" in err
        assert len(fake.prompts) == 0 and (out / "manifest.jsonl").read_bytes() == b""  # the holder's, untouched
    finally:
        holder.kill()
        holder.wait()
    first = Manifest(str(out))  # the killed batch's lock went with its process
    with pytest.raises(OutputError, match="another batch is writing there"):
        Manifest(str(out))
    first.close()
    Manifest(str(out)).close()
