"""The async core of `pulid_tools batch`: jobs spread over ComfyUI servers, K in flight per server (a
faster server takes more), faults handled, every finished job recorded in the manifest.

- A server takes work only after it answered a probe (before its first job and after each failure), each
  request bounded by `reply_timeout`: a server that is down or hung (accepts, never answers) is set aside
  at once while the others take the jobs, probed again after a backoff (doubling from `backoff_s`) and
  dropped after `strikes_to_drop` failures in a row. A job whose server fails goes back to the queue for
  the others (tried at most `max_attempts` times). The run ends when the work is done, without waiting
  for a set-aside server.
- A graph ComfyUI refuses (node_errors) stops the whole batch at once: it would fail everywhere.
- An execution error (e.g. no face in a reference) fails that job with ComfyUI's message; the rest go on.
- --out that cannot be written stops the batch at once with the OS's error (not the servers' fault); the
  manifest only ever holds whole records of whole images, so a re-run does exactly the missing jobs.
- stop() (Ctrl-C) cancels the jobs in flight, taking them off their servers' queues; nothing half-done
  is recorded, so running the same command again continues where this one stopped."""
from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..comfy_http.api import REPLY_TIMEOUT_S, ComfyAPI, ComfyError, PromptFailed, PromptRefused, ServerUnavailable, parse_server
from .jobs import Job, server_graph
from .manifest import Manifest, OutputError, output_images, scores_of
from ..comfy_http.websocket import run_prompt

MAX_BACKOFF_S = 30.0


@dataclass
class Server:
    url: str
    done: int = 0
    failed: int = 0
    strikes: int = 0
    dropped: bool = False
    suspect: bool = True          # must answer a probe before it takes a job (at the start, after failures)
    last_error: str | None = None
    image_names: dict = field(default_factory=dict)
    identity_name: str | None = None
    identity_fingerprint: str | None = None
    lock: asyncio.Lock | None = None
    probe_lock: asyncio.Lock | None = None

    @property
    def label(self) -> str:
        return self.url.split("://", 1)[-1]


@dataclass
class BatchResult:
    done: int = 0
    failed: list = field(default_factory=list)   # [(job, message)]
    refused: str | None = None
    fatal: str | None = None
    interrupted: bool = False
    unrun: int = 0                                # left in the queue (no server left, stopped, interrupted)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.refused or self.fatal or self.interrupted or self.unrun)


def first_line(error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _ignore(*_):
    pass


class BatchRunner:
    def __init__(self, servers: list[str], jobs: list[Job], manifest: Manifest, *, per_server: int = 1,
                 identity: str | None = None, keep_name: bool = False, overwrite: bool = False,
                 timeout: float = 1200.0, reply_timeout: float = REPLY_TIMEOUT_S,
                 strikes_to_drop: int = 3, max_attempts: int = 4, backoff_s: float = 1.0,
                 log: Callable[[str], None] = _ignore, on_change: Callable[[], None] = _ignore):
        self.servers = [Server(parse_server(s)) for s in servers]
        self.pending = deque(jobs)
        self.manifest, self.per_server, self.identity = manifest, per_server, identity
        self.keep_name, self.overwrite = keep_name, overwrite
        self.timeout, self.reply_timeout = timeout, reply_timeout
        self.strikes_to_drop, self.max_attempts, self.backoff_s = strikes_to_drop, max_attempts, backoff_s
        self.log, self.on_change = log, on_change
        self.result = BatchResult()
        self.in_flight = 0
        self.stopping = False
        self._changed: asyncio.Event | None = None
        self._all_done: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    # --- control -------------------------------------------------------------------------------------
    async def run(self) -> BatchResult:
        self._changed, self._all_done = asyncio.Event(), asyncio.Event()
        for server in self.servers:
            server.lock, server.probe_lock = asyncio.Lock(), asyncio.Lock()
        self._tasks = [asyncio.create_task(self._worker(server)) for server in self.servers
                       for _ in range(self.per_server)]
        workers = asyncio.gather(*self._tasks, return_exceptions=True)
        all_done = asyncio.create_task(self._all_done.wait())
        await asyncio.wait([workers, all_done], return_when=asyncio.FIRST_COMPLETED)
        for task in self._tasks:  # only workers waiting on a set-aside server are left
            task.cancel()
        outcomes = await workers
        all_done.cancel()
        closed = next((o for o in outcomes if isinstance(o, BrokenPipeError)), None)
        if closed is not None:
            raise closed  # our output is gone (`| head`): python -m pulid_tools ends quietly
        bugs = [o for o in outcomes if isinstance(o, Exception)]
        if bugs and self.result.fatal is None:
            self.result.fatal = f"internal error: {type(bugs[0]).__name__}: {bugs[0]}"
        self.result.unrun = len(self.pending)
        if self.pending and not self.stopping and self.result.fatal is None:
            reasons = "; ".join(f"{s.label}: {s.last_error}" for s in self.servers)
            self.result.fatal = f"no server left to run the remaining {len(self.pending)} job(s); {reasons}"
        return self.result

    def stop(self, interrupted: bool = True) -> None:
        """Stop at once: the jobs in flight are cancelled (and taken off their servers)."""
        if self.stopping:
            return
        self.stopping = True
        self.result.interrupted = self.result.interrupted or interrupted
        for task in self._tasks:
            task.cancel()

    def _wake(self) -> None:
        self._changed.set()
        if not self.pending and self.in_flight == 0:
            self._all_done.set()
        self.on_change()

    async def _take(self, server: Server) -> Job | None:
        while True:
            if self.stopping or server.dropped:
                return None
            if self.pending:
                return self.pending.popleft()
            if self.in_flight == 0:
                return None  # nothing will come back to the queue
            self._changed.clear()
            await self._changed.wait()

    # --- one worker: one of the K slots of a server ---------------------------------------------------
    async def _worker(self, server: Server) -> None:
        try:
            await self._work(server)
        except BrokenPipeError:  # printing failed: the reader of our output left; stop as a Unix tool would
            self.stop(interrupted=False)
            raise

    async def _work(self, server: Server) -> None:
        async with ComfyAPI(server.url, self.reply_timeout) as api:
            ws = None
            try:
                while await self._ready(api, server):
                    job = await self._take(server)
                    if job is None:
                        return
                    self.in_flight += 1
                    try:
                        ws = await self._run_job(api, server, job, ws)
                    finally:
                        self.in_flight -= 1
                        self._wake()
            finally:
                if ws is not None and not ws.closed:
                    await asyncio.shield(ws.close())

    async def _ready(self, api: ComfyAPI, server: Server) -> bool:
        """Whether `server` may take a job. A suspect server (not yet heard from, or failed) must answer a
        probe first, one probe at a time per server, after a backoff once it has failed; its jobs stay in
        the queue for the others meanwhile."""
        while server.suspect and not (server.dropped or self.stopping):
            async with server.probe_lock:
                if not server.suspect or server.dropped:
                    break
                if server.strikes:
                    await asyncio.sleep(self._backoff(server))
                try:
                    await api.probe()
                    server.suspect = False
                except ComfyError as e:
                    self._strike(server, e)
                    if not server.dropped:
                        self.log(f"{server.label}: {first_line(e)}; set aside, tried again in "
                                 f"{self._backoff(server):g} s")
        return not (server.dropped or self.stopping)

    def _backoff(self, server: Server) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** max(0, server.strikes - 1))

    def _strike(self, server: Server, error) -> None:
        server.strikes += 1
        server.suspect = True
        server.last_error = first_line(error)
        if server.strikes >= self.strikes_to_drop and not server.dropped:
            server.dropped = True
            self.log(f"{server.label}: dropped after {server.strikes} failures in a row "
                     f"(last: {first_line(error)}); its jobs go to the other servers")
            self._wake()

    async def _uploads(self, api: ComfyAPI, server: Server, job: Job) -> dict:
        async with server.lock:
            for path in job.faces:
                if path not in server.image_names:
                    server.image_names[path] = await api.upload_image(path)
            if self.identity and server.identity_name is None:
                uploaded = await api.upload_identity(self.identity, self.keep_name, self.overwrite)
                server.identity_name, server.identity_fingerprint = uploaded.name, uploaded.fingerprint
        return server.image_names

    async def _run_job(self, api: ComfyAPI, server: Server, job: Job, ws):
        """Runs `job` on `server`; returns the websocket to use for the next job (None: reconnect)."""
        prompt_id = None

        def queued(pid):
            nonlocal prompt_id
            prompt_id = pid

        start = time.monotonic()
        try:
            try:
                names = await self._uploads(api, server, job)
            except ServerUnavailable:
                raise
            except ComfyError as e:  # an upload the server refuses is refused everywhere
                self.result.fatal = str(e)
                self.stop(interrupted=False)
                return ws
            if ws is None or ws.closed:
                try:
                    ws = await api.connect_ws()
                except ServerUnavailable:
                    raise
                except ComfyError:
                    ws = None  # follow on /history instead
            graph = server_graph(job, names, server.identity_name, server.identity_fingerprint)
            entry = await run_prompt(api, graph, self.timeout, ws=ws, on_queued=queued)
            files = await self._save(api, job, entry)
            entry_scores = scores_of(entry)
            self.manifest.append({
                "key": job.key, "status": "done", "job": job.number, "prompt_no": job.prompt_no,
                "prompt": job.prompt, "seed": job.seed, "fields": job.fields, "server": server.url,
                "prompt_id": prompt_id, "seconds": round(time.monotonic() - start, 3), "files": files,
                "scores": entry_scores, "score": max(entry_scores) if entry_scores else None,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        except OutputError as e:
            self._output_failed(e)
            return ws
        except asyncio.CancelledError:
            if prompt_id is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(api.cancel(prompt_id)), 3.0)
                except (Exception, asyncio.CancelledError):
                    pass
            raise
        except PromptRefused as e:
            if self.result.refused is None:
                self.result.refused = str(e)
                self.stop(interrupted=False)
            return ws
        except PromptFailed as e:
            server.strikes = 0
            self._finish_failed(job, server, str(e), prompt_id, time.monotonic() - start)
            return ws
        except ComfyError as e:  # unreachable, connection dropped, timed out: try it elsewhere
            if prompt_id is not None and not isinstance(e, ServerUnavailable):
                try:
                    await asyncio.wait_for(api.cancel(prompt_id), 3.0)
                except (ComfyError, asyncio.TimeoutError):
                    pass
            self._requeue(job, server, e)
            if ws is not None:
                await ws.close()
            return None
        server.strikes = 0
        server.done += 1
        self.result.done += 1
        return ws

    def _output_failed(self, error: OutputError) -> None:
        """--out stopped being writable: stop everything (every job would fail the same way)."""
        if self.result.fatal is None:
            self.result.fatal = (f"{error}; stopped at once (not the servers' fault). The manifest holds every "
                                 "job finished so far: make the folder writable and run the same command again "
                                 "to do the rest")
        self.stop(interrupted=False)

    async def _save(self, api: ComfyAPI, job: Job, entry: dict) -> list[str]:
        images = output_images(entry)
        files = []
        for i, image in enumerate(images):
            ext = os.path.splitext(str(image.get("filename", "")))[1]
            ext = ext if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext) else ".png"  # the manifest takes plain names only
            name = f"{job.stem()}{'_' + str(i) if len(images) > 1 else ''}{ext}"
            files.append(self.manifest.write_image(name, await api.view(image)))
        if not files:
            raise PromptFailed("the prompt ran but produced no images (no SaveImage node?)")
        return files

    def _requeue(self, job: Job, server: Server, error) -> None:
        job.attempts += 1
        if self.stopping:
            return
        if job.attempts >= self.max_attempts:
            self._finish_failed(job, server, f"gave up after {job.attempts} attempts; last: {first_line(error)}",
                                None, 0.0)
        else:
            self.pending.appendleft(job)
            self.log(f"{server.label}: {first_line(error)}; job {job.number} goes back to the queue")
        self._strike(server, error)

    def _finish_failed(self, job: Job, server: Server, message: str, prompt_id, seconds: float) -> None:
        server.failed += 1
        self.result.failed.append((job, message))
        self.log(f"job {job.number} ({job.stem()}) failed on {server.label}:\n{message}")
        try:
            self.manifest.append({"key": job.key, "status": "failed", "job": job.number,
                                  "prompt_no": job.prompt_no, "prompt": job.prompt, "seed": job.seed,
                                  "fields": job.fields, "server": server.url, "prompt_id": prompt_id,
                                  "seconds": round(seconds, 3), "error": message,
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        except OutputError as e:
            self._output_failed(e)
