"""Finding our way through forwards written by ComfyUI and by other packs: arguments by parameter name, and the
step caches that reuse whole steps (so start_at/end_at cannot hold on the steps they reuse). No ComfyUI imports."""
from __future__ import annotations

from typing import Any, Callable

# Wrapper keys (model_options["transformer_options"]["wrappers"][type][key]) of known step caches.
STEP_CACHE_WRAPPER_KEYS = {"easycache": "EasyCache", "lazycache": "LazyCache"}


def parameter_index(fn: Callable | None, name: str) -> int | None:
    """Position of parameter `name` among the positional arguments a caller passes to `fn` (a bound method's self
    excluded), or None when the signature does not say (no code object, or no such parameter). Plain attribute
    reads, no cache: torch.compile traces this inside a compiled diffusion model."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        return None
    names = code.co_varnames[:code.co_argcount]
    if name not in names:
        return None
    return names.index(name) - (1 if hasattr(fn, "__self__") else 0)


def transformer_options(fn: Callable | None, args: tuple, kwargs: dict) -> dict:
    """The transformer_options of a call `fn(*args, **kwargs)` seen by a ComfyUI wrapper: by keyword, else at its
    position in fn's signature. ComfyUI passes everything positionally (Flux: x, timestep, context, y, guidance,
    ref_latents, control, transformer_options), and with a ControlNet `control` is a dict before it, so "the first
    dict" is wrong. Without a usable signature: the last positional argument, where ComfyUI's forwards put it."""
    if "transformer_options" in kwargs:
        found = kwargs["transformer_options"]
    else:
        index = parameter_index(fn, "transformer_options")
        if index is not None:
            found = args[index] if index < len(args) else None
        else:
            found = args[-1] if args else None
    return found if isinstance(found, dict) else {}


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
