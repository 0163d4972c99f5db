"""ComfyUI's Flux block-replace protocol, implemented without importing ComfyUI.

A `PulidApplication` is one Apply node's effect. Its 20 `IdBlockPatch`es go into
`model_options["transformer_options"]["patches_replace"]["dit"]`, its wrappers into the ModelPatcher. All of
them return themselves from `__deepcopy__`, so every downstream `ModelPatcher.clone()` shares them instead of
copying the ID tokens and weights."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import weakref
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .compat import step_cache_name, transformer_options, with_transformer_options
from .injection import add_id_attention, tokens_mask

log = logging.getLogger(__name__)
UNCOND_MODES = ("same", "uncond_id", "none")
PATCH_SIZE = 2  # Flux packs 2x2 latent pixels into one token


class _Shared:
    """Shared by every clone: ComfyUI deep-copies model_options on clone()."""

    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):  # ComfyUI calls .to(device) and .to(dtype) on patches; weights move elsewhere
        return self


@dataclasses.dataclass
class ForwardInfo:
    """What the diffusion-model wrapper saw for the forward pass under way."""
    height: int          # token grid of the generated image
    width: int
    txt_len: int
    cond_or_uncond: list[int] | None

    @property
    def img_tokens(self) -> int:
        return self.height * self.width


class SamplingRun:
    """What one sampling run (one OUTER_SAMPLE) keeps: the sigma window of the schedule really used, the ID
    keys/values and token masks computed once per run, the warnings given. Every model call of the run finds it in
    its transformer_options, in whichever thread (v0.29's MultiGPU samples cond and uncond in a thread per device),
    so two runs at once (two clones, a MultiGPU twin) never share it."""

    def __init__(self, sigma_range: tuple[float, float]):
        self.sigma_range = sigma_range
        self.kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.masks: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.warned: set[str] = set()


@dataclasses.dataclass
class ModelCall:
    """One model call: whether the window is open (decided once, outside compiled code: blocks read a bool), the
    forward's layout, and the text length a double block saw (for forwards that do not record the layout)."""
    run: SamplingRun
    active: bool
    info: ForwardInfo | None = None
    txt_len: int | None = None


# Per thread, per application: the call under way, for forwards that call blocks without transformer_options
# (TeaCache-style forwards written by other packs), and the run when the guider has no model_options.
_this_thread = threading.local()
_keys = itertools.count()


def _with_thread_value(key: str, value, fn, *args, **kwargs):
    """fn(*args, **kwargs) with this thread's `key` set to value, and the previous value back after it (runs and
    calls nest: a sampler inside a node inside a sampler)."""
    previous = getattr(_this_thread, key, None)
    setattr(_this_thread, key, value)
    try:
        return fn(*args, **kwargs)
    finally:
        setattr(_this_thread, key, previous)


class PulidApplication(_Shared):
    def __init__(self, ca: nn.ModuleList, id_tokens: torch.Tensor, uncond_tokens: torch.Tensor | None,
                 weight: float, start_at: float, end_at: float, percent_to_sigma: Callable[[float], float],
                 mask: torch.Tensor | None = None, uncond: str = "same", models: Sequence[Any] = ()):
        if uncond not in UNCOND_MODES:
            raise ValueError(f"uncond must be one of {', '.join(UNCOND_MODES)}, got '{uncond}'")
        if uncond == "uncond_id" and uncond_tokens is None:
            raise ValueError("uncond='uncond_id' needs the uncond ID embedding")
        self.ca = ca
        self.id_tokens = id_tokens
        self.uncond_tokens = uncond_tokens
        self.weight = float(weight)
        self.start_at, self.end_at = float(start_at), float(end_at)
        self.mask = mask
        self.uncond = uncond
        self.extra_models = list(models)
        # The window for the schedule known at Apply time; each run reads the schedule really used (OUTER_SAMPLE).
        self.sigma_range = self._sigma_range(percent_to_sigma)
        self._loose_run = SamplingRun(self.sigma_range)  # model calls made outside any sampling run
        key = next(_keys)
        self.run_key, self.call_key, self._loose_key = (f"pulid_flux_run_{key}", f"pulid_flux_call_{key}",
                                                        f"pulid_flux_loose_{key}")
        self._ca_on_device: "weakref.WeakValueDictionary[torch.device, nn.ModuleList]" = weakref.WeakValueDictionary()

    def models(self) -> list:
        return list(self.extra_models)

    def _sigma_range(self, percent_to_sigma) -> tuple[float, float]:
        return float(percent_to_sigma(self.start_at)), float(percent_to_sigma(self.end_at))

    # --- weights per device ---------------------------------------------------------------------------
    def add_weights_for(self, device: torch.device, ca: nn.ModuleList) -> None:
        """A copy of the cross-attentions that a model copy on `device` uses (v0.29's MultiGPU twins): a thread
        sampling there computes there. Held weakly: it lives as long as the copy that owns it."""
        self._ca_on_device[torch.device(device)] = ca

    def weights_for(self, device: torch.device) -> nn.ModuleList:
        if self._ca_on_device:
            found = self._ca_on_device.get(device)
            if found is not None and found is not self.ca:
                return found
        return self.ca

    # --- per run and per call -------------------------------------------------------------------------
    def current_run(self, options: dict) -> SamplingRun:
        run = options.get(self.run_key)
        if run is None:
            run = getattr(_this_thread, self.run_key, None) or self._loose_run
        return run

    def current_call(self, options: dict) -> ModelCall:
        """The call under way: from the call's transformer_options, else this thread's, else (blocks called
        outside the wrappers) one per sigma: one window decision per step, not one GPU sync per block."""
        call = options.get(self.call_key)
        if call is None:
            call = getattr(_this_thread, self.call_key, None)
        if call is None:
            sigma = options.get("sigmas")
            loose = getattr(_this_thread, self._loose_key, None)
            if loose is None or loose[0] is not sigma:
                run = self.current_run(options)
                loose = (sigma, ModelCall(run, self._window_open(sigma, run.sigma_range)))
                setattr(_this_thread, self._loose_key, loose)
            call = loose[1]
        return call

    # --- wrappers -------------------------------------------------------------------------------------
    def wrappers(self) -> dict[str, Callable]:
        """ComfyUI wrapper type (comfy.patcher_extension.WrappersMP's values) -> wrapper function."""
        return {"outer_sample": self.outer_sample, "apply_model": self.apply_model,
                "diffusion_model": self.diffusion_model}

    def outer_sample(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: a new SamplingRun, with the schedule that will really be used (a ModelSamplingFlux
        node placed after Apply changes it), put where every model call of the run finds it: the guider's
        transformer_options (ComfyUI copies them per run and merges them into every call's, MultiGPU threads
        included). Nothing of the run (GPU tensors included) outlives it."""
        guider = getattr(executor, "class_obj", None)
        patcher = getattr(guider, "model_patcher", None)
        sigma_range = self.sigma_range
        if patcher is not None:
            sigma_range = self._sigma_range(patcher.get_model_object("model_sampling").percent_to_sigma)
        run = SamplingRun(sigma_range)
        model_options = getattr(guider, "model_options", None)
        holder = model_options.setdefault("transformer_options", {}) if isinstance(model_options, dict) else None
        if holder is not None:
            holder[self.run_key] = run
        try:
            return _with_thread_value(self.run_key, run, executor, *args, **kwargs)
        finally:
            if holder is not None and holder.get(self.run_key) is run:
                del holder[self.run_key]

    def apply_model(self, executor, x, t, *args, **kwargs):
        """APPLY_MODEL wrapper. It runs outside the diffusion model, which ComfyUI's TorchCompileModel swaps for
        its compiled version at this level: the sigma window is decided here, once per model call (one float()),
        so the compiled forward and blocks read a plain bool and get no graph break. The decision goes with the
        call (its own copy of transformer_options, and this thread for blocks that get none). Also warns once per
        run when a step cache makes the window unreliable."""
        original = getattr(executor, "original", None)
        options = transformer_options(original, (x, t) + args, kwargs)
        run = self.current_run(options)
        if "step_cache" not in run.warned and self.weight != 0.0 and (self.start_at > 0.0 or self.end_at < 1.0):
            cache = step_cache_name(getattr(getattr(executor, "class_obj", None), "diffusion_model", None), options)
            if cache:
                self._warn_once(run, "step_cache", f"PuLID-Flux: {cache} reuses whole sampling steps, so start_at/"
                                f"end_at ({self.start_at:g}..{self.end_at:g}) do not hold on the steps it reuses (they "
                                f"keep or lack the identity whatever the window). Lower the cache's threshold, or "
                                f"start the cache after end_at.")
        call = ModelCall(run, self._window_open(options.get("sigmas", t), run.sigma_range))
        args, kwargs = with_transformer_options(original, (x, t) + args, kwargs, {self.call_key: call})
        return _with_thread_value(self.call_key, call, executor, *args, **kwargs)

    def diffusion_model(self, executor, x, timestep, context, *args, **kwargs):
        """DIFFUSION_MODEL wrapper: record the generated image's token grid (Kontext reference tokens come after
        it), the text length and the cond/uncond layout on the call, for the blocks and for forwards that do not
        pass transformer_options to them."""
        original = getattr(executor, "original", None)
        options = transformer_options(original, (x, timestep, context) + args, kwargs)
        call = options.get(self.call_key)
        own = call is None
        if own:  # called without the APPLY_MODEL wrapper: decide here, still once per call
            run = self.current_run(options)
            call = ModelCall(run, self._window_open(options.get("sigmas", timestep), run.sigma_range))
            args, kwargs = with_transformer_options(original, (x, timestep, context) + args, kwargs,
                                                    {self.call_key: call})
            x, timestep, context, args = args[0], args[1], args[2], args[3:]
            previous_call = getattr(_this_thread, self.call_key, None)
            setattr(_this_thread, self.call_key, call)
        previous_info = call.info
        call.info = ForwardInfo(
            height=(x.shape[-2] + PATCH_SIZE // 2) // PATCH_SIZE, width=(x.shape[-1] + PATCH_SIZE // 2) // PATCH_SIZE,
            txt_len=context.shape[1], cond_or_uncond=options.get("cond_or_uncond"))
        try:
            return executor(x, timestep, context, *args, **kwargs)
        finally:
            call.info = previous_info
            if own:
                setattr(_this_thread, self.call_key, previous_call)

    # --- per block ------------------------------------------------------------------------------------
    def _window_open(self, sigma, sigma_range: tuple[float, float]) -> bool:
        """Whether the ID acts at this sigma: weight not 0 and sigma inside [sigma(end_at), sigma(start_at)]."""
        if self.weight == 0.0:
            return False
        if sigma is None:
            return True  # no schedule known at all: behave like an always-on patch
        s = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        start, end = sigma_range
        return end <= s <= start

    def _keys_values(self, run: SamplingRun, ca: nn.ModuleList, ca_index: int, which: str, weight: torch.Tensor):
        key = (ca_index, which, weight.device, weight.dtype)
        kv = run.kv.get(key)
        if kv is None:  # two threads of a run on one device may both compute it: same inputs, same result
            tokens = self.id_tokens if which == "cond" else self.uncond_tokens
            if which == "uncond" and tokens.shape[1] != self.id_tokens.shape[1]:
                # concat fusion: repeating identical tokens leaves attention unchanged and matches the batch
                tokens = tokens.repeat(1, self.id_tokens.shape[1] // tokens.shape[1], 1)
            kv = ca[ca_index].id_kv(tokens.to(weight.device, weight.dtype))
            run.kv[key] = kv
        return kv

    def _batch_layout(self, batch: int, cond_or_uncond):
        """Per batch item: 'cond' / 'uncond' / None (no ID attention)."""
        if not cond_or_uncond or self.uncond == "same" or batch % len(cond_or_uncond):
            return ["cond"] * batch
        per = batch // len(cond_or_uncond)
        chosen = "uncond" if self.uncond == "uncond_id" else None
        return [("cond" if c == 0 else chosen) for c in cond_or_uncond for _ in range(per)]

    def _token_weights(self, run: SamplingRun, batch: int, chunks: int, height: int, width: int, device):
        """The mask on the token grid for each batch item (cond and uncond chunks share the latent's mask), and
        the tokens any item needs: only those are computed, so a mask covering a quarter costs a quarter."""
        key = (batch, chunks, height, width, device)
        cached = run.masks.get(key)
        if cached is None:
            per = batch // chunks if chunks and batch % chunks == 0 else batch
            m = tokens_mask(self.mask, height, width, per).repeat(batch // per, 1, 1).to(device)
            needed = (m[..., 0] > 0).any(0).nonzero().flatten()
            cached = (m, None if len(needed) == m.shape[1] else needed)
            run.masks[key] = cached
        return cached

    def _grid(self, info: ForwardInfo | None, n_img: int) -> tuple[int, int] | None:
        if info is not None:
            return info.height, info.width
        side = int(round(n_img ** 0.5))  # no wrapper ran: only a square grid can be assumed
        if side * side == n_img:
            return side, side
        log.warning("PuLID-Flux: image grid unknown; attn_mask ignored for this step")
        return None

    def inject(self, out: dict, args: dict, ca_index: int, kind: str) -> None:
        options = args.get("transformer_options") or {}
        call = self.current_call(options)
        info = call.info
        img = out["img"]
        if kind == "double":
            call.txt_len = args["txt"].shape[1]
        if not call.active:
            return
        txt_len = 0 if kind == "double" else (info.txt_len if info else call.txt_len)
        if txt_len is None:
            log.warning("PuLID-Flux: text length unknown in a single block; ID attention skipped there")
            return
        n_img = info.img_tokens if info else img.shape[1] - txt_len
        region = img[:, txt_len:txt_len + n_img]
        cond_or_uncond = options.get("cond_or_uncond", info.cond_or_uncond if info else None)
        layout = self._batch_layout(img.shape[0], cond_or_uncond)
        rows = None if all(x == "cond" for x in layout) else [i for i, x in enumerate(layout) if x is not None]
        if rows == []:
            return
        token_weights, tokens = None, None
        grid = self._grid(info, n_img) if self.mask is not None else None
        if grid is not None:
            token_weights, tokens = self._token_weights(call.run, img.shape[0], len(cond_or_uncond or [0]), *grid,
                                                        region.device)
            if tokens is not None and len(tokens) == 0:
                self._warn_once(call.run, "empty_mask", "PuLID-Flux: the attn_mask covers no part of the image (all "
                                                        "black at this size): this identity adds nothing.")
                return
        self._update(region, ca_index, layout, rows, token_weights, tokens, call.run)

    @staticmethod
    def _warn_once(run: SamplingRun, what: str, message: str) -> None:
        """One log line per sampling run (the OUTER_SAMPLE wrapper starts a new run), not one per block."""
        if what not in run.warned:
            run.warned.add(what)
            log.warning(message)

    def _update(self, region, ca_index, layout, rows, token_weights, tokens, run: SamplingRun) -> None:
        """region[rows][:, tokens] += weight * CA(...); a plain in-place update when nothing is selected."""
        cas = self.weights_for(region.device)
        ca = cas[ca_index]
        if rows is None:
            k, v = self._keys_values(run, cas, ca_index, "cond", ca.to_q.weight)
            part, row_index = region, None
        else:
            kvs = [self._keys_values(run, cas, ca_index, layout[i], ca.to_q.weight) for i in rows]
            k, v = torch.cat([kv[0] for kv in kvs]), torch.cat([kv[1] for kv in kvs])
            row_index = torch.tensor(rows, device=region.device)
            part = region.index_select(0, row_index)
            if token_weights is not None:
                token_weights = token_weights.index_select(0, row_index)
        chosen = part if tokens is None else part.index_select(1, tokens)
        if tokens is not None:
            token_weights = token_weights.index_select(1, tokens)
        add_id_attention(chosen, ca, k, v, self.weight, token_weights)
        if tokens is not None:
            part.index_copy_(1, tokens, chosen)
        if row_index is not None:
            region.index_copy_(0, row_index, part)


class IdBlockPatch(_Shared):
    """A `patches_replace["dit"]` entry. Wraps whatever patch already sat on the block so both take effect."""

    def __init__(self, app: PulidApplication, ca_index: int, kind: str, previous: Callable | None = None):
        self.app, self.ca_index, self.kind, self.previous = app, ca_index, kind, previous

    def models(self) -> list:
        inner = self.previous.models() if hasattr(self.previous, "models") else []
        return inner + self.app.models()

    def __call__(self, args: dict, extra: dict) -> dict:
        out = self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        self.app.inject(out, args, self.ca_index, self.kind)
        return out


class SharedWrapper(_Shared):
    """A wrapper function that every clone shares (ComfyUI copies wrapper lists, not their items)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)
