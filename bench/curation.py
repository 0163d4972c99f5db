"""Cost of curation (figures, verdicts, report, text table, annotated preview) as a share of encoding the same photos.

    python bench/curation.py [--counts 1 4] [--repeats 3] [--size 1024]

No ComfyUI needed. The encoders at full size with random weights: EVA02-CLIP-L-14-336 (304 M parameters), BiSeNet,
synthetic antelopev2 (ONNX) and the PuLID ID encoder (IDFormer), fp32 on the CPU, on real photos (scikit-image
astronaut, people of insightface's t1.jpg, as bench/reference_latency.py) resized to --size. For each count of
photos, measured side by side in one run, interleaved, median of --repeats:

- encode: FaceEncoders.encode (detection, ArcFace, alignment, BiSeNet, EVA-CLIP) + the ID encoder, what Apply
  PuLID-Flux runs on a cold cache;
- curation: measure_references + curate('drop') + build_report + json.dumps + render_table + annotate_previews on
  the preview rows the encoders' crops make; the ratio curation / encode is the figure (issue 17: under 5 %);
- copy: likeness_and_copy of one generated face against the references (Face similarity's extra cost per image)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, git_rev, machine, timed_interleaved  # noqa: E402
from reference_latency import photos  # noqa: E402

if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from encoders import FaceEncoders, load_face_analysis, load_face_parser  # noqa: E402
from encoders.curation.copying import likeness_and_copy  # noqa: E402
from encoders.curation.figures import measure_references  # noqa: E402
from encoders.curation.preview import annotate_previews  # noqa: E402
from encoders.curation.report import build_report, render_table  # noqa: E402
from encoders.curation.selection import CurationError, curate  # noqa: E402
from encoders.eva import eva_from_state_dict  # noqa: E402
from pulid_flux import PulidFlux, encode_id  # noqa: E402
from support import encoder_fakes as fakes  # noqa: E402


def full_size_encoders(root: str) -> tuple[FaceEncoders, torch.nn.Module]:
    fakes.write_antelopev2(os.path.join(root, "insightface", "models", "antelopev2"))
    parser = fakes.write_bisenet(os.path.join(root, "facexlib", "parsing_bisenet.pth"))
    eva = eva_from_state_dict(fakes.random_eva_state_dict(fakes.FULL_EVA), fakes.FULL_EVA)
    encoders = FaceEncoders(load_face_analysis(os.path.join(root, "insightface"), "CPU"), eva,
                            load_face_parser(parser))
    return encoders, PulidFlux().eval().requires_grad_(False).pulid_encoder


def encode(encoders: FaceEncoders, id_encoder, batch) -> list:
    results = encoders.encode(batch, batch_size=16)
    ok = [r for r in results if r.ok]
    encode_id(id_encoder, torch.cat([r.id_cond for r in ok]),
              [torch.cat([r.hidden_states[s] for r in ok]) for s in range(len(ok[0].hidden_states))])
    return results


def curation(results) -> tuple[str, np.ndarray]:
    figures = measure_references(results)
    try:
        kept = curate(figures, "drop")
    except CurationError:  # the synthetic ArcFace may call every photo another person: report it as warn does
        kept = curate(figures, "warn")
    report = build_report(figures, kept)
    rows = np.stack([np.concatenate([r.aligned, r.parsed], axis=1) for r in results if r.ok])
    return json.dumps(report) + render_table(report), annotate_previews(rows, report)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pulid_bench_curation_") as root:
        start = time.perf_counter()
        encoders, id_encoder = full_size_encoders(root)
        print(f"models built in {time.perf_counter() - start:.0f} s")
        images = photos(args.size)
        print(f"\nCuration cost on {machine()}: fp32, torch threads {torch.get_num_threads()}, commit {git_rev()}, "
              f"{args.size}x{args.size} photos, median of {args.repeats}, interleaved\n")
        print("| photos | encode s | curation ms | curation / encode | copy score per generated face ms |")
        print("|---|---|---|---|---|")
        for n in args.counts:
            batch = torch.cat([images[i % len(images)] for i in range(n)])
            results = encode(encoders, id_encoder, batch)  # warm-up, and the results curation works on
            arcface = np.stack([r.id_cond[0, :512].numpy() for r in results if r.ok])
            kps = np.stack([r.kps for r in results if r.ok])
            times = timed_interleaved({
                "encode": lambda: encode(encoders, id_encoder, batch),
                "curation": lambda: curation(results),
                "copy x100": lambda: [likeness_and_copy(arcface[0] + 0.1, arcface, kps[0] + 1.0, kps)
                                      for _ in range(100)],
            }, args.repeats)
            print(f"| {n} | {times['encode']:.2f} | {times['curation'] * 1000:.1f} | "
                  f"{times['curation'] / times['encode'] * 100:.2f} % | {times['copy x100'] * 10:.3f} |")


if __name__ == "__main__":
    main()
