"""One ComfyUI server's HTTP API on aiohttp: uploads (photos, identities), queueing, /history, /view,
interrupting, and the error messages users see. The prompt's life on the websocket is in websocket.py."""
from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import urllib.parse
import uuid

import aiohttp

from . import graph as graphs
from .versions import PACK_VERSION

IDENTITY_ROUTE = "/pulid_flux/identities"
WS_MAX_MESSAGE = 64 * 1024 * 1024  # previews are the largest messages ComfyUI sends


class ComfyError(RuntimeError):
    """The prompt did not produce images; the message is what the user needs to see."""


class ServerUnavailable(ComfyError):
    """The server cannot be reached, stopped answering or dropped the connection: worth trying elsewhere."""


class PromptRefused(ComfyError):
    """ComfyUI refused the graph (HTTP 400, node_errors): the same graph fails on every server."""


class PromptFailed(ComfyError):
    """The prompt ran and failed (execution_error, e.g. no face in a reference photo)."""


def normalise_url(server: str) -> str:
    return (server if "://" in server else f"http://{server}").rstrip("/")


def content_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity_upload_name(path: str) -> str:
    """NAME-<12 hex of the content>.safetensors: a name on the server that holds these bytes and no others."""
    stem = os.path.basename(path)
    stem = stem[:-len(".safetensors")] if stem.endswith(".safetensors") else os.path.splitext(stem)[0]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_") or "identity"
    return f"{stem[:60]}-{content_digest(path)[:12]}.safetensors"


class ComfyAPI:
    """`async with ComfyAPI(url) as api:` one aiohttp session per server; connection problems raise
    ServerUnavailable with a message naming the server."""

    def __init__(self, server: str, request_timeout: float = 60.0, client_id: str | None = None):
        self.base = normalise_url(server)
        self.request_timeout = request_timeout
        self.client_id = client_id or uuid.uuid4().hex
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self):
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, self.request_timeout),
                                        sock_read=self.request_timeout)
        self.session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    def unreachable(self, error) -> ServerUnavailable:
        reason = str(error) or type(error).__name__
        return ServerUnavailable(f"cannot reach ComfyUI at {self.base}: {reason}. Is it running (python main.py "
                                 f"--listen ...) and is --server right?")

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, bytes]:
        """(status, body) for any HTTP answer; connection problems raise ServerUnavailable."""
        try:
            async with self.session.request(method, self.base + path, **kwargs) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise self.unreachable(e) from None

    async def get_json(self, path: str):
        status, body = await self.request("GET", path)
        if status != 200:
            raise ComfyError(f"GET {path}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise ServerUnavailable(f"{self.base}{path} answered something that is not JSON") from None

    async def upload_image(self, path: str) -> str:
        """Upload into ComfyUI's input folder; returns the name LoadImage takes. Identical images are not
        stored twice, and a different image with the same name gets a new name (ComfyUI decides)."""
        with open(path, "rb") as f:
            content = f.read()
        form = aiohttp.FormData()
        form.add_field("image", content, filename=os.path.basename(path),
                       content_type=mimetypes.guess_type(path)[0] or "application/octet-stream")
        form.add_field("type", "input")
        status, answer = await self.request("POST", "/upload/image", data=form)
        if status != 200:
            raise ComfyError(f"uploading {path} failed: HTTP {status} {answer[:200].decode('utf-8', 'replace')}")
        info = json.loads(answer)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    async def _post_identity(self, path: str, content: bytes, name: str, overwrite: bool) -> tuple[int, dict]:
        form = aiohttp.FormData()
        form.add_field("file", content, filename=name, content_type="application/octet-stream")
        form.add_field("name", name)
        form.add_field("overwrite", "true" if overwrite else "false")
        status, answer = await self.request("POST", IDENTITY_ROUTE, data=form)
        try:
            reply = json.loads(answer)
        except json.JSONDecodeError:
            reply = {"error": answer[:200].decode("utf-8", "replace")}
        return status, reply if isinstance(reply, dict) else {}

    async def upload_identity(self, path: str) -> str:
        """Upload an identity file through the pack's route under a content-addressed name
        (identity_upload_name), so an existing file of that name holds the same bytes: it is then
        overwritten with them (a no-op that also repairs a damaged copy). Returns the name for
        PulidFluxLoadIdentity's identity_file."""
        with open(path, "rb") as f:
            content = f.read()
        name = identity_upload_name(path)
        status, reply = await self._post_identity(path, content, name, overwrite=False)
        if status == 409:
            status, reply = await self._post_identity(path, content, name, overwrite=True)
        if status == 200:
            return reply.get("name", name)
        why = reply.get("error") or f"HTTP {status}"
        if status == 404:
            why = (f"{self.base} has no {IDENTITY_ROUTE} route: update ComfyUI-PuLID-Flux on that server to the "
                   f"version of this client ({PACK_VERSION}) and restart it")
        elif status == 413:
            why = f"the file is too large for the server ({len(content)} bytes; identities are well under 1 MB): {why}"
        raise ComfyError(f"uploading identity {path} to {self.base} refused: {why}")

    async def queue(self, graph: dict) -> str:
        body = {"prompt": graph, "client_id": self.client_id}
        status, answer = await self.request("POST", "/prompt", json=body)
        try:
            reply = json.loads(answer)
        except json.JSONDecodeError:
            reply = {}
        if status == 200 and isinstance(reply, dict) and "prompt_id" in reply:
            return reply["prompt_id"]
        if status == 400 and isinstance(reply, dict) and ("error" in reply or "node_errors" in reply):
            raise PromptRefused(format_rejection(reply, graph))
        raise ServerUnavailable(f"POST {self.base}/prompt: HTTP {status}: {answer[:500].decode('utf-8', 'replace')}")

    async def history(self, prompt_id: str) -> dict | None:
        return (await self.get_json(f"/history/{urllib.parse.quote(prompt_id)}")).get(prompt_id)

    async def connect_ws(self) -> aiohttp.ClientWebSocketResponse:
        scheme = "wss" if self.base.startswith("https") else "ws"
        url = f"{scheme}://{self.base.split('://', 1)[1]}/ws?clientId={self.client_id}"
        try:
            return await self.session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                                 max_msg_size=WS_MAX_MESSAGE, autoping=True)
        except aiohttp.WSServerHandshakeError as e:
            raise ComfyError(f"websocket refused by {url}: HTTP {e.status}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise self.unreachable(e) from None

    async def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        status, data = await self.request("GET", f"/view?{query}")
        if status != 200:
            raise ServerUnavailable(f"downloading {image.get('filename')} from {self.base}: HTTP {status}")
        return data

    async def cancel(self, prompt_id: str) -> None:
        """Take the prompt out of the server's queue, or interrupt it if it is running (it alone)."""
        await self.request("POST", "/queue", json={"delete": [prompt_id]})
        await self.request("POST", "/interrupt", json={"prompt_id": prompt_id})


def format_rejection(reply: dict, graph: dict) -> str:
    error = reply.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    lines = [f"ComfyUI refused the prompt: {error.get('message', 'invalid prompt')}"
             + (f": {error['details']}" if error.get("details") else "")]
    for node_id, info in (reply.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            detail = f": {e['details']}" if e.get("details") else ""
            lines.append(f"  {graphs.describe(graph, node_id)}: {e.get('message', '')}{detail}")
    return "\n".join(lines)


def format_failure(error: dict, graph: dict, verbose: bool = False) -> str:
    where = graphs.describe(graph, error.get("node_id"))
    kind = error.get("exception_type", "error").rsplit(".", 1)[-1]
    lines = [f"ComfyUI could not run the prompt: {kind} in {where}:",
             *("  " + line for line in str(error.get("exception_message", "")).strip().splitlines())]
    if verbose and error.get("traceback"):
        lines += ["  traceback (on the server):"] + ["    " + line.rstrip() for line in error["traceback"]]
    return "\n".join(lines)
