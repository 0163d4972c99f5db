"""The identity file format: the value it holds (Identity), its one writer and its one reader (validated, never
unpickled). Operations on identities (build, blend) are in build.py; the PNG card that carries these same bytes
is card.py. No ComfyUI imports.

File format (`NAME.safetensors`, format name `pulid_flux_identity`, version 1):
  tensors  id_tokens [1,T,D] float32 (fused ID tokens), uncond_tokens [1,Q,D] float32 (true-CFG negative),
           arcface [N,512] float32 (L2-normalised ArcFace of each reference), preview [N,h,w,3] uint8
  metadata format, format_version, pulid_file, pulid_fingerprint, fusion, face_order, face_index, use_gray,
           references, pack_version, created (ISO 8601 UTC), for blends `blend` (JSON), and `fingerprint`: the
           content fingerprint (fingerprint.py) of the tensors and the settings that shaped them.
Bytes: the header is written canonically (sorted keys, compact JSON), so the same identity always gives the same
file; two encodes of the same photos with the same settings differ only in `created`. `fingerprint` is derived, so
it is not kept in Identity.meta: the writer adds it, the reader checks it against the content (files written
before it existed have none and load as before) and drops it."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from .fingerprint import FINGERPRINT_SCHEME, canonical_safetensors, identity_fingerprint
from .store import write_file_atomically
from ..safetensors_file import (SafetensorsFileError, SafetensorsHeader, load_tensors, load_tensors_from_bytes,
                               parse_header, read_header)

FORMAT_NAME = "pulid_flux_identity"
FORMAT_VERSION = 1
ARCFACE_DIM = 512
MAX_FILE_BYTES = 16 * 2**20  # an identity is well under 1 MB; the upload route refuses more
TENSORS = ("id_tokens", "uncond_tokens", "arcface", "preview")
FINGERPRINT_KEY = "fingerprint"
SAVE_HINT = ("Make identity files with the Encode identity + Save identity nodes or "
             "`python -m pulid_tools identity`; PuLID-Flux weights belong in models/pulid, not in models/pulid/identities.")
ENCODE_AGAIN = "encode the identity again from the photos."
# Values a healthy identity stays far inside: ID tokens are of order 1-10 (the cross-attention normalises them, but
# fp16 compute overflows at 65504), ArcFace rows are unit vectors (float32 normalisation: |norm - 1| < 1e-6).
MAX_ABS_TOKEN = 1e4
ARCFACE_NORM_TOLERANCE = 1e-3


class IdentityFileError(SafetensorsFileError):
    """An identity file (or upload) that cannot be used: 'NAME: problem', the path, and 'Fix: ...'."""
    wrong_kind_fix = SAVE_HINT


def _fail(path: str, problem: str, fix: str = SAVE_HINT) -> IdentityFileError:
    return IdentityFileError(path, problem, fix)


@dataclass(frozen=True, eq=False)
class Identity:
    """PULIDFLUX_IDENTITY. Never mutated: blend and load return new objects."""
    id_tokens: torch.Tensor      # [1,T,D] float32 CPU
    uncond_tokens: torch.Tensor  # [1,Q,D] float32 CPU
    arcface: torch.Tensor        # [N,512] float32 CPU, rows L2-normalised
    preview: torch.Tensor        # [N,h,w,3] uint8 CPU
    meta: dict = field(default_factory=dict)  # str -> str, written to the safetensors header
    source: str = ""             # the file it was loaded from ("" when made in this session)

    @property
    def pulid_fingerprint(self) -> str:
        return self.meta.get("pulid_fingerprint", "")

    @property
    def label(self) -> str:
        return os.path.basename(self.source) if self.source else "the identity"

    @cached_property
    def fingerprint(self) -> str:
        """The content fingerprint ('pfid1-' + 32 hex): equal for equal tensors and shaping settings."""
        return identity_fingerprint(identity_tensors(self), self.meta)

    def mean_arcface(self) -> torch.Tensor:
        """[512] unit vector: the normalised mean of the references' normalised ArcFace vectors."""
        return F.normalize(self.arcface.mean(0), dim=0)


# --- checks (the writer's input and the reader's file) -----------------------------------------------------------
_DTYPE_NAMES = {torch.float32: "F32", torch.uint8: "U8", torch.float16: "F16", torch.bfloat16: "BF16"}
_EXPECTED_DTYPES = {"id_tokens": "F32", "uncond_tokens": "F32", "arcface": "F32", "preview": "U8"}


def shape_problem(shapes: dict[str, tuple], dtypes: dict[str, str]) -> str | None:
    missing = [k for k in TENSORS if k not in shapes]
    if missing:
        return f"tensors missing: {', '.join(missing)} (it has {', '.join(sorted(shapes)) or 'none'})"
    for name, want in _EXPECTED_DTYPES.items():
        if dtypes[name] != want:
            return f"'{name}' is {dtypes[name]}, expected {want}"
    ids, unc, arc, pre = (shapes[k] for k in TENSORS)
    if len(ids) != 3 or ids[0] != 1 or ids[1] < 1 or ids[2] < 1:
        return f"wrong shape: id_tokens {list(ids)}, expected [1, tokens, width]"
    if len(unc) != 3 or unc[0] != 1 or unc[2] != ids[2] or unc[1] < 1 or ids[1] % unc[1]:
        return (f"wrong shape: uncond_tokens {list(unc)} does not match id_tokens {list(ids)} "
                f"(expected [1, Q, {ids[2]}] with Q dividing {ids[1]})")
    if len(arc) != 2 or arc[1] != ARCFACE_DIM or arc[0] < 1:
        return f"wrong shape: arcface {list(arc)}, expected [references, {ARCFACE_DIM}]"
    if len(pre) != 4 or pre[3] != 3 or min(pre) < 1:
        return f"wrong shape: preview {list(pre)}, expected [references, height, width, 3]"
    return None


def value_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    for name in ("id_tokens", "uncond_tokens", "arcface"):
        if not torch.isfinite(tensors[name]).all():
            return f"'{name}' holds NaN or infinite values"
    for name in ("id_tokens", "uncond_tokens"):
        biggest = tensors[name].abs().max().item() if tensors[name].numel() else 0.0
        if biggest > MAX_ABS_TOKEN:
            return (f"'{name}' holds values up to {biggest:.3g}, far outside what the ID encoder gives (|x| <= "
                    f"{MAX_ABS_TOKEN:g})")
    norms = tensors["arcface"].double().norm(dim=-1)
    off = (norms - 1).abs()
    if off.numel() and off.max().item() > ARCFACE_NORM_TOLERANCE:
        row = int(off.argmax())
        return (f"ArcFace row {row} has length {norms[row].item():.6g}; the format stores unit vectors (length 1 "
                f"within {ARCFACE_NORM_TOLERANCE:g})")
    return None


def identity_problem(identity: Identity) -> str | None:
    """What keeps an in-memory identity from being a valid file, or None."""
    tensors = identity_tensors(identity)
    return (shape_problem({k: tuple(t.shape) for k, t in tensors.items()},
                          {k: _DTYPE_NAMES.get(t.dtype, str(t.dtype)) for k, t in tensors.items()})
            or value_problem(tensors))


def whole_number(text: str) -> int | None:
    return int(text) if isinstance(text, str) and re.fullmatch(r"[0-9]{1,9}", text) else None


# --- writer ----------------------------------------------------------------------------------------------------
def identity_tensors(identity: Identity) -> dict[str, torch.Tensor]:
    return {k: getattr(identity, k).contiguous() for k in TENSORS}


def identity_bytes(identity: Identity) -> bytes:
    """The file's bytes: canonical (equal identities give equal bytes), with the content fingerprint."""
    from safetensors.torch import save

    meta = {k: v for k, v in identity.meta.items() if k != FINGERPRINT_KEY}
    meta[FINGERPRINT_KEY] = identity.fingerprint
    return canonical_safetensors(save(identity_tensors(identity), metadata=meta))


def save_identity(identity: Identity, path: str, overwrite: bool = False) -> str:
    """Write atomically; an existing file is kept (FileExistsError) unless overwrite."""
    return write_file_atomically(identity_bytes(identity), path, overwrite)


# --- reader ----------------------------------------------------------------------------------------------------
def _check_header(path: str, header: SafetensorsHeader) -> None:
    metadata = header.metadata
    if metadata.get("format") != FORMAT_NAME:
        keys = sorted(header.tensors)
        what = ""
        if any(k.startswith(("pulid_encoder.", "pulid_ca.")) for k in keys):
            what = " It holds PuLID-Flux model weights: put it in models/pulid and load it with Load PuLID-Flux Model."
        shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        raise _fail(path, f"not a PuLID-Flux identity file (no '{FORMAT_NAME}' format in its metadata; tensors: "
                          f"{shown or 'none'}).{what}")
    version = whole_number(metadata.get("format_version", ""))
    if version is None or version < 1:
        raise _fail(path, f"its format_version {metadata.get('format_version')!r} is not a positive whole number: "
                          f"the file is damaged.")
    if version > FORMAT_VERSION:
        raise _fail(path, f"made by a newer pack (identity format {version}; this pack reads up to {FORMAT_VERSION}).",
                    "update ComfyUI-PuLID-Flux.")
    problem = shape_problem(header.shapes, header.dtypes)
    if problem:
        raise _fail(path, problem + ".")
    references = whole_number(metadata.get("references", "1"))
    if references is None or references < 1:
        raise _fail(path, f"its 'references' metadata {metadata.get('references')!r} is not a positive whole number: "
                          f"the file is damaged.", ENCODE_AGAIN)


def read_identity_bytes(data: bytes, path: str = "upload") -> Identity:
    """Validate and load an identity from bytes (an upload, a card). Never unpickles: safetensors only."""
    header = parse_header(path, data, len(data), IdentityFileError)
    _check_header(path, header)  # before reading any tensor
    _, tensors = load_tensors_from_bytes(data, path, IdentityFileError)
    return _finish(path, tensors, header.metadata)


def load_identity(path: str) -> Identity:
    """Validate the header (before reading any data), then load. Errors name the file and the fix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IdentityFileError(path, "identity file not found.")
    header = read_header(path, IdentityFileError)
    _check_header(path, header)
    return _finish(path, load_tensors(path, IdentityFileError), header.metadata)


def _finish(path: str, tensors: dict, metadata: dict) -> Identity:
    problem = value_problem(tensors)
    if problem:
        raise _fail(path, f"{problem}: the file is damaged.", ENCODE_AGAIN)
    meta = {k: v for k, v in metadata.items() if k != FINGERPRINT_KEY}
    identity = Identity(*(tensors[k] for k in TENSORS), meta=meta, source=path)
    stored = metadata.get(FINGERPRINT_KEY, "")
    # Only our own scheme can be checked; a later scheme's fingerprint is left to the pack that wrote it.
    if stored.startswith(FINGERPRINT_SCHEME + "-") and stored != identity.fingerprint:
        raise _fail(path, f"its content does not match the fingerprint it was saved with ({stored}; the content "
                          f"gives {identity.fingerprint}): the file was changed or damaged after it was saved.",
                    "copy the original file again, or " + ENCODE_AGAIN)
    return identity
