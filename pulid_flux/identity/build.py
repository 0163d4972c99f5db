"""Operations on identities: build one from encoder outputs, blend two, the preview rows, and the cheap content
fingerprint of the PuLID-Flux weight file an identity was made with. No ComfyUI imports. The file format (the
Identity value, its reader and writer) is file.py."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import replace

import torch
import torch.nn.functional as F

from .file import ARCFACE_DIM, FORMAT_NAME, FORMAT_VERSION, Identity, identity_problem, whole_number

PREVIEW_HEIGHT = 128  # preview rows are stored at 128 x 256 (aligned | parsed), uint8


def _pack_version() -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "pyproject.toml")
    try:
        with open(path, encoding="utf-8") as f:
            found = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return found.group(1) if found else "unknown"
    except OSError:
        return "unknown"


PACK_VERSION = _pack_version()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
            "pack_version": PACK_VERSION, "created": _now()}
    meta.update({k: str(v) for k, v in extra.items()})
    identity = Identity(id_tokens.detach().to("cpu", torch.float32).contiguous(),
                        uncond_tokens.detach().to("cpu", torch.float32).contiguous(), arc.contiguous(),
                        preview_rows(preview), meta)
    problem = identity_problem(identity)
    if problem:
        raise ValueError(f"cannot build an identity: {problem}")
    return identity


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
    refs = sum(whole_number(x.meta.get("references", "")) or x.arcface.shape[0] for x in (a, b))
    # A's photo report (pulid_curation) and stored fingerprint describe A, not the blend: left out
    kept = {k: v for k, v in a.meta.items() if k not in ("pulid_curation", "fingerprint")}
    meta = dict(kept, references=str(refs), fusion=f"blend of {a.meta.get('fusion', '?')}/{b.meta.get('fusion', '?')}",
                created=_now(),
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
