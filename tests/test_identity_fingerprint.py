"""Tier (a), no ComfyUI: the identity content fingerprint (equal content -> equal, any tensor byte or shaping
setting -> different, the same in every process) and canonical safetensors bytes."""
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load, save

from pulid_flux.identity import file as fmt
from pulid_flux.identity.fingerprint import (FINGERPRINT_META_KEYS, FingerprintValueError, canonical_safetensors,
                                             fingerprint_matches, identity_fingerprint, requested_fingerprint,
                                             short_fingerprint)
from support.identity_samples import make_full_size_identity

REPO_ROOT = __file__.rsplit("/tests/", 1)[0]


def parts(identity):
    return fmt.identity_tensors(identity), dict(identity.meta)


GOLDEN_TENSORS = {"id_tokens": torch.arange(12, dtype=torch.float32).reshape(1, 3, 4),
                  "preview": torch.arange(6, dtype=torch.uint8).reshape(1, 1, 2, 3)}
GOLDEN_META = {"format": "pulid_flux_identity", "fusion": "mean", "created": "x"}
GOLDEN = "pfid1-75dc3ba6981f931e35fc1593d47dcfee"


def test_the_scheme_is_pinned():
    """A change to the scheme must be deliberate (new prefix): fingerprints are compared across servers."""
    assert identity_fingerprint(GOLDEN_TENSORS, GOLDEN_META) == GOLDEN
    assert short_fingerprint(GOLDEN) == "pfid1-75dc3ba6981f"


def test_equal_content_gives_equal_fingerprints_whatever_the_time_version_name_or_order():
    tensors, meta = parts(make_full_size_identity(0))
    fp = identity_fingerprint(tensors, meta)
    assert fp.startswith("pfid1-") and len(fp) == 6 + 32
    later = dict(meta, created="2030-01-01T00:00:00+00:00", pack_version="9.9.9", pulid_file="renamed.safetensors",
                 blend='{"a": "x"}', note="free text")
    reordered = {k: tensors[k].clone() for k in reversed(list(tensors))}
    assert identity_fingerprint(reordered, dict(reversed(list(later.items())))) == fp
    assert identity_fingerprint(parts(make_full_size_identity(0))[0], meta) == fp  # a second encode of the same content


def test_a_saved_loaded_or_carded_identity_keeps_its_fingerprint(tmp_path):
    identity = make_full_size_identity(3)
    fp = identity_fingerprint(*parts(identity))
    loaded = fmt.load_identity(fmt.save_identity(identity, str(tmp_path / "a.safetensors")))
    assert identity_fingerprint(*parts(loaded)) == fp


@pytest.mark.parametrize("key", FINGERPRINT_META_KEYS)
def test_every_shaping_setting_counts(key):
    tensors, meta = parts(make_full_size_identity(0))
    fp = identity_fingerprint(tensors, meta)
    assert identity_fingerprint(tensors, dict(meta, **{key: meta.get(key, "") + "x"})) != fp
    assert identity_fingerprint(tensors, {k: v for k, v in meta.items() if k != key}) != fp
    assert identity_fingerprint(tensors, dict(meta, **{key: ""})) != identity_fingerprint(
        tensors, {k: v for k, v in meta.items() if k != key})  # absent is not empty


@given(st.sampled_from(fmt.TENSORS), st.integers(0, 2**40), st.integers(1, 255))
def test_any_tensor_byte_changes_the_fingerprint(name, where, xor):
    tensors, meta = parts(IDENTITY)
    changed = dict(tensors)
    raw = tensors[name].clone().reshape(-1).view(torch.uint8)
    raw[where % raw.numel()] ^= xor
    changed[name] = raw.view(tensors[name].dtype).reshape(tensors[name].shape)
    assert identity_fingerprint(changed, meta) != FP


IDENTITY = make_full_size_identity(1)
FP = identity_fingerprint(*parts(IDENTITY))


def test_same_bytes_in_another_shape_dtype_or_name_is_another_identity():
    tensors, meta = parts(IDENTITY)
    ids = tensors["id_tokens"]
    for variant in (dict(tensors, id_tokens=ids.reshape(1, 64, 1024)), dict(tensors, id_tokens=ids.view(torch.int32)),
                    {("id_tokens2" if k == "id_tokens" else k): v for k, v in tensors.items()},
                    {k: v for k, v in tensors.items() if k != "preview"}):
        assert identity_fingerprint(variant, meta) != FP
    boundary = {"a": torch.zeros(2, dtype=torch.uint8), "b": torch.zeros(1, dtype=torch.uint8)}
    moved = {"a": torch.zeros(1, dtype=torch.uint8), "b": torch.zeros(2, dtype=torch.uint8)}
    assert identity_fingerprint(boundary, {}) != identity_fingerprint(moved, {})  # length-prefixed fields


def test_the_fingerprint_is_the_same_in_another_process():
    code = ("import torch, sys; sys.path.insert(0, sys.argv[1]); from pulid_flux.identity.fingerprint import *; "
            "t = {'id_tokens': torch.arange(12, dtype=torch.float32).reshape(1, 3, 4), "
            "'preview': torch.arange(6, dtype=torch.uint8).reshape(1, 1, 2, 3)}; "
            "print(identity_fingerprint(t, {'created': 'y', 'fusion': 'mean', 'format': 'pulid_flux_identity'}))")
    out = subprocess.run([sys.executable, "-c", code, REPO_ROOT], capture_output=True, text=True, timeout=120,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == GOLDEN, out.stderr[-2000:]


# --- canonical safetensors bytes ---------------------------------------------------------------------------------
def test_canonical_bytes_make_equal_content_byte_identical():
    """safetensors' writer orders header keys at random (measured: 20 saves of one identity, 20 different files);
    canonical_safetensors makes them one file, with the same tensors and metadata."""
    tensors, meta = parts(IDENTITY)
    saves = [save(tensors, metadata=meta) for _ in range(5)]
    canonical = {canonical_safetensors(s) for s in saves}
    assert len(canonical) == 1
    (data,) = canonical
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0 and list(json.loads(data[8:8 + n])) == sorted(json.loads(data[8:8 + n]))
    back = load(data)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors) and sorted(back) == sorted(tensors)
    loaded = fmt.read_identity_bytes(data, "canonical")
    assert loaded.meta == meta and identity_fingerprint(*parts(loaded)) == FP
    assert canonical_safetensors(data) == data  # idempotent


def test_canonical_bytes_are_the_same_in_another_process():
    code = ("import sys, hashlib; sys.path.insert(0, sys.argv[1]); import torch; "
            "from safetensors.torch import save; from pulid_flux.identity.fingerprint import canonical_safetensors; "
            "t = {'b': torch.arange(5.0), 'a': torch.ones(2, 3, dtype=torch.uint8)}; "
            "m = {k: k * 2 for k in 'zyxwvutsé'}; "
            "print(hashlib.sha256(canonical_safetensors(save(t, metadata=m))).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code, REPO_ROOT], capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin"}).stdout.strip() for _ in range(2)}
    assert len(runs) == 1 and len(runs.pop()) == 64


@pytest.mark.parametrize("data", [b"", b"\x01" * 7, (100).to_bytes(8, "little") + b"{}",
                                  (2).to_bytes(8, "little") + b"[]", (2).to_bytes(8, "little") + b"\xff\xfe",
                                  (4).to_bytes(8, "little") + b"{x:1"])
def test_canonical_bytes_refuse_what_is_not_safetensors(data):
    with pytest.raises(ValueError, match="not a safetensors file"):
        canonical_safetensors(data)


# --- Load identity's fingerprint input ------------------------------------------------------------------------
def test_the_fingerprint_input_takes_a_whole_or_shortened_fingerprint_or_nothing():
    assert requested_fingerprint("") is None and requested_fingerprint("  ") is None and requested_fingerprint(None) is None
    assert requested_fingerprint(f" {GOLDEN.upper()} ") == GOLDEN  # pasted with spaces, in capitals
    short = short_fingerprint(GOLDEN)
    assert requested_fingerprint(short) == short and fingerprint_matches(GOLDEN, short)
    assert not fingerprint_matches("pfid1-" + "0" * 32, short) and fingerprint_matches(GOLDEN, GOLDEN)
    for bad in ("pfid1-75dc3ba6981", "75dc3ba6981f931e35fc1593d47dcfee", GOLDEN + "0", "pfid2-" + "0" * 32, 5, ["x"]):
        with pytest.raises(FingerprintValueError, match="is not an identity fingerprint .*leave it empty"):
            requested_fingerprint(bad)


@given(st.one_of(st.none(), st.text(max_size=80), st.integers(), st.floats(), st.binary(max_size=20),
                 st.lists(st.text(max_size=5), max_size=3), st.from_regex(r"\s*pfid1-[0-9a-fA-F]{10,34}\s*")))
def test_the_fingerprint_input_parser_is_total(value):
    """Whatever a workflow or API client sends: no check (None), a fingerprint to compare, or its own error."""
    try:
        result = requested_fingerprint(value)
    except FingerprintValueError as e:
        assert "is not an identity fingerprint" in str(e)
        return
    assert result is None or (result.startswith("pfid1-") and 18 <= len(result) <= 38 and result == result.lower())
