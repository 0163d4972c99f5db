"""A prompt's life on one ComfyUI server: queue it, follow its messages on ComfyUI's /ws websocket
(aiohttp), fall back to polling /history when the websocket is unavailable or drops, and return the
/history entry or raise the error the user needs (api.PromptRefused / PromptFailed / ServerUnavailable)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

import aiohttp

from .api import ComfyAPI, ComfyError, PromptFailed, ServerUnavailable, format_failure

HISTORY_POLL_S = 0.5
SILENT_CHECK_S = 10.0
END_KINDS = ("execution_success", "execution_error", "execution_interrupted")


class DeadlinePassed(Exception):
    """The timeout ran out (not an OSError, so it is never taken for a network problem)."""


class WebSocketLost(ConnectionError):
    pass


async def next_event(ws: aiohttp.ClientWebSocketResponse, timeout: float):
    """(kind, data) of the next JSON message, None when nothing (or a binary preview) arrived within
    `timeout`; raises WebSocketLost when the connection ends."""
    try:
        message = await ws.receive(timeout=timeout)
    except asyncio.TimeoutError:
        return None
    if message.type == aiohttp.WSMsgType.TEXT:
        try:
            event = json.loads(message.data)
        except json.JSONDecodeError:
            return None
        return (event.get("type"), event.get("data") or {}) if isinstance(event, dict) else None
    if message.type == aiohttp.WSMsgType.BINARY:
        return None
    raise WebSocketLost(f"the websocket closed ({message.type.name.lower()})")


def failure_of(data: dict) -> dict:
    return dict(data, exception_type=data.get("exception_type", "interrupted"),
                exception_message=data.get("exception_message", "the prompt was interrupted"))


async def follow(api: ComfyAPI, ws, prompt_id: str, on_event: Callable, deadline: float) -> dict | None:
    """Read websocket messages until the prompt ends; returns its execution_error data, if any. While the
    socket is silent, /history is checked now and then, in case an end message never arrives."""
    failure, last_check = None, time.monotonic()
    while time.monotonic() < deadline:
        event = await next_event(ws, min(1.0, max(0.01, deadline - time.monotonic())))
        if event is None:
            if time.monotonic() - last_check > SILENT_CHECK_S:
                last_check = time.monotonic()
                if await api.history(prompt_id) is not None:
                    return failure
            continue
        kind, data = event
        if data.get("prompt_id", prompt_id) != prompt_id:
            continue
        on_event(kind, data)
        if kind in ("execution_error", "execution_interrupted"):
            failure = failure_of(data)
        if kind in END_KINDS or (kind == "executing" and data.get("node") is None and "prompt_id" in data):
            return failure
    raise DeadlinePassed


async def wait_for_history(api: ComfyAPI, prompt_id: str, deadline: float) -> dict:
    """History is written just after the end messages: poll (bounded by the deadline)."""
    while True:
        entry = await api.history(prompt_id)
        if entry is not None:
            return entry
        if time.monotonic() >= deadline:
            raise DeadlinePassed
        await asyncio.sleep(HISTORY_POLL_S)


def error_from_history(entry: dict) -> dict | None:
    status = entry.get("status") or {}
    for kind, data in status.get("messages") or []:
        if kind in ("execution_error", "execution_interrupted"):
            return failure_of(data)
    if status.get("status_str") == "error":
        return {"exception_type": "error", "exception_message": "the prompt failed (no details in /history)"}
    return None


def _ignore(*_):
    pass


async def run_prompt(api: ComfyAPI, graph: dict, timeout: float, ws=None, on_event: Callable = _ignore,
                     log: Callable = _ignore, on_queued: Callable = _ignore, verbose: bool = False) -> dict:
    """Queue `graph`, follow it to the end and return its /history entry. `ws`: an open websocket of
    api.client_id (else one is opened here, before queueing, so no message of this prompt is missed, and
    closed at the end). A websocket that drops falls back to /history; a server that does not answer
    raises ServerUnavailable; the timeout raises ComfyError (DeadlinePassed inside)."""
    deadline = time.monotonic() + timeout
    own_ws = ws is None
    if own_ws:
        try:
            ws = await api.connect_ws()
        except ServerUnavailable:
            raise
        except ComfyError as e:
            log(f"no progress (websocket unavailable: {e}); waiting on /history")
    try:
        prompt_id = await api.queue(graph)
        on_queued(prompt_id)
        log(f"queued prompt {prompt_id}")
        failure = None
        if ws is not None:
            try:
                failure = await follow(api, ws, prompt_id, on_event, deadline)
            except (WebSocketLost, aiohttp.ClientError, OSError) as e:
                log(f"websocket lost ({e}); waiting on /history")
        entry = await wait_for_history(api, prompt_id, deadline)
    except DeadlinePassed:
        raise ComfyError(f"timed out after {timeout:.0f} s; the prompt may still be running on the server "
                         f"(raise --timeout)") from None
    finally:
        if own_ws and ws is not None:
            await ws.close()
    failure = error_from_history(entry) or failure
    if failure is not None:
        error = PromptFailed(format_failure(failure, graph, verbose))
        error.details = failure
        raise error
    return entry
