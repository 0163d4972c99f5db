"""Checks on the tensors the nodes receive (IMAGE, MASK), made where they enter, before any work is done: a bad
value gets an error that names the input and the fix, instead of a crash in the sampler or a silently black photo.
No ComfyUI imports."""
from __future__ import annotations

import logging
import math
import numbers

import torch

log = logging.getLogger("PuLID-Flux")

IMAGE_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA (alpha is dropped)
# An IMAGE holds floats in 0..1; resampling (bicubic, Lanczos) may overshoot a little and is clipped. Values far
# outside mean another scale (0..255, -1..1), which clipping would turn into a white or half-black photo.
IMAGE_RANGE = (-0.5, 1.5)


class InputError(ValueError):
    """A node input that cannot be used; the message names the input and says what to do."""


class EmptyBatchError(InputError):
    """An IMAGE or MASK batch holding nothing (the node feeding it produced no item)."""


def _items(bad: torch.Tensor, noun: str, total: int) -> str:
    index = bad.nonzero().flatten().tolist()
    shown = ", ".join(str(i + 1) for i in index[:8]) + (", ..." if len(index) > 8 else "")
    return f"{noun}{'s' if len(index) > 1 else ''} {shown} of {total}" if total > 1 else f"the {noun}"


def _value_range(values: torch.Tensor, name: str, noun: str) -> tuple[float, float]:
    """(min, max) of a [batch, ...] tensor in one pass (NaN and inf show in them); NaN or inf -> InputError naming
    the batch items that hold them."""
    low, high = (float(v) for v in torch.aminmax(values.detach()))
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    flat = values.detach().reshape(values.shape[0], -1)
    finite = torch.isfinite(flat)
    kinds = " and ".join(k for k, found in (("NaN", bool(torch.isnan(flat).any())),
                                             ("infinite", bool(torch.isinf(flat).any()))) if found)
    where = _items(~finite.all(1), noun, values.shape[0])
    raise InputError(f"{name} holds {kinds} values ({where}): the node that feeds it produced invalid numbers "
                     f"(an overflowing float16 VAE decode or a division by zero upstream does this). Fix that node, "
                     f"or connect another {noun}.")


def check_images(images, name: str = "image") -> None:
    """A ComfyUI IMAGE [batch, height, width, channels] of floats 0..1 (or uint8) with 1, 3 or 4 channels, at least
    one image, no empty image, no NaN/inf, no values far outside 0..1. Raises InputError (EmptyBatchError)."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected an IMAGE (a tensor [batch, height, width, channels]), got "
                         f"{type(images).__name__}. Connect an IMAGE output such as Load Image's.")
    if images.dim() != 4 or images.shape[-1] not in IMAGE_CHANNELS:
        raise InputError(f"{name}: expected an IMAGE [batch, height, width, channels] with 3 (RGB), 4 (RGBA) or 1 "
                         f"(gray) channels, got shape {list(images.shape)}. Connect an IMAGE output (a MASK needs "
                         f"Convert Mask to Image first).")
    if images.shape[0] == 0:
        raise EmptyBatchError(f"{name} is an empty batch (0 images): the node that feeds it produced no image. "
                              f"Connect at least one image.")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"{name}: the images are {images.shape[2]}x{images.shape[1]} px, empty. Connect an image "
                         f"with pixels.")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise InputError(f"{name}: expected float pixels 0..1 (or uint8), got {images.dtype}. Connect an IMAGE output.")
    low, high = _value_range(images, name, "image")
    if low < IMAGE_RANGE[0] or high > IMAGE_RANGE[1]:
        scale = "0..255" if high > IMAGE_RANGE[1] else "-1..1"
        raise InputError(f"{name}: pixel values run from {low:g} to {high:g}, but an IMAGE holds 0..1 (this looks "
                         f"like a {scale} image). Scale it to 0..1 before this node.")


def check_mask(mask, name: str = "attn_mask") -> torch.Tensor | None:
    """A ComfyUI MASK [batch, height, width] (or [height, width]) -> the mask to use: None stays None, values
    outside 0..1 are clipped (a warning says so). An empty batch or an empty mask, another shape, or NaN/inf
    raise InputError (EmptyBatchError): inside sampling they would crash the sampler or silently turn the identity
    off. Batch size and aspect ratio are not checked here (the latent is not known yet): a shorter mask batch
    repeats, a longer one is cut, and the mask is stretched to the image."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name}: expected a MASK (a tensor [batch, height, width]), got {type(mask).__name__}. "
                         f"Connect a MASK output, or leave {name} unconnected to apply everywhere.")
    if mask.dim() not in (2, 3):
        raise InputError(f"{name}: expected a MASK [batch, height, width] or [height, width], got shape "
                         f"{list(mask.shape)}. Connect a MASK output (an IMAGE needs Convert Image to Mask first).")
    if mask.dim() == 3 and mask.shape[0] == 0:
        raise EmptyBatchError(f"{name} is an empty batch (0 masks): the node that feeds it produced no mask. Connect "
                              f"a mask, or leave {name} unconnected to apply the identity to the whole image.")
    if mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise InputError(f"{name} is {mask.shape[-1]}x{mask.shape[-2]} px, empty. Connect a mask with pixels, or "
                         f"leave {name} unconnected to apply the identity to the whole image.")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not (mask.is_floating_point() or mask.dtype in _INTEGER_DTYPES):
        raise InputError(f"{name}: expected mask values 0..1, got a {mask.dtype} tensor. Connect a MASK output.")
    low, high = _value_range(mask if mask.dim() == 3 else mask[None], name, "mask")
    if low < 0 or high > 1:
        log.warning("PuLID-Flux: %s values run from %g to %g; a MASK holds 0..1, so they are clipped to 0..1.",
                    name, low, high)
        return mask.float().clamp(0, 1)
    return mask


def _finite_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def check_number(name: str, value) -> None:
    """A FLOAT widget's value: ComfyUI's API lets NaN and inf through its min/max checks (every comparison with
    NaN is false), so a number input is checked where it enters. Raises InputError naming the input."""
    if not _finite_real(value):
        raise InputError(f"{name} must be a finite number, got {value!r}.")


def check_number_in(name: str, value, low: float, high: float, whole: bool = False) -> None:
    """check_number with the widget's range (and, for an INT widget, a whole number) checked too."""
    if not _finite_real(value) or (whole and value != int(value)) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{name} must be {kind} from {low:g} to {high:g}, got {value!r}.")


def check_apply_inputs(weight, start_at, end_at) -> None:
    """weight, start_at, end_at of the Apply nodes (NaN weight gives a black image, NaN start_at silently turns the
    identity off)."""
    for name, value in (("weight", weight), ("start_at", start_at), ("end_at", end_at)):
        check_number(name, value)
    if start_at > end_at:
        raise ValueError(f"start_at ({start_at}) must not be after end_at ({end_at}).")


def check_copy_penalty(copy_penalty) -> None:
    """Face similarity's copy_penalty: a NaN penalty made every ranking score NaN, and best_index silently fell
    back to image 1."""
    check_number("copy_penalty", copy_penalty)
    if copy_penalty < 0:
        raise InputError(f"copy_penalty must be 0 or more (0 ranks by similarity alone), got {copy_penalty!r}.")


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
