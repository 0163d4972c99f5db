"""Crop and stitch: square windows around faces, cut and resized to a working size, and pasted back through the
face mask so that every pixel where the mask is 0 comes back bit-identical.

Window: a square of side context x the face box's longer side (rounded to whole pixels), centred on the box,
never larger than the image's shorter side (nor under 1 px), shifted to lie inside the image. The working size is
a multiple of 16 (Flux's latent grid: VAE 8 x patch 2). A crop that comes back unchanged (bit-identical to the one
cut) leaves its window as it was: resizing there and back would only soften it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

GRID = 16


def working_size(size: int) -> int:
    """The nearest multiple of 16 (at least 16) to the requested crop size."""
    return max(GRID, int(round(int(size) / GRID)) * GRID)


def crop_window(box, height: int, width: int, context: float = 2.0) -> tuple[int, int, int]:
    """(x, y, side) of the square window around a face box (x1, y1, x2, y2); see the module's text. The box may lie
    partly or wholly outside the image: the window is always inside it."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    longer = max(x2 - x1, y2 - y1, 0.0)
    side = min(max(1, int(round(float(context) * longer))), int(height), int(width))
    x = min(max(int(round((x1 + x2) / 2 - side / 2)), 0), int(width) - side)
    y = min(max(int(round((y1 + y2) / 2 - side / 2)), 0), int(height) - side)
    return x, y, side


def resize_square(pixels: torch.Tensor, side: int, mode: str = "bicubic") -> torch.Tensor:
    """[H, W, C] (or [H, W]) -> [side, side, C] (or [side, side]); the same tensor's values when already that size.
    Bicubic with antialiasing for images (clipped to 0..1), bilinear for masks."""
    flat = pixels.dim() == 2
    if tuple(pixels.shape[:2]) == (side, side):
        return pixels.clone()
    x = (pixels[None, None] if flat else pixels.permute(2, 0, 1)[None]).float()
    resized = F.interpolate(x, size=(side, side), mode=mode, antialias=True, align_corners=False).clamp(0, 1)
    return resized[0, 0] if flat else resized[0].permute(1, 2, 0)


def as_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """[..., C] with C in 1, 3, 4 -> [..., 3] (gray repeated, alpha dropped)."""
    if pixels.shape[-1] == 1:
        return pixels.expand(*pixels.shape[:-1], 3)
    return pixels[..., :3]


@dataclass(eq=False)
class FaceCrop:
    """One crop: where it was cut and the face mask it pastes through (at source resolution, inside the window)."""
    image_index: int
    x: int
    y: int
    side: int
    mask: torch.Tensor  # [side, side] float32 0..1
    placeholder: bool = False  # the whole-image stand-in when no image had a face (all-zero mask)


@dataclass(eq=False)
class FaceCrops:
    """PULIDFLUX_FACE_CROP: every crop of a batch, image-major, and what Paste face checks its inputs against."""
    batch_size: int
    height: int
    width: int
    size: int
    crops: list[FaceCrop] = field(default_factory=list)
    pixels: torch.Tensor | None = field(default=None, repr=False)  # [N, size, size, 3], the crops as cut

    def __len__(self) -> int:
        return len(self.crops)


def cut(image: torch.Tensor, mask: torch.Tensor, window: tuple[int, int, int], size: int
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image [H, W, C] and its face mask [H, W] -> (crop [size, size, 3], crop mask [size, size], the mask inside
    the window [side, side] at source resolution)."""
    x, y, side = window
    window_mask = mask[y:y + side, x:x + side].float().clone()
    crop = resize_square(as_rgb(image[y:y + side, x:x + side]).float(), size)
    return crop, resize_square(window_mask, size, "bilinear"), window_mask


def placeholder_crop(image: torch.Tensor, size: int) -> tuple[torch.Tensor, FaceCrop]:
    """The centred square of image [H, W, C], resized, with an all-zero mask: what Crop face returns when no image
    of the batch has a face, so the graph still runs and Paste face changes nothing."""
    height, width = image.shape[:2]
    side = min(height, width)
    x, y = (width - side) // 2, (height - side) // 2
    crop = resize_square(as_rgb(image[y:y + side, x:x + side]).float(), size)
    return crop, FaceCrop(0, x, y, side, torch.zeros(side, side), placeholder=True)


def unchanged(crop: torch.Tensor, info: FaceCrops, i: int) -> bool:
    """Whether crop i came back bit-identical to the one Crop face cut."""
    cut_pixels = info.pixels
    return (cut_pixels is not None and i < cut_pixels.shape[0] and tuple(crop.shape) == tuple(cut_pixels[i].shape)
            and crop.dtype == cut_pixels.dtype and bool(torch.equal(crop, cut_pixels[i].to(crop.device))))


def _to_channels(piece: torch.Tensor, channels: int) -> torch.Tensor:
    """A pasted piece [s, s, C'] in the image's channel count: RGB for RGB(A) images, luminance for gray ones."""
    rgb = as_rgb(piece)
    if channels == 1:
        return 0.299 * rgb[..., 0:1] + 0.587 * rgb[..., 1:2] + 0.114 * rgb[..., 2:3]
    return rgb


def paste(images: torch.Tensor, crops: torch.Tensor, info: FaceCrops, masks: torch.Tensor | None = None
          ) -> torch.Tensor:
    """The image batch with each processed crop pasted into its window, one after another: out = m * crop +
    (1 - m) * image where the mask m > 0, the image's own values (torch.where, no arithmetic) where m = 0.
    `masks` ([N or 1, h, w], crop space) replaces crop_info's masks; they are resized to each window. A crop that
    came back unchanged is skipped (see the module's text). Alpha (RGBA) is kept; images are float. The caller
    checks sizes and counts (comfy_layer/faces.py)."""
    out = images.clone()
    channels = images.shape[-1]
    for i, item in enumerate(info.crops):
        if item.placeholder or unchanged(crops[i], info, i):
            continue
        x, y, side = item.x, item.y, item.side
        if masks is None:
            m = item.mask
        else:
            m = resize_square(masks[i if masks.shape[0] > 1 else 0].float(), side, "bilinear")
        m = m.to(out.device, out.dtype)[..., None]
        piece = _to_channels(resize_square(crops[i].float(), side), channels).to(out.device, out.dtype)
        target = out[item.image_index, y:y + side, x:x + side, :piece.shape[-1]]
        blended = m * piece + (1 - m) * target
        out[item.image_index, y:y + side, x:x + side, :piece.shape[-1]] = torch.where(m > 0, blended, target)
    return out
