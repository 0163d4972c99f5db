"""Tier (a), no ComfyUI: the classes of bad identity files, names and concurrent writes found by the hostile test
of issue 15, each kept as an explicit test (the property tests in test_identity_properties.py generalise them)."""
import os
import threading

import pytest
import torch

from pulid_flux.identity import build as ident
from pulid_flux.identity import file as fmt
from pulid_flux.identity.file import IdentityFileError
from pulid_flux.identity.store import IdentityNameError, identity_file_name, write_file_atomically
from pulid_flux.safetensors_file import SafetensorsFileError, parse_header
from support.identity_samples import GOOD, join, make_small_identity, setter, split, with_header


def refused(tmp_path, data: bytes, name="bad.safetensors") -> str:
    """The message of both readers (file on disk, upload bytes); both must refuse with IdentityFileError."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IdentityFileError) as on_disk:
        fmt.load_identity(str(path))
    with pytest.raises(IdentityFileError) as uploaded:
        fmt.read_identity_bytes(data, name)
    text = str(on_disk.value)
    assert text.startswith(f"{name}: ") and f"file: {path}" in text and "\n  Fix: " in text, text
    assert str(uploaded.value).split("\n")[0] == text.split("\n")[0]  # the same reader says the same thing
    return text


# --- 1. right layout, wrong JSON types: raw AttributeError/TypeError/IndexError/ValueError before -------------
@pytest.mark.parametrize("keys,value,message", [
    (("__metadata__",), ["a list"], "'__metadata__' must map names to text"),
    (("__metadata__",), "text", "'__metadata__' must map names to text"),
    (("__metadata__", "references"), 2, "'__metadata__' must map names to text"),
    (("id_tokens",), "not an entry", "the entry of tensor 'id_tokens' is a str, not an object"),
    (("id_tokens",), [1, 2], "the entry of tensor 'id_tokens' is a list, not an object"),
    (("arcface", "data_offsets"), ["0", "2048"], "tensor 'arcface' has data_offsets ['0', '2048']"),
    (("arcface", "data_offsets"), [0], "tensor 'arcface' has data_offsets [0]"),
    (("arcface", "data_offsets"), [0, 1, 2], "tensor 'arcface' has data_offsets [0, 1, 2]"),
    (("arcface", "data_offsets"), "0-2048", "tensor 'arcface' has data_offsets '0-2048'"),
    (("preview", "shape"), ["1", "128", "256", "3"], "tensor 'preview' has shape ['1', '128', '256', '3']"),
    (("preview", "shape"), [1, 128, 256], "tensor 'preview' (U8 [1, 128, 256]) needs 32,768 bytes"),
    (("preview", "shape"), [1, 128, 256, 3, 1, 1], "wrong shape: preview [1, 128, 256, 3, 1, 1]"),
    (("preview", "shape"), [True, 128, 256, 3], "tensor 'preview' has shape [true, 128, 256, 3]".replace("true",
                                                                                                          "True")),
    (("id_tokens", "dtype"), 32, "tensor 'id_tokens' has dtype 32"),
    (("id_tokens", "dtype"), None, "tensor 'id_tokens' has dtype None"),
    (("id_tokens", "dtype"), "F33", "tensor 'id_tokens' has dtype 'F33'"),
])
def test_mistyped_header_is_refused_with_the_file_and_the_fix(tmp_path, keys, value, message):
    text = refused(tmp_path, with_header(setter(*keys, value=value)))
    assert message in text, text


def test_a_header_without_its_metadata_or_an_entry_is_refused(tmp_path):
    assert "no 'pulid_flux_identity' format in its metadata" in refused(
        tmp_path, with_header(lambda h: h.pop("__metadata__")))
    header, body = split(GOOD)
    del header["preview"]  # the data section then has bytes no tensor describes
    assert "bytes after the last tensor" in refused(tmp_path, join(header, body))


# --- damaged headers are not called pickles --------------------------------------------------------------
@pytest.mark.parametrize("data,message", [
    ((2**62).to_bytes(8, "little") + GOOD[8:], "damaged safetensors header: its length field says"),
    ((0).to_bytes(8, "little") + GOOD[8:], "damaged safetensors header: its length field says 0 bytes"),
    ((20).to_bytes(8, "little") + b"[1, 2, 3]           " + b"\0" * 16, "it must be a JSON object, it starts with b'[1"),
    ((9).to_bytes(8, "little") + b'{"a": [[}', "damaged safetensors header: not valid JSON"),
    ((200_004).to_bytes(8, "little") + b"{" + b"[" * 200_000 + b"   ", "damaged safetensors header: not valid JSON"),
    (GOOD[:-10], "the file is truncated: it has"),
    (GOOD + b"\0" * 10, "10 bytes after the last tensor"),
], ids=["huge-length", "zero-length", "list", "bad-json", "deep-nesting", "truncated", "trailing-bytes"])
def test_damaged_headers_are_called_damaged_not_pickles(tmp_path, data, message):
    text = refused(tmp_path, data)
    assert message in text and "pickle" not in text and "copy or download the file again" in text, text


def test_real_pickles_and_zips_are_named(tmp_path):
    import pickle

    assert "it is a Python pickle" in refused(tmp_path, pickle.dumps({"a": 1}, protocol=4))
    path = tmp_path / "t.pt"
    torch.save({"a": torch.zeros(2)}, str(path))
    assert "it is a zip archive (a PyTorch .pt/.pth file renamed?)" in refused(tmp_path, path.read_bytes())
    assert "an HTML or XML page" in refused(tmp_path, b"<!DOCTYPE html><html>404</html>")
    assert "the file is empty" in refused(tmp_path, b"")


# --- values checked after parsing --------------------------------------------------------------------------
def tensors_with(**changes):
    t = fmt.identity_tensors(make_small_identity())
    t.update(changes)
    return t


def file_of(tensors, **meta) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=dict(make_small_identity().meta, **meta))


def test_absurd_finite_tokens_are_refused(tmp_path):
    t = fmt.identity_tensors(make_small_identity())
    text = refused(tmp_path, file_of(tensors_with(id_tokens=t["id_tokens"] * 0 + 1e38)))
    assert "'id_tokens' holds values up to 1e+38" in text and "encode the identity again" in text
    text = refused(tmp_path, file_of(tensors_with(uncond_tokens=t["uncond_tokens"] * 1e6)))
    assert "'uncond_tokens' holds values up to" in text


@pytest.mark.parametrize("scale,length", [(0.0, "length 0;"), (7.0, "length 7;")])
def test_arcface_rows_must_be_unit_vectors(tmp_path, scale, length):
    t = fmt.identity_tensors(make_small_identity())
    text = refused(tmp_path, file_of(tensors_with(arcface=t["arcface"] * scale)))
    assert f"ArcFace row 0 has {length}" in text and "unit vectors" in text, text
    with pytest.raises(ValueError, match="cannot build an identity: ArcFace row 0 has length 0"):
        ident.build_identity(t["id_tokens"], t["uncond_tokens"], torch.zeros(1, 512), t["preview"],
                             pulid_file="p", pulid_fingerprint="f", fusion="mean")


def test_arcface_rows_within_float_rounding_still_load(tmp_path):
    t = fmt.identity_tensors(make_small_identity())
    path = tmp_path / "ok.safetensors"
    path.write_bytes(file_of(tensors_with(arcface=t["arcface"] * (1 + 2e-4))))
    assert fmt.load_identity(str(path)).arcface.shape == (1, 512)


@pytest.mark.parametrize("value", ["abc", "", "-1", "0", "1.5", "9" * 30, " 2"])
def test_references_that_are_not_a_count_are_refused(tmp_path, value):
    text = refused(tmp_path, file_of(fmt.identity_tensors(make_small_identity()), references=value))
    assert f"its 'references' metadata {value!r} is not a positive whole number" in text


def test_format_version_that_is_not_a_number_is_refused(tmp_path):
    assert "its format_version 'one' is not a positive whole number" in refused(
        tmp_path, file_of(fmt.identity_tensors(make_small_identity()), format_version="one"))


def test_a_file_written_before_these_checks_still_loads(tmp_path):
    # the bytes the old writer produced for the same identity: safetensors.torch.save with the same metadata
    from safetensors.torch import save

    identity = make_small_identity(3, refs=2)
    path = tmp_path / "old.safetensors"
    path.write_bytes(save(fmt.identity_tensors(identity), metadata=dict(identity.meta)))
    loaded = fmt.load_identity(str(path))
    assert all(torch.equal(getattr(loaded, k), getattr(identity, k)) for k in fmt.TENSORS)
    assert loaded.meta == identity.meta


# --- names --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,problem", [
    ("abc\n.safetensors", "control character (U+000A"),
    ("abc\n", "control character (U+000A"),
    ("\nabc", "control character (U+000A"),
    ("a\rb", "control character (U+000D"),
    ("a\tb", "control character (U+0009"),
    ("a\x7fb", "control character (U+007F"),
    ("a\u200bb", "control character (U+200B"),
    ("a\u2028b", "control character (U+2028"),
    ("Zoë", "'ë' (U+00EB LATIN SMALL LETTER E WITH DIAERESIS), which is not ASCII"),
    ("名前", "which is not ASCII"),
    ("NUL.safetensors", "reserved device name on Windows"),
    ("com1.txt", "reserved device name on Windows"),
    ("Lpt9 ", "reserved device name on Windows"),
    (".", "must start with a letter or digit"),
    ("..", "it is a path"),
    ("a.", "not end with a dot or space"),
    ("x" * 101, "101 characters, more than 100"),
])
def test_the_name_rule_refuses_and_states_the_rule(name, problem):
    with pytest.raises(IdentityNameError) as e:
        identity_file_name(name)
    text = str(e.value)
    assert problem in text and "Rule: 1 to 100 ASCII letters, digits, spaces and . _ - ( ) +" in text, text


def test_the_name_rule_keeps_plain_names():
    assert identity_file_name("x" * 100) == "x" * 100 + ".safetensors"
    assert identity_file_name("Alice (2) v1.2+b.SAFETENSORS") == "Alice (2) v1.2+b.safetensors"
    assert identity_file_name("console") == "console.safetensors"  # only the device names themselves


# --- one writer --------------------------------------------------------------------------------------------
def test_concurrent_writes_of_one_name_in_one_process_never_fail_oddly(tmp_path):
    """Before: the temporary name was .NAME.<pid>.tmp, shared by every writer in the process."""
    data = [fmt.identity_bytes(make_small_identity(i)) for i in range(2)]
    outcomes, barrier = [], threading.Barrier(8)

    def write(i):
        barrier.wait()
        for _ in range(15):
            try:
                write_file_atomically(data[i % 2], str(tmp_path / "same.safetensors"), overwrite=i < 4)
                outcomes.append("ok")
            except FileExistsError:
                outcomes.append("exists")
            except Exception as e:  # noqa: BLE001 - any other outcome is the bug
                outcomes.append(repr(e))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(outcomes) <= {"ok", "exists"} and outcomes.count("ok") >= 60, outcomes
    assert os.listdir(tmp_path) == ["same.safetensors"]
    assert (tmp_path / "same.safetensors").read_bytes() in data


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space left"):
        write_file_atomically(b"data", str(tmp_path / "a.safetensors"), overwrite=True)
    assert os.listdir(tmp_path) == []


def test_without_hard_links_the_no_overwrite_path_still_refuses_an_existing_name(tmp_path, monkeypatch):
    def no_links(*a):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = str(tmp_path / "a.safetensors")
    write_file_atomically(b"one", path)
    with pytest.raises(FileExistsError, match="a.safetensors already exists"):
        write_file_atomically(b"two", path)
    assert open(path, "rb").read() == b"one" and os.listdir(tmp_path) == ["a.safetensors"]


def test_the_header_reader_is_shared_and_raises_the_callers_type():
    with pytest.raises(SafetensorsFileError):
        parse_header("x.safetensors", b"\0" * 4, 4)
    header = parse_header("x.safetensors", GOOD, len(GOOD), IdentityFileError)
    assert header.shapes["arcface"] == (1, 512) and header.dtypes["preview"] == "U8"
    assert header.metadata["format"] == "pulid_flux_identity"
