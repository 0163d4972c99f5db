"""Real-ComfyUI test support: find the checkout, import it ahead of this repo, import the pack as a package,
and write the full-width test models (random weights, real file formats) into a models folder."""
import atexit
import importlib
import os
import shutil
import sys
import tempfile

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "comfyui_pulid_flux_under_test"


def comfyui_path() -> str | None:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        parent = os.path.dirname(REPO_ROOT)  # the pack may sit in ComfyUI/custom_nodes/
        if os.path.basename(parent) == "custom_nodes" and os.path.isfile(os.path.join(parent, "..", "comfy", "model_base.py")):
            path = os.path.dirname(parent)
    return os.path.abspath(path) if path else None


def import_comfyui():
    path = comfyui_path()
    if path is None:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the real-ComfyUI tests")
    if sys.path[0] != path:
        sys.path.insert(0, path)  # ComfyUI's `nodes` must win over this repo's nodes.py
    if "nodes" in sys.modules and not getattr(sys.modules["nodes"], "__file__", "").startswith(path):
        del sys.modules["nodes"]
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401 - reads args.cpu
    import folder_paths
    keep_out_of_checkout(folder_paths)
    return folder_paths


def keep_out_of_checkout(folder_paths) -> None:
    """The ComfyUI checkout is read-only test material: whatever a node writes (outputs, previews, user files)
    goes to a temporary folder instead of ComfyUI's own output/, temp/, input/ and user/."""
    if getattr(folder_paths, "_pulid_test_scratch", None):
        return
    scratch = tempfile.mkdtemp(prefix="comfyui-scratch-")
    atexit.register(shutil.rmtree, scratch, True)
    for name in ("output", "temp", "input", "user"):
        os.makedirs(os.path.join(scratch, name))
    folder_paths.set_output_directory(os.path.join(scratch, "output"))
    folder_paths.set_temp_directory(os.path.join(scratch, "temp"))
    folder_paths.set_input_directory(os.path.join(scratch, "input"))
    folder_paths.set_user_directory(os.path.join(scratch, "user"))
    folder_paths._pulid_test_scratch = scratch


def import_pack(tmp_root: str):
    """Import the repo the way ComfyUI does: as a package (relative imports inside)."""
    link = os.path.join(tmp_root, PACK_NAME)
    if not os.path.exists(link):
        os.symlink(REPO_ROOT, link)
    if tmp_root not in sys.path:
        sys.path.append(tmp_root)
    return importlib.import_module(PACK_NAME)


def flux_unet_state_dict(double=1, single=1, seed=0, dtype=torch.float16):
    """Full-width FLUX.1 (hidden 3072, 24 heads) with few blocks, in the official key layout, random weights:
    ComfyUI's UNETLoader / `comfy.sd.load_diffusion_model_state_dict` detect it as FLUX.1 dev."""
    from support.flux_fakes import random_flux1_state_dict

    return random_flux1_state_dict(double, single, seed=seed, dtype=dtype)


def load_flux_state_dict(state: dict):
    """ComfyUI's public loading path (what UNETLoader does with a file): detection fills the config."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(state)
    assert model is not None, "ComfyUI did not recognise the test FLUX.1 state dict"
    return model


PROBE_KEYS = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear2.weight",
              "final_layer.linear.weight")


def tiny_flux(hidden: int, heads: int = 2, axes_dim=(4, 10, 10), double: int = 1, single: int = 1, seed: int = 0,
              std: float = 0.02, context_in_dim: int = 32, vec_in_dim: int = 16, mlp_ratio: float = 2.0):
    """A FLUX.1 narrower than 3072 (for tiny PuLID layouts), on the CPU in float32. ComfyUI's detection decides the
    family and every version-specific field from the FLUX.1 key layout; only the widths are taken from the file,
    because some ComfyUI versions read them from the shapes and others assume 3072."""
    import comfy.model_detection
    import comfy.model_patcher

    assert hidden == heads * sum(axes_dim), "hidden = heads x head width (the sum of axes_dim)"
    widths = dict(hidden=hidden, heads=heads, context_in_dim=context_in_dim, vec_in_dim=vec_in_dim,
                  mlp_ratio=mlp_ratio, guidance=False)
    from support.flux_fakes import random_flux1_state_dict

    state = random_flux1_state_dict(double, single, seed=seed, dtype=torch.float32, std=std, **widths)
    config = comfy.model_detection.detect_unet_config(state, "")
    assert config is not None and config["image_model"] == "flux", config
    config.update(hidden_size=hidden, num_heads=heads, axes_dim=list(axes_dim), context_in_dim=context_in_dim,
                  vec_in_dim=vec_in_dim, mlp_ratio=mlp_ratio)
    model_config = comfy.model_detection.model_config_from_unet_config(config, state)
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model(state, "")
    expected, probes = sum(v.numel() for v in state.values()), {k: state[k].clone() for k in PROBE_KEYS}
    base.load_model_weights(state, "")  # pops what it loads
    loaded = base.diffusion_model.state_dict()
    assert sum(v.numel() for v in loaded.values()) == expected and not state, "the test FLUX.1 layout is not ComfyUI's"
    assert all(torch.equal(loaded[k], v) for k, v in probes.items())
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, cpu, cpu)


def write_models(models_dir: str, flux_double=1, flux_single=1) -> dict:
    from safetensors.torch import save_file

    from support import encoder_fakes as enc_fakes
    from pulid_flux import OFFICIAL
    from support.pulid_fakes import write_pulid_file

    paths = {
        "pulid": write_pulid_file(os.path.join(models_dir, "pulid", "pulid_flux_v0.9.1.safetensors"), OFFICIAL, seed=1,
                                  dtype=torch.bfloat16),
        "antelopev2": enc_fakes.write_antelopev2(os.path.join(models_dir, "insightface", "models", "antelopev2")),
        "eva": enc_fakes.write_eva_baai(os.path.join(models_dir, "clip", "EVA02_CLIP_L_336_psz14_s6B.pt"),
                                        enc_fakes.FULL_EVA, seed=2),
        "parser": enc_fakes.write_bisenet(os.path.join(models_dir, "facexlib", "parsing_bisenet.pth")),
    }
    unet = os.path.join(models_dir, "diffusion_models", "flux_test_1d1s.safetensors")
    os.makedirs(os.path.dirname(unet), exist_ok=True)
    save_file(flux_unet_state_dict(flux_double, flux_single), unet)
    paths["unet"] = unet
    return paths


def register_folders(folder_paths, models_dir: str) -> None:
    for name, sub in (("pulid", "pulid"), ("insightface", "insightface"), ("text_encoders", "clip"),
                      ("facexlib", "facexlib"), ("diffusion_models", "diffusion_models")):
        folder_paths.add_model_folder_path(name, os.path.join(models_dir, sub), is_default=True)


def flux_conditioning(seed=0, tokens=8):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                         "guidance": 3.5}]]


def face_photo() -> torch.Tensor:
    """scikit-image's astronaut (one frontal face) as a ComfyUI IMAGE [1,H,W,3]."""
    from skimage import data

    return torch.from_numpy(data.astronaut()).float().div(255.0)[None]
