"""Every command of `python -m pulid_tools` ends quietly when the reader of its output has gone (`... | head -5`):
no traceback, no 'Exception ignored ... BrokenPipeError', exit 141 (what a shell reports for a command stopped by
SIGPIPE). Real pipes whose read end is closed before the command writes, real subprocesses; queue and batch against
the aiohttp stand-in of ComfyUI."""
import os
import subprocess
import sys

import pytest

from support import comfy_harness as H
from support.batch_fixtures import BASIC, face, fake  # noqa: F401 - fixtures

CLOSED = 141


def run_into_closed_pipe(*args, stderr_closed=False, timeout=120):
    """Run a command whose stdout (and with stderr_closed its stderr too) is a pipe nobody reads any more.
    Returns (exit code, what it wrote to stderr; '' when stderr was closed)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before the first byte
    try:
        result = subprocess.run([sys.executable, "-m", "pulid_tools", *args], cwd=H.REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=write_end, stderr=write_end if stderr_closed else subprocess.PIPE,
                                timeout=timeout)
    finally:
        os.close(write_end)
    return result.returncode, (result.stderr or b"").decode("utf-8", "replace")


def assert_quiet(code, err):
    assert code == CLOSED and "Traceback" not in err and "BrokenPipeError" not in err, (code, err)


def test_doctor_into_a_closed_pipe_ends_quietly(tmp_path):
    """Before: `doctor --comfyui ../.. | head -5` ended in a BrokenPipeError traceback (exit 1)."""
    (tmp_path / "models").mkdir()
    assert_quiet(*run_into_closed_pipe("doctor", "--comfyui", str(tmp_path)))


def test_identity_report_into_a_closed_pipe_ends_quietly(tmp_path):
    from PIL import Image
    from skimage import data

    from support import encoder_fakes as fakes

    fakes.write_antelopev2(str(tmp_path / "models" / "insightface" / "models" / "antelopev2"))
    Image.fromarray(data.astronaut()).save(tmp_path / "a.png")
    args = ("identity", "--report", "--face", str(tmp_path / "a.png"), "--models", str(tmp_path / "models"))
    assert_quiet(*run_into_closed_pipe(*args))
    code, err = run_into_closed_pipe("identity", "--face", "x.png", "--models", str(tmp_path / "nothing"),
                                     "--out", str(tmp_path / "a.safetensors"), stderr_closed=True)
    assert code == CLOSED  # its error line went nowhere, and nothing else happened
    assert sorted(os.listdir(tmp_path)) == ["a.png", "models"]


def test_queue_into_a_closed_pipe_ends_quietly_after_saving_the_image(fake, face, tmp_path):
    out = tmp_path / "out"
    code, err = run_into_closed_pipe("queue", BASIC, "--server", fake.url, "--face", face, "--prompt", "a knight",
                                     "--out", str(out), "--timeout", "20", "--quiet")
    assert_quiet(code, err)
    assert len(fake.prompts) == 1 and len(os.listdir(out)) == 1  # the work was done; only printing its path failed


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "progress-bar"])
def test_batch_with_stdout_and_stderr_closed_ends_quietly_and_leaves_a_usable_manifest(fake, face, tmp_path, quiet):
    """batch writes to stderr only: `batch ... 2>&1 | head` closes it. With the reader gone it stops at its next
    line (the folder's lock is freed and the manifest holds whole records only)."""
    from pulid_tools.batch.manifest import Manifest

    prompts = tmp_path / "p.txt"
    prompts.write_text("a knight\na chef\n")
    out = tmp_path / "out"
    code, _ = run_into_closed_pipe("batch", BASIC, "--server", fake.url, "--face", face, "--prompts", str(prompts),
                                   "--seeds", "2", "--out", str(out), *(["--quiet"] if quiet else []),
                                   stderr_closed=True)
    assert code == CLOSED
    manifest = Manifest(str(out))  # the lock was released, every line parses
    assert manifest.warnings == [] and len(manifest.done) <= 4
    manifest.close()


def test_a_batch_whose_output_closes_mid_run_stops_and_hands_the_error_to_main(face, tmp_path):
    """A line printed while jobs run (the progress, a server set aside) that finds the output closed stops every
    worker and reaches main as BrokenPipeError, instead of ending one worker as an 'internal error'."""
    import asyncio

    from support.aio_fake_comfy import FakeComfy
    from pulid_tools.batch.jobs import make_jobs
    from pulid_tools.batch.manifest import Manifest
    from pulid_tools.batch.runner import BatchRunner
    from pulid_tools.comfy_http import graph as graphs

    prompts = tmp_path / "p.txt"
    prompts.write_text("a knight\na chef\n")
    jobs, _ = make_jobs(graphs.load_graph(BASIC), str(prompts), 4, [face], None, [])
    finished = []

    def progress():
        finished.append(1)
        raise BrokenPipeError(32, "Broken pipe")

    server = FakeComfy(run_s=0.05)
    manifest = Manifest(str(tmp_path / "out"))
    try:
        runner = BatchRunner([server.url], jobs, manifest, per_server=2, on_change=progress)
        with pytest.raises(BrokenPipeError):
            asyncio.run(runner.run())
    finally:
        manifest.close()
        server.close()
    assert runner.stopping and not runner.result.interrupted and runner.result.fatal is None
    assert len(finished) <= 2 < len(jobs) and len(server.prompts) <= 2  # stopped at once, not after all 8 jobs
