"""A minimal RFC 6455 websocket client over a plain socket: enough to follow ComfyUI's /ws progress messages
without third-party packages. Text and binary messages, fragmentation, ping/pong and close are handled;
extensions (compression) are never negotiated."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
from urllib.parse import urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 * 1024 * 1024  # previews are the largest messages ComfyUI sends; anything bigger is an error


class WebSocketError(ConnectionError):
    pass


class ConnectionClosed(WebSocketError):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bool = True, fin: bool = True) -> bytes:
    """One frame; clients must mask what they send (servers must not)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def decode_frame(buffer: bytearray):
    """(fin, opcode, payload) of the first complete frame in `buffer`, removing it; None if incomplete."""
    if len(buffer) < 2:
        return None
    fin, opcode = bool(buffer[0] & 0x80), buffer[0] & 0x0F
    masked, n = bool(buffer[1] & 0x80), buffer[1] & 0x7F
    pos = 2
    if n == 126:
        if len(buffer) < 4:
            return None
        n, pos = struct.unpack_from("!H", buffer, 2)[0], 4
    elif n == 127:
        if len(buffer) < 10:
            return None
        n, pos = struct.unpack_from("!Q", buffer, 2)[0], 10
    if n > MAX_MESSAGE:
        raise WebSocketError(f"websocket frame of {n} bytes is too large")
    key = b""
    if masked:
        if len(buffer) < pos + 4:
            return None
        key, pos = bytes(buffer[pos:pos + 4]), pos + 4
    if len(buffer) < pos + n:
        return None
    payload = bytes(buffer[pos:pos + n])
    del buffer[:pos + n]
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return fin, opcode, payload


class WebSocket:
    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self.buffer = bytearray(leftover)
        self._parts: list[bytes] = []
        self._opcode = None

    @classmethod
    def connect(cls, url: str, timeout: float = 10.0, headers: dict | None = None) -> "WebSocket":
        """Open ws:// or wss:// `url` (the handshake must finish within `timeout` seconds)."""
        parts = urlsplit(url)
        secure = parts.scheme in ("wss", "https")
        port = parts.port or (443 if secure else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            key = base64.b64encode(os.urandom(16)).decode()
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            lines = [f"GET {target} HTTP/1.1", f"Host: {parts.hostname}:{port}", "Upgrade: websocket",
                     "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = sock.recv(4096)
                if not chunk or len(response) > 65536:
                    raise WebSocketError(f"no websocket handshake answer from {url}")
                response += chunk
            head, leftover = response.split(b"\r\n\r\n", 1)
            status, *header_lines = head.decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            if " 101 " not in f"{status} ":
                raise WebSocketError(f"websocket refused by {url}: {status}")
            if fields.get("sec-websocket-accept") != accept_key(key):
                raise WebSocketError(f"bad websocket handshake from {url}")
            return cls(sock, leftover)
        except BaseException:
            sock.close()
            raise

    def send_text(self, text: str) -> None:
        self.sock.sendall(encode_frame(OP_TEXT, text.encode()))

    def receive(self, timeout: float):
        """The next message (str for text, bytes for binary), or None when nothing arrived within `timeout`.
        Raises ConnectionClosed when the server closes."""
        self.sock.settimeout(timeout)
        while True:
            frame = decode_frame(self.buffer)
            if frame is None:
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    return None
                if not chunk:
                    raise ConnectionClosed("the server closed the connection")
                self.buffer += chunk
                continue
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self.sock.sendall(encode_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._send_close()
                raise ConnectionClosed("the server closed the websocket")
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                if opcode != OP_CONT:
                    self._opcode, self._parts = opcode, []
                self._parts.append(payload)
                if fin:
                    data = b"".join(self._parts)
                    self._parts = []
                    return data.decode("utf-8") if self._opcode == OP_TEXT else data

    def _send_close(self) -> None:
        try:
            self.sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass

    def close(self) -> None:
        self._send_close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
