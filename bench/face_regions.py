"""Face mask and Crop face + Paste face time as a share of one sampling step of the same image (issue 24's
target: under 5 %), measured side by side in one run.

  COMFYUI_PATH=/path/to/ComfyUI python bench/face_regions.py [--sizes 1024] [--repeats 3]

The nodes run as ComfyUI runs them (the pack imported into a real ComfyUI), on scikit-image's astronaut stretched
to size x size, with the generated antelopev2 stand-in and a random BiSeNet (the real parser's architecture and
cost). One sampling step: FLUX.1 (full width, 3072) does not fit this machine with 19+38 blocks, so ComfyUI's own
Flux is built with 1 double + 1 single block and one forward (cfg 1, 512 text tokens, the image's latent) is timed
with no block, only the double block and only the single block; the step of 19+38 blocks is then
fixed + 19 x double + 38 x single. The stand-in detector costs far less than SCRFD-10g, so the real detector's time
is estimated separately from its size (about 13 GFLOPs at 640 x 640) at the FLOP rate the Flux blocks reached."""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, git_rev, machine, timed_interleaved  # noqa: E402

D = 3072
SCRFD_FLOPS = 10e9 * (640 * 640) / (640 * 480)  # SCRFD-10GF: 10 GFLOPs at VGA; the pack detects at 640 x 640


def block_flops(tokens: int) -> float:
    """Matmul FLOPs of one FLUX.1 block (double: both streams; single: the joint stream) on `tokens` tokens."""
    return 2 * 12 * D * D * tokens + 4 * tokens * tokens * D


def build_flux():
    import comfy.sd

    from support.flux_fakes import random_flux1_state_dict

    state = random_flux1_state_dict(1, 1, seed=0, dtype=torch.float32)
    patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.float32})
    return patcher.model.diffusion_model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--txt", type=int, default=512)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from support import comfy_harness as H

    folder_paths = H.import_comfyui()
    if REPO_ROOT not in sys.path:
        sys.path.append(REPO_ROOT)  # after ComfyUI: both have a top-level `nodes`
    from support import encoder_fakes as fakes
    from support import face_regions as FR

    root = tempfile.mkdtemp(prefix="pulid_bench_faces_")
    fakes.write_antelopev2(os.path.join(root, "insightface", "models", "antelopev2"))
    fakes.write_bisenet(os.path.join(root, "facexlib", "parsing_bisenet.pth"))
    for name in ("insightface", "facexlib"):
        folder_paths.add_model_folder_path(name, os.path.join(root, name), is_default=True)
    pack = H.import_pack(root)
    N = pack.NODE_CLASS_MAPPINGS
    faces = pack.nodes.PulidFluxInsightFaceLoader().load_insightface("CPU")[0]
    torch.set_grad_enabled(False)
    flux = build_flux()
    doubles, singles = flux.double_blocks, flux.single_blocks
    print(f"# face_regions on {machine()}, git {git_rev()}, median of {args.repeats}")
    print("| image | Face mask ellipse s | Face mask parsing s | Crop + Paste s | Flux step 19+38 s (scaled) "
          "| mask / step | parsing / step | crop+paste / step | + SCRFD-10g est. s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        image = FR.as_image(FR.photo(size, size))

        def face_mask(shape):
            return N["PulidFluxFaceMask"]().mask(image, faces, "chosen", "largest", 0, shape, 8, 16)

        def crop_and_paste():
            crops, _, info = N["PulidFluxCropFace"]().crop(image, faces, "chosen", "largest", 0, 2.0, 1024,
                                                           "ellipse", 8, 16)
            N["PulidFluxPasteFace"]().paste(image, 1.0 - crops, info)  # changed crops: the full paste path

        g = torch.Generator().manual_seed(size)
        x = torch.randn(1, 16, size // 8, size // 8, generator=g)
        ctx, y = torch.randn(1, args.txt, 4096, generator=g), torch.randn(1, 768, generator=g)
        t, guidance = torch.full((1,), 0.5), torch.full((1,), 3.5)

        def step(n_double, n_single):
            def run():
                flux.double_blocks = torch.nn.ModuleList(list(doubles)[:n_double])
                flux.single_blocks = torch.nn.ModuleList(list(singles)[:n_single])
                try:
                    flux(x, t, ctx, y, guidance, transformer_options={})
                finally:
                    flux.double_blocks, flux.single_blocks = doubles, singles
            return run

        calls = {"mask": lambda: face_mask("ellipse"), "parsing": lambda: face_mask("parsing"),
                 "crop": crop_and_paste, "fixed": step(0, 0), "double": step(1, 0), "single": step(0, 1)}
        for fn in calls.values():
            fn()  # warm-up
        r = timed_interleaved(calls, args.repeats)
        per_double, per_single = r["double"] - r["fixed"], r["single"] - r["fixed"]
        full_step = r["fixed"] + 19 * per_double + 38 * per_single
        tokens = (size // 16) ** 2 + args.txt
        rate = (block_flops(tokens) * (19 + 38)) / (19 * per_double + 38 * per_single)
        scrfd = SCRFD_FLOPS / rate
        print(f"| {size}² | {r['mask']:.3f} | {r['parsing']:.3f} | {r['crop']:.3f} | {full_step:.1f} | "
              f"{r['mask'] / full_step:.3%} | {r['parsing'] / full_step:.3%} | {r['crop'] / full_step:.3%} | "
              f"{scrfd:.3f} ({scrfd / full_step:.3%} of a step) |")
        print(f"|   | fixed {r['fixed']:.2f} s, double block {per_double:.2f} s, single block {per_single:.2f} s "
              f"({rate / 1e9:.0f} GFLOP/s) |||||||")
    import shutil

    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
