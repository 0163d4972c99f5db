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


class ComfyModels:
    """A real ComfyUI with the pack and full-size random test models (see tests/support/comfy_harness.py)."""

    def __init__(self):
        import tempfile

        sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
        if REPO_ROOT not in sys.path:
            sys.path.append(REPO_ROOT)  # after ComfyUI: both have a top-level `nodes`
        from support import comfy_harness as H

        folder_paths = H.import_comfyui()
        self.root = root = tempfile.mkdtemp(prefix="pulid_bench_")  # ~3 GB of model files: remove when done
        H.write_models(os.path.join(root, "models"))
        H.register_folders(folder_paths, os.path.join(root, "models"))
        self.harness = H
        self.pack = H.import_pack(root)
        import nodes as comfy_nodes

        self.comfy_nodes = comfy_nodes
        n = self.pack.nodes
        self.model = comfy_nodes.UNETLoader().load_unet("flux_test_1d1s.safetensors", "default")[0]
        self.pulid = n.PulidFluxModelLoader().load_model("pulid_flux_v0.9.1.safetensors")[0]
        self.eva = n.PulidFluxEvaClipLoader().load_eva_clip()[0]
        self.faces = n.PulidFluxInsightFaceLoader().load_insightface("CPU")[0]

    def apply(self, image, weight=1.0, start_at=0.0, end_at=1.0, **kw):
        return self.pack.nodes.ApplyPulidFlux().apply_pulid_flux(self.model, self.pulid, self.eva, self.faces, image,
                                                                  weight, start_at, end_at, **kw)
