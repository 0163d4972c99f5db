"""First Apply identity (Load identity + Apply identity) vs first ApplyPulidFlux on the same reference photo:
seconds and parameter bytes loaded through ComfyUI's model management.

  COMFYUI_PATH=/path/to/ComfyUI python bench/identity.py [--photos 1]

Full-size random models (PuLID-Flux, EVA02-CLIP-L, BiSeNet, synthetic antelopev2, full-width 1+1-block Flux).
Torch kernels are warmed up on another photo first, then the embedding cache is emptied, so "first" means the
first time these photos are seen. The loaders only the ApplyPulidFlux graph needs (EVA-CLIP, InsightFace) are
timed separately."""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ComfyModels, git_rev, machine  # noqa: E402


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1, help="reference photos in the batch (astronaut, flipped...)")
    args = parser.parse_args()
    start = time.perf_counter()
    env = ComfyModels()
    print(f"setup (write and load the test models): {time.perf_counter() - start:.1f} s")
    import comfy.model_management as mm

    pack, H = env.pack, env.harness
    n, N = pack.nodes, pack.NODE_CLASS_MAPPINGS
    loaders = {}
    t = time.perf_counter()
    n.PulidFluxEvaClipLoader().load_eva_clip()
    loaders["EVA-CLIP loader"] = time.perf_counter() - t
    t = time.perf_counter()
    n.PulidFluxInsightFaceLoader().load_insightface("CPU")
    loaders["InsightFace loader"] = time.perf_counter() - t

    photo = H.face_photo()
    image = torch.cat([photo if i % 2 == 0 else torch.flip(photo, dims=[2]) for i in range(args.photos)])
    env.apply(torch.flip(photo, dims=[1]).contiguous())  # warm-up on another photo, then forget everything
    pack.comfy_layer.encoding._cache.clear()
    env.pulid.__dict__.pop("_uncond_tokens", None)
    mm.unload_all_models()

    loaded = []
    real = mm.load_models_gpu

    def spy(models, *a, **k):
        loaded.extend(models)
        return real(models, *a, **k)

    mm.load_models_gpu = spy

    def measure(fn):
        loaded.clear()
        mm.unload_all_models()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        unique = {id(p): p for p in loaded}
        return seconds, sum(p.model_size() for p in unique.values()), len(unique)

    direct = measure(lambda: env.apply(image))
    identity, _ = N["PulidFluxEncodeIdentity"]().encode(env.pulid, env.eva, env.faces, image)["result"]  # cached
    folder = tempfile.mkdtemp(prefix="pulid_identities_")
    H.import_comfyui().add_model_folder_path("pulid_identities", folder, is_default=True)
    N["PulidFluxSaveIdentity"]().save(identity, "bench", True)
    size = os.path.getsize(os.path.join(folder, "bench.safetensors"))

    def via_identity():
        loaded_identity = N["PulidFluxLoadIdentity"]().load("bench.safetensors")["result"][0]
        N["PulidFluxApplyIdentity"]().apply(env.model, env.pulid, loaded_identity, 1.0, 0.0, 1.0)

    by_identity = measure(via_identity)
    mm.load_models_gpu = real

    print(f"\n# identity bench on {machine()}, commit {git_rev()}, device {mm.get_torch_device()}, "
          f"{args.photos} reference photo(s) 512x512")
    print("\n| | seconds | parameter bytes loaded | models loaded |\n|---|---|---|---|")
    print(f"| first ApplyPulidFlux (detect, parse, EVA-CLIP, ID encoder, uncond) | {direct[0]:.3f} | {mib(direct[1])} | "
          f"{direct[2]} |")
    print(f"| first Load identity + Apply identity | {by_identity[0]:.4f} | {mib(by_identity[1])} | {by_identity[2]} |")
    print(f"\nspeed-up: {direct[0] / by_identity[0]:,.0f}x; {mib(direct[1] - by_identity[1])} less loaded; identity file "
          f"{size / 1024:,.0f} KiB")
    print("loaders only the ApplyPulidFlux graph needs: " +
          ", ".join(f"{k} {v:.1f} s" for k, v in loaders.items()))


if __name__ == "__main__":
    main()
