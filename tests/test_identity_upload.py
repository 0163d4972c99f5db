"""Tier (a), no ComfyUI: POST /pulid_flux/identities in process (the handler identity_routes.py registers, on an
aiohttp server on 127.0.0.1), with raw HTTP so that bodies can be malformed, cut short or longer than announced.
Nothing a client sends may produce a 5xx; every refusal says why."""
import asyncio
import os
import uuid

import pytest

from pulid_flux.identity import file as fmt
from pulid_flux.identity.upload import MAX_BODY_BYTES
from support.identity_samples import GOOD, make_small_identity, setter, with_header
from support.upload_server import ROUTE, UploadServer, multipart, read_response

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = UploadServer(tmp_path_factory.mktemp("identities"))
    yield srv
    srv.close()


def upload(server, file_name, data, **fields):
    parts = [(k, None, v.encode()) for k, v in fields.items()] + [("file", file_name, data)]
    return server.post(*multipart(parts))


def test_a_valid_upload_is_written_once(server):
    fingerprint = fmt.read_identity_bytes(GOOD).fingerprint
    assert upload(server, "valid.safetensors", GOOD) == (200, {"name": "valid.safetensors", "bytes": len(GOOD),
                                                                "fingerprint": fingerprint})
    status, body = upload(server, "valid.safetensors", GOOD)
    assert status == 409 and "valid.safetensors already exists" in body["error"] and "overwrite=true" in body["error"]
    # a client told the name exists learns whether the file there is the same identity (both fingerprints)
    assert (body["fingerprint"], body["existing_fingerprint"]) == (fingerprint, fingerprint)
    other = fmt.identity_bytes(make_small_identity(7))
    status, body = upload(server, "valid.safetensors", other)
    assert status == 409 and body["fingerprint"] == fmt.read_identity_bytes(other).fingerprint != fingerprint
    assert body["existing_fingerprint"] == fingerprint
    assert upload(server, "x.safetensors", GOOD, name="valid", overwrite="true")[0] == 200
    assert open(os.path.join(server.folder, "valid.safetensors"), "rb").read() == GOOD


@pytest.mark.parametrize("keys,value", [(("__metadata__",), ["x"]), (("id_tokens",), "x"),
                                        (("arcface", "data_offsets"), ["0", "2048"]), (("preview", "shape"), [1, 2]),
                                        (("id_tokens", "dtype"), 5)])
def test_mistyped_headers_get_400_not_500(server, keys, value):
    status, body = upload(server, "typed.safetensors", with_header(setter(*keys, value=value)))
    assert status == 400 and body["error"].startswith("not a PuLID-Flux identity: typed.safetensors: damaged"), body
    assert "typed.safetensors" not in server.files()


@pytest.mark.parametrize("where", ["filename", "name field"])
def test_a_name_with_a_trailing_newline_is_refused(server, where):
    name = "abc\n.safetensors"
    status, body = (upload(server, name, GOOD) if where == "filename" else
                    upload(server, "ok.safetensors", GOOD, name="abc\n"))
    assert status == 400 and "control character (U+000A" in body["error"], body
    assert not [f for f in server.files() if "\n" in f or f.startswith("abc")]


@pytest.mark.parametrize("name", ["Zoë", "名前"])
def test_non_ascii_names_are_refused_saying_ascii(server, name):
    status, body = upload(server, "ok.safetensors", GOOD, name=name)
    assert status == 400 and "which is not ASCII" in body["error"] and "Rule: 1 to 100 ASCII letters" in body["error"]


def test_two_file_fields_are_refused(server):
    other = fmt.identity_bytes(make_small_identity(5))
    status, body = server.post(*multipart([("file", "twice.safetensors", GOOD), ("file", "twice.safetensors", other)]))
    assert status == 400 and "the field 'file' is sent twice" in body["error"]
    status, body = server.post(*multipart([("name", None, b"a"), ("name", None, b"b"), ("file", "n.safetensors", GOOD)]))
    assert status == 400 and "the field 'name' is sent twice" in body["error"]
    assert "twice.safetensors" not in server.files()


def test_a_body_longer_than_content_length_is_a_400(server):
    body, content_type = multipart([("file", "long.safetensors", GOOD)])
    status, answer = server.post(body + b"trailing bytes the server was not told about", content_type)
    assert status in (200, 400), (status, answer)  # aiohttp refuses data after `Connection: close` itself
    status, answer = server.post(body[:-100], content_type)  # Content-Length ends before the closing boundary
    assert status == 400 and "not well-formed multipart/form-data or was cut short" in answer["error"], answer
    assert "Reading after EOF" in answer["error"]  # was an HTTP 500 before


def test_a_body_cut_short_is_not_a_500(server):
    body, content_type = multipart([("file", "cut.safetensors", GOOD)])
    status, answer = server.post(body[:len(body) // 2], content_type, length=len(body), cut=True)
    assert status in (None, 400), (status, answer)
    assert "cut.safetensors" not in server.files()
    assert upload(server, "after_cut.safetensors", GOOD)[0] == 200  # still serving


@pytest.mark.parametrize("body,content_type,status,message", [
    (b"{}", "application/json", 400, "send multipart/form-data"),
    (b"garbage", "multipart/form-data; boundary=xyz", 400, "not well-formed multipart"),
    (b"--xyz--\r\n", "multipart/form-data; boundary=xyz", 400, "no 'file' field"),
    (b"x", "multipart/form-data", 400, "not well-formed multipart"),
])
def test_bodies_that_are_not_an_upload(server, body, content_type, status, message):
    got, answer = server.post(body, content_type)
    assert got == status and message in answer["error"], answer


def test_oversize_is_refused_from_the_headers(server):
    status, body = server.post(b"", "multipart/form-data; boundary=xyz", length=300 * 2**20)
    assert status == 413 and "Content-Length 314,572,800 bytes" in body["error"]
    parts = [("file", "big.safetensors", GOOD, [f"Content-Length: {200 * 2**20}"])]
    status, body = server.post(*multipart(parts))
    assert status == 413 and "the part's Content-Length is 209,715,200 bytes" in body["error"]


async def _stream(server, field, size):
    """Send one `size`-byte field with chunked encoding (no Content-Length) and stop when the answer comes: the
    bytes sent by then bound what the server read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    boundary = "b" + uuid.uuid4().hex
    writer.write((f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
    answer = asyncio.ensure_future(read_response(reader))
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.safetensors"\r\n\r\n'.encode()
    sent, chunk = 0, b"x" * 2**16
    pieces = [head] + [chunk] * (size // len(chunk))
    try:
        for piece in pieces:
            if answer.done():
                break
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
            await writer.drain()
            await asyncio.sleep(0)
        status, body = await answer
    finally:
        writer.close()
    return status, body, sent


@pytest.mark.parametrize("field,status,message", [("name", 400, "the field 'name' is longer than 1024 bytes"),
                                                  ("other", 413, "over the 16 MB limit"),
                                                  ("file", 413, "over the 16 MB limit")])
def test_reading_stops_at_the_limit(server, field, status, message):
    got, body, sent = server.run(_stream(server, field, 60 * 2**20))
    assert got == status and message in body["error"], body
    # socket buffers on both sides hold a few MB; before, a 40-300 MB field was read whole (up to ComfyUI's 100 MB)
    assert sent < MAX_BODY_BYTES + 16 * 2**20, sent


def test_a_nested_multipart_part_is_a_400(server):
    """Found beside issue 15: a `file` part that is itself multipart/mixed answered HTTP 500."""
    inner = b'--in\r\nContent-Disposition: form-data; name="file"\r\n\r\nxx\r\n--in--\r\n'
    body = (b'--out\r\nContent-Disposition: form-data; name="file"\r\nContent-Type: multipart/mixed; boundary=in'
            b"\r\n\r\n" + inner + b"\r\n--out--\r\n")
    status, answer = server.post(body, "multipart/form-data; boundary=out")
    assert status == 400 and "nested multipart parts are not accepted" in answer["error"], answer


def test_a_card_is_stored_as_the_identity_file_it_carries_and_pictures_are_named(server):
    """Before: a card was refused as 'not a safetensors file (first bytes 89 50 4e 47 ...)' with advice about identity
    files, and so were a JPEG copy of one and an empty file."""
    import io

    import numpy as np
    from PIL import Image

    from pulid_flux.identity.card import card_bytes
    from pulid_flux.identity.file import read_identity_bytes

    card = card_bytes(np.full((4, 8, 3), 90, np.uint8), GOOD)
    carried = read_identity_bytes(GOOD, "Dana.safetensors").fingerprint
    assert upload(server, "Dana.png", card) == (200, {"name": "Dana.safetensors", "bytes": len(GOOD),
                                                     "fingerprint": carried})
    assert open(os.path.join(server.folder, "Dana.safetensors"), "rb").read() == GOOD
    assert upload(server, "x.png", card, name="dana2")[1]["name"] == "dana2.safetensors"
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(card)).save(jpeg, "JPEG")
    resaved = io.BytesIO()
    Image.open(io.BytesIO(card)).save(resaved, "PNG")  # the pixels only: the identity chunk is gone
    for name, data, message in (
            ("Dana copy.jpg", jpeg.getvalue(), "not a PuLID-Flux identity: Dana copy.jpg: is a JPEG picture, not an "
                                               "identity file or card"),
            ("empty.safetensors", b"", "not a PuLID-Flux identity: empty.safetensors: is empty (0 bytes)"),
            ("resaved.png", resaved.getvalue(), "resaved.png: is a PNG picture with no PuLID-Flux identity inside")):
        status, body = upload(server, name, data)
        assert status == 400 and message in body["error"], body
    assert not {"Dana copy.jpg.safetensors", "empty.safetensors", "resaved.safetensors"} & set(server.files())
