"""`python -m pulid_tools queue GRAPH.json ...`: run an API graph on a ComfyUI server without the browser.

Uploads the reference photos (or an identity file: under a name with its hash, or with --keep-name under its own
name, as workflows saved on another server name it), fills prompt/seed/weight (where they go: below), queues
the prompt, follows the progress on ComfyUI's websocket (or polls /history if the websocket is unavailable),
downloads the images and exits 0; exits 1 with ComfyUI's own error message when the prompt is refused
(HTTP 400, node_errors), when ComfyUI drops an output as invalid (HTTP 200 with node_errors: the prompt is
taken off the queue), when it fails while running (execution_error), or when the server cannot be reached
or does not answer within --reply-timeout; exits 2 for bad arguments (a malformed --server, a --set input
the node lacks, an --out folder that cannot be created or written). Needs aiohttp (every ComfyUI has it)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from ..comfy_http import graph as graphs
from ..comfy_http.api import (REPLY_TIMEOUT_S, ComfyAPI, ComfyError, ServerURLError, identity_file_bytes,
                               own_identity_name, parse_server)
from ..batch.manifest import OutputError, check_output_folder, os_reason
from ..comfy_http.websocket import run_prompt

DEFAULT_SERVER = os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")


def server_from_environment() -> str:
    """$COMFYUI_URL (read now, not at import) or ComfyUI's default address; raises ServerURLError."""
    value = os.environ.get("COMFYUI_URL") or "http://127.0.0.1:8188"
    try:
        return parse_server(value)
    except ServerURLError as e:
        raise ServerURLError(f"$COMFYUI_URL: {e}") from None


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="API-format graph (JSON), e.g. examples/api/pulid_flux_basic.json")
    parser.add_argument("--server", help=f"ComfyUI address (default {DEFAULT_SERVER}, or $COMFYUI_URL)")
    parser.add_argument("--face", action="append", default=[], metavar="IMAGE",
                        help="reference photo, uploaded into the LoadImage nodes in node id order (repeatable)")
    parser.add_argument("--identity", metavar="FILE", help="identity file (.safetensors from Save identity or "
                        "`python -m pulid_tools identity`) or identity card (.png), uploaded to the server and put "
                        "into the Load identity node")
    add_identity_upload_arguments(parser)
    parser.add_argument("--prompt", help="text of the node titled '... positive ...'")
    parser.add_argument("--negative", help="text of the node titled '... negative ...'")
    parser.add_argument("--seed", type=int, help="every seed / noise_seed input")
    parser.add_argument("--weight", type=float, help="ID weight of every ApplyPulidFlux node")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="assignments",
                        help="any input; NODE = id, title or class name (repeatable), e.g. --set KSampler.steps=28")
    parser.add_argument("--out", default="pulid_outputs", help="folder for the images (previews go to OUT/previews)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT_S, metavar="S",
                        help=f"seconds the server may take to connect or answer one request (default "
                             f"{REPLY_TIMEOUT_S:g}): a hung server is reported after that")
    parser.add_argument("--dry-run", action="store_true", help="print the filled graph and exit; contacts nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the saved files and errors")
    parser.add_argument("--verbose", action="store_true", help="also print the server's traceback on errors")


def add_identity_upload_arguments(parser: argparse.ArgumentParser) -> None:
    """--keep-name and --overwrite (queue and batch)."""
    parser.add_argument("--keep-name", action="store_true",
                        help="upload --identity under its own file name (dana.safetensors; a card dana.png as "
                             "dana.safetensors), the name workflows saved on another server use, instead of a "
                             "name with its hash; a different identity of that name on the server is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --keep-name: replace a different identity of that name on the server")


def identity_upload_problem(args) -> str | None:
    if args.overwrite and not args.keep_name:
        return "--overwrite goes with --keep-name (uploads under a name with the file's hash never overwrite)"
    if args.keep_name and not args.identity:
        return "--keep-name needs --identity FILE"
    return None


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


def unique_path(folder: str, filename: str) -> str:
    stem, ext = os.path.splitext(os.path.basename(filename))
    path, n = os.path.join(folder, stem + ext), 1
    while os.path.exists(path):
        path, n = os.path.join(folder, f"{stem}_{n}{ext}"), n + 1
    return path


async def queue_graph(args, graph: dict) -> list[str]:
    """Upload, fill, run and download; returns the saved paths (raises ComfyError)."""
    async with ComfyAPI(args.server, args.reply_timeout) as api:
        reporter = Reporter(graph, quiet=args.quiet)
        fill(graph, args, [await api.upload_image(p) for p in args.face])
        if args.identity:
            uploaded = await api.upload_identity(args.identity, args.keep_name, args.overwrite)
            graphs.set_identity(graph, uploaded.name, uploaded.fingerprint)
        start = time.monotonic()
        entry = await run_prompt(api, graph, args.timeout, on_event=reporter.message, log=reporter.line,
                                 verbose=args.verbose)
        saved = []
        for output in (entry.get("outputs") or {}).values():
            for image in output.get("images", []):
                folder = args.out if image.get("type") == "output" else os.path.join(args.out, "previews")
                data = await api.view(image)
                try:
                    os.makedirs(folder, exist_ok=True)
                    path = unique_path(folder, os.path.basename(str(image.get("filename")) or "image.png"))
                    with open(path, "wb") as f:
                        f.write(data)
                except OSError as e:
                    raise OutputError(f"cannot write {e.filename or folder}: {os_reason(e)}") from None
                saved.append(path)
        reporter.line(f"done in {time.monotonic() - start:.1f} s")
        return saved


def run(args) -> int:
    created = []
    try:
        if not (0 < args.reply_timeout < float("inf") and args.timeout > 0):
            raise graphs.GraphError("--timeout must be above 0 and --reply-timeout a number of seconds above 0")
        args.server = parse_server(args.server) if args.server is not None else server_from_environment()
        graph = graphs.load_graph(args.graph)
        missing = [p for p in args.face + ([args.identity] if args.identity else []) if not os.path.isfile(p)]
        if missing:
            raise graphs.GraphError(f"file not found: {', '.join(missing)}")
        if args.identity:
            identity_file_bytes(args.identity)  # a card's identity is read before anything is sent
        if len(args.face) > len(graphs.image_nodes(graph)):  # before uploading anything
            graphs.set_images(graph, args.face)
        problem = identity_upload_problem(args)
        if problem:
            raise graphs.GraphError(problem)
        if args.identity:
            graphs.set_identity(graph, own_identity_name(args.identity) if args.keep_name else
                                os.path.basename(args.identity))
        if args.dry_run:
            fill(graph, args, [os.path.basename(p) for p in args.face])
            print(json.dumps(graph, indent=2))
            return 0
        fill(graph, args, [])  # refuse bad overrides before touching the server
        created = check_output_folder(args.out)
    except (graphs.GraphError, ServerURLError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    saved = []
    try:
        saved = asyncio.run(queue_graph(args, graph))
        for path in saved:
            print(path)
        if not saved:
            print("the prompt ran but produced no images (no SaveImage/PreviewImage node?)", file=sys.stderr)
            return 1
        return 0
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ComfyError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        if not saved:  # leave no empty folder behind
            for folder in reversed(created):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
