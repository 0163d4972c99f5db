"""A person's PuLID-Flux identity as a value and a file: build, save, load (validated, never unpickled), blend,
and the cheap content fingerprint of the PuLID-Flux file it was made with. No ComfyUI imports.

File format (`NAME.safetensors`, format name `pulid_flux_identity`, version 1):
  tensors  id_tokens [1,T,D] float32 (fused ID tokens), uncond_tokens [1,Q,D] float32 (true-CFG negative),
           arcface [N,512] float32 (L2-normalised ArcFace of each reference), preview [N,h,w,3] uint8
  metadata format, format_version, pulid_file, pulid_fingerprint, fusion, face_order, face_index, use_gray,
           references, pack_version, created (ISO 8601 UTC), and for blends `blend` (JSON)."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .identity_store import write_file_atomically
from .safetensors_file import (SafetensorsFileError, SafetensorsHeader, load_tensors, load_tensors_from_bytes,
                               parse_header, read_header)

FORMAT_NAME = "pulid_flux_identity"
FORMAT_VERSION = 1
ARCFACE_DIM = 512
PREVIEW_HEIGHT = 128  # preview rows are stored at 128 x 256 (aligned | parsed), uint8
MAX_FILE_BYTES = 16 * 2**20  # an identity is well under 1 MB; the upload route refuses more
TENSORS = ("id_tokens", "uncond_tokens", "arcface", "preview")
SAVE_HINT = ("Make identity files with the Encode identity + Save identity nodes or "
             "`python -m pulid_tools identity`; PuLID-Flux weights belong in models/pulid, not in models/pulid/identities.")
# Values a healthy identity stays far inside: ID tokens are of order 1-10 (the cross-attention normalises them, but
# fp16 compute overflows at 65504), ArcFace rows are unit vectors (float32 normalisation: |norm - 1| < 1e-6).
MAX_ABS_TOKEN = 1e4
ARCFACE_NORM_TOLERANCE = 1e-3


def _pack_version() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(path, encoding="utf-8") as f:
            found = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return found.group(1) if found else "unknown"
    except OSError:
        return "unknown"


PACK_VERSION = _pack_version()


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

    def mean_arcface(self) -> torch.Tensor:
        """[512] unit vector: the normalised mean of the references' normalised ArcFace vectors."""
        return F.normalize(self.arcface.mean(0), dim=0)


def preview_rows(preview: torch.Tensor, height: int = PREVIEW_HEIGHT) -> torch.Tensor:
    """An IMAGE-like [N,H,W,3] float 0..1 (or uint8) preview -> [N,height,2*height,3] uint8 (area resize)."""
    p = preview.detach().to("cpu")
    if p.dtype != torch.uint8:
        p = (p.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    if p.dim() != 4 or p.shape[-1] != 3:
        raise ValueError(f"preview must be [N,H,W,3], got {tuple(p.shape)}")
    if p.shape[1] != height:
        x = F.interpolate(p.permute(0, 3, 1, 2).float(), size=(height, round(height * p.shape[2] / p.shape[1])),
                          mode="area")
        p = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return p.contiguous()


def build_identity(id_tokens: torch.Tensor, uncond_tokens: torch.Tensor, arcface: torch.Tensor,
                   preview: torch.Tensor, *, pulid_file: str, pulid_fingerprint: str, fusion: str,
                   face_order: str = "largest", face_index: int = 0, use_gray: bool = True,
                   references: int | None = None, **extra: str) -> Identity:
    """arcface: raw or normalised [N,512] ArcFace of each used reference (normalised here)."""
    arc = F.normalize(arcface.detach().to("cpu", torch.float32).reshape(-1, ARCFACE_DIM), dim=-1)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "pulid_file": pulid_file,
            "pulid_fingerprint": pulid_fingerprint, "fusion": fusion, "face_order": face_order,
            "face_index": str(int(face_index)), "use_gray": "true" if use_gray else "false",
            "references": str(arc.shape[0] if references is None else int(references)),
            "pack_version": PACK_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.update({k: str(v) for k, v in extra.items()})
    identity = Identity(id_tokens.detach().to("cpu", torch.float32).contiguous(),
                        uncond_tokens.detach().to("cpu", torch.float32).contiguous(), arc.contiguous(),
                        preview_rows(preview), meta)
    problem = _shape_problem({k: tuple(getattr(identity, k).shape) for k in TENSORS},
                             {k: _DTYPE_NAMES[getattr(identity, k).dtype] for k in TENSORS})
    problem = problem or _value_problem(identity_tensors(identity))
    if problem:
        raise ValueError(f"cannot build an identity: {problem}")
    return identity


# --- file ---------------------------------------------------------------------------------------------
_DTYPE_NAMES = {torch.float32: "F32", torch.uint8: "U8", torch.float16: "F16", torch.bfloat16: "BF16"}
_EXPECTED_DTYPES = {"id_tokens": "F32", "uncond_tokens": "F32", "arcface": "F32", "preview": "U8"}


def _shape_problem(shapes: dict[str, tuple], dtypes: dict[str, str]) -> str | None:
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


def identity_tensors(identity: Identity) -> dict[str, torch.Tensor]:
    return {k: getattr(identity, k).contiguous() for k in TENSORS}


def identity_bytes(identity: Identity) -> bytes:
    from safetensors.torch import save

    return save(identity_tensors(identity), metadata=dict(identity.meta))


def save_identity(identity: Identity, path: str, overwrite: bool = False) -> str:
    """Write atomically; an existing file is kept (FileExistsError) unless overwrite."""
    return write_file_atomically(identity_bytes(identity), path, overwrite)


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
    version = _whole_number(metadata.get("format_version", ""))
    if version is None or version < 1:
        raise _fail(path, f"its format_version {metadata.get('format_version')!r} is not a positive whole number: "
                          f"the file is damaged.")
    if version > FORMAT_VERSION:
        raise _fail(path, f"made by a newer pack (identity format {version}; this pack reads up to {FORMAT_VERSION}).",
                    "update ComfyUI-PuLID-Flux.")
    problem = _shape_problem(header.shapes, header.dtypes)
    if problem:
        raise _fail(path, problem + ".")
    references = _whole_number(metadata.get("references", "1"))
    if references is None or references < 1:
        raise _fail(path, f"its 'references' metadata {metadata.get('references')!r} is not a positive whole number: "
                          f"the file is damaged.", "encode the identity again from the photos.")


def _whole_number(text: str) -> int | None:
    return int(text) if isinstance(text, str) and re.fullmatch(r"[0-9]{1,9}", text) else None


def _value_problem(tensors: dict[str, torch.Tensor]) -> str | None:
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


def read_identity_bytes(data: bytes, path: str = "upload") -> Identity:
    """Validate and load an identity from bytes (an upload). Never unpickles: safetensors only."""
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
    problem = _value_problem(tensors)
    if problem:
        raise _fail(path, f"{problem}: the file is damaged.", "encode the identity again from the photos.")
    return Identity(*(tensors[k] for k in TENSORS), meta=dict(metadata), source=path)


# --- blending ---------------------------------------------------------------------------------------------
def blend_identities(a: Identity, b: Identity, ratio: float) -> Identity:
    """(1 - ratio) * A + ratio * B of the ID tokens (and of the ArcFace means). Ratio 0 and 1 return A and B
    themselves. Refuses identities made with different PuLID-Flux files or with different token counts."""
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}.")
    if a.pulid_fingerprint != b.pulid_fingerprint:
        raise ValueError(f"cannot blend identities made with different PuLID-Flux files: {a.label} with "
                         f"{a.meta.get('pulid_file', '?')} ({a.pulid_fingerprint[:12] or 'no fingerprint'}), "
                         f"{b.label} with {b.meta.get('pulid_file', '?')} ({b.pulid_fingerprint[:12] or 'no fingerprint'})"
                         f". Encode both people with the same PuLID-Flux file.")
    if a.id_tokens.shape != b.id_tokens.shape:
        raise ValueError(f"cannot blend identities with different token counts: {a.label} has "
                         f"{list(a.id_tokens.shape)}, {b.label} {list(b.id_tokens.shape)} (fusion 'concat' with "
                         f"different numbers of photos). Use fusion 'mean' for identities you want to blend.")
    if ratio == 0.0:
        return a
    if ratio == 1.0:
        return b
    tokens = a.id_tokens * (1.0 - ratio) + b.id_tokens * ratio
    uncond = a.uncond_tokens if torch.equal(a.uncond_tokens, b.uncond_tokens) else (
        a.uncond_tokens * (1.0 - ratio) + b.uncond_tokens * ratio)
    arcface = F.normalize(a.mean_arcface() * (1.0 - ratio) + b.mean_arcface() * ratio, dim=0)[None]
    previews = [a.preview, b.preview] if a.preview.shape[1:] == b.preview.shape[1:] else [a.preview]
    refs = sum(_whole_number(x.meta.get("references", "")) or x.arcface.shape[0] for x in (a, b))
    meta = dict(a.meta, references=str(refs), fusion=f"blend of {a.meta.get('fusion', '?')}/{b.meta.get('fusion', '?')}",
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                pack_version=PACK_VERSION,
                blend=json.dumps({"a": a.label, "b": b.label, "ratio": ratio,
                                  "a_created": a.meta.get("created", ""), "b_created": b.meta.get("created", "")}))
    return replace(a, id_tokens=tokens, uncond_tokens=uncond, arcface=arcface, preview=torch.cat(previews),
                   meta=meta, source="")


# --- PuLID-Flux file fingerprint -------------------------------------------------------------------------
_FINGERPRINTS: dict[tuple, str] = {}
SAMPLE_CHUNKS = 16
SAMPLE_BYTES = 64 * 1024


def file_fingerprint(path: str) -> str:
    """A cheap content fingerprint of a weight file: blake2b of its size, its first 1 MiB (the safetensors header
    and the start of the data) and 16 evenly spaced 64 KiB samples; about 2 MiB read for a 1.1 GB file. Cached
    per (path, size, mtime). Tells apart v0.9.0 / v0.9.1 and any re-trained file; a change confined to unsampled
    bytes is not seen (it is a fingerprint, not a checksum)."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    cached = _FINGERPRINTS.get(key)
    if cached:
        return cached
    h = hashlib.blake2b(digest_size=16)
    h.update(str(st.st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(2**20))
        if st.st_size > 2**20:
            step = max(1, (st.st_size - 2**20) // SAMPLE_CHUNKS)
            for i in range(SAMPLE_CHUNKS):
                f.seek(2**20 + i * step)
                h.update(f.read(SAMPLE_BYTES))
    _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def tensors_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """For a model with no file: names, shapes and a strided sample of every tensor's values (as float32)."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(state):
        t = state[k].detach().reshape(-1)
        h.update(f"{k}{tuple(state[k].shape)}".encode())
        h.update(t[:: max(1, t.numel() // 64)][:64].to("cpu", torch.float32).numpy().tobytes())
    return "model:" + h.hexdigest()
