"""State dicts with each family's key names, for ComfyUI's own model detection
(`comfy.sd.load_diffusion_model_state_dict`): the config, the model class and the block layout are ComfyUI's, not
ours. FLUX.1 gets every weight (it samples); the refused families only the keys detection reads (they are refused
before they run, and the weights ComfyUI allocates for the rest stay untouched)."""
import torch

WIDTH = 3072  # FLUX.1's, and FLUX.2 Klein's


def flux1(double=1, single=1, seed=0, dtype=torch.float16, width=WIDTH, in_channels=16):
    """FLUX.1 dev layout (guidance embedding), random weights; detection fills the config from these keys.
    in_channels is what detection reads from `img_in` (2x2 patches: 4 x in_channels features)."""
    mlp, head = 4 * width, 128
    shapes = {"img_in": (width, 4 * in_channels), "txt_in": (width, 4096), "final_layer.linear": (64, width),
              "final_layer.adaLN_modulation.1": (2 * width, width)}
    for name, fan_in in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        shapes[f"{name}.in_layer"], shapes[f"{name}.out_layer"] = (width, fan_in), (width, width)
    for i in range(double):
        for s in ("img", "txt"):
            p = f"double_blocks.{i}.{s}"
            shapes.update({f"{p}_mod.lin": (6 * width, width), f"{p}_attn.qkv": (3 * width, width),
                           f"{p}_attn.proj": (width, width), f"{p}_mlp.0": (mlp, width), f"{p}_mlp.2": (width, mlp)})
    for i in range(single):
        p = f"single_blocks.{i}"
        shapes.update({f"{p}.linear1": (3 * width + mlp, width), f"{p}.linear2": (width, width + mlp),
                       f"{p}.modulation.lin": (3 * width, width)})
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = (torch.randn(shape, generator=g) * 0.02).to(dtype)
        state[f"{name}.bias"] = torch.zeros(shape[0], dtype=dtype)
    norms = [f"double_blocks.{i}.{s}_attn.norm" for i in range(double) for s in ("img", "txt")]
    norms += [f"single_blocks.{i}.norm" for i in range(single)]
    for n in norms:
        for q in ("query_norm", "key_norm"):
            state[f"{n}.{q}.scale"] = torch.ones(head, dtype=dtype)
    return state


def flux1_fill(double=1, single=1, seed=0, dtype=torch.float16):
    """FLUX.1 Fill dev: FLUX.1 dev with 96 input channels (16 latent + 16 masked-image latent + 64 mask), so
    `img_in.weight` is [3072, 384]; ComfyUI detects it as `supported_models.FluxInpaint`."""
    return flux1(double, single, seed, dtype, in_channels=96)


def _keys(shapes, dtype=torch.float16):
    return {k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()}


def flux2_klein(width=WIDTH):
    """FLUX.2 (Klein's width): detected by its shared modulation `double_stream_modulation_img`."""
    return _keys({"img_in.weight": (width, 128), "txt_in.weight": (width, 7680),
                  "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
                  "double_stream_modulation_img.lin.weight": (6 * width, width)})


def longcat_image(width=128):
    """LongCat-Image: FLUX.1's block names, a 3584-wide text input, no pooled vector, its own config."""
    return _keys({"img_in.weight": (width, 64), "txt_in.weight": (width, 3584),
                  "double_blocks.0.img_attn.norm.key_norm.scale": (128,)})


def qwen_image():
    """Qwen-Image (an MMDiT with `transformer_blocks`), one block of its default width."""
    return _keys({"txt_norm.weight": (3584,), "img_in.weight": (3072, 64),
                  "transformer_blocks.0.img_mod.1.weight": (6 * 3072, 3072)})


def sd3(depth=1):
    """Stable Diffusion 3 (MMDiT joint blocks), 64 * depth wide."""
    return _keys({"x_embedder.proj.weight": (64 * depth, 16, 2, 2),
                  "joint_blocks.0.context_block.attn.qkv.weight": (3 * 64 * depth, 64 * depth),
                  "final_layer.linear.weight": (16 * 4, 64 * depth),
                  "context_embedder.weight": (64 * depth, 4096), "pos_embed": (1, 64, 64 * depth),
                  "y_embedder.mlp.0.weight": (64 * depth, 2048)})


REFUSED = {  # family -> (builder, the name the message must give)
    "flux2_klein": (flux2_klein, "FLUX.2"),
    "longcat_image": (longcat_image, "LongCat-Image"),
    "qwen_image": (qwen_image, "Qwen-Image"),
    "sd3": (sd3, "Stable Diffusion 3"),
}


def load(comfy_sd, state):
    """Through ComfyUI's public loading path: detection fills the config, returns a ModelPatcher."""
    model = comfy_sd.load_diffusion_model_state_dict(state)
    if model is None:
        raise AssertionError("ComfyUI did not recognise the state dict")
    return model
