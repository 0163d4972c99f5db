"""Shared bench helpers: import a real ComfyUI checkout (COMFYUI_PATH) ahead of this repo, and timing."""
import os
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_comfyui(cpu: bool):
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout (the benchmark uses ComfyUI's own Flux blocks).")
    sys.path.insert(0, os.path.abspath(path))
    if REPO_ROOT not in sys.path:
        sys.path.append(REPO_ROOT)  # after ComfyUI: both have a top-level `nodes`
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def timed_interleaved(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Median seconds per call of each fn, calling them in turn so drift hits all alike."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:  # noqa: BLE001
        return "?"
