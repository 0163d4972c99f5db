"""Finding our way through forwards written by ComfyUI and by other packs: arguments by parameter name, and the
step caches that reuse whole steps (so start_at/end_at cannot hold on the steps they reuse). No ComfyUI imports."""
from __future__ import annotations

import types
from typing import Any, Callable

# Wrapper keys (model_options["transformer_options"]["wrappers"][type][key]) of known step caches.
STEP_CACHE_WRAPPER_KEYS = {"easycache": "EasyCache", "lazycache": "LazyCache"}


def parameter_index(fn: Callable | None, name: str) -> int | None:
    """Position of parameter `name` among the positional arguments a caller passes to `fn` (a bound method's self
    excluded), or None when the signature does not say (no code object, or no such parameter). Plain attribute
    reads, no cache: torch.compile traces this inside a compiled diffusion model."""
    code = getattr(fn, "__code__", None)  # a bound method passes its function's __code__ through
    if code is None:
        return None
    names = code.co_varnames[:code.co_argcount]
    if name not in names:
        return None
    # isinstance, not hasattr(fn, "__self__"): under torch.compile hasattr answers False for a bound method
    return names.index(name) - (1 if isinstance(fn, types.MethodType) else 0)


def _options_slot(fn: Callable | None, args: tuple, kwargs: dict) -> str | int | None:
    """Where the transformer_options of a call `fn(*args, **kwargs)` sit: "kw", a position, or None. ComfyUI passes
    everything positionally (Flux: x, timestep, context, y, guidance, ref_latents, control, transformer_options),
    and with a ControlNet `control` is a dict before it, so "the first dict" is wrong. Without a usable signature:
    the last positional argument, where ComfyUI's forwards put it."""
    if "transformer_options" in kwargs:
        return "kw"
    index = parameter_index(fn, "transformer_options")
    if index is None:
        index = len(args) - 1 if args else None
    return index if index is not None and index < len(args) else None


def transformer_options(fn: Callable | None, args: tuple, kwargs: dict) -> dict:
    """The transformer_options of a call `fn(*args, **kwargs)` seen by a ComfyUI wrapper ({} when there are none)."""
    slot = _options_slot(fn, args, kwargs)
    found = kwargs["transformer_options"] if slot == "kw" else (args[slot] if slot is not None else None)
    return found if isinstance(found, dict) else {}


def with_transformer_options(fn: Callable | None, args: tuple, kwargs: dict, extra: dict) -> tuple[tuple, dict]:
    """(args, kwargs) of the same call with a copy of its transformer_options that also holds `extra` (the
    caller's dict is left alone: ComfyUI may reuse it). Unchanged when the call has no transformer_options."""
    slot = _options_slot(fn, args, kwargs)
    current = kwargs["transformer_options"] if slot == "kw" else (args[slot] if slot is not None else None)
    if not isinstance(current, dict):
        return args, kwargs
    updated = {**current, **extra}
    if slot == "kw":
        return args, {**kwargs, "transformer_options": updated}
    return args[:slot] + (updated,) + args[slot + 1:], kwargs


def step_cache_name(diffusion_model: Any, options: dict) -> str | None:
    """The name of a step cache acting on this model call (EasyCache, LazyCache, TeaCache, a first-block cache or
    another replaced Flux forward), or None."""
    holder = options.get("easycache")  # comfy_extras/nodes_easycache.py: EasyCacheHolder or LazyCacheHolder
    if holder is not None:
        return "LazyCache" if type(holder).__name__.startswith("Lazy") else "EasyCache"
    if "rel_l1_thresh" in options:  # ComfyUI-TeaCache puts its threshold there
        return "TeaCache"
    for keyed in (options.get("wrappers") or {}).values():
        for key in keyed:
            if key in STEP_CACHE_WRAPPER_KEYS:
                return STEP_CACHE_WRAPPER_KEYS[key]
    model = getattr(diffusion_model, "_orig_mod", diffusion_model)  # torch.compile's wrapper
    replaced = [n for n in ("forward_orig", "_forward", "forward") if n in getattr(model, "__dict__", {})]
    if replaced:  # TeaCache and WaveSpeed's first-block cache swap the forward in for the call
        return f"a replaced Flux {replaced[0]} (TeaCache or first-block cache style)"
    blocks = getattr(model, "double_blocks", None)
    try:
        if blocks is not None and len(blocks) and "cache" in type(blocks[0]).__name__.lower():
            return "a first-block cache"
    except TypeError:
        pass
    return None
