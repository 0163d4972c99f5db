"""A small stand-in of a ComfyUI server on aiohttp, on 127.0.0.1 in a thread of its own: /prompt, /ws,
/history, /view, /upload/image, /queue, /interrupt, and the pack's identity routes as the shared contract
states them (GET/POST /pulid_flux/identities, with the fingerprints the route reports). Each prompt "runs" for `run_s` seconds and produces one
image whose bytes and Face similarity score are derived from its graph."""
import asyncio
import contextlib
import hashlib
import json
import socket
import struct
import threading
import uuid

from aiohttp import web

MAX_IDENTITY = 16 * 1024 * 1024


def is_identity(data: bytes) -> bool:
    """The fake's check: a safetensors header whose metadata says it is a PuLID-Flux identity."""
    if len(data) < 8:
        return False
    n = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == "pulid_flux_identity"


def fake_fingerprint(data: bytes) -> str:
    """The fake's stand-in for an identity's fingerprint (the real one hashes the tensors and settings)."""
    return "pfid1-" + hashlib.blake2b(data, digest_size=16).hexdigest()


def identity_bytes(tag: str = "a") -> bytes:
    header = json.dumps({"__metadata__": {"format": "pulid_flux_identity", "tag": tag}}).encode()
    return struct.pack("<Q", len(header)) + header


# What ComfyUI answers (HTTP 200) when some outputs fail validation: the prompt runs without them.
DROPPED_SAVE_IMAGE = {"15": {"errors": [{"type": "return_type_mismatch",
                                         "message": "Return type mismatch between linked nodes",
                                         "details": "images, received_type(VAE) mismatch input_type(IMAGE)"}],
                             "dependent_outputs": ["15"], "class_type": "SaveImage"}}


@contextlib.contextmanager
def hung_server():
    """An address that accepts connections (the kernel completes them) and never answers a byte."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


class FakeComfy:
    """`dropped`: node_errors answered with HTTP 200 (those outputs are then missing from /history);
    `on_prompt(n)`: called (on the server's thread) with the number of each accepted prompt."""

    def __init__(self, run_s: float = 0.05, identities: bool = True, dropped: dict | None = None, on_prompt=None):
        self.run_s, self.identities_enabled = run_s, identities
        self.dropped, self.on_prompt, self.deleted = dropped or {}, on_prompt, []
        self.prompts, self.identities, self.uploads = [], {}, []
        self.history, self.sockets = {}, {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        app = web.Application(client_max_size=MAX_IDENTITY + 1024 * 1024)
        app.add_routes([web.post("/prompt", self.post_prompt), web.get("/ws", self.ws),
                        web.get("/history/{id}", self.get_history), web.get("/view", self.view),
                        web.post("/upload/image", self.upload_image), web.post("/queue", self.post_queue),
                        web.post("/interrupt", self.ok), web.get("/queue", self.ok)])
        if self.identities_enabled:
            app.add_routes([web.get("/pulid_flux/identities", self.list_identities),
                            web.post("/pulid_flux/identities", self.post_identity)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def ok(self, request):
        return web.json_response({})

    async def post_queue(self, request):
        self.deleted += (await request.json()).get("delete", [])
        return web.json_response({})

    async def upload_image(self, request):
        form = await request.post()
        field = form["image"]
        self.uploads.append((field.filename, field.file.read()))
        return web.json_response({"name": field.filename, "subfolder": "", "type": "input"})

    async def list_identities(self, request):
        return web.json_response({"identities": sorted(self.identities)})

    async def post_identity(self, request):
        if request.content_length and request.content_length > MAX_IDENTITY:
            return web.json_response({"error": "identity files are capped at 16 MB"}, status=413)
        form = await request.post()
        field = form.get("file")
        if field is None:
            return web.json_response({"error": "no 'file' field"}, status=400)
        data = field.file.read()
        name = str(form.get("name") or field.filename)
        if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".safetensors"):
            return web.json_response({"error": f"bad identity name {name!r}"}, status=400)
        if not is_identity(data):
            return web.json_response({"error": f"{name} is not a PuLID-Flux identity file"}, status=400)
        if name in self.identities and form.get("overwrite") != "true":
            return web.json_response({"error": f"{name} exists; set overwrite=true to replace it",
                                      "fingerprint": fake_fingerprint(data),
                                      "existing_fingerprint": fake_fingerprint(self.identities[name])}, status=409)
        self.identities[name] = data
        return web.json_response({"name": name, "bytes": len(data), "fingerprint": fake_fingerprint(data)})

    async def post_prompt(self, request):
        body = await request.json()
        graph, client_id = body["prompt"], body.get("client_id")
        bad = [k for k, n in graph.items() if n["class_type"] == "ApplyPulidFlux" and n["inputs"].get("weight", 0) > 5]
        if bad:
            return web.json_response({"error": {"type": "prompt_outputs_failed_validation",
                                                "message": "Prompt outputs failed validation", "details": ""},
                                      "node_errors": {bad[0]: {"errors": [{"message": "Value bigger than max of 5.0",
                                                                           "details": "weight"}]}}}, status=400)
        prompt_id = uuid.uuid4().hex
        self.prompts.append((prompt_id, graph))
        if self.on_prompt is not None:
            self.on_prompt(len(self.prompts))
        asyncio.ensure_future(self._execute(prompt_id, graph, client_id))
        return web.json_response({"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": self.dropped})

    async def _execute(self, prompt_id, graph, client_id):
        await asyncio.sleep(self.run_s)
        digest = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).digest()
        score = digest[0] / 255.0
        outputs = {"15": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}]},
                   "20": {"pulid_similarity": [score], "text": [f"{score:.3f}"]}}
        self.history[prompt_id] = {
            "outputs": {k: v for k, v in outputs.items() if k not in self.dropped},
            "status": {"status_str": "success", "completed": True, "messages": []}}
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": prompt_id}}))

    async def ws(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets[request.query.get("clientId")] = ws
        async for _ in ws:
            pass
        return ws

    async def get_history(self, request):
        prompt_id = request.match_info["id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        return web.Response(body=b"\x89PNG" + request.query["filename"].encode(), content_type="image/png")

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
