"""Which ComfyUI server a message comes from. Under ComfyUI-Distributed or a batch over several servers the user
reads a refusal on the master, so the pack's messages name the server that refused: the address and port ComfyUI
listens on (PromptServer's own record of them), or its host name when it listens on every address."""
from __future__ import annotations

import platform
import sys

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def _listening() -> tuple[str | None, int | None]:
    prompt_server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    return getattr(prompt_server, "address", None), getattr(prompt_server, "port", None)


def host_name() -> str:
    return platform.node() or "localhost"  # the host name without importing a network module (registry scanners)


def url() -> str | None:
    """http://ADDRESS:PORT as clients reach this server (the host name when ComfyUI listens on every address);
    None when no server is running (the nodes used as a library)."""
    address, port = _listening()
    if port is None:
        return None
    address = host_name() if address in _WILDCARDS or address is None else str(address)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"  # an IPv6 address in a URL
    return f"http://{address}:{port}"


def label() -> str:
    """The server as users reach it: its URL (the host name stands for an address listening on all of them), or
    the host name without a running server."""
    return url() or host_name()
