"""What stays loaded while sampling, by component, and host memory after downstream clones.

  COMFYUI_PATH=/path/to/ComfyUI python bench/memory.py

Builds the test models (full-size PuLID-Flux, EVA02-CLIP-L, BiSeNet, synthetic antelopev2 and a full-width
1+1-block Flux), runs ApplyPulidFlux and samples, and reads ComfyUI's model management from inside a step:
which models are loaded on the compute device and how many parameter bytes each holds there."""
import os
import sys

import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ComfyModels, machine  # noqa: E402


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main():
    env = ComfyModels()
    import comfy.model_management as mm

    H, pack, comfy_nodes, model, pulid, eva = env.harness, env.pack, env.comfy_nodes, env.model, env.pulid, env.eva
    patched = env.apply(H.face_photo())[0]
    names = {id(model.model): "Flux diffusion model", id(pulid.ca.model): "PuLID ID cross-attentions (20)",
             id(pulid.encoder.model): "PuLID ID encoder (IDFormer)", id(eva.patcher.model): "EVA02-CLIP-L"}
    for patcher in pack.comfy_layer.models._parsers.values():
        names[id(patcher.model)] = "BiSeNet face parsing"
    seen = {}

    def snapshot(args, extra):
        for loaded in mm.current_loaded_models:
            m = loaded.model
            if m is not None:
                seen[names.get(id(m.model), type(m.model).__name__)] = m.loaded_size()
        return extra["original_block"](args)

    probe = patched.clone()
    key = ("double_block", 0)
    inner = probe.model_options["transformer_options"]["patches_replace"]["dit"][key]
    probe.set_model_patch_replace(lambda args, extra: inner(args, {"original_block": lambda a: snapshot(a, extra)}),
                                  "dit", "double_block", 0)
    # keep the CA weights announced to model management (the lambda has no .models())
    probe.set_additional_models("pulid_probe", [pulid.ca])
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    comfy_nodes.common_ksampler(probe, 0, 1, 1.0, "euler", "simple", H.flux_conditioning(0), H.flux_conditioning(1),
                                latent)

    print(f"# memory on {machine()} (device: {mm.get_torch_device()})")
    print("\nLoaded on the compute device during a sampling step (ComfyUI model management):\n")
    print("| component | parameter bytes loaded |\n|---|---|")
    for name, size in seen.items():
        print(f"| {name} | {mib(size)} |")
    for absent in ("PuLID ID encoder (IDFormer)", "EVA02-CLIP-L", "BiSeNet face parsing"):
        if absent not in seen:
            print(f"| {absent} | not loaded (offloaded after encoding) |")

    proc = psutil.Process()
    before = proc.memory_info().rss
    clones = [patched.clone()]
    for _ in range(2):
        clones.append(clones[-1].clone())
    after = proc.memory_info().rss
    same = all(c.model_options["transformer_options"]["patches_replace"]["dit"][key]
               is patched.model_options["transformer_options"]["patches_replace"]["dit"][key] for c in clones)
    print(f"\nHost memory: 3 downstream clone()s added {mib(after - before)} RSS; patches shared, not copied: {same}")


if __name__ == "__main__":
    main()
