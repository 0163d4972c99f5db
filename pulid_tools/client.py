"""`python -m pulid_tools queue GRAPH.json ...`: run an API graph on a ComfyUI server without the browser.

Uploads the reference photos, fills prompt/seed/weight (where they go: below), queues the prompt,
follows the progress on ComfyUI's websocket (or polls /history if the websocket is unavailable), downloads
the images and exits 0; exits 1 with ComfyUI's own error message when the prompt is refused (HTTP 400,
node_errors) or fails while running (execution_error). Standard library only."""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import graph as graphs
from .websocket import WebSocket, WebSocketError

DEFAULT_SERVER = os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")
HISTORY_POLL_S = 0.5
SILENT_CHECK_S = 10.0


class ComfyError(RuntimeError):
    """The prompt did not produce images; the message is what the user needs to see."""


class DeadlinePassed(Exception):
    """--timeout ran out (not an OSError, so it is never taken for a network problem)."""


class ComfyClient:
    def __init__(self, server: str = DEFAULT_SERVER, request_timeout: float = 60.0):
        self.base = (server if "://" in server else f"http://{server}").rstrip("/")
        self.request_timeout = request_timeout
        self.client_id = uuid.uuid4().hex

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        """(status, body) for any HTTP answer; connection problems raise ComfyError."""
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ComfyError(f"cannot reach ComfyUI at {self.base}: {reason}. Is it running (python main.py "
                             f"--listen ...) and is --server right?") from None

    def get_json(self, path: str):
        status, body = self.request(path)
        if status != 200:
            raise ComfyError(f"GET {path}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
        return json.loads(body)

    def upload_image(self, path: str) -> str:
        """Upload into ComfyUI's input folder; returns the name LoadImage takes. Identical images are not
        stored twice, and a different image with the same name gets a new name (ComfyUI decides)."""
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        name = os.path.basename(path).replace('"', "_").replace("\r", "_").replace("\n", "_")
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\""
                f"\r\nContent-Type: {mime}\r\n\r\n").encode() + content + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n"
            f"--{boundary}--\r\n").encode()
        status, answer = self.request("/upload/image", body,
                                      {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyError(f"uploading {path} failed: HTTP {status} {answer[:200].decode('utf-8', 'replace')}")
        info = json.loads(answer)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, graph: dict) -> str:
        body = json.dumps({"prompt": graph, "client_id": self.client_id}).encode()
        status, answer = self.request("/prompt", body, {"Content-Type": "application/json"})
        try:
            reply = json.loads(answer)
        except json.JSONDecodeError:
            reply = {}
        if status == 200 and "prompt_id" in reply:
            return reply["prompt_id"]
        if status == 400 and isinstance(reply, dict) and ("error" in reply or "node_errors" in reply):
            raise ComfyError(format_rejection(reply, graph))
        raise ComfyError(f"POST /prompt: HTTP {status}: {answer[:500].decode('utf-8', 'replace')}")

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def websocket(self) -> WebSocket:
        scheme = "wss" if self.base.startswith("https") else "ws"
        url = f"{scheme}://{self.base.split('://', 1)[1]}/ws?clientId={self.client_id}"
        return WebSocket.connect(url, timeout=10.0)

    def download(self, image: dict, folder: str) -> str:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        status, data = self.request(f"/view?{query}")
        if status != 200:
            raise ComfyError(f"downloading {image.get('filename')}: HTTP {status}")
        os.makedirs(folder, exist_ok=True)
        stem, ext = os.path.splitext(os.path.basename(image["filename"]))
        path, n = os.path.join(folder, stem + ext), 1
        while os.path.exists(path):
            path, n = os.path.join(folder, f"{stem}_{n}{ext}"), n + 1
        with open(path, "wb") as f:
            f.write(data)
        return path


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


class Reporter:
    """Progress lines: one rewritten line on a terminal, plain lines (fewer of them) otherwise."""

    def __init__(self, graph: dict, out=None, quiet: bool = False):
        self.graph, self.out, self.quiet = graph, out or sys.stderr, quiet
        self.tty = self.out.isatty()
        self._pending_cr = False
        self._last = None

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._pending_cr:
            self.out.write("\n")
            self._pending_cr = False
        self.out.write(text + "\n")
        self.out.flush()

    def progress(self, node, value, maximum) -> None:
        if self.quiet:
            return
        text = f"  {graphs.describe(self.graph, node)}: {value}/{maximum}"
        if self.tty:
            self.out.write("\r" + text.ljust(79))
            self._pending_cr = True
            self.out.flush()
        elif value == maximum or self._last != node:
            self.line(text)
        self._last = node

    def message(self, kind: str, data: dict) -> None:
        if kind == "execution_start":
            self.line("started")
        elif kind == "execution_cached" and data.get("nodes"):
            self.line(f"cached from earlier runs: {len(data['nodes'])} node(s)")
        elif kind == "executing" and data.get("node") is not None:
            self.line(f"running {graphs.describe(self.graph, data['node'])}")
        elif kind == "progress":
            self.progress(data.get("node"), data.get("value"), data.get("max"))


def follow(client: ComfyClient, ws: WebSocket, prompt_id: str, reporter: Reporter, deadline: float) -> dict | None:
    """Read websocket messages until the prompt ends; returns its execution_error data, if any. While the
    socket is silent, /history is checked now and then, in case an end message never arrives."""
    failure, last_check = None, time.monotonic()
    while time.monotonic() < deadline:
        message = ws.receive(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
        if message is None and time.monotonic() - last_check > SILENT_CHECK_S:
            last_check = time.monotonic()
            if client.history(prompt_id) is not None:
                return failure
        if message is None or isinstance(message, bytes):  # timeout, or a binary preview image
            continue
        try:
            event = json.loads(message)
        except json.JSONDecodeError:
            continue
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id", prompt_id) != prompt_id:
            continue
        reporter.message(kind, data)
        if kind in ("execution_error", "execution_interrupted"):
            failure = dict(data, exception_type=data.get("exception_type", "interrupted"),
                           exception_message=data.get("exception_message", "the prompt was interrupted"))
        if kind in ("execution_success", "execution_error", "execution_interrupted") or (
                kind == "executing" and data.get("node") is None and "prompt_id" in data):
            return failure
    raise DeadlinePassed


def wait_for_history(client: ComfyClient, prompt_id: str, deadline: float) -> dict:
    """History is written just after the end messages: poll briefly (bounded by the deadline)."""
    while True:
        entry = client.history(prompt_id)
        if entry is not None:
            return entry
        if time.monotonic() >= deadline:
            raise DeadlinePassed
        time.sleep(HISTORY_POLL_S)


def error_from_history(entry: dict) -> dict | None:
    status = entry.get("status") or {}
    for kind, data in status.get("messages") or []:
        if kind in ("execution_error", "execution_interrupted"):
            return dict(data, exception_type=data.get("exception_type", "interrupted"),
                        exception_message=data.get("exception_message", "the prompt was interrupted"))
    if status.get("status_str") == "error":
        return {"exception_type": "error", "exception_message": "the prompt failed (no details in /history)"}
    return None


def run_graph(client: ComfyClient, graph: dict, reporter: Reporter, timeout: float, verbose: bool = False) -> dict:
    """Queue `graph`, follow it to the end and return its /history entry; raise ComfyError if it fails."""
    deadline = time.monotonic() + timeout
    ws, ws_error = None, None
    try:
        ws = client.websocket()  # before queueing, so no message of this prompt is missed
    except (OSError, WebSocketError) as e:
        ws_error = e
    try:
        prompt_id = client.queue(graph)
        reporter.line(f"queued prompt {prompt_id}")
        if ws is None:
            reporter.line(f"no progress (websocket unavailable: {ws_error}); waiting on /history")
        failure = None
        if ws is not None:
            try:
                failure = follow(client, ws, prompt_id, reporter, deadline)
            except (OSError, WebSocketError) as e:
                reporter.line(f"websocket lost ({e}); waiting on /history")
        entry = wait_for_history(client, prompt_id, deadline)
    except DeadlinePassed:
        raise ComfyError(f"timed out after {timeout:.0f} s; the prompt may still be running on the server "
                         f"(raise --timeout)") from None
    finally:
        if ws is not None:
            ws.close()
    failure = error_from_history(entry) or failure
    if failure is not None:
        raise ComfyError(format_failure(failure, graph, verbose))
    return entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="API-format graph (JSON), e.g. examples/api/pulid_flux_basic.json")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"ComfyUI address (default {DEFAULT_SERVER}, "
                                                                 "or $COMFYUI_URL)")
    parser.add_argument("--face", action="append", default=[], metavar="IMAGE",
                        help="reference photo, uploaded into the LoadImage nodes in node id order (repeatable)")
    parser.add_argument("--prompt", help="text of the node titled '... positive ...'")
    parser.add_argument("--negative", help="text of the node titled '... negative ...'")
    parser.add_argument("--seed", type=int, help="every seed / noise_seed input")
    parser.add_argument("--weight", type=float, help="ID weight of every ApplyPulidFlux node")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="assignments",
                        help="any input; NODE = id, title or class name (repeatable), e.g. --set KSampler.steps=28")
    parser.add_argument("--out", default="pulid_outputs", help="folder for the images (previews go to OUT/previews)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="print the filled graph and exit; contacts nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the saved files and errors")
    parser.add_argument("--verbose", action="store_true", help="also print the server's traceback on errors")


def fill(graph: dict, args, image_names: list[str]) -> None:
    if image_names:
        graphs.set_images(graph, image_names)
    if args.prompt is not None:
        graphs.set_prompt(graph, args.prompt)
    if args.negative is not None:
        graphs.set_prompt(graph, args.negative, negative=True)
    if args.seed is not None:
        graphs.set_seed(graph, args.seed)
    if args.weight is not None:
        graphs.set_weight(graph, args.weight)
    for assignment in args.assignments:
        graphs.set_input(graph, *graphs.parse_assignment(assignment))


def run(args) -> int:
    try:
        graph = graphs.load_graph(args.graph)
        missing = [p for p in args.face if not os.path.isfile(p)]
        if missing:
            raise graphs.GraphError(f"image not found: {', '.join(missing)}")
        if len(args.face) > len(graphs.image_nodes(graph)):  # before uploading anything
            graphs.set_images(graph, args.face)
        if args.dry_run:
            fill(graph, args, [os.path.basename(p) for p in args.face])
            print(json.dumps(graph, indent=2))
            return 0
        fill(graph, args, [])  # refuse bad overrides before touching the server
        client = ComfyClient(args.server)
        reporter = Reporter(graph, quiet=args.quiet)
        fill(graph, args, [client.upload_image(p) for p in args.face])
        start = time.monotonic()
        entry = run_graph(client, graph, reporter, args.timeout, args.verbose)
        saved = []
        for output in (entry.get("outputs") or {}).values():
            for image in output.get("images", []):
                folder = args.out if image.get("type") == "output" else os.path.join(args.out, "previews")
                saved.append(client.download(image, folder))
        reporter.line(f"done in {time.monotonic() - start:.1f} s")
        for path in saved:
            print(path)
        if not saved:
            print("the prompt ran but produced no images (no SaveImage/PreviewImage node?)", file=sys.stderr)
            return 1
        return 0
    except graphs.GraphError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ComfyError as e:
        print(str(e), file=sys.stderr)
        return 1
