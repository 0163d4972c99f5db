"""Tier (a), no ComfyUI: the identity file's bytes are canonical and carry the content fingerprint; files written
before the fingerprint existed still load; a card holds exactly the file's bytes; card errors have the file-error
form."""
import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import save

from pulid_flux.identity import card
from pulid_flux.identity import file as fmt
from pulid_flux.identity.fingerprint import identity_fingerprint, short_fingerprint
from pulid_flux.safetensors_file import SafetensorsFileError
from support.identity_samples import make_full_size_identity


def header(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


def at(identity, created):
    return dataclasses.replace(identity, meta=dict(identity.meta, created=created))


def test_two_encodes_of_the_same_content_give_the_same_file_apart_from_created():
    first, second = make_full_size_identity(4), make_full_size_identity(4)
    a = fmt.identity_bytes(at(first, "2026-01-01T00:00:00+00:00"))
    b = fmt.identity_bytes(at(second, "2030-05-05T10:10:10+00:00"))
    assert a != b and len(a) == len(b)
    assert {k: v for k, v in header(a)["__metadata__"].items() if k != "created"} == \
        {k: v for k, v in header(b)["__metadata__"].items() if k != "created"}
    assert fmt.identity_bytes(at(second, "2026-01-01T00:00:00+00:00")) == a  # same created: the same bytes
    assert a[8 + int.from_bytes(a[:8], "little"):] == b[8 + int.from_bytes(b[:8], "little"):]  # tensor data


def test_the_file_carries_the_content_fingerprint_and_the_identity_does_not_keep_a_copy(tmp_path):
    identity = make_full_size_identity(5)
    fp = identity.fingerprint
    assert fp == identity_fingerprint(fmt.identity_tensors(identity), identity.meta) and fp.startswith("pfid1-")
    assert "fingerprint" not in identity.meta
    path = fmt.save_identity(identity, str(tmp_path / "alice.safetensors"))
    with open(path, "rb") as f:
        data = f.read()
    assert header(data)["__metadata__"]["fingerprint"] == fp
    assert list(header(data)) == sorted(header(data))  # canonical header
    loaded = fmt.load_identity(path)
    assert loaded.fingerprint == fp and loaded.meta == identity.meta and "fingerprint" not in loaded.meta
    assert fmt.identity_bytes(loaded) == data  # saving what was loaded writes the same bytes
    assert short_fingerprint(fp) == fp[:18]


def test_a_file_without_a_fingerprint_loads_and_gets_the_same_fingerprint(tmp_path):
    identity = make_full_size_identity(6)
    old = save(fmt.identity_tensors(identity), metadata=dict(identity.meta))  # as the pack wrote before
    assert "fingerprint" not in header(old)["__metadata__"]
    loaded = fmt.read_identity_bytes(old, "old.safetensors")
    assert loaded.fingerprint == identity.fingerprint and loaded.meta == identity.meta
    assert header(fmt.identity_bytes(loaded))["__metadata__"]["fingerprint"] == identity.fingerprint


def test_content_that_does_not_match_its_fingerprint_is_refused():
    identity = make_full_size_identity(7)
    data = fmt.identity_bytes(identity)
    meta = dict(identity.meta, fusion="max", fingerprint=identity.fingerprint)  # metadata edited after saving
    edited = save(fmt.identity_tensors(identity), metadata=meta)
    with pytest.raises(fmt.IdentityFileError, match=r"^edited.safetensors: its content does not match the "
                                                     r"fingerprint it was saved with \(pfid1-"):
        fmt.read_identity_bytes(edited, "edited.safetensors")
    flipped = bytearray(data)
    flipped[-5] ^= 0x01  # one preview byte
    with pytest.raises(fmt.IdentityFileError, match="changed or damaged after it was saved") as e:
        fmt.read_identity_bytes(bytes(flipped), "flipped.safetensors")
    assert "Fix: copy the original file again" in str(e.value)
    later_scheme = save(fmt.identity_tensors(identity), metadata=dict(identity.meta, fingerprint="pfid9-abc"))
    assert fmt.read_identity_bytes(later_scheme, "x").fingerprint == identity.fingerprint  # not ours to check


def test_a_card_holds_the_files_exact_bytes_and_loads_to_the_same_identity(tmp_path):
    identity = make_full_size_identity(8)
    data = fmt.identity_bytes(identity)
    png = card.identity_card_bytes(identity)
    contents = card.read_card(png, "alice.png")
    assert contents.identity_bytes == data and contents.fingerprint == identity.fingerprint
    path = tmp_path / "alice.png"
    path.write_bytes(png)
    from_card = card.load_identity_card(str(path))
    from_file = fmt.read_identity_bytes(data, "alice.safetensors")
    for name in fmt.TENSORS:
        assert torch.equal(getattr(from_card, name), getattr(from_file, name)), name
    assert from_card.meta == from_file.meta and from_card.fingerprint == identity.fingerprint
    assert from_card.label == "alice.png" and card.read_identity_card(png, "up.png").label == "up.png"
    assert card.identity_card_bytes(from_card) == png  # a loaded card saved again is the same card (same md5)


def test_card_errors_have_the_form_of_every_file_error_and_survive_pickling(tmp_path):
    with pytest.raises(card.IdentityCardError) as e:
        card.read_card_file(str(tmp_path / "nope.png"))
    text = str(e.value)
    assert text.startswith("nope.png: cannot be read") and f"\n  file: {tmp_path / 'nope.png'}\n  Fix: " in text
    again = pickle.loads(pickle.dumps(e.value))
    assert (type(again), str(again), again.reason, again.name, again.path) == \
        (card.IdentityCardError, text, "not_found", "nope.png", str(tmp_path / "nope.png"))
    plain = fmt.IdentityFileError("/x/a.safetensors", "broken.", "do this.")
    back = pickle.loads(pickle.dumps(plain))
    assert (type(back), str(back), back.fix) == (fmt.IdentityFileError, str(plain), "do this.")
    assert isinstance(back, SafetensorsFileError)
