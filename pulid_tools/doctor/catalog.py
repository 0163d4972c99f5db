"""Every model file the pack and its example workflows use: exact name, ComfyUI folder and download source.

One list shared by the doctor (what to download where), the example workflows' `properties.models` entries
(ComfyUI's missing-model dialog) and the README table; tests keep the three in agreement."""
from __future__ import annotations

from dataclasses import dataclass

PULID_URL = "https://huggingface.co/guozinan/PuLID/resolve/main/"
ANTELOPEV2_URL = "https://huggingface.co/MonsterMMORPG/tools/resolve/main/antelopev2/"
ANTELOPEV2_ZIP_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"


@dataclass(frozen=True)
class ModelFile:
    name: str       # path relative to the ComfyUI folder, '/'-separated
    directory: str  # ComfyUI folder name (folder_paths), e.g. "pulid", "text_encoders"
    url: str
    purpose: str
    pack: bool = True  # the pack itself needs it (False: only the example workflows)

    def as_workflow_entry(self) -> dict:
        """The form ComfyUI's workflow `properties.models` uses."""
        return {"name": self.name, "url": self.url, "directory": self.directory}


PULID = ModelFile("pulid_flux_v0.9.1.safetensors", "pulid", PULID_URL + "pulid_flux_v0.9.1.safetensors",
                  "PuLID-Flux weights (ID encoder + 20 ID cross-attentions); v0.9.0 also works")
EVA_CLIP = ModelFile("EVA02_CLIP_L_336_psz14_s6B.pt", "clip_vision",
                     "https://huggingface.co/QuanSun/EVA-CLIP/resolve/main/EVA02_CLIP_L_336_psz14_s6B.pt",
                     "EVA02-CLIP-L-14-336 image tower (the pack never downloads it); pulid/ and clip/ (text_encoders/) "
                     "are still searched after clip_vision/")
DETECTOR = ModelFile("models/antelopev2/scrfd_10g_bnkps.onnx", "insightface", ANTELOPEV2_URL + "scrfd_10g_bnkps.onnx",
                     "InsightFace antelopev2 face detector")
RECOGNIZER = ModelFile("models/antelopev2/glintr100.onnx", "insightface", ANTELOPEV2_URL + "glintr100.onnx",
                       "InsightFace antelopev2 ArcFace (identity embedding)")
PARSER = ModelFile("parsing_bisenet.pth", "facexlib",
                   "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
                   "facexlib BiSeNet face parsing (background removal before EVA-CLIP)")
FLUX_DEV = ModelFile("flux1-dev.safetensors", "diffusion_models",
                     "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
                     "FLUX.1 dev (gated: accept the licence on Hugging Face first); any Flux.1 variant works",
                     pack=False)
FLUX_VAE = ModelFile("ae.safetensors", "vae",
                     "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
                     "Flux VAE", pack=False)
CLIP_L = ModelFile("clip_l.safetensors", "text_encoders",
                   "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                   "CLIP-L text encoder for Flux", pack=False)
T5XXL = ModelFile("t5xxl_fp16.safetensors", "text_encoders",
                  "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
                  "T5-XXL text encoder for Flux (t5xxl_fp8_e4m3fn.safetensors for less memory)", pack=False)

FLUX_FILL = ModelFile("flux1-fill-dev.safetensors", "diffusion_models",
                      "https://huggingface.co/black-forest-labs/FLUX.1-Fill-dev/resolve/main/"
                      "flux1-fill-dev.safetensors",
                      "FLUX.1 Fill dev (gated), for the face swap workflow: ComfyUI loads it as FluxInpaint",
                      pack=False)
FLUX_KONTEXT = ModelFile("flux1-kontext-dev.safetensors", "diffusion_models",
                         "https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev/resolve/main/"
                         "flux1-kontext-dev.safetensors",
                         "FLUX.1 Kontext dev (gated), for the Kontext edit workflow", pack=False)

PACK_MODELS = (PULID, EVA_CLIP, DETECTOR, RECOGNIZER, PARSER)
WORKFLOW_MODELS = (FLUX_DEV, FLUX_VAE, CLIP_L, T5XXL)
EDIT_MODELS = (FLUX_FILL, FLUX_KONTEXT)  # one workflow each; the doctor does not ask for them
ALL_MODELS = PACK_MODELS + WORKFLOW_MODELS + EDIT_MODELS
