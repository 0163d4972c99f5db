"""`queue` and `batch` given what a hostile or unlucky user gives them (issue 15 items 4-5, issue 14 item 7):
damaged manifests, output folders that cannot be written (at the start and mid-run), hung servers, malformed
URLs, --set typos, images deleted by hand, outputs ComfyUI drops as invalid. Against the aiohttp stand-ins
(no ComfyUI needed); each test failed before its fix."""
import os
import shutil
import time

import pytest

from support.aio_fake_comfy import DROPPED_SAVE_IMAGE, FakeComfy, hung_server
from pulid_tools.__main__ import main
from pulid_tools.batch.command import summary
from support.batch_fixtures import BASIC, face, fake  # noqa: F401 - the stand-in server and photo fixtures, shared


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a knight\na chef\n", encoding="utf-8")
    return str(path)


def batch(server_urls, face, prompts, out, *extra):
    return main(["batch", BASIC, "--face", face, "--prompts", prompts, "--seeds", "2", "--out", str(out), "--quiet",
                 *[x for s in server_urls for x in ("--server", s)], *extra])


def one_clear_line(err: str, *expected: str) -> None:
    assert "Traceback" not in err and all(text in err for text in expected), err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err


# --- 4. damaged manifest lines ----------------------------------------------------------------------------
def test_a_damaged_manifest_is_resumed_with_a_warning_per_damaged_line(fake, tmp_path, face, prompts, capsys):
    out = tmp_path / "out"
    assert batch([fake.url], face, prompts, out) == 0
    path = out / "manifest.jsonl"
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4
    # line 2 (a done job) replaced by valid JSON that is not an object; non-UTF-8 and other damage around it
    damaged = [lines[0], b"42", b"null", b"\xff\xfe{\"key\": 1}", b'{"status": "done", "key": 5}',
               b'{"status": "done", "key": "k", "files": ["../../escape.png"]}', b"[1, 2]", b"1" * 5000,
               b"[" * 100000, lines[2], lines[3]]
    path.write_bytes(b"\n".join(damaged) + b"\n")
    capsys.readouterr()
    before = len(fake.prompts)
    assert batch([fake.url], face, prompts, out) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for n in range(2, 10):
        assert f"manifest.jsonl:{n}: " in err, (n, err)
    assert "manifest.jsonl:1: " not in err and "manifest.jsonl:10: " not in err
    assert len(fake.prompts) == before + 1  # only the job whose record was destroyed runs again
    assert len(summary(str(path))) == 4


def test_a_manifest_that_cannot_be_read_exits_2(fake, tmp_path, face, prompts, capsys):
    (tmp_path / "out" / "manifest.jsonl").mkdir(parents=True)
    assert batch([fake.url], face, prompts, tmp_path / "out") == 2
    one_clear_line(capsys.readouterr().err, "manifest", str(tmp_path / "out" / "manifest.jsonl"))
    assert fake.prompts == []


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"[" * 100000, b'{"1": ' + b"1" * 5000 + b"}"])
def test_a_graph_file_that_is_not_json_exits_2(tmp_path, capsys, content):
    (tmp_path / "g.json").write_bytes(content)
    assert main(["queue", str(tmp_path / "g.json"), "--dry-run"]) == 2
    one_clear_line(capsys.readouterr().err, f"cannot read {tmp_path / 'g.json'}")


# --- 5. an output folder that cannot be written ----------------------------------------------------------
def test_out_under_a_regular_file_exits_2_with_one_line(fake, tmp_path, face, prompts, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert batch([fake.url], face, prompts, blocker / "out") == 2
    one_clear_line(capsys.readouterr().err, "--out", str(blocker / "out"))
    assert batch([fake.url], face, prompts, blocker) == 2  # --out is itself a file
    one_clear_line(capsys.readouterr().err, "--out", str(blocker), "a file of that name is in the way")
    assert main(["queue", BASIC, "--server", fake.url, "--face", face, "--out", str(blocker / "out")]) == 2
    one_clear_line(capsys.readouterr().err, "--out", str(blocker / "out"))
    assert fake.prompts == [] and fake.uploads == []  # refused before touching the server


def test_an_unwritable_out_folder_exits_2_with_the_reason(fake, tmp_path, face, prompts, capsys, monkeypatch):
    import pulid_tools.batch.manifest as manifest

    real_open = os.open

    def refuse(path, *args, **kwargs):  # what a read-only folder does, even to root
        if os.path.dirname(os.fspath(path)) == str(tmp_path / "ro"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(manifest.os, "open", refuse)
    assert batch([fake.url], face, prompts, tmp_path / "ro") == 2
    one_clear_line(capsys.readouterr().err, str(tmp_path / "ro"), "Permission denied")
    assert main(["queue", BASIC, "--server", fake.url, "--face", face, "--out", str(tmp_path / "ro")]) == 2
    one_clear_line(capsys.readouterr().err, str(tmp_path / "ro"), "Permission denied")
    assert fake.prompts == []


def test_out_unwritable_mid_run_stops_at_once_with_the_real_error_and_resumes(tmp_path, face, capsys):
    out, moved = tmp_path / "out", tmp_path / "moved"

    def break_out(n):  # before the 3rd job's image arrives, --out becomes a regular file
        if n == 3:
            out.rename(moved)
            out.write_text("in the way")

    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    server, other = FakeComfy(run_s=0.05, on_prompt=break_out), FakeComfy(run_s=0.05)
    try:
        assert batch([server.url], face, str(prompts), out, "--seeds", "3") == 1
        err = capsys.readouterr().err
        one_clear_line(err, "cannot write", f"{out} is a file, not a folder", "run the same command again")
        assert "no server left" not in err and "dropped" not in err
        assert len(server.prompts) == 3  # stopped at once: no job started after the failure
        out.unlink()
        moved.rename(out)
        done = summary(str(out / "manifest.jsonl"))
        assert len(done) == 2 and all((out / r["files"][0]).exists() for r in done.values())
        assert not [f for f in os.listdir(out) if f.endswith(".part")]
        assert batch([other.url], face, str(prompts), out, "--seeds", "3") == 0
        assert len(other.prompts) == 7 and len(summary(str(out / "manifest.jsonl"))) == 9
    finally:
        server.close()
        other.close()


def test_queue_whose_out_breaks_mid_run_exits_1_with_the_real_error(tmp_path, face, capsys):
    out = tmp_path / "out"

    def break_out(n):
        if out.exists():
            shutil.rmtree(out)
        out.write_text("in the way")

    server = FakeComfy(on_prompt=break_out)
    try:
        assert main(["queue", BASIC, "--server", server.url, "--face", face, "--out", str(out), "--quiet"]) == 1
    finally:
        server.close()
    one_clear_line(capsys.readouterr().err, "cannot write", str(out), "a file of that name is in the way")


# --- hung servers -----------------------------------------------------------------------------------------
def test_a_hung_server_is_set_aside_at_once_and_the_others_do_the_work(tmp_path, face, prompts, capsys):
    fake = FakeComfy(run_s=0.3)  # 4 jobs, 2 at a time: ~0.6 s of work, while the hung server is probed
    try:
        with hung_server() as hung:
            start = time.monotonic()
            assert batch([hung, fake.url], face, prompts, tmp_path / "out", "--per-server", "2",
                         "--reply-timeout", "0.3") == 0
            seconds = time.monotonic() - start
    finally:
        fake.close()
    assert len(fake.prompts) == 4 and seconds < 3, seconds  # no job waited on the hung server
    err = capsys.readouterr().err
    assert f"{hung[7:]}: ComfyUI at {hung} did not answer within 0.3 s" in err and "set aside" in err
    assert "goes back to the queue" not in err


def test_queue_on_a_hung_server_gives_up_after_the_reply_timeout(tmp_path, face, capsys):
    with hung_server() as hung:
        start = time.monotonic()
        assert main(["queue", BASIC, "--server", hung, "--face", face, "--out", str(tmp_path / "o"),
                     "--reply-timeout", "0.3"]) == 1
        seconds = time.monotonic() - start
    assert seconds < 3, seconds
    err = capsys.readouterr().err
    assert f"ComfyUI at {hung} did not answer within 0.3 s" in err and "Traceback" not in err


# --- usage errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["htp:/x", "ftp://host:8188", "http://", "http://host:port", "host:99999",
                                 "http://a b:8188", "http://host:8188?x=1"])
def test_a_malformed_server_url_is_a_usage_error(tmp_path, face, prompts, capsys, url):
    assert batch([url], face, prompts, tmp_path / "out") == 2
    one_clear_line(capsys.readouterr().err, f"--server {url!r}")
    assert main(["queue", BASIC, "--server", url, "--face", face, "--out", str(tmp_path / "o")]) == 2
    one_clear_line(capsys.readouterr().err, f"--server {url!r}")
    assert not (tmp_path / "out").exists()


def test_a_set_typo_is_an_error_listing_the_inputs(fake, tmp_path, face, prompts, capsys):
    assert batch([fake.url], face, prompts, tmp_path / "out", "--set", "KSampler.stepz=3") == 2
    one_clear_line(capsys.readouterr().err, "KSampler (node 13) has no input 'stepz'", "did you mean 'steps'",
                   "seed, steps, cfg")
    assert main(["queue", BASIC, "--dry-run", "--set", "Image size.widht=512"]) == 2
    one_clear_line(capsys.readouterr().err, "Image size [EmptySD3LatentImage] (node 12) has no input 'widht'",
                   "width, height, batch_size")
    assert fake.prompts == []


def test_a_set_with_a_huge_number_or_deep_list_is_kept_as_text():
    from pulid_tools.comfy_http import graph as graphs

    assert graphs.parse_assignment("3.steps=" + "1" * 5000) == ("3", "steps", "1" * 5000)
    assert graphs.parse_assignment("3.steps=" + "[" * 100000) == ("3", "steps", "[" * 100000)


# --- images deleted by hand ------------------------------------------------------------------------------
def test_an_image_deleted_by_hand_is_made_again(fake, tmp_path, face, prompts, capsys):
    out = tmp_path / "out"
    assert batch([fake.url], face, prompts, out, "--keep-best", "1") == 0
    done = summary(str(out / "manifest.jsonl"))
    kept = [r["files"][0] for r in done.values() if (out / r["files"][0]).exists()]
    rejected = [r["files"][0] for r in done.values() if (out / "rejected" / r["files"][0]).exists()]
    assert len(kept) == 2 and len(rejected) == 2
    os.remove(out / kept[0])
    capsys.readouterr()
    assert batch([fake.url], face, prompts, out, "--keep-best", "1") == 0  # a rejected image counts as there
    assert len(fake.prompts) == 5
    err = capsys.readouterr().err
    assert "4 jobs (3 already done" in err and f"image missing: {kept[0]}" in err


# --- outputs ComfyUI drops as invalid (HTTP 200 with node_errors) -----------------------------------------
def test_batch_stops_when_comfyui_drops_an_output_and_says_why(tmp_path, face, prompts, capsys):
    server = FakeComfy(dropped=DROPPED_SAVE_IMAGE)
    try:
        assert batch([server.url], face, prompts, tmp_path / "out") == 1
    finally:
        server.close()
    err = capsys.readouterr().err
    assert "ComfyUI dropped output(s) of the prompt as invalid: Save Image [SaveImage] (node 15)" in err
    assert "Save Image [SaveImage] (node 15): Return type mismatch between linked nodes: images, " \
           "received_type(VAE) mismatch input_type(IMAGE)" in err
    assert len(server.prompts) == 1 and server.deleted == [server.prompts[0][0]]  # taken off the server's queue


# --- issue 26: cards where a file is expected, a card and its file in one batch, the batch's own files -----------
def cli(*args, timeout=120):
    """The real command, as a user runs it."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "pulid_tools", *args], cwd=repo, capture_output=True, text=True,
                          timeout=timeout)


def card_and_file(tmp_path):
    """A real identity file, its card, a JPEG copy of the card (which lost the identity) and an empty file."""
    import io

    import numpy as np
    from PIL import Image

    from pulid_flux.identity.card import card_bytes
    from support.identity_samples import GOOD

    paths = {name: tmp_path / name for name in ("dana.safetensors", "dana.png", "dana.jpg", "empty.safetensors")}
    paths["dana.safetensors"].write_bytes(GOOD)
    paths["dana.png"].write_bytes(card_bytes(np.full((8, 8, 3), 150, np.uint8), GOOD))
    jpeg = io.BytesIO()
    Image.open(paths["dana.png"]).save(jpeg, "JPEG")
    paths["dana.jpg"].write_bytes(jpeg.getvalue())
    paths["empty.safetensors"].write_bytes(b"")
    return {name: str(path) for name, path in paths.items()}


def test_a_jpeg_copy_of_a_card_or_an_empty_file_is_named_and_never_uploaded(fake, tmp_path, prompts):
    """Before: both were uploaded, and the user read the server's 'first bytes ff d8 ff e0 ...'."""
    from support.batch_fixtures import IDENTITY_GRAPH

    files = card_and_file(tmp_path)
    for identity, expected in ((files["dana.jpg"], "--identity dana.jpg: is a JPEG picture, not an identity file or "
                                                   "card: a copy of an identity card converted to another format"),
                               (files["empty.safetensors"], "--identity empty.safetensors: is empty (0 bytes)")):
        for command in (["queue", IDENTITY_GRAPH, "--out", str(tmp_path / "q")],
                        ["batch", IDENTITY_GRAPH, "--prompts", prompts, "--out", str(tmp_path / "b")]):
            result = cli(*command, "--server", fake.url, "--identity", identity)
            assert result.returncode == 2 and expected in result.stderr and "Fix: " in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
    assert fake.identities == {} and fake.prompts == []


def test_a_card_and_the_identity_file_inside_it_are_the_same_jobs(fake, tmp_path, prompts):
    """Before: the card's bytes keyed the jobs, so the same batch with the file ran every job again (duplicates)."""
    from support.batch_fixtures import IDENTITY_GRAPH

    files = card_and_file(tmp_path)
    out = tmp_path / "out"
    args = ("batch", IDENTITY_GRAPH, "--server", fake.url, "--prompts", prompts, "--seeds", "2", "--out", str(out),
            "--quiet")
    first = cli(*args, "--identity", files["dana.png"])
    assert first.returncode == 0 and len(fake.prompts) == 4, first.stderr
    again = cli(*args, "--identity", files["dana.safetensors"])
    assert again.returncode == 0 and "4 jobs (4 already done" in again.stderr, again.stderr
    assert len(fake.prompts) == 4 and len(summary(str(out / "manifest.jsonl"))) == 4


def test_keep_best_never_moves_the_batchs_own_files(fake, tmp_path, face, prompts):
    """Before: a record naming manifest.jsonl made --keep-best move the manifest into rejected/ (exit 0), and the
    next run redid every job."""
    import json

    out = tmp_path / "out"
    args = ("batch", BASIC, "--server", fake.url, "--face", face, "--prompts", prompts, "--seeds", "2", "--out",
            str(out), "--quiet", "--keep-best", "1")
    assert cli(*args).returncode == 0 and len(fake.prompts) == 4
    with open(out / "manifest.jsonl", "a", encoding="utf-8") as f:
        for own in ("manifest.jsonl", "rejected", ".pulid_batch.lock"):
            f.write(json.dumps({"key": "f" * 32, "status": "done", "prompt": "a knight", "files": [own],
                                "scores": [2.0]}) + "\n")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("names manifest.jsonl, the batch's own, not an image") == 1
    assert "names rejected, the batch's own" in result.stderr and "names .pulid_batch.lock" in result.stderr
    assert (out / "manifest.jsonl").is_file() and not (out / "rejected" / "manifest.jsonl").exists()
    assert len(fake.prompts) == 4 and "4 jobs (4 already done" in result.stderr  # nothing redone
    kept = [n for n in os.listdir(out) if n.endswith(".png")]
    assert len(kept) == 2 and len(os.listdir(out / "rejected")) == 2  # one image per prompt kept
