"""Seconds per reference image for the encoder pipeline with full-size random-weight models.

    python bench/reference_latency.py [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--counts 1 4 8]

Builds synthetic antelopev2 (ONNX), a random BiSeNet and a random full-size EVA02-CLIP-L-14-336 in a temp dir,
loads them like real files, and times `FaceEncoders.encode` on real photos (scikit-image astronaut, insightface
t1.jpg). `run(after_encode=...)` times an extra step on each batch's results (e.g. the PuLID IDFormer)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import machine  # noqa: E402  (bench/common.py; the script's folder is on sys.path)
from encoders import FaceEncoders  # noqa: E402
from testing import encoder_fakes as fakes  # noqa: E402


def photos() -> list[np.ndarray]:
    import insightface
    from skimage import data

    group = cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))
    return [data.astronaut(), np.ascontiguousarray(group[:, :, ::-1])]


def build_models(folder: str, device: str, dtype: torch.dtype) -> tuple[FaceEncoders, dict[str, float]]:
    timings = {}
    start = time.perf_counter()
    fakes.write_antelopev2(os.path.join(folder, "insightface", "models", "antelopev2"))
    fakes.write_bisenet(os.path.join(folder, "facexlib", "parsing_bisenet.pth"))
    eva_path = fakes.write_eva_open_clip(os.path.join(folder, "open_clip_model.safetensors"), fakes.FULL_EVA)
    timings["write random model files"] = time.perf_counter() - start
    start = time.perf_counter()
    models = FaceEncoders.load(os.path.join(folder, "insightface"), eva_path, os.path.join(folder, "facexlib"),
                               providers="auto", device=device, dtype=dtype)
    timings["load models"] = time.perf_counter() - start
    return models, timings


def run(counts=(1, 4, 8), device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 1,
        after_encode=None) -> list[tuple[int, float]]:
    """Returns (images, seconds per image); `after_encode(results)` runs inside the timed region."""
    images = photos()
    with tempfile.TemporaryDirectory(prefix="pulid_bench_") as folder:
        models, timings = build_models(folder, device, dtype)
        for name, seconds in timings.items():
            print(f"{name}: {seconds:.1f} s")
        models.encode(images[:1])  # warm-up: first-call allocations and kernel selection
        rows = []
        for count in counts:
            batch = [images[i % len(images)] for i in range(count)]
            best = float("inf")
            for _ in range(repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                results = models.encode(batch)
                if after_encode is not None:
                    after_encode(results)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            assert all(r.ok for r in results), [r for r in results if not r.ok]
            rows.append((count, best / count))
    return rows


def idformer_step(device: str, dtype: torch.dtype):
    """The rest of the Apply node's encoding: full-size random PuLID ID encoder, ID and uncond tokens, mean fusion."""
    from pulid_flux import OFFICIAL, IDFormer, encode_id, encode_uncond_id, fuse_id_tokens
    from testing.pulid_fakes import random_state_dict

    encoder = IDFormer(OFFICIAL)
    prefix = "pulid_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in random_state_dict(OFFICIAL, dtype=torch.float32).items()
                             if k.startswith(prefix)})
    encoder = encoder.to(device, dtype).eval()

    def step(results):
        id_cond = torch.cat([r.id_cond for r in results])
        hidden = [torch.cat([r.hidden_states[i] for r in results]) for i in range(5)]
        fuse_id_tokens(encode_id(encoder, id_cond, hidden).float())
        encode_uncond_id(encoder, id_cond, hidden)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = run(args.counts, args.device, dtype, args.repeats, after_encode=idformer_step(args.device, dtype))
    print(f"\nreference encoding + PuLID ID encoder on {machine()}: {args.device} {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"{'images':>6}  {'s/image':>8}  {'total s':>8}")
    for count, per_image in rows:
        print(f"{count:>6}  {per_image:>8.2f}  {per_image * count:>8.2f}")


if __name__ == "__main__":
    main()
