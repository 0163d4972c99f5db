"""Soak: N prompts through a real ComfyUI server on 127.0.0.1; its memory after warm-up and at the end.

    COMFYUI_PATH=/path/to/ComfyUI python bench/soak.py [--prompts 50] [--warmup 4] [--steps 2] [--size 64]

Starts `python main.py --cpu` from COMFYUI_PATH on a free 127.0.0.1 port with an isolated --base-directory (this
pack and the test conditioning node in custom_nodes/, the test models: a full-width 1+1-block Flux, full-size
PuLID-Flux and EVA02-CLIP-L, synthetic antelopev2, random BiSeNet, a TAESD-layout VAE; see tests/support/server_harness.py),
and queues examples/api/pulid_flux_basic.json (text encoders swapped for the test node) one prompt at a time, the
seed changing every prompt, the weight cycling through --weights and the reference photo alternating between the
scikit-image astronaut and a person of insightface's t1.jpg. Prints the server's resident memory (RSS) after the
warm-up prompts and at the end, the errors, and the median seconds per prompt. Target: RSS growth under 1 %, no
error. Exit status 0 when the target is met, 1 otherwise.

RSS includes the model files ComfyUI maps into memory (safetensors), which the kernel drops and reads again when
memory is short, so RSS can shrink or grow without any leak; the anonymous part (RssAnon in /proc/PID/status) is
what a leak grows. Both are printed, and the 1 % target applies to both unless the machine ran out of memory
(`MemAvailable` under 5 %, printed), when only the anonymous part counts."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)  # after ComfyUI (inserted first by the harness): both have a top-level `nodes`

GROWTH_TARGET = 0.01


def write_photos(folder: str) -> list[str]:
    """Two reference photos in the server's input folder: the astronaut and the middle person of t1.jpg."""
    import cv2
    import insightface
    from PIL import Image
    from skimage import data

    os.makedirs(folder, exist_ok=True)
    group = cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))[:, :, ::-1]
    person = np.ascontiguousarray(group[120:760, 320:960])
    names = []
    for name, rgb in (("soak_astronaut.png", data.astronaut()), ("soak_t1_person.png", person)):
        Image.fromarray(rgb).save(os.path.join(folder, name))
        names.append(name)
    return names


def test_graph(steps: int, size: int) -> dict:
    """The basic API example for the test models (as tests/test_server_e2e.py uses it)."""
    from support.server_harness import TEST_VAE, graph_for_test_models

    graph = graph_for_test_models()
    for node in graph.values():
        if node["class_type"] == "UNETLoader":
            node["inputs"]["unet_name"] = "flux_test_1d1s.safetensors"
        elif node["class_type"] == "VAELoader":
            node["inputs"]["vae_name"] = TEST_VAE
        elif node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=size, height=size)
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return graph


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, anonymous RSS) of the process in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["RssAnon"][0]) / 1024


def available_fraction() -> float:
    import psutil

    memory = psutil.virtual_memory()
    return memory.available / memory.total


def soak(server, graph: dict, photos: list[str], prompts: int, warmup: int, weights: list[float],
         timeout: float) -> dict:
    import asyncio

    from pulid_tools.comfy_http import graph as graphs
    from pulid_tools.comfy_http.api import ComfyAPI, ComfyError
    from pulid_tools.comfy_http.websocket import run_prompt

    async def run_one(g: dict) -> None:  # one session per prompt, as a headless `queue` call makes
        async with ComfyAPI(server.url) as api:
            await run_prompt(api, g, timeout)

    pid = server.process.pid
    seconds, errors, samples, lowest_available = [], [], [], 1.0
    for i in range(warmup + prompts):
        g = json.loads(json.dumps(graph))
        graphs.set_images(g, [photos[i % len(photos)]])
        graphs.set_seed(g, 1000 + i)
        graphs.set_weight(g, weights[i % len(weights)])
        start = time.monotonic()
        try:
            asyncio.run(run_one(g))
        except ComfyError as e:
            errors.append(f"prompt {i}: {str(e).splitlines()[0]}")
        elapsed = time.monotonic() - start
        lowest_available = min(lowest_available, available_fraction())
        if server.process.poll() is not None:
            errors.append(f"the server exited with status {server.process.returncode} during prompt {i} "
                          f"(-9: killed, e.g. by the kernel's out-of-memory killer)")
            break
        if i == warmup - 1 or warmup == 0 and i == 0:
            samples.append(("after warm-up", i + 1, *memory_mib(pid)))
        if i >= warmup:
            seconds.append(elapsed)
            done = i + 1 - warmup
            if done % 10 == 0 or done == prompts:
                samples.append((f"after {done} prompts", i + 1, *memory_mib(pid)))
                print(f"  {done}/{prompts} prompts, RSS {samples[-1][2]:,.1f} MiB (anonymous {samples[-1][3]:,.1f}), "
                      f"median {statistics.median(seconds):.2f} s/prompt, errors {len(errors)}", flush=True)
    return {"seconds": seconds, "errors": errors, "samples": samples, "lowest_available": lowest_available}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50, help="prompts measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=4, help="prompts before the first RSS reading")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.8, 1.2])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per prompt")
    parser.add_argument("--prepare", metavar="BASE", help=argparse.SUPPRESS)  # child process: write the models
    args = parser.parse_args()

    from support import comfy_harness as H
    from support import server_harness as S
    from common import machine

    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout.")
    H.import_comfyui()  # the test models are written with ComfyUI's own classes
    if args.prepare:
        S.prepare_base_directory(args.prepare)
        return 0
    base = tempfile.mkdtemp(prefix="pulid_soak_")
    try:
        start = time.monotonic()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare", base], check=True)
        photos = write_photos(os.path.join(base, "input"))
        graph = test_graph(args.steps, args.size)
        print(f"models written in {time.monotonic() - start:.0f} s; starting ComfyUI", flush=True)
        with S.ComfyServer(H.comfyui_path(), base) as server:
            print(f"ComfyUI on {server.url} (pid {server.process.pid}); {args.warmup} warm-up + {args.prompts} "
                  f"prompts, {args.steps} steps at {args.size}x{args.size}", flush=True)
            result = soak(server, graph, photos, args.prompts, args.warmup, args.weights, args.timeout)
            if result["errors"]:
                print(server.log_tail(3000))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    samples, seconds, errors = result["samples"], result["seconds"], result["errors"]
    nan = float("nan")
    growth = (samples[-1][2] / samples[0][2] - 1) if samples else nan
    anon_growth = (samples[-1][3] / samples[0][3] - 1) if samples else nan
    memory_short = result["lowest_available"] < 0.05
    print(f"\nsoak on {machine()}: {args.prompts} prompts after {args.warmup} warm-up, {args.steps} steps at "
          f"{args.size}x{args.size}, weights {args.weights}, 2 reference photos alternating")
    for label, count, mib, anon in samples:
        print(f"  RSS {label:<18} {mib:>10,.1f} MiB   anonymous {anon:>10,.1f} MiB")
    print(f"  growth after warm-up: RSS {growth * 100:+.2f} %, anonymous {anon_growth * 100:+.2f} % "
          f"(target < {GROWTH_TARGET * 100:.0f} %)")
    print(f"  lowest available memory on the machine: {result['lowest_available'] * 100:.1f} %"
          + (" (short: mapped model files were dropped and re-read, RSS not comparable)" if memory_short else ""))
    print(f"  errors: {len(errors)}" + "".join(f"\n    {e}" for e in errors[:10]))
    if seconds:
        print(f"  seconds per prompt: median {statistics.median(seconds):.2f}, min {min(seconds):.2f}, "
              f"max {max(seconds):.2f}")
    met = (anon_growth < GROWTH_TARGET and (memory_short or growth < GROWTH_TARGET) and not errors
           and len(seconds) == args.prompts)
    print("  target met" if met else "  TARGET NOT MET")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
