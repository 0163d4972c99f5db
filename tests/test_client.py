"""The headless client (python -m pulid_tools queue) against a scripted stand-in of ComfyUI's HTTP API and
websocket, on 127.0.0.1: filling graphs, progress, downloads, and the error paths. No ComfyUI needed; the
real server is exercised in test_server_e2e.py."""
import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.aio_fake_comfy import DROPPED_SAVE_IMAGE
from pulid_tools.comfy_http import graph as graphs
from pulid_tools.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASIC = os.path.join(REPO, "examples", "api", "pulid_flux_basic.json")
TWO_PEOPLE = os.path.join(REPO, "examples", "api", "pulid_flux_two_people.json")
PNG = b"\x89PNG\r\n\x1a\n" + b"fake image bytes"
PROMPT_ID = "prompt-1"


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- graph filling ------------------------------------------------------------------------------------
def test_prompt_seed_weight_and_images_go_where_the_titles_say():
    g = load(TWO_PEOPLE)
    assert graphs.set_prompt(g, "two astronauts") == ["9"]
    assert g["9"]["inputs"]["text"] == "two astronauts"
    assert graphs.set_seed(g, 7) == ["13"] and g["13"]["inputs"]["seed"] == 7
    assert graphs.set_weight(g, 0.8) == ["8", "26"]
    assert graphs.set_images(g, ["a.png", "b.png"]) == ["7", "18"]
    assert (g["7"]["inputs"]["image"], g["18"]["inputs"]["image"]) == ("a.png", "b.png")
    with pytest.raises(graphs.GraphError, match="3 images given, but the graph has 2 LoadImage"):
        graphs.set_images(g, ["a", "b", "c"])
    with pytest.raises(graphs.GraphError, match="negative prompt"):
        graphs.set_prompt(g, "blurry", negative=True)  # cfg 1 graph: no negative text node


def test_negative_prompt_and_set_overrides():
    g = load(os.path.join(REPO, "examples", "api", "pulid_flux_true_cfg.json"))
    assert graphs.set_prompt(g, "blurry", negative=True) == ["11"]
    assert graphs.set_input(g, *graphs.parse_assignment("KSampler.steps=28")) == ["13"]
    assert graphs.set_input(g, *graphs.parse_assignment("Image size.width=1024")) == ["12"]
    assert graphs.set_input(g, *graphs.parse_assignment("8.uncond=none")) == ["8"]
    assert (g["13"]["inputs"]["steps"], g["12"]["inputs"]["width"], g["8"]["inputs"]["uncond"]) == (28, 1024, "none")
    with pytest.raises(graphs.GraphError, match="NODE.INPUT=VALUE"):
        graphs.parse_assignment("steps=28")
    with pytest.raises(graphs.GraphError, match="no node 'Sampler'.*13 \\(KSampler\\)"):
        graphs.set_input(g, "Sampler", "steps", 3)


def test_a_graph_without_titles_takes_the_prompt_into_its_only_text_node():
    g = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
         "2": {"class_type": "DualCLIPLoader", "inputs": {}}}
    assert graphs.set_prompt(g, "hello") == ["1"]


def test_ui_workflows_are_refused_with_a_hint(tmp_path, capsys):
    ui = os.path.join(REPO, "example_workflows", "pulid_flux_basic.json")
    assert main(["queue", ui, "--dry-run"]) == 2
    assert "Export (API)" in capsys.readouterr().err


def test_dry_run_prints_the_filled_graph(tmp_path, capsys):
    face = tmp_path / "me.png"
    face.write_bytes(PNG)
    assert main(["queue", BASIC, "--dry-run", "--face", str(face), "--prompt", "hi", "--seed", "3",
                 "--weight", "1.2", "--set", "KSampler.steps=4"]) == 0
    g = json.loads(capsys.readouterr().out)
    assert (g["7"]["inputs"]["image"], g["9"]["inputs"]["text"], g["13"]["inputs"]["seed"],
            g["8"]["inputs"]["weight"], g["13"]["inputs"]["steps"]) == ("me.png", "hi", 3, 1.2, 4)


# --- a scripted ComfyUI -----------------------------------------------------------------------------
class ws:
    """Server side of RFC 6455, just what the stand-in needs to send (the client uses aiohttp)."""
    OP_TEXT, OP_BINARY = 0x1, 0x2

    @staticmethod
    def accept_key(key):
        return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()

    @staticmethod
    def encode_frame(opcode, payload, mask=False):
        assert not mask
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n))
        return head + payload


class FakeComfy:
    """Answers like ComfyUI for one prompt. `mode`: ok, invalid, error, no_ws, never_done, dropped (HTTP 200
    with node_errors: SaveImage dropped as invalid, the prompt runs with the face preview only)."""

    def __init__(self, mode="ok"):
        self.mode, self.uploads, self.prompts, self.deleted = mode, [], [], []
        self.queued = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/upload/image":
                    fake.uploads.append(body)
                    name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                    return self.reply(200, {"name": name, "subfolder": "", "type": "input"})
                if self.path == "/prompt":
                    fake.prompts.append(json.loads(body))
                    if fake.mode == "invalid":
                        return self.reply(400, {
                            "error": {"type": "prompt_outputs_failed_validation",
                                      "message": "Prompt outputs failed validation", "details": ""},
                            "node_errors": {"8": {"errors": [{"type": "value_bigger_than_max",
                                                              "message": "Value 9.0 bigger than max of 5.0",
                                                              "details": "weight"}],
                                                  "class_type": "ApplyPulidFlux"}}})
                    fake.queued.set()
                    dropped = DROPPED_SAVE_IMAGE if fake.mode == "dropped" else {}
                    return self.reply(200, {"prompt_id": PROMPT_ID, "number": 0, "node_errors": dropped})
                if self.path == "/queue":
                    fake.deleted += json.loads(body).get("delete", [])
                    return self.reply(200, {})
                if self.path == "/interrupt":
                    return self.reply(200, {})
                self.reply(404, {})

            def do_GET(self):
                if self.path.startswith("/ws"):
                    return self.reply(404, b"no websocket") if fake.mode == "no_ws" else self.websocket()
                if self.path == f"/history/{PROMPT_ID}":
                    done = fake.queued.is_set() and fake.mode != "never_done"
                    return self.reply(200, {PROMPT_ID: fake.history()} if done else {})
                if self.path.startswith("/view?"):
                    return self.reply(200, PNG, "image/png")
                self.reply(404, {})

            def websocket(self):
                key = self.headers["Sec-WebSocket-Key"]
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", ws.accept_key(key))
                self.end_headers()
                self.wfile.flush()
                send = lambda kind, data: self.wfile.write(  # noqa: E731
                    ws.encode_frame(ws.OP_TEXT, json.dumps({"type": kind, "data": data}).encode(), mask=False))
                send("status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"})
                if not fake.queued.wait(5) or fake.mode == "never_done":
                    return self.wait_for_close()
                send("execution_start", {"prompt_id": PROMPT_ID})
                send("executing", {"node": "8", "prompt_id": PROMPT_ID})
                self.wfile.write(ws.encode_frame(ws.OP_BINARY, b"\x00\x00\x00\x01preview", mask=False))
                send("progress", {"value": 1, "max": 2, "node": "13", "prompt_id": PROMPT_ID})
                send("progress", {"value": 2, "max": 2, "node": "13", "prompt_id": PROMPT_ID})
                if fake.mode == "error":
                    send("execution_error", fake.error())
                else:
                    send("execution_success", {"prompt_id": PROMPT_ID})
                send("executing", {"node": None, "prompt_id": PROMPT_ID})
                self.wait_for_close()

            def wait_for_close(self):
                self.wfile.flush()
                self.connection.settimeout(5)
                try:
                    self.connection.recv(64)  # the client's close frame (bounded wait)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def error(self):
        return {"prompt_id": PROMPT_ID, "node_id": "8", "node_type": "ApplyPulidFlux",
                "exception_type": "ValueError", "exception_message": "PuLID-Flux found no usable face in any "
                                                                     "reference image (image 1: no face detected).",
                "traceback": ["  File \"nodes.py\", line 1\n"]}

    def history(self):
        if self.mode == "error":
            return {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                              "messages": [["execution_error", self.error()]]}}
        outputs = {"15": {"images": [{"filename": "PuLID-Flux_00001_.png", "subfolder": "", "type": "output"}]},
                   "16": {"images": [{"filename": "ComfyUI_temp_1.png", "subfolder": "", "type": "temp"}]}}
        if self.mode == "dropped":
            del outputs["15"]
        return {"outputs": outputs,
                "status": {"status_str": "success", "completed": True, "messages": []}}

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def comfy(request):
    server = FakeComfy(getattr(request, "param", "ok"))
    yield server
    server.close()


def queue(comfy, tmp_path, *extra):
    face = tmp_path / "face.png"
    face.write_bytes(PNG)
    return main(["queue", BASIC, "--server", comfy.url, "--face", str(face), "--prompt", "an astronaut",
                 "--seed", "5", "--weight", "0.9", "--out", str(tmp_path / "out"), "--timeout", "20", *extra])


def test_queue_uploads_fills_follows_progress_and_downloads(comfy, tmp_path, capsys):
    assert queue(comfy, tmp_path) == 0
    out, err = capsys.readouterr()
    body = comfy.prompts[0]
    g = body["prompt"]
    assert body["client_id"] and g["7"]["inputs"]["image"] == "face.png" and g["9"]["inputs"]["text"] == "an astronaut"
    assert (g["13"]["inputs"]["seed"], g["8"]["inputs"]["weight"]) == (5, 0.9)
    assert PNG in comfy.uploads[0]
    assert "running Apply PuLID-Flux [ApplyPulidFlux] (node 8)" in err and "KSampler (node 13): 2/2" in err
    saved = out.split()
    assert saved == [str(tmp_path / "out" / "PuLID-Flux_00001_.png"),
                     str(tmp_path / "out" / "previews" / "ComfyUI_temp_1.png")]
    assert all(open(p, "rb").read() == PNG for p in saved)


@pytest.mark.parametrize("comfy", ["invalid"], indirect=True)
def test_a_refused_prompt_exits_1_with_comfyuis_node_errors(comfy, tmp_path, capsys):
    assert queue(comfy, tmp_path) == 1
    err = capsys.readouterr().err
    assert "ComfyUI refused the prompt: Prompt outputs failed validation" in err
    assert "Apply PuLID-Flux [ApplyPulidFlux] (node 8): Value 9.0 bigger than max of 5.0: weight" in err


@pytest.mark.parametrize("comfy", ["error"], indirect=True)
def test_an_execution_error_exits_1_with_the_exception_message(comfy, tmp_path, capsys):
    assert queue(comfy, tmp_path, "--verbose") == 1
    err = capsys.readouterr().err
    assert "ComfyUI could not run the prompt: ValueError in Apply PuLID-Flux [ApplyPulidFlux] (node 8):" in err
    assert "no usable face" in err and "traceback (on the server)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("comfy", ["no_ws"], indirect=True)
def test_without_a_websocket_it_waits_on_history(comfy, tmp_path, capsys):
    assert queue(comfy, tmp_path) == 0
    assert "websocket unavailable" in capsys.readouterr().err


@pytest.mark.parametrize("comfy", ["never_done"], indirect=True)
def test_the_wait_is_bounded(comfy, tmp_path, capsys):
    start = time.monotonic()
    assert queue(comfy, tmp_path, "--timeout", "1.5") == 1
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "timed out after 2 s" in err and "websocket lost" not in err


def test_an_unreachable_server_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    face = tmp_path / "face.png"
    face.write_bytes(PNG)
    assert main(["queue", BASIC, "--server", f"127.0.0.1:{port}", "--face", str(face)]) == 1
    assert f"cannot reach ComfyUI at http://127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("comfy", ["dropped"], indirect=True)
def test_a_dropped_output_is_a_failure_naming_the_node_and_the_reason(comfy, tmp_path, capsys):
    assert queue(comfy, tmp_path) == 1
    err = capsys.readouterr().err
    assert "ComfyUI dropped output(s) of the prompt as invalid: Save Image [SaveImage] (node 15)" in err
    assert "Save Image [SaveImage] (node 15): Return type mismatch between linked nodes" in err
    assert comfy.deleted == [PROMPT_ID] and not (tmp_path / "out").exists()
