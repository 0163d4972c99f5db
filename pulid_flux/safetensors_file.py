"""The one safetensors reader of the pack (PuLID-Flux weights and identity files, on disk or uploaded). Never
unpickles. Total: for any bytes it returns a checked header (or the tensors) or raises SafetensorsFileError (a
subclass chosen by the caller), whose message names the file, says what is wrong and what to do.

The header's JSON is checked here, entry by entry, so the message can name the entry; then the safetensors library
itself reads the file (it refuses what it finds malformed with SafetensorError, wrapped here). A file this reader
accepts is one the library accepts."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

HEADER_LIMIT = 100 * 2**20  # the safetensors library refuses longer headers
# bytes per element of every dtype the safetensors format defines
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
DAMAGED_FIX = "copy or download the file again (an interrupted copy, download or upload cuts files short)."


class SafetensorsFileError(ValueError):
    """A file (or upload) that cannot be used. The message: 'NAME: problem', the full path, and 'Fix: what to do'.
    Subclasses (PulidWeightsError, IdentityFileError) set the advice for a file of the wrong kind."""
    wrong_kind_fix = "use a .safetensors file of the right kind."
    damaged_fix = DAMAGED_FIX

    def __init__(self, path: str, problem: str, fix: str | None = None):
        self.path, self.problem, self.fix = str(path), problem, fix or self.wrong_kind_fix
        super().__init__(f"{os.path.basename(self.path) or self.path}: {problem}\n  file: {self.path}\n  Fix: {self.fix}")

    def __reduce__(self):  # ComfyUI may pickle errors between processes; the default would call __init__(message)
        return type(self), (self.path, self.problem, self.fix)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # begin, end in the data section


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int  # 8 + header length

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        return {k: v.dtype for k, v in self.tensors.items()}


def _what_it_is(head: bytes) -> str | None:
    """A name for the common wrong files, from their first bytes."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a .pt/.bin/.ckpt file renamed?); pickles are refused because loading one runs code"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (a PyTorch .pt/.pth file renamed?); pickled checkpoints are refused because loading " \
               "one runs code"
    if head.lstrip()[:1] == b"<":
        return "an HTML or XML page (a failed download saves the error page under the file's name)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON text file"
    return None


def _entry_problem(name: str, info) -> str | None:
    if not isinstance(info, dict):
        return f"the entry of tensor '{name}' is a {type(info).__name__}, not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        return f"tensor '{name}' has dtype {dtype!r}, not one of {', '.join(DTYPE_BYTES)}"
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return f"tensor '{name}' has shape {shape!r}, not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        return f"tensor '{name}' has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end"
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        return (f"tensor '{name}' ({dtype} {shape}) needs {math.prod(shape) * DTYPE_BYTES[dtype]:,} bytes but its "
                f"data_offsets {offsets} hold {offsets[1] - offsets[0]:,}")
    return None


def parse_header(path: str, head: bytes, size: int, error: type[SafetensorsFileError] = SafetensorsFileError
                 ) -> SafetensorsHeader:
    """The checked header of a safetensors file of `size` bytes whose first bytes are `head` (at least the 8-byte
    length and the header itself, when the file has them). Raises `error` for anything else."""
    damaged = lambda problem: error(path, problem, error.damaged_fix)  # noqa: E731
    if size < 8 or len(head) < 8:
        raise error(path, "the file is empty." if size == 0 else f"only {size} bytes: a truncated file, or not a safetensors file.")
    n = int.from_bytes(head[:8], "little")
    kind = _what_it_is(head[:16])
    if kind and head[8:9] != b"{":
        raise error(path, f"not a safetensors file: it is {kind}.")
    if head[8:9] != b"{" and not 0 < n <= size - 8:
        raise error(path, f"not a safetensors file: it does not start with a safetensors header (first bytes "
                          f"{head[:12].hex(' ')}).")
    if n == 0 or n > size - 8:
        raise damaged(f"damaged safetensors header: its length field says {n:,} bytes, but the file has "
                      f"{size - 8:,} bytes after it (truncated or overwritten).")
    if n > HEADER_LIMIT:
        raise damaged(f"damaged safetensors header: {n:,} bytes long, over the {HEADER_LIMIT // 2**20} MB the "
                      f"safetensors format allows.")
    if len(head) < 8 + n:
        raise damaged(f"the file is truncated: {len(head):,} bytes read, its header alone needs {8 + n:,}.")
    text = head[8:8 + n]
    if text[:1] != b"{":
        raise damaged(f"damaged safetensors header: it must be a JSON object, it starts with {text[:12]!r}.")
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise damaged(f"damaged safetensors header: not valid JSON ({type(e).__name__}: {str(e)[:120]}).") from None
    if not isinstance(header, dict):
        raise damaged(f"damaged safetensors header: a JSON {type(header).__name__}, not an object.")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise damaged(f"damaged safetensors header: '__metadata__' must map names to text, it is "
                      f"{json.dumps(metadata)[:120]}.")
    tensors = {}
    for name, info in header.items():
        problem = _entry_problem(name, info)
        if problem:
            raise damaged(f"damaged safetensors header: {problem}.")
        tensors[name] = TensorEntry(info["dtype"], tuple(info["shape"]), tuple(info["data_offsets"]))
    end = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: kv[1].offsets):
        if entry.offsets[0] != end:
            raise damaged(f"damaged safetensors header: tensor '{name}' starts at byte {entry.offsets[0]:,} of the "
                          f"data, expected {end:,} (tensors must be stored one after the other).")
        end = entry.offsets[1]
    if 8 + n + end > size:
        raise damaged(f"the file is truncated: it has {size:,} bytes, its header describes {8 + n + end:,}.")
    if 8 + n + end < size:
        raise damaged(f"damaged safetensors file: {size - 8 - n - end:,} bytes after the last tensor.")
    return SafetensorsHeader(tensors, metadata, 8 + n)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_header(path: str, error: type[SafetensorsFileError] = SafetensorsFileError) -> SafetensorsHeader:
    """The checked header of a file on disk, reading only the header; the safetensors library then opens the file
    (memory-mapped, no tensor data read) and must agree."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(n if 0 < n <= min(size - 8, HEADER_LIMIT) else 8)  # else a few bytes to name it
    except OSError as e:
        raise error(path, f"cannot be read ({e.strerror or e}).", "check that the file exists and is readable.") \
            from None
    header = parse_header(path, head, size, error)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            f.metadata()
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise error(path, f"the safetensors library refuses the file ({e}).", error.damaged_fix) from None
    return header


def load_tensors(path: str, error: type[SafetensorsFileError] = SafetensorsFileError) -> dict:
    """Every tensor of a file whose header read_header accepted, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise error(path, f"the file cannot be read ({e}).", error.damaged_fix) from None


def load_tensors_from_bytes(data: bytes, name: str, error: type[SafetensorsFileError] = SafetensorsFileError
                            ) -> tuple[SafetensorsHeader, dict]:
    """Header and tensors of a whole file held in memory (an upload)."""
    header = parse_header(name, data, len(data), error)
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return header, load(bytes(data))
    except (SafetensorError, ValueError, TypeError, RuntimeError) as e:
        raise error(name, f"the safetensors library refuses the file ({e}).", error.damaged_fix) from None
