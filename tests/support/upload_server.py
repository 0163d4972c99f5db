"""POST /pulid_flux/identities in process: the upload handler (pulid_flux/identity/upload.handle_upload) on an aiohttp test
server on 127.0.0.1, spoken to with raw HTTP so that bodies can be malformed, cut short or longer than announced;
and the multipart bodies to send it. For test_identity_upload.py, test_identity_concurrency.py and
test_identity_properties.py."""
import asyncio
import json
import os
import urllib.parse
import uuid

from aiohttp import web
from aiohttp.test_utils import TestServer

from pulid_flux.identity.upload import handle_upload

ROUTE = "/pulid_flux/identities"


class UploadServer:
    def __init__(self, folder, handler=handle_upload):
        self.folder = str(folder)
        self.loop = asyncio.new_event_loop()
        app = web.Application()

        async def upload(request):
            return await handler(request, self.folder)

        app.router.add_post(ROUTE, upload)
        self.server = TestServer(app, host="127.0.0.1")
        self.loop.run_until_complete(self.server.start_server())
        self.port = self.server.port

    def close(self):
        self.loop.run_until_complete(self.server.close())
        self.loop.close()

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, 60))

    def post(self, body: bytes, content_type: str, headers: dict | None = None, length: int | None = None,
             cut: bool = False):
        """(status, json body) for a raw POST; `length` overrides Content-Length; `cut`: stop sending after body."""
        return self.run(self._request(body, content_type, headers or {}, len(body) if length is None else length, cut))

    async def _request(self, body, content_type, headers, length, cut):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            head = [f"POST {ROUTE} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
                    f"Content-Length: {length}"]
            head += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            if cut:
                writer.write_eof()  # the client stops sending: a body cut short
            return await read_response(reader)
        finally:
            writer.close()

    def files(self):
        return sorted(os.listdir(self.folder))


async def read_response(reader):
    status_line = await reader.readline()
    if not status_line:
        return None, None  # the server closed the connection without answering
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    data = await reader.readexactly(length) if length else b""
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode("utf-8", "replace")  # aiohttp's own plain-text 400 for a malformed request


def multipart(parts, boundary=None) -> tuple[bytes, str]:
    """parts: (field name, file name or None, content bytes[, extra header lines])."""
    boundary = boundary or uuid.uuid4().hex
    out = b""
    for name, file_name, content, *extra in parts:
        disposition = f'form-data; name="{name}"'
        if file_name is not None and (file_name.isprintable() and file_name.isascii()):
            disposition += f'; filename="{file_name}"'
        elif file_name is not None:  # RFC 5987, as browsers and HTTP libraries send such names
            disposition += f"; filename*=utf-8''{urllib.parse.quote(file_name)}"
        lines = [f"Content-Disposition: {disposition}", *(extra[0] if extra else [])]
        out += f"--{boundary}\r\n".encode() + "\r\n".join(lines).encode() + b"\r\n\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
