"""Which diffusion models PuLID-Flux v0.9 can serve: FLUX.1 and the models built on it, nothing else.

Decided by family, never by width or by Python class: FLUX.2 Klein has FLUX.1's hidden size (3072), and in
ComfyUI FLUX.2, LongCat-Image, Chroma and Chroma Radiance all subclass the FLUX.1 base model. The family comes
from ComfyUI's model config (`base_model.model_config`: its class name and `unet_config`, filled by model
detection from the file's keys) and from the block layout. Duck-typed on those attributes: no ComfyUI imports."""
from __future__ import annotations

from typing import Any

SERVED = "FLUX.1 models (dev, schnell, Krea, Kontext, Fill, and fine-tunes of them) and Chroma"

# ComfyUI model config classes (comfy/supported_models.py) of the FLUX.1 family. Krea, Kontext and FLUX.1
# fine-tunes load as Flux; Fill as FluxInpaint. Chroma keeps FLUX.1's blocks (its `vec` is a modulation tuple).
FLUX1_CONFIGS = frozenset({"Flux", "FluxSchnell", "FluxInpaint", "Chroma"})
FLUX1_IMAGE_MODELS = frozenset({"flux", "chroma"})

# Families ComfyUI knows that PuLID-Flux cannot serve, by config class; a name not listed is shown as it is.
REFUSED_CONFIGS = {
    "Flux2": "FLUX.2", "LongCatImage": "LongCat-Image", "QwenImage": "Qwen-Image",
    "HunyuanImage21": "HunyuanImage 2.1", "HunyuanImage21Refiner": "HunyuanImage 2.1 refiner",
    "ChromaRadiance": "Chroma Radiance (pixel space)", "HiDream": "HiDream", "HiDreamO1": "HiDream-O1",
    "Krea2": "Krea 2 (not FLUX.1 Krea)", "SD3": "Stable Diffusion 3", "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner",
    "SD15": "Stable Diffusion 1.5", "SD20": "Stable Diffusion 2", "SD21UnclipL": "Stable Diffusion 2",
    "SD21UnclipH": "Stable Diffusion 2", "AuraFlow": "AuraFlow", "Lumina2": "Lumina 2", "Omnigen2": "OmniGen2",
    "PixArtAlpha": "PixArt", "PixArtSigma": "PixArt", "HunyuanDiT": "Hunyuan-DiT", "HunyuanDiT1": "Hunyuan-DiT",
}
REFUSED_IMAGE_MODELS = {"flux2": "FLUX.2", "chroma_radiance": "Chroma Radiance (pixel space)",
                        "qwen_image": "Qwen-Image", "hidream": "HiDream"}


class ModelFamilyError(ValueError):
    pass


def _config_names(config: Any) -> list[str]:
    return [c.__name__ for c in type(config).__mro__] if config is not None else []


def refused_family(base_model: Any) -> str | None:
    """What the model is when PuLID-Flux cannot serve it ("FLUX.2 model", for the message), or None for FLUX.1."""
    config = getattr(base_model, "model_config", None)
    unet = getattr(config, "unet_config", None) or {}
    dm = getattr(base_model, "diffusion_model", None)
    config_name = type(config).__name__ if config is not None else None
    if config_name in REFUSED_CONFIGS:
        return f"{REFUSED_CONFIGS[config_name]} model"
    image_model = unet.get("image_model")
    if image_model in REFUSED_IMAGE_MODELS:
        return f"{REFUSED_IMAGE_MODELS[image_model]} model"
    # The block layout: what FLUX.1 has and its descendants do not (a config class a custom loader made, say).
    if hasattr(dm, "double_stream_modulation_img") or hasattr(dm, "nerf_blocks"):
        return "FLUX.2 model" if hasattr(dm, "double_stream_modulation_img") else "Chroma Radiance (pixel space) model"
    if unet.get("txt_ids_dims"):  # FLUX.1 has plain text positions; LongCat-Image and Ovis-Image have their own
        return f"Flux-layout model with LongCat-Image/Ovis-Image text positions (ComfyUI config {config_name})"
    if unet.get("yak_mlp") or unet.get("txt_norm"):
        return f"Flux-layout model with an Ovis-Image MLP or text norm (ComfyUI config {config_name})"
    if dm is None and config is None:
        return f"non-diffusion-model input ({type(base_model).__name__})"
    if not (hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks")):
        return f"{config_name or type(base_model).__name__} model without Flux blocks"
    if config is None or (FLUX1_CONFIGS & set(_config_names(config))
                          and image_model in FLUX1_IMAGE_MODELS | {None}):
        return None
    return f"{config_name} model"


def check_flux1(base_model: Any) -> tuple[int, int]:
    """(double blocks, single blocks) of a FLUX.1-family model; ModelFamilyError naming the model otherwise."""
    family = refused_family(base_model)
    if family is not None:
        raise ModelFamilyError(f"This is a {family}; PuLID-Flux v0.9 works with {SERVED}. Connect the "
                               f"MODEL output of a FLUX.1 checkpoint or UNet loader.")
    dm = base_model.diffusion_model
    return len(dm.double_blocks), len(dm.single_blocks)
