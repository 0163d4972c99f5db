"""`python -m pulid_tools batch GRAPH.json --server URL [--server URL ...] (--identity FILE | --face PHOTO ...)
--prompts FILE --seeds N --out DIR`: many images of one person over one or more ComfyUI servers.

Jobs are the prompts x the seeds (0..N-1). They are spread over the servers, at most --per-server in
flight on each, so a faster server takes more. DIR/manifest.jsonl gets one record per finished job
(key = hash of the filled graph; prompt, seed, server, seconds, files, similarity scores) as it ends;
running the same command again runs only the jobs not yet done (or whose images were deleted), so Ctrl-C
and crashes lose nothing; a damaged manifest line is skipped with a warning (its job runs again).
A server takes jobs once it answers (--reply-timeout bounds every request); one that is down, hung or
stops answering is set aside, its jobs go to the others, and it is dropped after --retries failures in a
row. A graph ComfyUI refuses, or whose outputs it drops as invalid, stops the batch at once with ComfyUI's
reasons; a job that fails (e.g. no face) is reported and the rest go on. DIR must be writable (checked
first); if it stops being writable the batch stops at once. Exit 0 when every job has its images,
1 otherwise, 2 for bad arguments (including a malformed --server, a --set input the node lacks or an
unwritable --out), 130 when interrupted.

--prompts: a text file, one prompt per line, or JSONL with per-line fields: prompt, negative, seed (that
line then gives one job with this seed), weight, face (photo path or list, instead of --face), set
({"NODE.INPUT": value}) or NODE.INPUT keys directly, e.g. {"prompt": "...", "KSampler.steps": 28}."""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

from ..comfy_http import graph as graphs
from ..comfy_http.api import REPLY_TIMEOUT_S, ServerURLError, identity_file_bytes, parse_server
from .runner import BatchRunner, first_line
from ..client.command import (DEFAULT_SERVER, add_identity_upload_arguments, identity_upload_problem,
                              server_from_environment)
from .jobs import make_jobs
from .manifest import REJECTED, Manifest, OutputError, check_output_folder, read_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="API-format graph (JSON), e.g. examples/batch/pulid_flux_batch.json")
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help=f"a ComfyUI server (repeatable: one per GPU); default {DEFAULT_SERVER} or $COMFYUI_URL")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", metavar="FILE", help="identity file or card (.png), uploaded once to each server "
                                                        "and put into the Load identity node")
    who.add_argument("--face", action="append", default=[], metavar="PHOTO",
                     help="reference photo for the LoadImage nodes in node id order (repeatable)")
    add_identity_upload_arguments(parser)
    parser.add_argument("--prompts", required=True, metavar="FILE", help="prompts: text (one a line) or JSONL")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds 0..N-1 for every prompt (default 1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="images and manifest.jsonl")
    parser.add_argument("--per-server", type=int, default=1, metavar="K",
                        help="jobs in flight per server (default 1; 2 keeps ComfyUI's queue warm)")
    parser.add_argument("--keep-best", type=int, metavar="M", help="per prompt keep the M images most similar to "
                        "the person (needs the Face similarity node); move the others to DIR/rejected/")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="assignments",
                        help="any input, for every job (repeatable), e.g. --set KSampler.steps=28")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds one job may take on a server")
    parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT_S, metavar="S",
                        help=f"seconds a server may take to connect or answer one request (default "
                             f"{REPLY_TIMEOUT_S:g}); a server slower than that is set aside and tried again later")
    parser.add_argument("--retries", type=int, default=3, help="failures in a row before a server is dropped")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: log lines only (for log files)")


class Progress:
    """One tqdm bar over all jobs with done/failed per server, or plain log lines with --quiet."""

    def __init__(self, total: int, quiet: bool):
        self.quiet = quiet
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="job", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        self.runner = None
        self.last = 0

    def log(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self) -> None:
        runner = self.runner
        finished = runner.result.done + len(runner.result.failed)
        if self.bar is None:
            if finished != self.last:
                self.last = finished
                self.log(f"{finished} finished: " + self.servers())
            return
        self.bar.update(finished - self.bar.n)
        self.bar.set_postfix_str(self.servers(), refresh=True)

    def servers(self) -> str:
        return ", ".join(f"{s.label} {s.done} done {s.failed} failed" + (" (dropped)" if s.dropped else "")
                         for s in self.runner.servers)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def run_batch(runner: BatchRunner):
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, runner.stop)
        handled = True
    except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt still stops asyncio.run
        handled = False
    try:
        return await runner.run()
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


def run(args) -> int:
    try:
        graph = graphs.load_graph(args.graph)
        files = args.face + ([args.identity] if args.identity else [])
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise graphs.GraphError(f"file not found: {', '.join(missing)}")
        if args.identity:
            identity_file_bytes(args.identity)  # a card's identity is read before anything is sent
        problem = identity_upload_problem(args)
        if problem:
            raise graphs.GraphError(problem)
        if args.seeds < 1 or args.per_server < 1 or (args.keep_best is not None and args.keep_best < 1):
            raise graphs.GraphError("--seeds, --per-server and --keep-best must be 1 or more")
        if not (0 < args.reply_timeout < float("inf") and args.timeout > 0) or args.retries < 1:
            raise graphs.GraphError("--timeout must be above 0, --reply-timeout a number of seconds above 0, --retries 1 or more")
        servers = list(dict.fromkeys(parse_server(s) for s in args.server or [server_from_environment()]))
        jobs, duplicates = make_jobs(graph, args.prompts, args.seeds, args.face, args.identity, args.assignments)
        check_output_folder(args.out, *([REJECTED] if args.keep_best else []))
        manifest = Manifest(args.out)
    except (graphs.GraphError, ServerURLError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # the manifest (and the folder's lock) is held until the images are sorted by --keep-best
        return _run_jobs(args, jobs, duplicates, servers, manifest)
    finally:
        manifest.close()


def _run_jobs(args, jobs, duplicates, servers, manifest) -> int:
    for warning in manifest.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    todo = [job for job in jobs if not manifest.is_done(job.key)]
    for key, names in manifest.missing.items():
        print(f"warning: image missing: {', '.join(names)} (deleted?); its job runs again", file=sys.stderr)
    print(f"{len(jobs)} jobs ({len(jobs) - len(todo)} already done in {manifest.path}, {len(todo)} to run"
          + (f", {duplicates} duplicate(s) dropped" if duplicates else "") + f") on {len(servers)} server(s)",
          file=sys.stderr, flush=True)
    progress = Progress(len(todo), args.quiet)
    runner = BatchRunner(servers, todo, manifest, per_server=args.per_server, identity=args.identity,
                         keep_name=args.keep_name, overwrite=args.overwrite,
                         timeout=args.timeout, reply_timeout=args.reply_timeout, strikes_to_drop=args.retries,
                         log=progress.log, on_change=progress.update)
    progress.runner = runner
    start = time.monotonic()
    try:
        result = asyncio.run(run_batch(runner)) if todo else runner.result
    finally:
        progress.close()
    seconds = time.monotonic() - start
    if args.keep_best and not result.fatal:
        try:
            kept, rejected, unscored = manifest.keep_best(args.keep_best)
        except OutputError as e:
            result.fatal = str(e)
        else:
            print(f"keep-best {args.keep_best}: {kept} image(s) kept, {rejected} in {os.path.join(args.out, REJECTED)}"
                  + (f"; {unscored} without a score kept (no Face similarity node in the graph?)" if unscored else ""),
                  file=sys.stderr)
    if result.refused:
        print(result.refused, file=sys.stderr)
        return 1
    if result.fatal:
        print(f"error: {result.fatal}", file=sys.stderr)
    print(f"{result.done} done, {len(result.failed)} failed, {result.unrun} not run, in {seconds:.1f} s; "
          f"manifest: {manifest.path}", file=sys.stderr)
    for job, message in result.failed:
        print(f"failed: job {job.number} (prompt line {job.prompt_no}, seed {job.seed}): {first_line(message)}",
              file=sys.stderr)
    if result.interrupted:
        print("interrupted: run the same command again to do the remaining jobs", file=sys.stderr)
        return 130
    missing = [job for job in jobs if not manifest.is_done(job.key)]
    return 0 if not missing and not result.fatal else 1


def summary(path: str) -> dict:
    """{key: record} of the done jobs in a manifest (for scripts and tests; damaged lines are skipped)."""
    return read_manifest(path)[0]
