"""Tier (a): which models PuLID-Flux serves, decided by family from what ComfyUI's objects carry (config class,
unet_config, block layout), with stand-ins for those objects."""
import pytest

from pulid_flux.family import ModelFamilyError, check_flux1, refused_family


def config_class(name, *bases):
    return type(name, bases or (object,), {})


Flux = config_class("Flux")
Flux2 = config_class("Flux2", Flux)  # as in ComfyUI: FLUX.2's config subclasses FLUX.1's
FluxSchnell = config_class("FluxSchnell", Flux)


class Blocks:
    def __init__(self, double=19, single=38, **extra):
        self.double_blocks, self.single_blocks = [None] * double, [None] * single
        self.__dict__.update(extra)


class Base:
    def __init__(self, config_cls, unet_config=None, dm=None):
        self.model_config = config_cls() if config_cls else None
        if self.model_config is not None:
            self.model_config.unet_config = unet_config if unet_config is not None else {"image_model": "flux"}
        self.diffusion_model = dm if dm is not None else Blocks()


FLUX1 = {
    "dev / Krea / Kontext": Base(Flux, {"image_model": "flux", "guidance_embed": True, "txt_ids_dims": []}),
    "schnell": Base(FluxSchnell, {"image_model": "flux", "guidance_embed": False}),
    "Fill": Base(config_class("FluxInpaint", Flux), {"image_model": "flux", "in_channels": 96}),
    "Chroma": Base(config_class("Chroma"), {"image_model": "chroma"}),
    "a loader's own Flux config": Base(config_class("MyFluxFinetune", Flux), {"image_model": "flux"}),
    "no config (a custom wrapper)": Base(None, dm=Blocks(2, 4)),
}

REFUSED = {  # stand-in -> the name the message must give
    "FLUX.2 dev": (Base(Flux2, {"image_model": "flux2"}, Blocks(8, 48)), "FLUX.2"),
    "FLUX.2 Klein (FLUX.1's width)": (Base(Flux2, {"image_model": "flux2", "hidden_size": 3072},
                                           Blocks(5, 20, hidden_size=3072)), "FLUX.2"),
    "FLUX.2 under another config name": (Base(config_class("Klein", Flux), {"image_model": "flux"},
                                              Blocks(5, 20, double_stream_modulation_img=1)), "FLUX.2"),
    "LongCat-Image": (Base(config_class("LongCatImage"), {"image_model": "flux", "txt_ids_dims": [1, 2]}),
                      "LongCat-Image"),
    "Ovis-like layout on a FLUX.1 config": (Base(FluxSchnell, {"image_model": "flux", "yak_mlp": True,
                                                               "txt_norm": True}), "Ovis-Image"),
    "Qwen-Image": (Base(config_class("QwenImage"), {"image_model": "qwen_image"}, object()), "Qwen-Image"),
    "HunyuanImage": (Base(config_class("HunyuanImage21"), {"image_model": "hunyuan_video"}, object()),
                     "HunyuanImage"),
    "Chroma Radiance": (Base(config_class("ChromaRadiance", config_class("Chroma")),
                             {"image_model": "chroma_radiance"}, Blocks(nerf_blocks=[])), "Chroma Radiance"),
    "SD3": (Base(config_class("SD3"), {"in_channels": 16}, object()), "Stable Diffusion 3"),
    "SDXL": (Base(config_class("SDXL"), {"model_channels": 320}, object()), "SDXL"),
    "an unknown DiT with Flux block names": (Base(config_class("SomeDiT"), {"image_model": "somedit"}), "SomeDiT"),
    "a model without Flux blocks": (Base(None, dm=object()), "Base model without Flux blocks"),
    "not a model": (object(), "non-diffusion-model input (object)"),
}


@pytest.mark.parametrize("name", list(FLUX1))
def test_flux1_family_is_served(name):
    base = FLUX1[name]
    assert refused_family(base) is None
    assert check_flux1(base) == (len(base.diffusion_model.double_blocks), len(base.diffusion_model.single_blocks))


@pytest.mark.parametrize("name", list(REFUSED))
def test_other_families_are_refused_naming_the_model(name):
    base, family = REFUSED[name]
    with pytest.raises(ModelFamilyError) as e:
        check_flux1(base)
    message = str(e.value)
    assert message.startswith("This is a ") and family in message.split(";")[0], message
    assert "PuLID-Flux v0.9 works with FLUX.1 models (dev, schnell, Krea, Kontext, Fill" in message
    assert isinstance(e.value, ValueError)  # ComfyUI shows it as the node's error


def test_width_does_not_decide():
    """FLUX.2 Klein has FLUX.1's width: the same hidden size on both sides, opposite answers."""
    klein, _ = REFUSED["FLUX.2 Klein (FLUX.1's width)"]
    dev = Base(Flux, {"image_model": "flux", "hidden_size": 3072}, Blocks(hidden_size=3072))
    assert refused_family(dev) is None and refused_family(klein) == "FLUX.2 model"
