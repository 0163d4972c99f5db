"""Batch throughput: jobs per minute of `pulid_tools batch` with 1, 2 and 3 real ComfyUI servers on the tiny
test models, and the client's own time per job (target < 50 ms).

    COMFYUI_PATH=/path/to/ComfyUI python bench/batch.py [--jobs 12] [--per-server 1]

The servers run the basic example without the PuLID encoders (tiny Flux 1+1 blocks at full width, 64x64,
2 steps, test conditioning, TAESD-layout VAE): the per-job work of a batch whose Apply node is cached. On a
small machine the servers share its CPU cores, so jobs/minute says little about GPUs; the client's time per
job (user CPU time of the client's event-loop thread / jobs) is the number that must stay small. A second figure
runs the client against an instant aiohttp stand-in of ComfyUI (tests/support/aio_fake_comfy.py): the client's whole
cost per job, wall and CPU, with no server work at all."""
import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import comfy_harness as H  # noqa: E402
from support import server_harness as S  # noqa: E402
from common import REPO_ROOT, git_rev, machine  # noqa: E402

from pulid_tools.comfy_http import graph as graphs  # noqa: E402
from pulid_tools.batch.runner import BatchRunner  # noqa: E402
from pulid_tools.batch.jobs import make_jobs  # noqa: E402
from pulid_tools.batch.manifest import Manifest  # noqa: E402

TINY = ["1.unet_name=flux_test_1d1s.safetensors", f"3.vae_name={S.TEST_VAE}", "Image size.width=64",
        "Image size.height=64", "KSampler.steps=2"]


def light_graph() -> dict:
    graph = graphs.load_graph(os.path.join(REPO_ROOT, "examples", "api", "pulid_flux_basic.json"))
    for node_id in ("2", "4", "5", "6", "8", "16"):
        del graph[node_id]
    graph["9"] = {"class_type": "PulidTestFluxConditioning", "inputs": {"text": "", "tokens": 8},
                  "_meta": {"title": "Positive prompt"}}
    graph["13"]["inputs"]["model"] = ["1", 0]
    graph["18"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}  # keeps LoadImage in the graph
    return graph


def run(servers, graph, prompts_path, seeds, face, folder, per_server):
    jobs, _ = make_jobs(graph, prompts_path, seeds, [face], None, TINY)
    manifest = Manifest(folder)
    runner = BatchRunner(servers, jobs, manifest, per_server=per_server)
    # the client's event-loop thread, user time: system time also holds the kernel's page reclaim on a
    # machine short of memory (three servers beside other work), which is not the client's doing
    cpu, wall = resource.getrusage(resource.RUSAGE_THREAD).ru_utime, time.perf_counter()
    result = asyncio.run(runner.run())
    cpu, wall = resource.getrusage(resource.RUSAGE_THREAD).ru_utime - cpu, time.perf_counter() - wall
    manifest.close()
    assert result.ok and result.done == len(jobs), (result.failed, result.fatal)
    return len(jobs), wall, cpu, [s.done for s in runner.servers]


def write_prompts(folder, tag, n):
    path = os.path.join(folder, f"prompts_{tag}.txt")
    with open(path, "w") as f:
        f.write("\n".join(f"{tag} portrait number {i}" for i in range(n)) + "\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--per-server", type=int, default=1)
    parser.add_argument("--fake-jobs", type=int, default=300)
    args = parser.parse_args()
    H.import_comfyui()
    from PIL import Image
    from skimage import data

    tmp = tempfile.mkdtemp(prefix="pulid_batch_bench_")
    face = os.path.join(tmp, "face.png")
    Image.fromarray(data.astronaut()).save(face)
    graph = light_graph()
    rows = []
    base = os.path.join(tmp, "base")
    S.prepare_base_directory(base)
    servers = []
    try:
        for n in range(3):
            extra = []
            for kind in ("output", "input", "temp", "user"):
                os.makedirs(os.path.join(base, f"s{n}", kind))
                extra += [f"--{kind}-directory", os.path.join(base, f"s{n}", kind)]
            servers.append(S.ComfyServer(H.comfyui_path(), base, name=f"server{n}", extra_args=extra))
            servers[-1].start()
        for server in servers:
            server.wait_until_ready()
        warm = write_prompts(tmp, "warm", 1)
        for i, server in enumerate(servers):  # load the models once per server, outside the timing
            run([server.url], graph, warm, 1, face, os.path.join(tmp, f"warm{i}"), 1)
        for n in (1, 2, 3):
            prompts = write_prompts(tmp, f"n{n}", args.jobs)
            jobs, wall, cpu, per_server = run([s.url for s in servers[:n]], graph, prompts, 1, face,
                                              os.path.join(tmp, f"out{n}"), args.per_server)
            rows.append((n, jobs, wall, 60 * jobs / wall, 1000 * cpu / jobs, per_server))
            print(f"{n} server(s): {jobs} jobs in {wall:.1f} s = {60 * jobs / wall:.1f} jobs/min, client CPU "
                  f"{1000 * cpu / jobs:.1f} ms/job, jobs per server {per_server}", flush=True)
    finally:
        for server in servers:
            server.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)

    from support.aio_fake_comfy import FakeComfy

    fakes = [FakeComfy(run_s=0.0) for _ in range(2)]
    try:
        tmp = tempfile.mkdtemp(prefix="pulid_batch_bench_fake_")
        face = os.path.join(tmp, "face.png")
        Image.fromarray(data.astronaut()).save(face)
        prompts = write_prompts(tmp, "fake", args.fake_jobs)
        jobs, wall, cpu, _ = run([f.url for f in fakes], graph, prompts, 1, face, os.path.join(tmp, "out"), 2)
        fake_row = (jobs, 1000 * wall / jobs, 1000 * cpu / jobs)
        print(f"instant stand-in, 2 servers x 2 in flight: {jobs} jobs, {fake_row[1]:.1f} ms/job wall, "
              f"{fake_row[2]:.1f} ms/job client CPU")
    finally:
        for f in fakes:
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{machine()}, rev {git_rev()}, per-server {args.per_server}; the servers share the machine's "
          f"{os.cpu_count()} cores\n")
    print("| servers | jobs | wall s | jobs/min | client CPU ms/job | jobs per server |")
    print("|---|---|---|---|---|---|")
    for n, jobs, wall, rate, cpu_ms, per_server in rows:
        print(f"| {n} | {jobs} | {wall:.1f} | {rate:.1f} | {cpu_ms:.1f} | {json.dumps(per_server)} |")
    print(f"\nInstant stand-in (no server work): {fake_row[0]} jobs, {fake_row[1]:.1f} ms/job wall, "
          f"{fake_row[2]:.1f} ms/job client CPU")


if __name__ == "__main__":
    main()
