"""Identity card (PNG) vs identity file (.safetensors): size on disk and load time, in one run. No ComfyUI needed.

  python bench/identity_card.py [--photos 1 4] [--repeats 30]

Full-size identity of the real shapes (ID and uncond tokens [1,32,2048] float32, ArcFace [N,512], preview
[N,128,256,3] uint8) built with the pack's build_identity: random tokens (float32 noise compresses about like
network outputs, i.e. hardly), the preview from a real face photo (scikit-image astronaut, and its mirror image).
"load" = bytes on disk -> validated Identity (fingerprint checked): the file with load_identity, the card with
load_identity_card (read_card_file + read_identity_bytes, no temporary file); "file bytes -> Identity" reads the file's bytes and uses read_identity_bytes
too, so "load card" minus it is the card's own cost (PNG walk, CRC, inflate). Files are in the page cache (warm),
median of interleaved repeats."""
import argparse
import os
import sys
import tempfile
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(REPO_ROOT)
from common import git_rev, machine, timed_interleaved  # noqa: E402

from pulid_flux.identity import build as ident  # noqa: E402
from pulid_flux.identity import file as fmt  # noqa: E402
from pulid_flux.identity import card  # noqa: E402
from pulid_flux.identity.fingerprint import identity_fingerprint  # noqa: E402


def face_previews(photos: int) -> torch.Tensor:
    from skimage import data

    face = torch.from_numpy(data.astronaut()[40:232, 130:322].copy()).float().div(255.0)  # 192x192 around the face
    pair = torch.cat([face, face], dim=1)  # aligned | parsed, as Encode identity lays it out
    return torch.stack([pair if i % 2 == 0 else torch.flip(pair, dims=[1]) for i in range(photos)])


def build(photos: int) -> fmt.Identity:
    g = torch.Generator().manual_seed(photos)
    return ident.build_identity(torch.randn(1, 32, 2048, generator=g), torch.randn(1, 32, 2048, generator=g),
                                torch.randn(photos, 512, generator=g), face_previews(photos),
                                pulid_file="pulid_flux_v0.9.1.safetensors", pulid_fingerprint="0" * 32, fusion="mean")


def kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{machine()}, commit {git_rev()}, {args.repeats} repeats")
    print("| photos | .safetensors | card | card / file | identity chunk | picture (IDAT) | write card ms | "
          "fingerprint ms | load file ms | file bytes -> Identity ms | load card ms | card / file |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    folder = tempfile.mkdtemp(prefix="pulid_card_bench_")
    for photos in args.photos:
        identity = build(photos)
        data = fmt.identity_bytes(identity)
        t = time.perf_counter()
        fp = identity_fingerprint(fmt.identity_tensors(identity), identity.meta)
        fp_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        png = card.card_bytes(identity.preview, data, fp)
        write_ms = (time.perf_counter() - t) * 1e3
        parts = {}
        pos = 8
        while pos < len(png):
            length, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
            parts[kind] = 12 + length
            pos += 12 + length
        file_path, card_path = os.path.join(folder, f"p{photos}.safetensors"), os.path.join(folder, f"p{photos}.png")
        with open(file_path, "wb") as f:
            f.write(data)
        with open(card_path, "wb") as f:
            f.write(png)

        def load_card():
            return card.load_identity_card(card_path)

        a, b = fmt.load_identity(file_path), load_card()
        assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in fmt.TENSORS) and a.meta == b.meta
        assert png == card.identity_card_bytes(a)

        def load_file_bytes():
            with open(file_path, "rb") as f:
                return fmt.read_identity_bytes(f.read(), file_path)

        times = timed_interleaved({"file": lambda: fmt.load_identity(file_path), "bytes": load_file_bytes,
                                   "card": load_card}, args.repeats)
        print(f"| {photos} | {kib(len(data))} | {kib(len(png))} | {len(png) / len(data):.3f} | {kib(parts[b'puLi'])} "
              f"| {kib(parts[b'IDAT'])} | {write_ms:.1f} | {fp_ms:.2f} | {times['file'] * 1e3:.2f} | "
              f"{times['bytes'] * 1e3:.2f} | {times['card'] * 1e3:.2f} | {times['card'] / times['file']:.2f} |")
        os.remove(file_path)
        os.remove(card_path)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
