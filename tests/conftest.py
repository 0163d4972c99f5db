import ctypes
import gc
import os
import sys
import time

import pytest

try:  # property-based tests: bounded and derandomized, so CI is fast and a failure repeats exactly
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the property tests import hypothesis themselves and fail loudly without it
    pass

# A hub lookup otherwise hangs ~47 s before failing; nothing here may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The ComfyUI checkout (COMFYUI_PATH) is read-only test material: no __pycache__ there, here or in servers.
sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)  # appended, never ahead of ComfyUI: both have a top-level `nodes`


def _comfyui_checkout() -> str | None:
    path = os.environ.get("COMFYUI_PATH")
    return os.path.abspath(path) if path and os.path.isdir(path) else None


def _newer_files(root: str, since: float) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                if os.lstat(path).st_mtime > since:
                    found.append(os.path.relpath(path, root))
            except OSError:
                pass
    return found


def pytest_addoption(parser):
    parser.addoption("--fail-on-skip", action="store_true",
                     help="fail the run if any test was skipped (CI: with COMFYUI_PATH set, every tier must run)")


def pytest_sessionstart(session):
    session.config._comfyui_start = time.time() - 1


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything was written into the read-only ComfyUI checkout, or (--fail-on-skip) if a test
    was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if session.config.getoption("--fail-on-skip") and skipped:
        print(f"\nERROR: {skipped} test(s) skipped with --fail-on-skip (the short test summary gives their reasons)")
        session.exitstatus = 1
    root = _comfyui_checkout()
    if root is None or not hasattr(session.config, "_comfyui_start"):
        return
    written = _newer_files(root, session.config._comfyui_start)
    if written:
        print(f"\nERROR: the tests wrote into the ComfyUI checkout {root}: {', '.join(sorted(written)[:20])}")
        session.exitstatus = 1


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
    """Each real-ComfyUI module loads full-width models; give their memory back before the next module (and its
    servers) starts, so the whole suite fits a 24 GiB CI machine."""
    yield
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        gc.collect()
        mm.cleanup_models()
    give_memory_back()


def give_memory_back() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas otherwise
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory):
    """One set of generated model files (full-width Flux, full-size PuLID and EVA-CLIP, ~3 GB) for every
    real-ComfyUI test, in-process or server: written once per run, removed at the end. Skips without ComfyUI."""
    import shutil

    from support import comfy_harness as H
    from support import server_harness as S

    H.import_comfyui()
    root = tmp_path_factory.mktemp("models")
    paths = dict(S.write_test_models(str(root)), root=str(root))
    give_memory_back()  # the generated weights (GBs) are on disk now; servers start next
    yield paths
    shutil.rmtree(root, ignore_errors=True)
