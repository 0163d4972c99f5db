"""Identity values and identity file bytes for the identity tests: two seeded identities (full size, and a small
one for file-level tests), the valid file GOOD, and the header edits (split, join, setter, with_header) that make
the near-valid files of test_identity_files.py, test_identity_upload.py and test_identity_properties.py."""
import json

import torch

from pulid_flux.identity import build as ident
from pulid_flux.identity import file as fmt


def make_full_size_identity(seed=0, tokens=32, width=2048, refs=2, fingerprint="f" * 32, fusion="mean"):
    """The official shapes: 32 x 2048 ID tokens, full-size 512x1024 previews (build shrinks them), ArcFace
    embeddings scaled by 7 (build normalises them), and the face settings an Encode identity call records."""
    g = torch.Generator().manual_seed(seed)
    return ident.build_identity(torch.randn(1, tokens, width, generator=g), torch.randn(1, 32, width, generator=g),
                                torch.randn(refs, 512, generator=g) * 7, torch.rand(refs, 512, 1024, 3, generator=g),
                                pulid_file="pulid_flux_v0.9.1.safetensors", pulid_fingerprint=fingerprint,
                                fusion=fusion, face_order="largest", face_index=0, use_gray=True)


def make_small_identity(seed=0, refs=1):
    """A small identity (64-wide tokens, one 128x256 preview; a file of about 120 KB), for file and upload tests."""
    g = torch.Generator().manual_seed(seed)
    return ident.build_identity(torch.randn(1, 32, 64, generator=g), torch.randn(1, 32, 64, generator=g),
                                torch.randn(refs, 512, generator=g), torch.rand(refs, 128, 256, 3, generator=g),
                                pulid_file="pulid_flux_v0.9.1.safetensors", pulid_fingerprint="f" * 32, fusion="mean")


GOOD = fmt.identity_bytes(make_small_identity())


def split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def with_header(change) -> bytes:
    header, body = split(GOOD)
    change(header)
    return join(header, body)


def setter(*keys, value):
    def change(header):
        target = header
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change
