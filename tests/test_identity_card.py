"""Tier (a), no ComfyUI: identity cards (PNG carrying an identity file). Round trip bit-identical to the file, a
valid PNG for other programs, and a total reader: every bad input gets IdentityCardError with its reason."""
import dataclasses
import io
import pickle
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pulid_flux.identity import file as fmt
from pulid_flux.identity import card
from pulid_flux.identity.file import IdentityFileError
from pulid_flux.identity.card import IdentityCardError, card_bytes, identity_bytes_from_card, read_card
from pulid_flux.identity.fingerprint import identity_fingerprint
from support.identity_samples import make_full_size_identity


def full_card(seed=0):
    identity = make_full_size_identity(seed)
    data = fmt.identity_bytes(identity)
    fp = identity_fingerprint(fmt.identity_tensors(identity), identity.meta)
    return identity, data, card_bytes(identity.preview, data, fp), fp


def tiny_identity_bytes(seed=0, tokens=2, width=8):
    """A small but valid identity file, so property tests stay fast."""
    from safetensors.torch import save

    g = torch.Generator().manual_seed(seed)
    tensors = {"id_tokens": torch.randn(1, tokens, width, generator=g),
               "uncond_tokens": torch.randn(1, tokens, width, generator=g),
               "arcface": torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1),
               "preview": torch.randint(0, 256, (1, 4, 8, 3), generator=g, dtype=torch.uint8)}
    meta = {"format": fmt.FORMAT_NAME, "format_version": "1", "fusion": "mean",
            "created": "2026-12-03T00:00:00+00:00"}
    return tensors["preview"], save(tensors, metadata=meta)


TINY_PREVIEW, TINY_IDENTITY = tiny_identity_bytes()
TINY_CARD = card_bytes(TINY_PREVIEW, TINY_IDENTITY, "pfid1-" + "0" * 32)


def chunks(data):
    """[(offset, type, body)] of a PNG written by card_bytes."""
    pos, out = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((pos, kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def with_identity_chunk(data, body):
    """The card with its identity chunk's data replaced by `body` (CRC recomputed: only the contents are wrong)."""
    (pos, _, old), = [c for c in chunks(data) if c[1] == card.CARD_CHUNK]
    return data[:pos] + card._chunk(card.CARD_CHUNK, body) + data[pos + 12 + len(old):]


def payload(version=card.CARD_VERSION, method=0, fp=b"pfid1-x", size=None, stream=None):
    stream = zlib.compress(TINY_IDENTITY) if stream is None else stream
    size = len(TINY_IDENTITY) if size is None else size
    return card.CARD_MAGIC + bytes([version, method, len(fp)]) + fp + struct.pack(">I", size) + stream


def reason_of(data, name="alice.png"):
    with pytest.raises(IdentityCardError) as e:
        read_card(data, name)
    text = str(e.value)
    assert text.startswith(f"{name}: ") and "\n  Fix: " in text, text
    return e.value.reason, text


# --- round trip ---------------------------------------------------------------------------------------------
def test_a_card_loads_bit_identically_to_the_file_it_came_from(tmp_path):
    identity, data, png, fp = full_card()
    file_path = tmp_path / "alice.safetensors"
    file_path.write_bytes(data)
    contents = read_card(png, "alice.png")
    assert contents.identity_bytes == data and contents.fingerprint == fp and contents.card_version == 1
    extracted = tmp_path / "from_card.safetensors"
    extracted.write_bytes(identity_bytes_from_card(png, "alice.png"))
    from_file, from_card = fmt.load_identity(str(file_path)), fmt.load_identity(str(extracted))
    for name in fmt.TENSORS:
        a, b = getattr(from_file, name), getattr(from_card, name)
        assert a.dtype == b.dtype and torch.equal(a, b) and torch.equal(b, getattr(identity, name)), name
    assert from_card.meta == from_file.meta == identity.meta
    assert identity_fingerprint(fmt.identity_tensors(from_card), from_card.meta) == fp
    assert fmt.read_identity_bytes(contents.identity_bytes, "alice.png").meta == identity.meta  # no temp file needed


def test_a_card_of_a_newer_identity_format_is_refused_by_the_identity_reader_naming_the_card():
    identity = make_full_size_identity(0)
    newer = fmt.identity_bytes(dataclasses.replace(identity, meta=dict(identity.meta, format_version="2")))
    extracted = identity_bytes_from_card(card_bytes(identity.preview, newer), "alice.png")
    with pytest.raises(IdentityFileError, match=r"^alice.png: made by a newer pack \(identity format 2"):
        fmt.read_identity_bytes(extracted, "alice.png")


def test_a_card_is_an_ordinary_png_showing_the_preview():
    identity, _, png, fp = full_card()
    picture = Image.open(io.BytesIO(png))
    picture.verify()  # CRCs and structure, as other programs check them
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (256, 2 * 128)
    assert np.array_equal(np.asarray(picture), identity.preview.reshape(-1, 256, 3).numpy())
    import cv2  # libpng, as most other programs read PNGs

    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded[..., ::-1], identity.preview.reshape(-1, 256, 3).numpy())
    assert fp in picture.info["Description"] and "Load identity card" in picture.info["Description"]
    assert [c[0] for c in picture.private_chunks] == [b"puLi"]  # PIL keeps it on load
    kinds = [k for _, k, _ in chunks(png)]
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"puLi", b"IEND"]  # identity chunk right before IEND
    kind = b"puLi"  # PNG case rules: ancillary, private, reserved bit clear, safe to copy
    assert kind[0:1].islower() and kind[1:2].islower() and kind[2:3].isupper() and kind[3:4].islower()


def test_cards_are_deterministic_and_accept_numpy_torch_and_single_pictures():
    identity, data, png, fp = full_card()
    assert card_bytes(identity.preview, data, fp) == png
    assert card_bytes(identity.preview.numpy(), bytearray(data), fp) == png
    one = card_bytes(identity.preview[0], data)
    assert Image.open(io.BytesIO(one)).size == (256, 128) and read_card(one, "x.png").fingerprint == ""


def test_card_size_is_the_file_plus_the_picture():
    identity, data, png, _ = full_card()
    (_, _, idat), = [c for c in chunks(png) if c[1] == b"IDAT"]
    assert len(png) < len(data) + len(idat) + 600  # zlib never grows float data by more than a few bytes


@pytest.mark.parametrize("bad, message", [
    (lambda p, d: (p.float(), d), "uint8"),
    (lambda p, d: (p[..., :2], d), "[H,W,3] or [N,H,W,3]"),
    (lambda p, d: (p[:, :0], d), "H, W >= 1"),
    (lambda p, d: (p, b"\x89PNG not an identity"), ".safetensors identity file"),
    (lambda p, d: (p, b""), ".safetensors identity file"),
    (lambda p, d: (p, b"\x00" * (card.MAX_IDENTITY_BYTES + 1)), ".safetensors identity file"),
])
def test_the_writer_refuses_what_it_could_not_read_back(bad, message):
    preview, data = bad(TINY_PREVIEW, TINY_IDENTITY)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        card_bytes(preview, data, "fp")
    with pytest.raises(ValueError):
        card_bytes(TINY_PREVIEW, TINY_IDENTITY, "pfid1-é")
    with pytest.raises(ValueError, match="at most 128"):
        card_bytes(TINY_PREVIEW, TINY_IDENTITY, "x" * 129)


# --- every bad card: one error type, its reason, the file name and a fix ----------------------------------------
def pil_png(mode="RGB", size=(8, 4), **info):
    out = io.BytesIO()
    Image.new(mode, size, 120).save(out, "PNG", **info)
    return out.getvalue()


def test_a_card_re_saved_by_a_program_that_drops_chunks_says_to_use_the_original():
    _, _, png, _ = full_card()
    picture = Image.open(io.BytesIO(png))
    resaved = io.BytesIO()
    picture.save(resaved, "PNG")  # PIL (and ComfyUI's Save Image, editors, chat apps) keep the pixels only
    reason, text = reason_of(resaved.getvalue(), "alice (1).png")
    assert reason == "no_identity"
    assert "no PuLID-Flux identity inside" in text and "re-saved by a program that drops unknown PNG chunks" in text
    assert "use the original card file" in text and "load the .safetensors identity file" in text
    assert reason_of(pil_png())[0] == "no_identity"  # a screenshot


@pytest.mark.parametrize("data, fragment", [
    (b"hello world", "is not a PNG file"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "is a JPEG picture"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "is a WebP picture"),
    (b"GIF89a" + b"\x00" * 20, "is a GIF picture"),
])
def test_other_files_are_named_for_what_they_are(data, fragment):
    reason, text = reason_of(data)
    assert reason == "not_png" and fragment in text and "only the PNG identity cards carry an identity" in text


def test_an_empty_file_says_so():
    reason, text = reason_of(b"")
    assert reason == "not_png" and "is empty (0 bytes): an interrupted copy or upload?" in text and "again" in text


def test_an_identity_file_given_as_a_card_points_to_load_identity():
    reason, text = reason_of(TINY_IDENTITY, "alice.safetensors")
    assert reason == "not_png" and "is a .safetensors file (an identity file?)" in text
    assert "Load identity" in text and "POST /pulid_flux/identities" in text


def test_damaged_chunks_are_told_apart():
    (pos, _, body), = [c for c in chunks(TINY_CARD) if c[1] == card.CARD_CHUNK]
    flipped = bytearray(TINY_CARD)
    flipped[pos + 8 + len(body) // 2] ^= 0x10
    cases = {
        "crc": (bytes(flipped), "damaged", "its CRC does not match"),
        "stream": (with_identity_chunk(TINY_CARD, payload(stream=b"\x78\x9c" + b"\xff" * 30)), "damaged",
                   "does not decompress"),
        "short stream": (with_identity_chunk(TINY_CARD, payload(stream=zlib.compress(TINY_IDENTITY)[:-9])), "damaged",
                         f" of the {len(TINY_IDENTITY):,} bytes it declares"),
        "size too small": (with_identity_chunk(TINY_CARD, payload(size=len(TINY_IDENTITY) - 1)), "damaged",
                           f"inflates to more than the {len(TINY_IDENTITY) - 1:,} bytes it declares"),
        "size too big": (with_identity_chunk(TINY_CARD, payload(size=len(TINY_IDENTITY) + 1)), "damaged",
                         f"inflates to only {len(TINY_IDENTITY):,} of the"),
        "trailing": (with_identity_chunk(TINY_CARD, payload(stream=zlib.compress(TINY_IDENTITY) + b"xx")), "damaged",
                     "2 bytes of trailing data follow its compressed stream"),
        "huge size": (with_identity_chunk(TINY_CARD, payload(size=2**32 - 1)), "too_large",
                      "declares an identity of 4,294,967,295 bytes"),
        "zero size": (with_identity_chunk(TINY_CARD, payload(size=0)), "damaged", "declares an identity of 0 bytes"),
        "method": (with_identity_chunk(TINY_CARD, payload(method=7)), "damaged", "compression 7"),
        "version 0": (with_identity_chunk(TINY_CARD, payload(version=0)), "damaged", "version 0"),
        "fingerprint": (with_identity_chunk(TINY_CARD, payload(fp=b"\xff\xfe")), "damaged", "not ASCII"),
        "short": (with_identity_chunk(TINY_CARD, card.CARD_MAGIC + b"\x01\x00\x05ab"), "damaged",
                  "fingerprint length 5"),
        "newer": (with_identity_chunk(TINY_CARD, payload(version=2, method=9)), "newer_version",
                  "made by a newer pack (card format 2; this pack reads up to 1)"),
        "foreign": (with_identity_chunk(TINY_CARD, b"some other program's data"), "no_identity",
                    "another program's private chunk"),
        "cut in chunk": (TINY_CARD[:pos + 30], "truncated", "the identity chunk at byte"),
        "cut in header": (TINY_CARD[:pos + 3], "truncated", "inside a chunk header"),
        "signature only": (card.PNG_SIGNATURE, "truncated", "only a PNG signature"),
        "no IHDR": (card.PNG_SIGNATURE + TINY_CARD[pos:], "damaged", "chunk b'puLi'"),
        "lying length": (TINY_CARD[:33] + struct.pack(">I", 2**31) + TINY_CARD[37:], "damaged", "2,147,483,648"),
        "cut before chunk": (TINY_CARD[:pos], "no_identity", "ends without IEND: it may be cut short"),
    }
    for what, (data, reason, fragment) in cases.items():
        got, text = reason_of(data)
        assert (got, fragment in text) == (reason, True), (what, text)
    assert "update ComfyUI-PuLID-Flux" in reason_of(cases["newer"][0])[1]


def test_a_zip_bomb_is_refused_without_inflating_it():
    bomb = zlib.compress(b"\x00" * (256 * 2**20), 9)  # 256 MiB of zeros in ~250 KB, declared as 1 MiB
    data = with_identity_chunk(TINY_CARD, payload(size=2**20, stream=bomb))
    tracemalloc.start()
    try:
        reason, text = reason_of(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason == "damaged" and "inflates to more than the 1,048,576 bytes it declares" in text
    assert peak < 3 * len(data) + 4 * 2**20, peak  # the copies of the input plus at most the declared size


def test_the_error_is_a_value_error_that_survives_pickling():
    try:
        read_card(b"nope", "x.png")
    except ValueError as e:
        assert isinstance(e, IdentityFileError) and isinstance(e, IdentityCardError)
        again = pickle.loads(pickle.dumps(e))
        assert (str(again), again.reason, again.name) == (str(e), "not_png", "x.png")
    with pytest.raises(TypeError, match="read_card takes bytes, got int"):
        read_card(5, "x.png")  # bytes(5) would be five zero bytes: refuse, never misread
    assert read_card(memoryview(TINY_CARD), "x.png").identity_bytes == TINY_IDENTITY


def test_card_files_are_read_with_a_size_cap(tmp_path):
    path = tmp_path / "alice.png"
    path.write_bytes(TINY_CARD)
    assert card.read_card_file(str(path)).identity_bytes == TINY_IDENTITY
    with pytest.raises(IdentityCardError, match="nope.png: cannot be read") as e:
        card.read_card_file(str(tmp_path / "nope.png"))
    assert e.value.reason == "not_found"
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:  # sparse: no disk used, and the reader must not read it
        f.truncate(card.MAX_CARD_BYTES + 1)
    with pytest.raises(IdentityCardError, match="huge.png: is 67,108,865 bytes; identity cards are at most") as e:
        card.read_card_file(str(huge))
    assert e.value.reason == "too_large" and card.is_png(TINY_CARD) and not card.is_png(TINY_IDENTITY)


# --- properties: only the documented error, and never wrong bytes ---------------------------------------------
def outcome(data):
    """The identity bytes, or the error's reason; anything else fails the test."""
    try:
        return read_card(data, "fuzz.png").identity_bytes
    except IdentityCardError as e:
        assert e.reason in card.REASONS and str(e).startswith("fuzz.png: ") and "Fix: " in str(e)
        return e.reason


@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(data):
    assert isinstance(outcome(data), str)
    assert isinstance(outcome(card.PNG_SIGNATURE + data), str)
    assert isinstance(outcome(TINY_CARD[:33] + data), str)  # a real IHDR, then anything


@given(st.integers(1, 24), st.integers(1, 24), st.sampled_from(["RGB", "RGBA", "L", "P"]),
       st.dictionaries(st.text("abcdefgh", min_size=1, max_size=8), st.text(max_size=20), max_size=3))
def test_pngs_without_the_chunk_say_so(width, height, mode, texts):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_itxt(key, value)
    assert outcome(pil_png(mode, (width, height), pnginfo=info)) == "no_identity"


@given(st.data())
def test_flipped_spliced_or_cut_cards_give_the_identity_or_the_error_never_other_bytes(data):
    position = data.draw(st.integers(0, len(TINY_CARD) - 1))
    edit = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
    if edit == "flip":
        damaged = bytearray(TINY_CARD)
        damaged[position] ^= data.draw(st.integers(1, 255))
    elif edit == "insert":
        damaged = TINY_CARD[:position] + data.draw(st.binary(min_size=1, max_size=16)) + TINY_CARD[position:]
    elif edit == "delete":
        damaged = TINY_CARD[:position] + TINY_CARD[position + data.draw(st.integers(1, 16)):]
    else:
        damaged = TINY_CARD[:position]
    assert outcome(bytes(damaged)) in (TINY_IDENTITY, *card.REASONS)


@given(st.integers(0, 2**32 - 1))
def test_a_lying_identity_chunk_length_is_refused(length):
    (pos, _, body), = [c for c in chunks(TINY_CARD) if c[1] == card.CARD_CHUNK]
    lying = TINY_CARD[:pos] + struct.pack(">I", length) + TINY_CARD[pos + 4:]
    assert outcome(lying) == TINY_IDENTITY if length == len(body) else outcome(lying) in ("truncated", "damaged")


@given(st.binary(max_size=200), st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_any_identity_chunk_contents_give_the_error_or_consistent_bytes(stream, version, method, size):
    body = card.CARD_MAGIC + bytes([version, method, 3]) + b"abc" + struct.pack(">I", size) + stream
    got = outcome(with_identity_chunk(TINY_CARD, body))
    assert isinstance(got, str) or (len(got) == size and zlib.decompress(stream) == got)


@given(st.integers(0, 2**31), st.integers(1, 6), st.integers(1, 40), st.text(alphabet="0123456789abcdef-pfid",
                                                                               max_size=40))
def test_valid_cards_round_trip(seed, tokens, width, fingerprint):
    preview, data = tiny_identity_bytes(seed, tokens, width)
    contents = read_card(card_bytes(preview, data, fingerprint), "card.png")
    assert (contents.identity_bytes, contents.fingerprint) == (data, fingerprint)


# --- a card's chunk holding something else; bytes given where an identity file is expected ---------------------------
def test_a_pickle_inside_a_cards_chunk_gets_the_cards_advice_not_the_identity_files():
    """Before: 'PuLID-Flux weights belong in models/pulid' for a card whose chunk holds a pickle."""
    pickled = pickle.dumps({"id_tokens": [1.0, 2.0]}, protocol=4)
    crafted = with_identity_chunk(TINY_CARD, payload(size=len(pickled), stream=zlib.compress(pickled)))
    for read in (lambda: card.read_identity_card(crafted, "alice.png"),
                 lambda: card.identity_file_in(crafted, "alice.png")):
        with pytest.raises(IdentityCardError) as e:
            read()
        text = str(e.value)
        assert e.value.reason == "not_an_identity" and text.startswith(
            "alice.png: the identity chunk does not hold an identity file: not a safetensors file: it is a Python "
            "pickle"), text
        assert "Fix: use a card written by Save identity" in text and "models/pulid" not in text


def test_bytes_where_an_identity_file_is_expected_are_the_file_a_cards_file_or_named_for_what_they_are():
    """One reader for the upload route and queue/batch --identity. Before: a card POSTed to the route, a JPEG copy
    of a card or an empty file were all 'not a safetensors file (first bytes ...)'."""
    assert card.identity_file_in(TINY_IDENTITY, "a.safetensors")[0] == TINY_IDENTITY
    data, identity = card.identity_file_in(TINY_CARD, "a.png")
    assert data == TINY_IDENTITY and torch.equal(identity.id_tokens, fmt.read_identity_bytes(TINY_IDENTITY).id_tokens)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(TINY_CARD)).convert("RGB").save(jpeg, "JPEG")
    for data, start, fix in (
            (jpeg.getvalue(), "a.jpg: is a JPEG picture, not an identity file or card: a copy of an identity card "
                              "converted to another format", "Fix: use the original card file"),
            (b"", "a.jpg: is empty (0 bytes): an interrupted copy, download or upload?", "Fix: copy, download or"),
            (b"\x80\x04" + b"x" * 30, "a.jpg: not a safetensors file: it is a Python pickle",
             "Fix: Make identity files"),
            (pil_png(), "a.jpg: is a PNG picture with no PuLID-Flux identity inside", "Fix: use the original card")):
        with pytest.raises(IdentityFileError) as e:
            card.identity_file_in(data, "a.jpg")
        assert str(e.value).startswith(start) and fix in str(e.value), str(e.value)


@given(st.sampled_from([b"", card.PNG_SIGNATURE, TINY_CARD[:40], b"\xff\xd8\xff", TINY_IDENTITY[:20]]),
       st.binary(max_size=300))
def test_identity_file_in_gives_an_identity_or_its_error_for_any_bytes(head, tail):
    try:
        data, identity = card.identity_file_in(head + tail, "x.bin")
    except IdentityFileError as e:
        assert str(e).startswith("x.bin: ") and "\n  Fix: " in str(e)
    else:
        assert isinstance(identity, fmt.Identity) and isinstance(data, bytes)
