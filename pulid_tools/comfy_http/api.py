"""One ComfyUI server's HTTP API on aiohttp: uploads (photos, identities), queueing, /history, /view,
interrupting, and the error messages users see. The prompt's life on the websocket is in websocket.py."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import mimetypes
import os
import re
import sys
import urllib.parse
import uuid

import aiohttp

from . import graph as graphs
from ..versions import PACK_VERSION

IDENTITY_ROUTE = "/pulid_flux/identities"
WS_MAX_MESSAGE = 64 * 1024 * 1024  # previews are the largest messages ComfyUI sends
REPLY_TIMEOUT_S = 15.0  # a ComfyUI answers every request in well under a second, even while it samples
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?"
                  r"|\[[0-9A-Fa-f:.]+\]")


class ComfyError(RuntimeError):
    """The prompt did not produce images; the message is what the user needs to see."""


class ServerUnavailable(ComfyError):
    """The server cannot be reached, stopped answering or dropped the connection: worth trying elsewhere."""


class PromptRefused(ComfyError):
    """ComfyUI refused the graph (HTTP 400, node_errors): the same graph fails on every server."""


class PromptFailed(ComfyError):
    """The prompt ran and failed (execution_error, e.g. no face in a reference photo)."""


class ServerURLError(ValueError):
    """A --server value that is not an http(s) address; the message names it and shows the form."""


def parse_server(text: str) -> str:
    """'HOST', 'HOST:PORT' or 'http(s)://HOST[:PORT][/PATH]' -> 'http(s)://HOST[:PORT][/PATH]'; anything else
    raises ServerURLError (a usage error: nothing is contacted)."""
    def bad(why: str) -> ServerURLError:
        return ServerURLError(f"--server {text!r}: {why}; expected e.g. http://127.0.0.1:8188 or 127.0.0.1:8188")

    if not isinstance(text, str) or not text or any(c.isspace() or not c.isprintable() for c in text):
        raise bad("empty, or holds spaces or control characters")
    if "://" not in text and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", text):
        raise bad("a scheme is followed by '://'")
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise bad(str(e)) from None
    if parts.scheme not in ("http", "https"):
        raise bad(f"the scheme must be http or https, not {parts.scheme!r}")
    host = parts.netloc.rpartition("@")[2]
    host = host[:-len(f":{port}")] if port is not None else host
    if not HOST.fullmatch(host):
        raise bad(f"{host!r} is not a host name or address" if host else "no host")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise bad("a query or fragment has no place in a server address")
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def content_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity_file_bytes(path: str) -> bytes:
    """The identity that --identity names: the .safetensors file's bytes, or the identity file inside an identity
    card (.png), so a card works wherever an identity file does. Bytes shaped like a safetensors file are sent as
    they are (the server's reader checks them; no torch needed here); anything else (a card, a JPEG copy of one, an
    empty file, a pickle) goes to the pack's one reader of such bytes, pulid_flux/identity/card.identity_file_in,
    whose refusal becomes a GraphError before anything is sent."""
    with open(path, "rb") as f:
        content = f.read()
    if len(content) > 8 and content[8:9] == b"{":  # identity/card.looks_like_safetensors, without importing torch
        return content
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.append(root)  # the card reader is the pack's (pulid_flux/identity/card.py); appended, never first
    try:
        from pulid_flux.identity.card import identity_file_in
        from pulid_flux.identity.file import IdentityFileError
    except ImportError as e:
        raise graphs.GraphError(f"--identity {path}: not a .safetensors file (first bytes {content[:8].hex(' ')}); "
                                f"reading it as an identity card needs the pack's pulid_flux (torch): {e}") from None
    try:
        return identity_file_in(content, path)[0]
    except IdentityFileError as e:
        raise graphs.GraphError(f"--identity {e}") from None


def identity_upload_name(path: str, content: bytes | None = None) -> str:
    """NAME-<12 hex of the identity's bytes>.safetensors: a name on the server that holds these bytes and no others
    (a card and the file it carries get the same name)."""
    content = identity_file_bytes(path) if content is None else content
    stem = os.path.basename(path)
    stem = stem[:-len(".safetensors")] if stem.endswith(".safetensors") else os.path.splitext(stem)[0]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_") or "identity"
    return f"{stem[:60]}-{hashlib.sha256(content).hexdigest()[:12]}.safetensors"


def own_identity_name(path: str) -> str:
    """The name --keep-name uploads under: the file's own name with .safetensors (dana.safetensors, or dana.png ->
    dana.safetensors); the server checks it against the identity name rule."""
    stem = os.path.basename(path)
    stem = stem[:-len(".safetensors")] if stem.endswith(".safetensors") else os.path.splitext(stem)[0]
    return stem + ".safetensors"


@dataclasses.dataclass(frozen=True)
class UploadedIdentity:
    name: str                   # for Load identity's identity_file
    fingerprint: str | None     # for its fingerprint input (None: the server did not say)


class ComfyAPI:
    """`async with ComfyAPI(url) as api:` one aiohttp session per server; connection problems raise
    ServerUnavailable with a message naming the server."""

    def __init__(self, server: str, reply_timeout: float = REPLY_TIMEOUT_S, client_id: str | None = None):
        self.base = parse_server(server)
        self.reply_timeout = reply_timeout
        self.client_id = client_id or uuid.uuid4().hex
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self):
        # connect and every read bounded, the whole request not: a large image may take long to download
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.reply_timeout, sock_read=self.reply_timeout)
        self.session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    def unreachable(self, error) -> ServerUnavailable:
        if isinstance(error, asyncio.TimeoutError):  # aiohttp's socket timeouts are TimeoutErrors too
            return ServerUnavailable(f"ComfyUI at {self.base} did not answer within {self.reply_timeout:g} s "
                                     "(hung or overloaded? --reply-timeout sets the limit)")
        reason = str(error) or type(error).__name__
        return ServerUnavailable(f"cannot reach ComfyUI at {self.base}: {reason}. Is it running (python main.py "
                                 f"--listen ...) and is --server right?")

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, bytes]:
        """(status, body) for any HTTP answer; connection problems and a server that does not answer
        within reply_timeout raise ServerUnavailable."""
        try:
            async with self.session.request(method, self.base + path, **kwargs) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise self.unreachable(e) from None

    async def probe(self) -> None:
        """A cheap request that any ComfyUI answers at once (raises ServerUnavailable if it does not)."""
        await self.get_json("/queue")

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

    async def upload_identity(self, path: str, keep_name: bool = False, overwrite: bool = False) -> UploadedIdentity:
        """Upload an identity file (or the one inside a card) through the pack's route. By default under a
        content-addressed name (identity_upload_name), so an existing file of that name holds the same bytes: it is
        then overwritten with them (a no-op that also repairs a damaged copy). With `keep_name`, under the file's
        own name (dana.safetensors; a card dana.png gives dana.safetensors), the name workflows saved on another
        server use: a file of that name holding the same identity is kept, another identity is refused unless
        `overwrite`. Returns the name and the identity's fingerprint (None from servers older than the field)."""
        content = identity_file_bytes(path)
        name = own_identity_name(path) if keep_name else identity_upload_name(path, content)
        status, reply = await self._post_identity(path, content, name, overwrite=overwrite)
        if status == 409 and keep_name:
            theirs, ours = reply.get("existing_fingerprint"), reply.get("fingerprint")
            if ours and theirs == ours:  # the same identity is already there under that name
                return UploadedIdentity(name, ours)
            which = (f"another {name} (fingerprint {theirs or 'unreadable'}; yours is {ours})" if ours else
                     f"a {name} (an older pack there does not say whether it is the same identity)")
            raise ComfyError(f"{self.base} already has {which}: give --overwrite to replace it with yours, or rename "
                             f"your file")
        if status == 409:
            status, reply = await self._post_identity(path, content, name, overwrite=True)
        if status == 200:
            return UploadedIdentity(reply.get("name", name), reply.get("fingerprint"))
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
            if reply.get("node_errors"):  # queued without the outputs that failed validation: not what was asked
                try:
                    await self.cancel(reply["prompt_id"])
                except ComfyError:
                    pass  # the refusal is what matters; a server gone now is reported by the next request
                raise PromptRefused(format_rejection(reply, graph, dropped=True))
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


def format_rejection(reply: dict, graph: dict, dropped: bool = False) -> str:
    """ComfyUI's refusal (HTTP 400) or, with `dropped`, the outputs it dropped from a queued prompt (HTTP
    200 with node_errors), each node with its reasons."""
    node_errors = reply.get("node_errors") if isinstance(reply.get("node_errors"), dict) else {}
    if dropped:
        outputs = sorted({str(o) for info in node_errors.values() if isinstance(info, dict)
                          for o in info.get("dependent_outputs") or []} or set(node_errors))
        lines = ["ComfyUI dropped output(s) of the prompt as invalid: "
                 + ", ".join(graphs.describe(graph, o) for o in outputs)
                 + " (the prompt was taken off the queue; fix the graph or the --set values)"]
    else:
        error = reply.get("error") or {}
        if not isinstance(error, dict):
            error = {"message": str(error)}
        lines = [f"ComfyUI refused the prompt: {error.get('message', 'invalid prompt')}"
                 + (f": {error['details']}" if error.get("details") else "")]
    for node_id, info in node_errors.items():
        for e in (info.get("errors") or [] if isinstance(info, dict) else []):
            e = e if isinstance(e, dict) else {"message": str(e)}
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
