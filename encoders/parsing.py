"""facexlib BiSeNet face parsing: background, clothes, neck, ears and hat painted white (official PuLID)."""
from __future__ import annotations

import os

import torch
from torch import nn

from .checkpoint import EncoderModelError, load_tensors, model_error

PARSER_FILE = "parsing_bisenet.pth"
PARSER_DOWNLOAD_HINT = (
    f"Download {PARSER_FILE} from https://github.com/xinntao/facexlib/releases/download/v0.2.0/{PARSER_FILE} "
    "into the face parsing models folder.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# background, neck, cloth, hat, ears, earring, necklace (BiSeNet CelebAMask-HQ labels): painted white
BACKGROUND_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)


def find_parser_file(path_or_folder: str) -> str:
    path = os.fspath(path_or_folder)
    if os.path.isdir(path):
        candidates = [os.path.join(path, PARSER_FILE), os.path.join(path, "facexlib", "weights", PARSER_FILE)]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise EncoderModelError(f"face parsing model not found: expected {candidates[0]}\n  {PARSER_DOWNLOAD_HINT}")
        return found
    if not os.path.isfile(path):
        raise EncoderModelError(f"face parsing model not found: {path}\n  {PARSER_DOWNLOAD_HINT}")
    return path


def load_face_parser(path_or_folder: str, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> nn.Module:
    """facexlib BiSeNet(19 classes) from parsing_bisenet.pth (a file, or a folder holding it); nothing downloaded."""
    from facexlib.parsing.bisenet import BiSeNet

    path = find_parser_file(path_or_folder)
    state = load_tensors(path, PARSER_DOWNLOAD_HINT)
    model = BiSeNet(num_class=19)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != expected:
        missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        wrong = sorted(k for k in set(expected) & set(shapes) if shapes[k] != expected[k])
        kind = ("this looks like ParseNet (parsing_parsenet.pth); PuLID uses BiSeNet"
                if any(k.startswith(("encoder.", "decoder.", "body.")) for k in shapes) and missing
                else "not a facexlib BiSeNet (19 classes) state dict")
        details = "; ".join(f"{title}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                            for title, items in (("missing", missing), ("unexpected", unexpected),
                                                 ("wrong shape", wrong)) if items)
        raise model_error(path, f"{kind} ({details}).", PARSER_DOWNLOAD_HINT)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


def _param(module: nn.Module) -> torch.Tensor:
    return next(module.parameters())


@torch.no_grad()
def parse_labels(parser: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> [B,1,H,W] BiSeNet class labels (run on the parser's device and dtype)."""
    p = _param(parser)
    mean = torch.tensor(IMAGENET_MEAN, device=p.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=p.device).view(1, 3, 1, 1)
    x = ((rgb.to(p.device, torch.float32) - mean) / std).to(p.dtype)
    return parser(x)[0].argmax(dim=1, keepdim=True)


def to_gray(rgb: torch.Tensor) -> torch.Tensor:
    gray = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    return gray.repeat(1, 3, 1, 1)


def face_features_image(rgb: torch.Tensor, labels: torch.Tensor, use_gray: bool = True) -> torch.Tensor:
    """White where the label is background-like, the face (gray or colour) elsewhere; [B,3,H,W] in [0,1]."""
    labels = labels.to(rgb.device)
    background = torch.zeros_like(labels, dtype=torch.bool)
    for label in BACKGROUND_LABELS:
        background |= labels == label
    face = to_gray(rgb) if use_gray else rgb
    return torch.where(background, torch.ones_like(rgb), face)
