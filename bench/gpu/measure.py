"""The measurements: sampling steps through ComfyUI's own sampler (plain and patched interleaved), peak VRAM,
torch.compile the way ComfyUI's TorchCompileModel node applies it (graph breaks counted), the encoders per photo, the
FLOPs torch counts beside the analytic count, and the device's own matrix-product rate for the FLOP floors."""
from __future__ import annotations

import collections
import logging
import os
import re
import statistics
import time
from contextlib import contextmanager

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed(device: str, into: list):
    synchronize(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    into.append(time.perf_counter() - start)


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of one large matrix product on this device (the floors divide FLOPs by it): median of 10 after 3."""
    n = 8192 if device.startswith("cuda") else 512
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen, device=device).to(dtype) for _ in range(2))
    times: list[float] = []
    for i in range(13):
        with timed(device, times if i >= 3 else []):
            torch.mm(a, b)
    return 2 * n ** 3 / statistics.median(times)


def conditioning(scale, seed: int):
    """FLUX.1 conditioning as CLIPTextEncode + FluxGuidance make it: T5 tokens, the pooled CLIP-L vector, guidance."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, scale.txt_tokens, scale.context_dim, generator=gen),
             {"pooled_output": torch.randn(1, scale.pooled_dim, generator=gen), "guidance": 3.5}]]


class Sampler:
    """KSampler (euler, simple) on an empty latent: the step times are the intervals between the sampler's
    callbacks, so the first step (model loading, the first call's set-up) is never counted."""

    def __init__(self, scale):
        self.scale = scale
        self.positive, self.negative = conditioning(scale, 1), conditioning(scale, 2)

    def run(self, patcher, size, cfg: float, steps: int, peak: bool = False) -> tuple[list[float], int | None]:
        import comfy.sample

        width, height = size
        latent = comfy.sample.fix_empty_latent_channels(patcher, torch.zeros(1, 16, height // 8, width // 8))
        noise = comfy.sample.prepare_noise(latent, 0)
        device = self.scale.device
        stamps: list[float] = []

        def callback(step, x0, x, total_steps):
            synchronize(device)
            stamps.append(time.perf_counter())

        cuda = device.startswith("cuda")
        if cuda and peak:
            synchronize(device)
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():  # as ComfyUI runs every node
            comfy.sample.sample(patcher, noise, steps, cfg, "euler", "simple", self.positive, self.negative, latent,
                                denoise=1.0, callback=callback, disable_pbar=True, seed=0)
        peak_bytes = torch.cuda.max_memory_allocated() if cuda and peak else None
        return [b - a for a, b in zip(stamps, stamps[1:])], peak_bytes


def eager_case(sampler: Sampler, plain, patched, unload_pulid, size, cfg: float) -> dict:
    """Warm-up, then a plain and a patched run for peak VRAM (the cross-attentions unloaded before the plain one),
    then `rounds` interleaved pairs; the VRAM runs' steps are timed too."""
    scale = sampler.scale
    sampler.run(plain, size, cfg, 2)
    sampler.run(patched, size, cfg, 2)
    unload_pulid()
    times = {"plain": [], "patched": []}
    peaks = {}
    for name, model in (("plain", plain), ("patched", patched)):
        steps, peaks[name] = sampler.run(model, size, cfg, scale.steps, peak=True)
        times[name] += steps
    for _ in range(scale.rounds):
        for name, model in (("plain", plain), ("patched", patched)):
            times[name] += sampler.run(model, size, cfg, scale.steps)[0]
    return {"plain_s": statistics.median(times["plain"]), "patched_s": statistics.median(times["patched"]),
            "plain_peak": peaks["plain"], "patched_peak": peaks["patched"], "steps_timed": len(times["plain"])}


def skip_transformer_options_guards(guard_entries):
    """The guard filter ComfyUI's TorchCompileModel node passes (comfy_extras/nodes_torch_compile.py,
    skip_torch_compile_dict): no guards on transformer_options. That module imports comfy_api.latest, which needs
    PyAV, so the check applies the node's two lines itself with ComfyUI's set_torch_compile_wrapper."""
    return [("transformer_options" not in entry.name) for entry in guard_entries]


class GraphBreakLog(logging.Handler):
    """Where dynamo broke the graph, from its graph_breaks log: {(file relative to the repository or
    site-packages, line, explanation): count}."""

    def __init__(self, repo_root: str):
        super().__init__()
        self.repo_root = repo_root
        self.sites: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        site = re.search(r"Graph break in user code at (.+):(\d+)", message)
        if site is None:
            return
        path = site.group(1)
        path = (os.path.relpath(path, self.repo_root) if path.startswith(self.repo_root)
                else path.split("site-packages/")[-1])
        why = re.search(r"Explanation: (.+)", message)
        self.sites[(path, int(site.group(2)), (why.group(1) if why else "?")[:100])] += 1

    def summary(self, top: int = 3) -> list[str]:
        return [f"{path}:{line} x{n} ({why})" for (path, line, why), n in self.sites.most_common(top)]


def compiled_case(sampler: Sampler, plain, patched, size, cfg: float, backend: str, repo_root: str,
                  deadline: float = float("inf")) -> dict:
    """Each variant compiled on its own (dynamo reset before each: with transformer_options unguarded, a graph
    compiled for one variant would be reused for the other), patched first; plain is None when the patched one
    ended past `deadline`. Graph breaks and graphs from
    torch._dynamo's counters, their places from its graph_breaks log (printed too); recompiles = graphs made after
    the warm-up run."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    scale = sampler.scale
    out = {}
    torch._logging.set_logs(graph_breaks=True)
    try:
        for name, variant in (("patched", patched), ("plain", plain)):
            if name == "plain" and time.time() > deadline:
                out[name] = None
                continue
            torch._dynamo.reset()
            counters.clear()
            log = GraphBreakLog(repo_root)
            logging.getLogger("torch").addHandler(log)
            try:
                model = variant.clone()
                set_torch_compile_wrapper(model=model, backend=backend,
                                          options={"guard_filter_fn": skip_transformer_options_guards})
                first: list[float] = []
                with timed(scale.device, first):
                    sampler.run(model, size, cfg, 2)
                graphs = counters["stats"]["unique_graphs"]
                breaks = sum(counters["graph_break"].values())
                times: list[float] = []
                for _ in range(scale.rounds + 1):
                    times += sampler.run(model, size, cfg, scale.steps)[0]
            finally:
                logging.getLogger("torch").removeHandler(log)
            out[name] = {"step_s": statistics.median(times), "first_run_s": first[0], "graphs": graphs,
                         "graph_breaks": breaks, "break_sites": log.summary(),
                         "recompiles": counters["stats"]["unique_graphs"] - graphs}
    finally:
        torch._logging.set_logs()
        torch._dynamo.reset()
    return out


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


@contextmanager
def flop_counter():
    """torch's FLOP counter, also counting the CPU build's flash attention (torch has no formula for it)."""
    from torch.utils.flop_counter import FlopCounterMode

    extra = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        extra[cpu_flash] = _cpu_attention_flops
    with FlopCounterMode(display=False, custom_mapping=extra) as counter:
        yield counter


def counted_step_flops(sampler: Sampler, patcher, size) -> int:
    """FLOPs of one model call (a 1-step sampling run at cfg 1), counted by torch."""
    with flop_counter() as counter:
        sampler.run(patcher, size, 1.0, 1)
    return counter.get_total_flops()


def encoder_case(pack, enc, pulid, scale, photos) -> dict:
    """Per photo: Apply's own encode (comfy_layer/encoding.cached_embedding, cache emptied first: the encoders
    loaded for the pass and offloaded after it), then its stages with the encoders resident: face detection +
    ArcFace (CPU onnxruntime), BiSeNet + EVA-CLIP, the ID encoder; FLOPs of the GPU stages counted once."""
    import comfy.model_management as mm

    encoding = pack.comfy_layer.encoding
    settings = pack.encoders.references.ReferenceSettings()
    device, repeats = scale.device, scale.encode_repeats
    count = photos.shape[0]
    apply_times: list[float] = []
    for _ in range(repeats + 1):
        encoding._cache.clear()
        with timed(device, apply_times):
            with torch.inference_mode():
                embedding = encoding.cached_embedding(pulid, enc.eva, enc.faces, photos, settings)
    patchers = [enc.eva.patcher, enc.parser, pulid.encoder]
    mm.load_models_gpu(patchers)
    encoders = pack.encoders.FaceEncoders(enc.faces.analysis, enc.eva.module, enc.parser.model.inner)
    maker = pack.pulid_flux.curated_fusion.IdTokenMaker(pulid.encoder.model.inner)
    stages = {"locate": [], "embed": [], "id_encoder": []}
    flops = {}
    try:
        with torch.inference_mode():
            for i in range(repeats + 1):
                with timed(device, stages["locate"]):
                    located = encoders.locate_all(photos)
                kept = [item for item in located if isinstance(item, pack.encoders.pipeline.Located)]
                with timed(device, stages["embed"]):
                    faces = encoders.embed(kept, settings.use_gray, settings.batch_size)
                id_cond = torch.cat([f.id_cond for f in faces])
                hidden = [torch.cat([f.hidden_states[s] for f in faces]) for s in range(len(faces[0].hidden_states))]
                with timed(device, stages["id_encoder"]):
                    maker.encode(id_cond, hidden)
            with flop_counter() as counter:
                encoders.embed(kept, settings.use_gray, settings.batch_size)
            flops["embed"] = counter.get_total_flops()
            with flop_counter() as counter:
                maker.encode(id_cond, hidden)
            flops["id_encoder"] = counter.get_total_flops()
    finally:
        pack.comfy_layer.models.offload(*patchers)
    timed_runs = slice(1 if repeats else 0, None)  # the first run warms up, unless it is the only one
    per_photo = {name: statistics.median(values[timed_runs]) / count for name, values in stages.items()}
    return {"apply_s": statistics.median(apply_times[timed_runs]) / count,
            **{f"{k}_s": v for k, v in per_photo.items()},
            "embed_flops": flops["embed"] / count, "id_encoder_flops": flops["id_encoder"] / count,
            "faces": len(kept), "photos": count, "id_tokens": embedding.id_tokens}
