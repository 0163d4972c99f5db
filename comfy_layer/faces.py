"""Face mask, Crop face and Paste face in ComfyUI: the checks on what the nodes receive, the face analysis and the
face parser as the other nodes load them, a progress bar over the batch. The geometry is encoders/regions/."""
from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils

from ..encoders.regions import (FaceCrop, FaceCrops, crop_window, locate_batch, paste, refine, rgb_uint8,
                                shape_masks, working_size)
from ..encoders.regions.crops import cut, placeholder_crop
from ..pulid_flux.inputs import InputError, check_images, check_mask, check_number_in
from . import inputs as I
from .models import face_parser, offload

log = logging.getLogger("PuLID-Flux")

MASK_ON_NO_FACE = ("error", "empty mask")
CROP_ON_NO_FACE = ("error", "skip")
FACE_CROP = "PULIDFLUX_FACE_CROP"


class NoFaceError(InputError):
    """An image without the face the node was asked for, with on_no_face 'error'."""


def _check_widget(name: str, value, widget) -> None:
    """A number input against its own widget's range: ComfyUI checks ranges for the UI, an API prompt can send
    anything (NaN passes every comparison)."""
    kind, spec = widget
    check_number_in(name, value, spec["min"], spec["max"], whole=kind == "INT")


def _check_mask_settings(grow, feather) -> None:
    _check_widget("grow", grow, I.GROW)
    _check_widget("feather", feather, I.FEATHER)


def _float_images(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


def _locate(face_analysis, image, faces, face_order, face_index):
    """Check the IMAGE, then detect and pick faces in every image, with a progress bar."""
    check_images(image, "image")
    rgbs = rgb_uint8(image)
    bar = comfy.utils.ProgressBar(len(rgbs))
    located = locate_batch(face_analysis.analysis, rgbs, faces, face_order, face_index,
                           progress=lambda done, total: bar.update_absolute(done, total))
    return located, rgbs


def _without_face(located, node: str, on_no_face: str, lenient: str) -> None:
    """Raise NoFaceError naming the images without a face (on_no_face 'error'), else log one warning for all."""
    missing = [item for item in located if not item.picked]
    if not missing:
        return
    total = len(located)
    where = "; ".join(f"image {item.index + 1} of {total}: {item.reason}" for item in missing[:8])
    more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
    if on_no_face == "error":
        raise NoFaceError(f"{node}: no face to work on in {where}{more}. Fix: use a picture where the face is clearly "
                          f"visible, check faces/face_order/face_index, or set on_no_face to '{lenient}'.")
    log.warning("PuLID-Flux: %s: no face in %s%s (on_no_face '%s').", node, where, more, on_no_face)


def _shape_masks(located, rgbs, shape: str, include_hair: bool) -> list[list[np.ndarray]]:
    """Each picked face's bool mask, image by image; the parser is loaded only for 'parsing' and offloaded after."""
    if shape != "parsing" or not any(item.picked for item in located):
        return [shape_masks(shape, item.picked, rgb) for item, rgb in zip(located, rgbs)]
    parser = face_parser()
    mm.load_models_gpu([parser])
    try:
        return [shape_masks(shape, item.picked, rgb, parser.model.inner, include_hair)
                for item, rgb in zip(located, rgbs)]
    finally:
        offload(parser)


def face_mask_node(face_analysis, image, faces="chosen", face_order="largest", face_index=0, shape="ellipse",
                   grow=0, feather=0, include_hair=False, on_no_face="error") -> tuple[torch.Tensor, int]:
    """(mask [B, H, W] float32, faces detected in the batch): the picked faces' shapes joined, then grown and
    feathered (encoders/regions/masks.py)."""
    _check_mask_settings(grow, feather)
    located, rgbs = _locate(face_analysis, image, faces, face_order, face_index)
    _without_face(located, "Face mask", on_no_face, "empty mask")
    masks = []
    for item, face_masks in zip(located, _shape_masks(located, rgbs, shape, include_hair)):
        union = np.zeros((item.height, item.width), bool)
        for mask in face_masks:
            union |= mask
        masks.append(torch.from_numpy(refine(union, int(grow), int(feather))))
    return torch.stack(masks), sum(len(item.found) for item in located)


def crop_face_node(face_analysis, image, faces="chosen", face_order="largest", face_index=0, context=2.0, size=1024,
                   shape="ellipse", grow=0, feather=0, include_hair=False, on_no_face="error"
                   ) -> tuple[torch.Tensor, torch.Tensor, FaceCrops]:
    """(crops [N, size, size, 3], crop masks [N, size, size], crop_info): one crop per picked face, image-major."""
    _check_widget("context", context, I.CONTEXT)
    _check_widget("size", size, I.CROP_SIZE)
    _check_mask_settings(grow, feather)
    side = working_size(size)
    if side != size:
        log.warning("PuLID-Flux: Crop face: size %s is not a multiple of 16 (Flux's latent grid); using %d.", size,
                    side)
    located, rgbs = _locate(face_analysis, image, faces, face_order, face_index)
    _without_face(located, "Crop face", on_no_face, "skip")
    pictures = _float_images(image)
    crops, crop_masks, items = [], [], []
    for item, face_masks in zip(located, _shape_masks(located, rgbs, shape, include_hair)):
        for face, mask in zip(item.picked, face_masks):
            window = crop_window(face.bbox, item.height, item.width, context)
            full = torch.from_numpy(refine(mask, int(grow), int(feather)))
            crop, crop_mask, window_mask = cut(pictures[item.index], full, window, side)
            crops.append(crop)
            crop_masks.append(crop_mask)
            items.append(FaceCrop(item.index, *window, window_mask))
    if not items:  # on_no_face 'skip' and no face anywhere: one stand-in so the graph runs; Paste changes nothing
        crop, stand_in = placeholder_crop(pictures[0], side)
        crops, crop_masks, items = [crop], [torch.zeros(side, side)], [stand_in]
    pixels = torch.stack(crops).contiguous()
    info = FaceCrops(image.shape[0], image.shape[1], image.shape[2], side, items, pixels)
    return pixels, torch.stack(crop_masks), info


def _check_crop_info(image, crops, crop_info) -> None:
    if not isinstance(crop_info, FaceCrops):
        raise InputError(f"crop_info: expected the crop_info output of Crop face (PuLID-Flux), got "
                         f"{type(crop_info).__name__}. Connect Crop face's crop_info.")
    batch, height, width = image.shape[:3]
    if (batch, height, width) != (crop_info.batch_size, crop_info.height, crop_info.width):
        raise InputError(
            f"image is {batch} image(s) of {width}x{height} px, but crop_info was made from {crop_info.batch_size} "
            f"image(s) of {crop_info.width}x{crop_info.height} px. Fix: connect the image batch the crops were cut "
            f"from (the same one Crop face received) to image.")
    if crops.shape[0] != len(crop_info):
        raise InputError(
            f"crops holds {crops.shape[0]} image(s), but crop_info describes {len(crop_info)} crop(s). Fix: connect "
            f"the crops made from this crop_info's crops (a node in between must keep one image per crop, in order).")


def _paste_mask(mask, crops, crop_info) -> torch.Tensor | None:
    mask = check_mask(mask, "mask")
    if mask is None:
        return None
    mask = mask[None] if mask.dim() == 2 else mask
    if mask.shape[0] not in (1, len(crop_info)):
        raise InputError(f"mask holds {mask.shape[0]} masks for {len(crop_info)} crops. Fix: connect one mask per "
                         f"crop (as Crop face's crop_masks), or a single mask for all of them.")
    sizes = {(crops.shape[1], crops.shape[2]), (crop_info.size, crop_info.size)}
    if (mask.shape[1], mask.shape[2]) not in sizes:
        wanted = " or ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise InputError(f"mask is {mask.shape[2]}x{mask.shape[1]} px, but it replaces the face masks in crop space: "
                         f"{wanted} px (the crops' size). Fix: connect a mask made at the crops' size (Crop face's "
                         f"crop_masks, or a mask node fed by the crops).")
    return mask.float()


def paste_face_node(image, crops, crop_info, mask=None) -> torch.Tensor:
    """The image batch with the processed crops pasted back through their masks (encoders/regions/crops.py)."""
    check_images(image, "image")
    check_images(crops, "crops")
    _check_crop_info(image, crops, crop_info)
    masks = _paste_mask(mask, crops, crop_info)
    return paste(_float_images(image), _float_images(crops), crop_info, masks)
