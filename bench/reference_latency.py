"""Cost of Apply PuLID-Flux's reference encoding: a fixed cost per call and a cost per reference image.

    COMFYUI_PATH=/path/to/ComfyUI python bench/reference_latency.py [--counts 1 4 8] [--repeats 3] [--size 1024]

A real ComfyUI on the CPU (fp32 compute) with full-size random models: EVA02-CLIP-L-14-336 (304 M parameters),
BiSeNet, synthetic antelopev2 (ONNX), the PuLID-Flux weights and a full-width 1+1-block Flux. The node runs under
torch.inference_mode() as ComfyUI runs it, on real photos (scikit-image astronaut, people of insightface's t1.jpg)
resized to --size. Measured side by side in one run, the counts interleaved, median of --repeats:

- cold Apply calls (embedding cache cleared) with each count of images; a line fitted over the counts gives the
  fixed cost (intercept) and the cost per image (slope);
- inside the same calls, the time spent in the per-image work (detection + ArcFace, BiSeNet + EVA-CLIP, the ID
  encoder on the faces); the rest of the call, fitted over the counts the same way, measures the fixed cost
  directly without the noise of the encoders;
- an Apply call whose embedding is cached (only the weight changed), with uncond = same and uncond_id;
- the uncond ID tokens of true CFG: the first call (once per loaded PuLID model) and a cached call."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ComfyModels, git_rev, machine  # noqa: E402


def photos(size: int) -> list[torch.Tensor]:
    """The astronaut and three people of t1.jpg, each a [1,size,size,3] IMAGE."""
    import cv2
    import insightface
    from skimage import data

    group = cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))[:, :, ::-1]
    rgbs = [data.astronaut()] + [np.ascontiguousarray(group[120:760, x:x + 640]) for x in (0, 320, 640)]
    return [torch.from_numpy(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)).float().div(255)[None]
            for rgb in rgbs]


class Stopwatch:
    """Wraps functions so the seconds spent inside them add up in `seconds` (calls may not nest)."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def fit(xs, ys) -> tuple[float, float]:
    """Least-squares line y = a + b x -> (a, b)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@torch.inference_mode()
def measure(env: ComfyModels, counts, repeats: int, size: int) -> dict:
    encoding, pipeline = env.pack.comfy_layer.encoding, env.pack.encoders.pipeline
    images = photos(size)
    batches = {n: torch.cat([images[i % len(images)] for i in range(n)]) for n in counts}
    work = Stopwatch()  # the per-image work inside a call
    encoders = pipeline.FaceEncoders
    originals = {"locate": encoders.locate, "_embed": encoders._embed}
    for name, fn in originals.items():
        setattr(encoders, name, work.wrap(fn))
    original_encode_id = encoding.encode_id
    encoding.encode_id = work.wrap(original_encode_id)  # the ID encoder inside an encoding (not the uncond pass)
    try:
        env.apply(batches[counts[0]], uncond="uncond_id")  # warm-up: first-call allocations, uncond tokens cached
        total, inside = {n: [] for n in counts}, {n: [] for n in counts}
        for _ in range(repeats):
            for n in counts:
                encoding._cache.clear()
                work.seconds = 0.0
                start = time.perf_counter()
                env.apply(batches[n], weight=1.0, uncond="uncond_id")
                total[n].append(time.perf_counter() - start)
                inside[n].append(work.seconds)
    finally:
        for name, fn in originals.items():
            setattr(encoders, name, fn)
        encoding.encode_id = original_encode_id

    rows = [(n, statistics.median(total[n]), statistics.median(inside[n]),
             statistics.median(t - w for t, w in zip(total[n], inside[n]))) for n in counts]
    one = batches[counts[0]]
    cached = {mode: median_ms(lambda: env.apply(one, weight=0.7, uncond=mode), 20) for mode in ("same", "uncond_id")}
    result = {"rows": rows, "fit_total": fit(counts, [r[1] for r in rows]),
              "fit_rest": fit(counts, [r[3] for r in rows]), "cached_ms": cached}
    if hasattr(env.pulid, "uncond_tokens"):  # older commits computed the uncond tokens in every encoding
        first_uncond = []
        for _ in range(3):
            env.pulid._uncond = None
            start = time.perf_counter()
            env.pulid.uncond_tokens()
            first_uncond.append(time.perf_counter() - start)
        result["uncond_first_s"] = statistics.median(first_uncond)
        result["uncond_cached_ms"] = median_ms(env.pulid.uncond_tokens, 50)
    return result


def report(r: dict, size: int, repeats: int) -> None:
    print(f"\nApply PuLID-Flux reference encoding on {machine()}: cpu float32, "
          f"torch threads {torch.get_num_threads()}, commit {git_rev()}, {size}x{size} photos, "
          f"median of {repeats}, uncond_id")
    print("\n| images | cold Apply s | in per-image work s | rest of the call ms |")
    print("|---|---|---|---|")
    for n, total, inside, rest in r["rows"]:
        print(f"| {n} | {total:.2f} | {inside:.2f} | {rest * 1000:.1f} |")
    a, b = r["fit_total"]
    ra, rb = r["fit_rest"]
    print(f"\nlinear fit of the cold call:     fixed {a * 1000:.0f} ms + {b:.2f} s per image")
    print(f"linear fit of the rest of call:  fixed {ra * 1000:.1f} ms + {rb * 1000:.1f} ms per image")
    print(f"Apply with a cached embedding:   {r['cached_ms']['same']:.1f} ms (uncond same), "
          f"{r['cached_ms']['uncond_id']:.1f} ms (uncond_id)")
    if "uncond_first_s" in r:
        print(f"uncond ID tokens: first use {r['uncond_first_s']:.3f} s (once per loaded PuLID model), "
              f"cached {r['uncond_cached_ms']:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="side of the square reference photos in pixels")
    args = parser.parse_args()
    start = time.perf_counter()
    env = ComfyModels()
    print(f"models written and loaded in {time.perf_counter() - start:.0f} s")
    try:
        report(measure(env, args.counts, args.repeats, args.size), args.size, args.repeats)
    finally:
        shutil.rmtree(env.root, ignore_errors=True)


if __name__ == "__main__":
    main()
