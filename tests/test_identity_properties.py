"""Property-based tests (hypothesis, the bounded derandomized "ci" profile of conftest.py): the safetensors header
reader, the identity reader, the name rule and the upload handler get arbitrary and near-valid input; only the
documented error types come out, and valid input round-trips. The examples that found bugs are explicit tests in
test_identity_files.py and test_identity_upload.py."""
import json
import re
import string

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pulid_flux.identity import file as fmt
from pulid_flux.identity.file import IdentityFileError
from pulid_flux.identity.store import MAX_NAME_CHARS, IdentityNameError, identity_file_name
from pulid_flux.safetensors_file import SafetensorsFileError, parse_header
from support.identity_samples import GOOD, join, split
from support.upload_server import UploadServer, multipart

HEADER, BODY = split(GOOD)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=8)
PATHS = [(k,) for k in HEADER] + [(k, f) for k in HEADER if k != "__metadata__" for f in HEADER[k]] + [
    ("__metadata__", k) for k in HEADER["__metadata__"]] + [(k, "shape", 0) for k in HEADER if k != "__metadata__"] + [
    (k, "data_offsets", 1) for k in HEADER if k != "__metadata__"]


def library_accepts(data: bytes) -> bool:
    from safetensors import SafetensorError, deserialize

    try:
        deserialize(data)
        return True
    except SafetensorError:
        return False


def both_readers(tmp_path, data: bytes):
    """None when both accept (and agree), else the message; any other exception fails the test."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    outcomes = []
    for read in (lambda: fmt.load_identity(str(path)), lambda: fmt.read_identity_bytes(data, "x.safetensors")):
        try:
            identity = read()
            outcomes.append(None)
        except IdentityFileError as e:
            outcomes.append(str(e).split("\n")[0])
    assert outcomes[0] == outcomes[1], outcomes  # one reader: the file and the upload get the same answer
    if outcomes[0] is None:
        assert torch.isfinite(identity.id_tokens).all() and identity.arcface.shape[1] == 512
        assert (identity.arcface.double().norm(dim=-1) - 1).abs().max() <= fmt.ARCFACE_NORM_TOLERANCE
    return outcomes[0]


# --- the header reader ----------------------------------------------------------------------------------------
@given(st.binary(max_size=300))
def test_header_reader_on_arbitrary_bytes(data):
    try:
        header = parse_header("x.safetensors", data, len(data))
    except SafetensorsFileError as e:
        assert str(e).startswith("x.safetensors: ") and "\n  Fix: " in str(e)
        return
    assert library_accepts(data)  # what this reader accepts, the safetensors library accepts
    assert header.data_start <= len(data)


@given(st.integers(0, 2**64 - 1), st.integers(0, len(GOOD)))
def test_header_reader_on_any_length_field_and_any_cut(length, cut):
    data = length.to_bytes(8, "little") + GOOD[8:cut]
    try:
        parse_header("x.safetensors", data, len(data))
    except SafetensorsFileError:
        return
    assert library_accepts(data)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.binary(max_size=64))
def test_header_reader_on_arbitrary_json_headers(header, body):
    data = join(header, body)
    try:
        parse_header("x.safetensors", data, len(data))
    except SafetensorsFileError:
        return
    assert library_accepts(data)


# --- the identity reader ----------------------------------------------------------------------------------------
def mutate(header, path, value, action):
    header = json.loads(json.dumps(header))
    target = header
    for key in path[:-1]:
        target = target[key]
    if action == "delete":
        del target[path[-1]]
    elif action == "add" and isinstance(target, dict):
        target[f"extra_{path[-1]}"] = value
    else:
        target[path[-1]] = value
    return header


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(PATHS), json_values, st.sampled_from(["set", "delete", "add"]))
def test_identity_reader_on_mutated_headers(tmp_path, path, value, action):
    header = mutate(HEADER, path, value, action)
    both_readers(tmp_path, join(header, BODY))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=32), st.booleans())
def test_identity_reader_on_spliced_bytes(tmp_path, at, junk, replace):
    data = GOOD[:at] + junk + GOOD[at + (len(junk) if replace else 0):]
    assume(data != GOOD)
    message = both_readers(tmp_path, data)
    if at < 8 or at + len(junk) > len(GOOD) or not replace:  # the layout itself changed: always refused
        assert message is not None


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) + 64))
def test_identity_reader_on_any_length(tmp_path, size):
    data = (GOOD + b"\0" * 64)[:size]
    message = both_readers(tmp_path, data)
    assert (message is None) == (size == len(GOOD))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(["id_tokens", "uncond_tokens",
                                                                                 "arcface"]))
def test_identity_reader_on_any_value(tmp_path, value, name):
    from safetensors.torch import save

    tensors = fmt.identity_tensors(fmt.read_identity_bytes(GOOD))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    message = both_readers(tmp_path, save(tensors, metadata=HEADER["__metadata__"]))
    if message is None:
        assert abs(value) <= fmt.MAX_ABS_TOKEN


# --- the name rule ----------------------------------------------------------------------------------------------
RULE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9 ._()+-]*[A-Za-z0-9_()+-])?\.safetensors")


@given(st.text(max_size=120) | st.text(string.ascii_letters + string.digits + " ._()+-\n\r\t\x00/\\:", max_size=110))
def test_name_rule(name):
    try:
        file_name = identity_file_name(name)
    except IdentityNameError as e:
        assert "refused: " in str(e) and "Rule: " in str(e)
        return
    assert RULE.fullmatch(file_name) and len(file_name) <= MAX_NAME_CHARS + len(".safetensors")
    assert identity_file_name(file_name) == file_name  # a name the rule gave is accepted as it is
    assert ".." not in file_name and file_name.split(".")[0].lower() not in ("con", "nul", "prn", "aux")


# --- the upload handler, in process -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = UploadServer(tmp_path_factory.mktemp("identities"))
    yield srv
    srv.close()


def _card_of_good():
    import numpy as np

    from pulid_flux.identity.card import card_bytes

    return card_bytes(np.full((2, 4, 3), 7, np.uint8), GOOD)


CARD = _card_of_good()  # a card is accepted as the file it carries; a cut one, a JPEG, an empty file get a 400
names = st.none() | st.text(max_size=20) | st.sampled_from(["ok", "a.safetensors", "../x", "con", "abc\n", "c.png",
                                                            ".png"])
contents = (st.sampled_from([GOOD, GOOD[:100], b"", b"\x80\x04junk", CARD, CARD[:200], b"\xff\xd8\xff\xe0junk"])
            | st.binary(max_size=64))
parts = st.tuples(st.sampled_from(["file", "name", "overwrite", "other", ""]), names, contents)


@given(st.lists(parts, max_size=4), st.booleans())
def test_upload_handler_answers_4xx_or_200_never_5xx(server, layout, cut):
    body, content_type = multipart([(field, file_name if field == "file" else None, content)
                                    for field, file_name, content in layout])
    status, answer = server.post(body[:len(body) // 2] if cut else body, content_type)
    assert status in (200, 400, 409, 413), (status, answer)
    if status == 200:
        assert fmt.read_identity_bytes(open(f"{server.folder}/{answer['name']}", "rb").read())
    else:
        assert isinstance(answer, dict) and answer["error"], answer
