"""ComfyUI's Flux block-replace protocol, implemented without importing ComfyUI.

A `PulidApplication` is one Apply node's effect. Its 20 `IdBlockPatch`es go into
`model_options["transformer_options"]["patches_replace"]["dit"]`, its wrappers into the ModelPatcher. All of
them return themselves from `__deepcopy__`, so every downstream `ModelPatcher.clone()` shares them instead of
copying the ID tokens and weights."""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .compat import step_cache_name, transformer_options
from .injection import add_id_attention, tokens_mask

log = logging.getLogger(__name__)
UNCOND_MODES = ("same", "uncond_id", "none")
PATCH_SIZE = 2  # Flux packs 2x2 latent pixels into one token


def check_apply_inputs(weight, start_at, end_at) -> None:
    """The checks every Apply-like node makes on its numbers. ComfyUI's API lets NaN through its min/max checks
    (NaN weight gives a black image, NaN start_at silently turns the identity off)."""
    for name, value in (("weight", weight), ("start_at", start_at), ("end_at", end_at)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if start_at > end_at:
        raise ValueError(f"start_at ({start_at}) must not be after end_at ({end_at}).")


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
    active: bool         # the sigma window, decided once for the call: blocks read a plain bool

    @property
    def img_tokens(self) -> int:
        return self.height * self.width


class PulidApplication(_Shared):
    def __init__(self, ca: nn.ModuleList, id_tokens: torch.Tensor, uncond_tokens: torch.Tensor | None,
                 weight: float, start_at: float, end_at: float, percent_to_sigma: Callable[[float], float],
                 mask: torch.Tensor | None = None, uncond: str = "same", models: Sequence[Any] = ()):
        check_apply_inputs(weight, start_at, end_at)
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
        self.sigma_range = self._sigma_range(percent_to_sigma)  # replaced at sampling time by the outer wrapper
        self.forward_info: ForwardInfo | None = None
        self._kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._txt_len: int | None = None
        self._gate: tuple[Any, bool] = (None, False)
        self._call_active: bool | None = None  # set by the APPLY_MODEL wrapper for the model call under way
        self._warned: set[str] = set()

    def models(self) -> list:
        return list(self.extra_models)

    def _sigma_range(self, percent_to_sigma) -> tuple[float, float]:
        return float(percent_to_sigma(self.start_at)), float(percent_to_sigma(self.end_at))

    # --- wrappers -------------------------------------------------------------------------------------
    def wrappers(self) -> dict[str, Callable]:
        """ComfyUI wrapper type (comfy.patcher_extension.WrappersMP's values) -> wrapper function."""
        return {"outer_sample": self.outer_sample, "apply_model": self.apply_model,
                "diffusion_model": self.diffusion_model}

    def outer_sample(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: read the schedule that will really be used (a ModelSamplingFlux node placed
        after Apply changes it) and drop per-run caches afterwards."""
        guider = getattr(executor, "class_obj", None)
        patcher = getattr(guider, "model_patcher", None)
        if patcher is not None:
            sampling = patcher.get_model_object("model_sampling")
            self.sigma_range = self._sigma_range(sampling.percent_to_sigma)
        self._kv.clear()
        self._masks.clear()
        self._warned.clear()
        try:
            return executor(*args, **kwargs)
        finally:  # nothing of this run (GPU tensors included) outlives it
            self._kv.clear()
            self._masks.clear()
            self.forward_info = None
            self._gate = (None, False)
            self._call_active = None

    def apply_model(self, executor, x, t, *args, **kwargs):
        """APPLY_MODEL wrapper. It runs outside the diffusion model, which ComfyUI's TorchCompileModel swaps for
        its compiled version at this level: the sigma window is decided here, once per model call (one float()),
        so the compiled forward and blocks read a plain bool and get no graph break. Also warns once per run when
        a step cache makes the window unreliable."""
        options = transformer_options(getattr(executor, "original", None), (x, t) + args, kwargs)
        if "step_cache" not in self._warned and self.weight != 0.0 and (self.start_at > 0.0 or self.end_at < 1.0):
            cache = step_cache_name(getattr(getattr(executor, "class_obj", None), "diffusion_model", None), options)
            if cache:
                self._warn_once("step_cache", f"PuLID-Flux: {cache} reuses whole sampling steps, so start_at/end_at "
                                f"({self.start_at:g}..{self.end_at:g}) do not hold on the steps it reuses (they keep "
                                f"or lack the identity whatever the window). Lower the cache's threshold, or start "
                                f"the cache after end_at.")
        previous = self._call_active
        self._call_active = self._window_open(options.get("sigmas", t))
        try:
            return executor(x, t, *args, **kwargs)
        finally:
            self._call_active = previous

    def diffusion_model(self, executor, x, timestep, context, *args, **kwargs):
        """DIFFUSION_MODEL wrapper: record the generated image's token grid (Kontext reference tokens come after
        it), the text length, the cond/uncond layout and whether the window is open, for the blocks and for
        forwards that do not pass transformer_options to them."""
        options = transformer_options(getattr(executor, "original", None), (x, timestep, context) + args, kwargs)
        active = self._call_active
        if active is None:  # called without the APPLY_MODEL wrapper: decide here, still once per call
            active = self._window_open(options.get("sigmas", timestep))
        previous = self.forward_info
        self.forward_info = ForwardInfo(
            height=(x.shape[-2] + PATCH_SIZE // 2) // PATCH_SIZE, width=(x.shape[-1] + PATCH_SIZE // 2) // PATCH_SIZE,
            txt_len=context.shape[1], cond_or_uncond=options.get("cond_or_uncond"), active=active)
        try:
            return executor(x, timestep, context, *args, **kwargs)
        finally:
            self.forward_info = previous

    # --- per block ------------------------------------------------------------------------------------
    def _window_open(self, sigma) -> bool:
        """Whether the ID acts at this sigma: weight not 0 and sigma inside [sigma(end_at), sigma(start_at)]."""
        if self.weight == 0.0:
            return False
        if sigma is None:
            return True  # no schedule known at all: behave like an always-on patch
        s = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        start, end = self.sigma_range
        return end <= s <= start

    def _active(self, sigma) -> bool:
        """Fallback for blocks called outside the wrappers: one decision per step, not one GPU sync per block."""
        if self._gate[0] is sigma and sigma is not None:
            return self._gate[1]
        active = self._window_open(sigma)
        self._gate = (sigma, active)
        return active

    def _keys_values(self, ca_index: int, which: str, weight: torch.Tensor):
        key = (ca_index, which, weight.device, weight.dtype)
        kv = self._kv.get(key)
        if kv is None:
            tokens = self.id_tokens if which == "cond" else self.uncond_tokens
            if which == "uncond" and tokens.shape[1] != self.id_tokens.shape[1]:
                # concat fusion: repeating identical tokens leaves attention unchanged and matches the batch
                tokens = tokens.repeat(1, self.id_tokens.shape[1] // tokens.shape[1], 1)
            kv = self.ca[ca_index].id_kv(tokens.to(weight.device, weight.dtype))
            self._kv[key] = kv
        return kv

    def _batch_layout(self, batch: int, cond_or_uncond):
        """Per batch item: 'cond' / 'uncond' / None (no ID attention)."""
        if not cond_or_uncond or self.uncond == "same" or batch % len(cond_or_uncond):
            return ["cond"] * batch
        per = batch // len(cond_or_uncond)
        chosen = "uncond" if self.uncond == "uncond_id" else None
        return [("cond" if c == 0 else chosen) for c in cond_or_uncond for _ in range(per)]

    def _token_weights(self, batch: int, chunks: int, height: int, width: int, device):
        """The mask on the token grid for each batch item (cond and uncond chunks share the latent's mask), and
        the tokens any item needs: only those are computed, so a mask covering a quarter costs a quarter."""
        key = (batch, chunks, height, width, device)
        cached = self._masks.get(key)
        if cached is None:
            per = batch // chunks if chunks and batch % chunks == 0 else batch
            m = tokens_mask(self.mask, height, width, per).repeat(batch // per, 1, 1).to(device)
            needed = (m[..., 0] > 0).any(0).nonzero().flatten()
            cached = (m, None if len(needed) == m.shape[1] else needed)
            self._masks[key] = cached
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
        info = self.forward_info
        img = out["img"]
        if kind == "double":
            self._txt_len = args["txt"].shape[1]
        if not (info.active if info is not None else self._active(options.get("sigmas"))):
            return
        txt_len = 0 if kind == "double" else (info.txt_len if info else self._txt_len)
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
            token_weights, tokens = self._token_weights(img.shape[0], len(cond_or_uncond or [0]), *grid, region.device)
            if tokens is not None and len(tokens) == 0:
                self._warn_once("empty_mask", "PuLID-Flux: the attn_mask covers no part of the image (all black at "
                                              "this size): this identity adds nothing.")
                return
        self._update(region, ca_index, layout, rows, token_weights, tokens)

    def _warn_once(self, what: str, message: str) -> None:
        """One log line per sampling run (the OUTER_SAMPLE wrapper starts a new run), not one per block."""
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)

    def _update(self, region, ca_index, layout, rows, token_weights, tokens) -> None:
        """region[rows][:, tokens] += weight * CA(...); a plain in-place update when nothing is selected."""
        ca = self.ca[ca_index]
        if rows is None:
            k, v = self._keys_values(ca_index, "cond", ca.to_q.weight)
            part, row_index = region, None
        else:
            kvs = [self._keys_values(ca_index, layout[i], ca.to_q.weight) for i in rows]
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
