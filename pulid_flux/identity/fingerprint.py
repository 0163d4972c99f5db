"""What makes two identities the same: a content fingerprint, and canonical safetensors bytes. No ComfyUI imports.

Fingerprint (`identity_fingerprint`, scheme 1, written `pfid1-` + 32 hex digits): blake2b-128 (personalised
"pulidflux-fp-v1") over, in this order,
  1. the metadata keys in FINGERPRINT_META_KEYS, in that fixed order, each as (key, value or "absent");
  2. every tensor, in sorted key order, as (name, dtype name, shape, raw little-endian bytes of its values).
Every field is length-prefixed, so no two different inputs share a byte stream. It never uses Python's hash(),
dict order or the process, so it is the same on every machine and in every run.

Counted metadata: the settings that shaped the tensors or decide how they may be used: the identity format and
its version (how the tensors are read), the PuLID-Flux file's content fingerprint (tokens only mean something
with the weights that made them), fusion, face_order, face_index, use_gray and the number of references.
Not counted, on purpose:
  - created: a time, not content; two encodes of the same photos must match;
  - pack_version: a new pack that encodes differently changes the tensors (and so the fingerprint) anyway, and
    counting it would make every upgrade look like a new person on servers that run different pack versions;
  - pulid_file: a file name; a renamed copy of the same weights has the same pulid_fingerprint;
  - blend: provenance (source labels and their creation times); the blended tensors carry its effect;
  - pulid_curation: a report on the photos; what curation changed (drop, weight) is in the tensors;
  - any other key: free text. A later format that adds a shaping key adds it here and moves to scheme 2."""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

import torch

FINGERPRINT_SCHEME = "pfid1"
FINGERPRINT_META_KEYS = ("format", "format_version", "pulid_fingerprint", "fusion", "face_order", "face_index",
                         "use_gray", "references")
SHORT_LENGTH = 12  # hex digits shown in node text and logs: collisions need ~16 M identities


def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def identity_fingerprint(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, object]) -> str:
    """`pfid1-<32 hex>`: equal for equal tensors and equal shaping settings, whatever `created` says."""
    h = hashlib.blake2b(digest_size=16, person=b"pulidflux-fp-v1")
    for key in FINGERPRINT_META_KEYS:
        value = meta.get(key)
        _field(h, key.encode())
        _field(h, b"\x00absent" if value is None else b"\x01" + str(value).encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        _field(h, str(name).encode("utf-8"))
        _field(h, str(t.dtype).removeprefix("torch.").encode())
        _field(h, ",".join(str(int(s)) for s in t.shape).encode())
        _field(h, _tensor_bytes(t))
    return f"{FINGERPRINT_SCHEME}-{h.hexdigest()}"


def short_fingerprint(fingerprint: str) -> str:
    """The first SHORT_LENGTH hex digits, for node text and log lines ('pfid1-0123456789ab')."""
    scheme, _, digest = fingerprint.partition("-")
    return f"{scheme}-{digest[:SHORT_LENGTH]}" if digest else fingerprint[:SHORT_LENGTH]


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written in one fixed way (sorted keys, compact, padded with
    spaces to a multiple of 8). safetensors' own writer puts header keys in a random order on every call (a Rust
    HashMap), so saving the same tensors and metadata twice gives different bytes; after this, equal content gives
    equal bytes. The data section is unchanged (its offsets are relative to the end of the header). Raises
    ValueError for bytes that are not a safetensors file."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or 8 + n > len(data):
        raise ValueError(f"not a safetensors file: header length {n} does not fit {len(data)} bytes")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: header is not a JSON object")
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


_REQUESTED = re.compile(rf"{FINGERPRINT_SCHEME}-[0-9a-f]{{{SHORT_LENGTH},32}}")


class FingerprintValueError(ValueError):
    """A fingerprint input (Load identity's `fingerprint` widget) that is neither empty nor a fingerprint."""


def requested_fingerprint(value) -> str | None:
    """Load identity's `fingerprint` input -> None (empty: no check, as in workflows saved before it existed) or the
    fingerprint, whole or shortened as node text and logs show it (at least SHORT_LENGTH hex digits), in lower
    case. Anything else raises FingerprintValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or not _REQUESTED.fullmatch(text):
        shown = repr(value)[:60]
        raise FingerprintValueError(
            f"fingerprint {shown} is not an identity fingerprint ('{FINGERPRINT_SCHEME}-' and {SHORT_LENGTH} to 32 "
            f"hex digits, as Load identity shows); pick the identity file again to fill it, or leave it empty to skip "
            f"the check.")
    return text


def fingerprint_matches(actual: str, requested: str) -> bool:
    """Whether the identity with fingerprint `actual` is the one `requested` (whole or shortened) names."""
    return actual.lower().startswith(requested)
