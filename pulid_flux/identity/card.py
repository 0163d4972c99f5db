"""Identity cards: a PNG whose picture is an identity's face preview and which carries the identity file's exact
bytes, so an identity travels wherever images travel (drag and drop, /upload/image, ComfyUI-Distributed's media
sync). No ComfyUI imports; the PNG is written and read by hand (zlib + struct), byte for byte.

Card layout (version 1): PNG signature, IHDR (8-bit RGB), tEXt "Description" (a sentence for people), IDAT (the
preview, every row filtered with 'Up'), the identity chunk, IEND.

Identity chunk: type `puLi`. By the PNG specification's case rules: p lowercase = ancillary (a viewer that does
not know it still shows the picture), u lowercase = private (no registered meaning), L uppercase = the reserved
bit, i lowercase = safe to copy (the data does not depend on the pixels, so an editor may keep it). Its data,
integers big-endian as in PNG itself:
    magic            20 bytes  b"pulid_flux_identity\\0" (tells our chunk from another program's `puLi`)
    card_version      1 byte   CARD_VERSION; a reader refuses newer ones with "update the pack"
    compression       1 byte   0 = zlib (the only method in version 1)
    fingerprint_len   1 byte   n, at most MAX_FINGERPRINT
    fingerprint       n bytes  ASCII content fingerprint (identity_fingerprint; informative, the tensors decide)
    identity_len      4 bytes  size of the identity file, at most MAX_IDENTITY_BYTES
    payload          the rest  one zlib stream that inflates to exactly identity_len bytes: the .safetensors file
A private binary chunk rather than tEXt/zTXt/iTXt: those hold text (no NUL bytes), so the binary file would need
base64 (+33 %); and programs that keep text chunks show them to users as if they were captions.

Cards survive only byte-for-byte copies: ComfyUI's LoadImage, PIL re-saves, editors and chat apps drop unknown
chunks (the picture stays, the identity is gone). That case gets its own message (reason "no_identity")."""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .file import MAX_FILE_BYTES, Identity, IdentityFileError, identity_bytes, read_identity_bytes
from ..safetensors_file import parse_header

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_CHUNK = b"puLi"
CARD_MAGIC = b"pulid_flux_identity\x00"
CARD_VERSION = 1
COMPRESSION_ZLIB = 0
MAX_FINGERPRINT = 128
MAX_IDENTITY_BYTES = MAX_FILE_BYTES        # never inflate more than an identity file may hold (zip bombs)
MAX_CARD_BYTES = MAX_IDENTITY_BYTES + 48 * 2**20  # identity + preview picture; read_card_file reads no more
_MAX_CHUNK = 2**31 - 1                     # the PNG limit on a chunk's length
_FIXED = len(CARD_MAGIC) + 3               # magic, version, compression, fingerprint_len

CARD_FIX = ("use the original card file as Save identity (or `python -m pulid_tools identity --card`) wrote it, "
            "copied byte for byte, or load the .safetensors identity file instead.")
AGAIN_FIX = "copy, download or upload the original card again; if it is damaged there too, save the card again."
CRAFTED_FIX = ("use a card written by Save identity or `python -m pulid_tools identity --card` (this one was made or "
               "altered by another program), or load the .safetensors identity file instead.")


class IdentityCardError(IdentityFileError):
    """The one error the card readers raise (a ValueError, and an IdentityFileError like every bad identity), with
    the message form of every file error: 'NAME: problem', the file, 'Fix: ...'. `reason` is one of REASONS."""

    def __init__(self, path: str, problem: str, fix: str | None = None, *, reason: str = ""):
        super().__init__(path, problem, fix)
        self.name, self.reason = os.path.basename(self.path) or self.path, reason

    def __reduce__(self):  # keep the fields across pickling (ComfyUI sends errors between processes)
        return _rebuild_card_error, (self.path, self.problem, self.fix, self.reason)


def _rebuild_card_error(path: str, problem: str, fix: str, reason: str) -> "IdentityCardError":
    return IdentityCardError(path, problem, fix, reason=reason)


REASONS = ("not_png", "no_identity", "damaged", "truncated", "newer_version", "too_large", "not_found", "unreadable",
           "not_an_identity")


def _error(name: str, reason: str, problem: str, fix: str) -> IdentityCardError:
    return IdentityCardError(name, problem, fix, reason=reason)


@dataclass(frozen=True)
class CardContents:
    identity_bytes: bytes  # the identity .safetensors file, exactly as it was written
    fingerprint: str       # as written into the card ("" if none)
    card_version: int


# --- writing ----------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _picture_rows(preview) -> np.ndarray:
    """[H,W,3] or [N,H,W,3] uint8 (numpy or CPU torch) -> one [N*H,W,3] picture, references stacked vertically."""
    pixels = np.asarray(preview)
    if pixels.dtype != np.uint8:
        raise ValueError(f"card preview must be uint8 RGB, got {pixels.dtype}")
    if pixels.ndim == 4:
        pixels = pixels.reshape(-1, *pixels.shape[2:])
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"card preview must be [H,W,3] or [N,H,W,3] with H, W >= 1, got {list(np.shape(preview))}")
    return np.ascontiguousarray(pixels)


def card_bytes(preview_rgb_uint8, identity_file_bytes: bytes, fingerprint: str = "", *, level: int = 9) -> bytes:
    """A card: the preview as the picture, `identity_file_bytes` (the whole .safetensors file) inside. Equal
    arguments give equal bytes (same zlib), so a re-saved unchanged card keeps its md5."""
    pixels = _picture_rows(preview_rgb_uint8)
    identity = bytes(identity_file_bytes)
    if not 8 < len(identity) <= MAX_IDENTITY_BYTES or identity[8:9] != b"{":
        raise ValueError(f"identity_file_bytes must be a .safetensors identity file of at most {MAX_IDENTITY_BYTES:,}"
                         f" bytes, got {len(identity):,} bytes starting {identity[:9]!r}")
    fp = fingerprint.encode("ascii")  # UnicodeEncodeError is a ValueError
    if len(fp) > MAX_FINGERPRINT:
        raise ValueError(f"fingerprint is {len(fp)} characters, at most {MAX_FINGERPRINT}")
    height, width, _ = pixels.shape
    up = np.diff(pixels, axis=0, prepend=np.zeros((1, width, 3), np.uint8))  # uint8 wraps: filter type 2 'Up'
    rows = np.concatenate([np.full((height, 1), 2, np.uint8), up.reshape(height, width * 3)], axis=1)
    about = (f"PuLID-Flux identity card{f' {fingerprint}' if fingerprint else ''}. Load it with the Load identity card "
             f"node (ComfyUI-PuLID-Flux). A copy re-saved by an image editor or chat app loses the identity.")
    payload = (CARD_MAGIC + bytes([CARD_VERSION, COMPRESSION_ZLIB, len(fp)]) + fp
               + struct.pack(">I", len(identity)) + zlib.compress(identity, level))
    return b"".join([PNG_SIGNATURE,
                     _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
                     _chunk(b"tEXt", b"Description\x00" + about.encode("latin-1")),
                     _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
                     _chunk(CARD_CHUNK, payload),
                     _chunk(b"IEND", b"")])


# --- reading ----------------------------------------------------------------------------------------------
_PICTURES = {b"\xff\xd8\xff": "a JPEG picture", b"RIFF": "a WebP picture", b"GIF8": "a GIF picture"}


def _not_png(name: str, data: bytes) -> IdentityCardError:
    if not data:
        return _error(name, "not_png", "is empty (0 bytes): an interrupted copy or upload?", AGAIN_FIX)
    if len(data) > 8 and data[8:9] == b"{" and 1 < int.from_bytes(data[:8], "little") < len(data):
        return _error(name, "not_png", "is a .safetensors file (an identity file?), not an identity card.",
                      "load identity files with Load identity (models/pulid/identities) or upload them with "
                      "POST /pulid_flux/identities; cards are the .png files.")
    what = next((f"is {kind}" for magic, kind in _PICTURES.items() if data.startswith(magic)), "is not a PNG file")
    return _error(name, "not_png", f"{what}; only the PNG identity cards carry an identity (a converted copy has lost "
                  f"it).", CARD_FIX)


def _read_payload(name: str, payload: bytes) -> CardContents:
    def damaged(problem: str) -> IdentityCardError:
        return _error(name, "damaged", f"the identity chunk is damaged: {problem}.", AGAIN_FIX)

    if len(payload) < _FIXED or not payload.startswith(CARD_MAGIC):
        raise _error(name, "no_identity", f"its `{CARD_CHUNK.decode()}` chunk is not a PuLID-Flux identity "
                     f"(another program's private chunk).", CARD_FIX)
    version, method, fp_len = payload[len(CARD_MAGIC):_FIXED]
    if version > CARD_VERSION:
        raise _error(name, "newer_version", f"made by a newer pack (card format {version}; this pack reads "
                     f"up to {CARD_VERSION}).",
                     "update ComfyUI-PuLID-Flux on this server, or load the .safetensors identity file.")
    if version < 1 or method != COMPRESSION_ZLIB or fp_len > MAX_FINGERPRINT or len(payload) < _FIXED + fp_len + 4:
        raise damaged(f"version {version}, compression {method}, fingerprint length {fp_len}, {len(payload)} bytes")
    try:
        fingerprint = payload[_FIXED:_FIXED + fp_len].decode("ascii")
    except UnicodeDecodeError:
        raise damaged("the fingerprint is not ASCII") from None
    (size,) = struct.unpack(">I", payload[_FIXED + fp_len:_FIXED + fp_len + 4])
    if not 8 < size <= MAX_IDENTITY_BYTES:
        raise _error(name, "too_large" if size > MAX_IDENTITY_BYTES else "damaged",
                     f"the identity chunk declares an identity of {size:,} bytes; identities are 9 to "
                     f"{MAX_IDENTITY_BYTES:,} bytes.", AGAIN_FIX)
    inflater = zlib.decompressobj()
    try:  # bounded: never more than the declared size (+1 to see overruns), itself capped above
        identity = inflater.decompress(payload[_FIXED + fp_len + 4:], size + 1)
    except zlib.error as e:
        raise damaged(f"it does not decompress ({e})") from None
    if len(identity) > size or inflater.unconsumed_tail:
        raise damaged(f"it inflates to more than the {size:,} bytes it declares")
    if len(identity) < size or not inflater.eof:
        raise damaged(f"it inflates to only {len(identity):,} of the {size:,} bytes it declares")
    if inflater.unused_data:
        raise damaged(f"{len(inflater.unused_data):,} bytes of trailing data follow its compressed stream")
    return CardContents(identity, fingerprint, version)


def read_card(data: bytes, name: str) -> CardContents:
    """Total: for any bytes, the card's contents or IdentityCardError naming `name`, the problem and the fix."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"read_card takes bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        raise _not_png(name, data)
    pos, seen = len(PNG_SIGNATURE), []
    while True:
        if pos == len(data) and not seen:
            raise _error(name, "truncated", "the file holds only a PNG signature: it is cut short.", AGAIN_FIX)
        if pos == len(data) or (seen and seen[-1] == b"IEND"):
            break
        if pos + 8 > len(data):
            raise _error(name, "truncated", f"the PNG is cut short at byte {len(data):,}, inside a chunk "
                         f"header, before any identity chunk.", AGAIN_FIX)
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if not kind.isalpha() or length > _MAX_CHUNK or (not seen and kind != b"IHDR"):
            raise _error(name, "damaged", f"the PNG is damaged at byte {pos:,} (chunk {kind!r}, declared "
                         f"length {length:,}) before any identity chunk.", AGAIN_FIX)
        end = pos + 12 + length
        if end > len(data):
            where = "the identity chunk" if kind == CARD_CHUNK else f"chunk {kind.decode()}"
            raise _error(name, "truncated", f"the file is cut short: {where} at byte {pos:,} declares "
                         f"{length:,} bytes, only {len(data) - pos - 12:,} follow.", AGAIN_FIX)
        if kind == CARD_CHUNK:
            body = data[pos + 4:end - 4]
            if zlib.crc32(body) != struct.unpack(">I", data[end - 4:end])[0]:
                raise _error(name, "damaged", "the identity chunk is damaged (its CRC does not match).",
                             AGAIN_FIX)
            return _read_payload(name, body[4:])
        seen.append(kind)
        pos = end
    cut = "" if seen[-1] == b"IEND" else " The file also ends without IEND: it may be cut short."
    raise _error(name, "no_identity", "is a PNG picture with no PuLID-Flux identity inside: a screenshot "
                 "or an ordinary image, or a card re-saved by a program that drops "
                 f"unknown PNG chunks (image editors, chat apps, Save Image).{cut}", CARD_FIX)


def identity_bytes_from_card(data: bytes, name: str) -> bytes:
    """The identity file's bytes inside a card, exactly as written; IdentityCardError for anything else."""
    return read_card(data, name).identity_bytes


def is_png(head: bytes) -> bool:
    """Whether bytes start like a PNG (so a tool taking 'an identity' can send them to the card reader)."""
    return bytes(head[:8]) == PNG_SIGNATURE


def read_card_file(path: str) -> CardContents:
    """Read a card from disk, refusing files larger than MAX_CARD_BYTES before reading them."""
    name = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_CARD_BYTES:
            raise _error(name, "too_large", f"is {size:,} bytes; identity cards are at most "
                         f"{MAX_CARD_BYTES:,}.", CARD_FIX)
        with open(path, "rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except OSError as e:
        raise _error(name, "not_found" if isinstance(e, FileNotFoundError) else "unreadable",
                     f"cannot be read ({e.strerror or e}).",
                     "check the file name; upload the card to this server's input folder.") from None
    return read_card(data, name)


# --- identities ---------------------------------------------------------------------------------------------------
def identity_card_bytes(identity: Identity) -> bytes:
    """The card of an identity: its preview as the picture, its file's exact bytes (identity_bytes) inside."""
    return card_bytes(identity.preview, identity_bytes(identity), identity.fingerprint)


def _carried_identity(data: bytes, name: str) -> Identity:
    """The identity file a card carries, through the identity file reader. Its refusals keep their problem, but those
    whose advice is about identity files (the wrong kind of file: a pickle, weights, other tensors) get the card's:
    the user holds a card, and 'weights belong in models/pulid' sends them the wrong way."""
    try:
        return read_identity_bytes(data, name)
    except IdentityFileError as e:
        if e.fix != IdentityFileError.wrong_kind_fix:
            raise
        raise _error(e.path, "not_an_identity", f"the identity chunk does not hold an identity file: {e.problem}",
                     CRAFTED_FIX) from None


def load_identity_card(path: str) -> Identity:
    """An identity from a card on disk, through the identity file reader: the same Identity as the file it holds."""
    return _carried_identity(read_card_file(path).identity_bytes, os.fspath(path))


def read_identity_card(data: bytes, name: str) -> Identity:
    """An identity from a card's bytes (an upload)."""
    return _carried_identity(read_card(data, name).identity_bytes, name)


# --- bytes given where an identity file is expected (the upload route, queue/batch --identity) ----------------------
def looks_like_safetensors(data: bytes) -> bool:
    """Whether bytes start as a safetensors file does (8-byte length, then the JSON header's '{'): the one test a
    client without torch makes before sending a file as it is (the server's reader checks the rest)."""
    return len(data) > 8 and data[8:9] == b"{"


def identity_file_in(data: bytes, name: str) -> tuple[bytes, Identity]:
    """(identity file bytes, Identity) for any bytes given where an identity file is expected: the file itself, or
    the file a card carries (a card works wherever a file does). Total: anything else raises IdentityFileError
    (IdentityCardError for pictures and cards) naming `name`, what the bytes are and the fix: an empty file, a JPEG,
    WebP or GIF (a converted copy of a card: the identity is gone), a PNG without an identity, another kind of file."""
    data = bytes(data)
    if is_png(data):
        carried = read_card(data, name).identity_bytes
        return carried, _carried_identity(carried, name)
    if not data:
        raise IdentityFileError(name, "is empty (0 bytes): an interrupted copy, download or upload?",
                                "copy, download or upload the file again.")
    picture = next((kind for magic, kind in _PICTURES.items() if data.startswith(magic)), None)
    if picture is not None:
        raise _error(name, "not_png", f"is {picture}, not an identity file or card: a copy of an identity card "
                     f"converted to another format (or re-saved by an image editor or chat app) has lost the "
                     f"identity it carried.", CARD_FIX)
    if not looks_like_safetensors(data):
        parse_header(name, data, len(data), IdentityFileError)  # names what it is (pickle, zip, HTML...)
    return data, read_identity_bytes(data, name)
