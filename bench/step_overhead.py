"""Per-step cost of the PuLID patch on ComfyUI's own Flux blocks, beside the FLOP floor of the same configuration.

  COMFYUI_PATH=/path/to/ComfyUI python bench/step_overhead.py            # CPU: 2 double + 4 single blocks
  COMFYUI_PATH=/path/to/ComfyUI python bench/step_overhead.py --gpu      # full 19+38 blocks, bf16, 1024x1024

Three runs of one denoising step, interleaved: plain Flux; Flux with our patches (the objects ApplyPulidFlux
installs, driven the way ComfyUI's sampler drives them); and a straightforward reference (plain block calls
with `img = img + w * CA(id, img)` after the chosen blocks, no ComfyUI machinery)."""
import argparse
import os
import sys

import torch

D = 3072  # FLUX.1 hidden size


def flux_flops(n_img: int, n_txt: int, n_double: int, n_single: int, hidden: int = D) -> float:
    """FLOPs of one Flux forward per sample: the blocks' matrix products and attention (embedders, modulation and
    the final layer are left out: under 1 % at 1024²). bench/gpu checks this count against torch's FLOP counter."""
    L = n_img + n_txt
    attn = 4 * L * L * hidden  # QK^T and AV
    double = 2 * 12 * hidden * hidden * L + attn  # per token: qkv 3D² + proj D² + mlp 8D² in its own stream
    single = 2 * 12 * hidden * hidden * L + attn  # linear1 7D², linear2 5D²
    return n_double * double + n_single * single


def ca_flops(n_img: int, n_ca: int, id_tokens=32, inner=2048, hidden: int = D) -> float:
    """FLOPs the ID cross-attentions add per sample (keys/values of the ID tokens are made once per run)."""
    return n_ca * (2 * 2 * n_img * hidden * inner + 4 * n_img * id_tokens * inner)  # to_q + to_out, attention


def build(n_double, n_single, dtype, device):
    """Full-width FLUX.1 with few blocks, through ComfyUI's own loading path (its detection fills the config)."""
    import comfy.sd

    from support.flux_fakes import random_flux1_state_dict

    state = random_flux1_state_dict(n_double, n_single, seed=0, dtype=dtype)
    patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})
    return patcher.model.diffusion_model.to(device).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", help="image sizes in pixels")
    ap.add_argument("--blocks", type=int, nargs=2, help="double single")
    ap.add_argument("--txt", type=int, help="text tokens")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--cfg", type=int, default=1, help="2 = cond+uncond batch (cfg>1)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # here, not at import: bench/gpu imports the counts
    from common import import_comfyui, machine, timed_interleaved

    import_comfyui(cpu=not args.gpu)
    from pulid_flux import OFFICIAL, PulidFlux, injection_points
    from support.pulid_fakes import random_state_dict
    from pulid_flux.patch import IdBlockPatch, PulidApplication, SharedWrapper

    device = "cuda" if args.gpu else "cpu"
    dtype = torch.bfloat16 if args.gpu else torch.float32
    n_double, n_single = args.blocks or ((19, 38) if args.gpu else (2, 4))
    sizes = args.sizes or ([1024] if args.gpu else [256, 512])
    n_txt = args.txt or (512 if args.gpu else 128)
    repeats = args.repeats or (10 if args.gpu else 3)
    torch.set_grad_enabled(False)

    flux = build(n_double, n_single, dtype, device)
    pulid = PulidFlux(OFFICIAL)
    pulid.load_state_dict(random_state_dict(OFFICIAL, dtype=torch.float32))
    pulid = pulid.to(device, dtype).eval()
    points = injection_points(n_double, n_single)
    id_tokens = torch.randn(1, 32, 2048) * 3
    app = PulidApplication(pulid.pulid_ca, id_tokens, id_tokens * 0, 1.0, 0.0, 1.0, lambda p: 1.0 - p, uncond="same")
    dit = {(kind, i): IdBlockPatch(app, ca, kind.split("_")[0]) for (kind, i), ca in points.items()}
    wrappers = {"diffusion_model": {"pulid_flux": [SharedWrapper(app.diffusion_model)]}}
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)

    print(f"# step_overhead on {machine()}, Flux {n_double}+{n_single} blocks (width {D}), {len(points)} ID "
          f"cross-attentions, {dtype}, {n_txt} text tokens, batch {args.cfg}, median of {repeats}")
    print("| image | img tokens | plain s/step | patched s/step | reference s/step | patched/plain | FLOP floor "
          "| overhead / floor overhead | ours vs reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        g = torch.Generator().manual_seed(size)
        x = torch.randn(args.cfg, 16, size // 8, size // 8, generator=g).to(device, dtype)
        ctx = torch.randn(args.cfg, n_txt, 4096, generator=g).to(device, dtype)
        y = torch.randn(args.cfg, 768, generator=g).to(device, dtype)
        t = torch.full((args.cfg,), 0.5, device=device)
        guidance = torch.full((args.cfg,), 3.5, device=device)
        base_opts = {"sigmas": t, "cond_or_uncond": [1, 0][:args.cfg]}
        patched_opts = dict(base_opts, patches_replace={"dit": dit}, wrappers=wrappers)
        n_img = (size // 16) ** 2

        def plain():
            flux(x, t, ctx, y, guidance, transformer_options=dict(base_opts))

        def patched():
            app._loose_run.kv.clear()  # as at the start of a sampling run: keys/values once per run, not per step
            flux(x, t, ctx, y, guidance, transformer_options=dict(patched_opts))

        def reference():
            reference_step(flux, pulid, x, t, ctx, y, guidance, id_tokens.to(device, dtype), points)

        plain(), patched(), reference()  # warm-up
        r = timed_interleaved({"plain": plain, "patched": patched, "reference": reference}, repeats, sync)
        f_flux, f_ca = flux_flops(n_img, n_txt, n_double, n_single), ca_flops(n_img, len(points))
        floor = 1 + f_ca / f_flux
        ratio = r["patched"] / r["plain"]
        print(f"| {size}² | {n_img} | {r['plain']:.3f} | {r['patched']:.3f} | {r['reference']:.3f} | {ratio:.4f} | "
              f"{floor:.4f} | {(ratio - 1) / (floor - 1):.2f}x | {r['patched'] / r['reference']:.3f} |")


def reference_step(flux, pulid, x, t, ctx, y, guidance, id_tokens, points):
    """Flux forward written out with plain block calls and the official ID update (cat/split of the stream)."""
    from comfy.ldm.flux.layers import timestep_embedding

    img, img_ids = flux.process_img(x)
    txt_ids = torch.zeros((x.shape[0], ctx.shape[1], 3), device=x.device, dtype=x.dtype)
    img = flux.img_in(img)
    vec = flux.time_in(timestep_embedding(t, 256).to(img.dtype))
    vec = vec + flux.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
    vec = vec + flux.vector_in(y)
    txt = flux.txt_in(ctx)
    pe = flux.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
    for i, block in enumerate(flux.double_blocks):
        img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        if ("double_block", i) in points:
            img = img + pulid.pulid_ca[points[("double_block", i)]](id_tokens, img)
    img = torch.cat((txt, img), 1)
    T = txt.shape[1]
    for i, block in enumerate(flux.single_blocks):
        img = block(img, vec=vec, pe=pe)
        if ("single_block", i) in points:
            real, txt_part = img[:, T:], img[:, :T]
            real = real + pulid.pulid_ca[points[("single_block", i)]](id_tokens, real)
            img = torch.cat((txt_part, real), 1)
    return flux.final_layer(img[:, T:], vec)


if __name__ == "__main__":
    main()
