"""The models the GPU check measures, all with random weights and built where they run, nothing read from a hub:
FLUX.1 through ComfyUI's own model detection and model classes, PuLID-Flux through the pack's classes, EVA02-CLIP
through timm, BiSeNet through facexlib, and generated antelopev2-signature ONNX files for InsightFace."""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile

import torch

from .bootstrap import REPO_ROOT

TESTS = os.path.join(REPO_ROOT, "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)  # tests/support: the seeded model generators the tests use

from support.flux_fakes import flux1_shapes, random_flux1_tensor  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Scale:
    """One size of the check: full FLUX.1-dev on a GPU, or a toy on the CPU that runs every code path."""
    name: str
    device: str
    n_double: int
    n_single: int
    widths: dict  # flux1_shapes() widths beside the FLUX.1 ones ({} = FLUX.1 itself, as detection finds it)
    axes_dim: tuple[int, ...] | None
    pulid: str  # "OFFICIAL" or "TINY" (pulid_flux.config)
    eva: str  # "FULL_EVA" or "TINY_EVA" (tests/support/encoder_fakes)
    dtypes: tuple[tuple[str, torch.dtype], ...]  # (label, weight dtype as UNETLoader's weight_dtype sets it)
    sizes: tuple[tuple[int, int], ...]  # (width, height) in pixels
    txt_tokens: int  # T5 tokens: ComfyUI pads FLUX.1 prompts to at least 256
    steps: int  # per sampling run; step times are the intervals between the sampler's callbacks
    rounds: int  # interleaved plain/patched runs after the VRAM runs
    photos: int  # reference photos per encoding
    encode_repeats: int  # timed encodings after a warm-up one (0: the one encoding is the figure)
    compile_backend: str
    compile_cases: tuple[tuple[str, tuple[int, int], float], ...]  # (dtype label, size, cfg)
    budget_s: float  # the measurements stop starting new rows after this long (the rest say "skipped")
    compile_reserve_s: float  # a torch.compile row starts only while this much of the budget is left

    @property
    def hidden(self) -> int:
        return self.widths.get("hidden", 3072)

    @property
    def context_dim(self) -> int:
        return self.widths.get("context_in_dim", 4096)

    @property
    def pooled_dim(self) -> int:
        return self.widths.get("vec_in_dim", 768)


FULL = Scale("full", "cuda", 19, 38, {}, None, "OFFICIAL", "FULL_EVA",
             (("bf16", torch.bfloat16), ("fp8_e4m3fn", torch.float8_e4m3fn)), ((1024, 1024), (1024, 1536)),
             txt_tokens=256, steps=6, rounds=2, photos=4, encode_repeats=2, compile_backend="inductor",
             compile_cases=(("bf16", (1024, 1024), 1.0),), budget_s=390.0, compile_reserve_s=200.0)
# Width 48 = the TINY PuLID config's img_dim; ComfyUI's detection reads the FLUX.1 layout, the widths are set after.
TOY = Scale("toy", "cpu", 2, 4, dict(hidden=48, heads=2, context_in_dim=32, vec_in_dim=16), (4, 10, 10),
            "TINY", "TINY_EVA", (("fp32", torch.float32), ("fp8_e4m3fn", torch.float8_e4m3fn)),
            ((256, 256), (256, 384)), txt_tokens=64, steps=3, rounds=1, photos=1, encode_repeats=0,
            compile_backend="eager",
            compile_cases=(("fp32", (256, 256), 1.0),), budget_s=float("inf"), compile_reserve_s=0.0)


def build_flux(scale: Scale, dtype: torch.dtype, seed: int = 0):
    """FLUX.1-dev as ComfyUI's UNETLoader makes it from a file of the official key layout, but built on the device
    with no file: detection reads a state dict of meta tensors (shapes only), `get_model` creates the weights on the
    device in the weight dtype (fp8 weights with a bf16 manual cast, as weight_dtype fp8_e4m3fn does), and they are
    filled in place, one tensor at a time. Returns a ModelPatcher whose offload device is the GPU (as --highvram:
    nothing is copied to the host between the runs)."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    shapes = flux1_shapes(scale.n_double, scale.n_single, **scale.widths)
    meta = {key: torch.empty(shape, dtype=torch.bfloat16, device="meta") for key, shape in shapes.items()}
    if not scale.widths:
        model_config = comfy.model_detection.model_config_from_unet(meta, "")
    else:  # like tests/support/comfy_harness.tiny_flux: some ComfyUI versions assume width 3072
        config = comfy.model_detection.detect_unet_config(meta, "")
        config.update(hidden_size=scale.hidden, num_heads=scale.widths["heads"], axes_dim=list(scale.axes_dim),
                      context_in_dim=scale.context_dim, vec_in_dim=scale.pooled_dim)
        model_config = comfy.model_detection.model_config_from_unet_config(config, meta)
    if model_config is None or type(model_config).__name__ != "Flux":
        raise RuntimeError(f"ComfyUI did not detect FLUX.1 dev from the official key layout: {model_config!r}")
    device = torch.device(scale.device)
    manual_cast = mm.unet_manual_cast(dtype, device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    base = model_config.get_model(meta, "", device=device)
    # ComfyUI's own key conversion (FLUX.1: RMSNorm `.scale` -> `.weight`), as load_model_weights applies it
    official_key = {id(tensor): key for key, tensor in meta.items()}
    converted = {key: official_key[id(t)] for key, t in model_config.process_unet_state_dict(dict(meta)).items()}
    params = dict(base.diffusion_model.named_parameters())
    built = {key: tuple(p.shape) for key, p in params.items()}
    expected = {key: shapes[official] for key, official in converted.items()}
    if built != expected:
        raise RuntimeError(f"ComfyUI's FLUX.1 differs from the official layout: only built "
                           f"{sorted(set(built) - set(expected))[:5]}, only in the file "
                           f"{sorted(set(expected) - set(built))[:5]}")
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(random_flux1_tensor(converted[key], tuple(param.shape), gen, manual_cast or dtype))
    base.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def build_pulid(pack, scale: Scale):
    """PuLID-Flux at its real size with PyTorch's default random init, made on the device, handed to ComfyUI's
    model management as the loader node does (comfy_layer/models.PulidModel)."""
    cfg = getattr(pack.pulid_flux.config, scale.pulid)
    models = pack.comfy_layer.models
    with torch.device(scale.device):
        model = pack.pulid_flux.PulidFlux(cfg)
    model.eval().requires_grad_(False)
    dtype = models.compute_dtype(torch.device(scale.device))
    return models.PulidModel(f"random PuLID-Flux ({scale.pulid})", model, models.managed(model.pulid_encoder, dtype),
                             models.managed(model.pulid_ca, dtype))


@dataclasses.dataclass
class Encoders:
    eva: object  # comfy_layer.models.EvaModel
    faces: object  # comfy_layer.models.FaceAnalysisModel
    parser: object  # ModelPatcher of BiSeNet
    folder: str


def build_encoders(pack, scale: Scale) -> Encoders:
    """EVA02-CLIP-L-14-336 (timm, random init on the device), BiSeNet (facexlib, random, saved where the pack's
    face_parser() finds it) and InsightFace on generated antelopev2-signature ONNX files (CPU onnxruntime)."""
    import comfy.model_management as mm
    import folder_paths

    from support import encoder_fakes

    models = pack.comfy_layer.models
    folder = tempfile.mkdtemp(prefix="pulid-gpu-check-models-")
    encoder_fakes.write_antelopev2(os.path.join(folder, "insightface", "models", "antelopev2"))
    encoder_fakes.write_bisenet(os.path.join(folder, "facexlib", "parsing_bisenet.pth"))
    folder_paths.add_model_folder_path("facexlib", os.path.join(folder, "facexlib"), is_default=True)
    eva_config = getattr(encoder_fakes, scale.eva)
    trunk = pack.encoders.eva.build_timm_eva(eva_config, device=scale.device)
    eva_module = pack.encoders.EvaClipVision(trunk, eva_config).eval().requires_grad_(False)
    device = torch.device(scale.device)
    eva = models.EvaModel("random EVA02-CLIP", models.managed(eva_module, models.compute_dtype(device),
                                                             mm.text_encoder_offload_device()))
    root = os.path.join(folder, "insightface")
    faces = models.FaceAnalysisModel(root, "CPU", pack.encoders.load_face_analysis(root, "CPU"))
    return Encoders(eva, faces, models.face_parser(), folder)


def face_photos(count: int) -> tuple[torch.Tensor, str]:
    """ComfyUI IMAGE [count,H,W,3]: scikit-image's astronaut (one frontal face), or a seeded texture the stand-in
    detector also finds a face in when that image is not there."""
    try:
        from skimage import data

        photo, what = torch.from_numpy(data.astronaut()).float().div(255.0), "scikit-image astronaut 512x512"
    except Exception:  # noqa: BLE001 - any failure to read the sample: the texture does as well for timing
        gen = torch.Generator().manual_seed(0)
        photo, what = torch.rand(512, 512, 3, generator=gen), "seeded random texture 512x512"
    return photo[None].repeat(count, 1, 1, 1), what
