"""A real ComfyUI server for end-to-end tests: an isolated --base-directory with this pack and a test-only
node pack in custom_nodes/, tiny models, listening on 127.0.0.1 only, stopped when the test ends."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from support import comfy_harness as H

PACK_DIR_NAME = "ComfyUI-PuLID-Flux"
TEST_VAE = "taef1_test.safetensors"
START_TIMEOUT_S = 180

# T5-XXL has a fixed size of ~9 GB, so HTTP tests swap the text encoders for this node: Flux-shaped
# conditioning from a seeded generator (the same text gives the same tensors).
TEST_NODES_SOURCE = '''"""Test only (written by tests/server_harness.py): Flux conditioning without T5-XXL."""
import hashlib

import torch


class PulidTestFluxConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, tokens):
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
        context = torch.randn(1, tokens, 4096, generator=g)
        return ([[context, {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}]],)


NODE_CLASS_MAPPINGS = {"PulidTestFluxConditioning": PulidTestFluxConditioning}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_taesd_vae(path: str, latent_channels: int = 16, seed: int = 0) -> str:
    """A single-file VAE that ComfyUI's VAELoader detects as TAESD (the 'taesd_decoder.1.weight' key), with
    random weights: about 10 MB instead of the 160 MB Flux VAE, and it decodes 16-channel Flux latents."""
    import comfy.taesd.taesd
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    module = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    state = {k: torch.randn(v.shape, generator=g) * (0.05 if v.dim() > 1 else 0.0)
             for k, v in module.state_dict().items()}
    state["vae_scale"], state["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(state, path)
    return path


def write_test_models(models: str) -> dict:
    """Few-block Flux, full-size PuLID and EVA-CLIP, fake antelopev2, random BiSeNet, TAESD-layout VAE (~3 GB).
    Needs ComfyUI imported (H.import_comfyui)."""
    paths = H.write_models(models)
    paths["vae"] = write_taesd_vae(os.path.join(models, "vae", TEST_VAE))
    return paths


def prepare_base_directory(base: str, models: str | None = None) -> None:
    """custom_nodes/ (this repo as the pack, the test node pack) and models/: a link to `models` when given (the
    tests' session-wide `comfy_models`, so servers share one set of files), else freshly written test models."""
    nodes_dir = os.path.join(base, "custom_nodes")
    os.makedirs(os.path.join(nodes_dir, "pulid_test_conditioning"), exist_ok=True)
    os.symlink(H.REPO_ROOT, os.path.join(nodes_dir, PACK_DIR_NAME))
    with open(os.path.join(nodes_dir, "pulid_test_conditioning", "__init__.py"), "w", encoding="utf-8") as f:
        f.write(TEST_NODES_SOURCE)
    if models is None:
        write_test_models(os.path.join(base, "models"))
    else:
        os.symlink(models, os.path.join(base, "models"))


def graph_for_test_models(example: str = "pulid_flux_basic.json") -> dict:
    """An API example from examples/api/ with its text encoders swapped for PulidTestFluxConditioning (the test
    models have no CLIP/T5); the model and size inputs are left for the caller to set."""
    with open(os.path.join(H.REPO_ROOT, "examples", "api", example), encoding="utf-8") as f:
        graph = json.load(f)
    for node_id, node in list(graph.items()):
        if node["class_type"] == "DualCLIPLoader":
            del graph[node_id]
        elif node["class_type"] == "CLIPTextEncode":
            node["class_type"] = "PulidTestFluxConditioning"
            node["inputs"] = {"text": node["inputs"]["text"], "tokens": 8}
    return graph


def form_data(fields: dict, files: dict) -> tuple[bytes, str]:
    """multipart/form-data as browsers send it: text fields, then {field: (file name, bytes, content type)}."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\nContent-Type: '
              f'{kind}\r\n\r\n'.encode() + data + b"\r\n" for k, (name, data, kind) in files.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class ComfyServer:
    """`python main.py --cpu --listen 127.0.0.1 --port N --base-directory BASE` from COMFYUI_PATH."""

    def __init__(self, comfyui: str, base: str, name: str = "server", extra_args: tuple = ()):
        """Several servers may share one base directory (its models and custom nodes) when each gets its
        own `name` (log file) and --output/--input/--temp/--user-directory in `extra_args`."""
        self.comfyui, self.base, self.extra_args = comfyui, base, tuple(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, f"{name}.log")
        self.process = None

    def start(self) -> None:
        """Launch without waiting (start several, then wait_until_ready on each)."""
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", *self.extra_args]  # the default database is in COMFYUI_PATH
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self):
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-chars:]

    def free_models(self, timeout: float = 30.0) -> None:
        """ComfyUI's POST /free: unload the models and drop the cached node outputs (done by the idle worker), so
        a test that loads full-size models in another process does not hold them twice."""
        request = urllib.request.Request(self.url + "/free", method="POST",
                                         data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            assert r.status == 200
        time.sleep(2)  # the idle worker wakes on the flags and unloads; give it a moment

    def post(self, path: str, body: bytes, content_type: str):
        """(status, reply): the JSON reply, or its text when an error reply is not JSON."""
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text.decode("utf-8", "replace")

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def get_status_json(self, path: str):
        """(status, JSON reply) of a GET, error statuses included."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None:
            self._log.close()


@contextlib.contextmanager
def running_servers(base: str, count: int, extra_args=lambda n, folder: ()):
    """`count` servers sharing `base` (its models and custom nodes), each with its own output/input/temp/user
    folders under base/s<n>/ plus `extra_args(n, that folder)`; started together, all stopped at the end."""
    started = []
    try:
        for n in range(count):
            folder, args = os.path.join(base, f"s{n}"), []
            for kind in ("output", "input", "temp", "user"):
                os.makedirs(os.path.join(folder, kind))
                args += [f"--{kind}-directory", os.path.join(folder, kind)]
            server = ComfyServer(H.comfyui_path(), base, name=f"server{n}", extra_args=(*args, *extra_args(n, folder)))
            server.start()
            started.append(server)
        for server in started:
            server.wait_until_ready()
        yield started
    finally:
        for server in started:
            server.__exit__(None, None, None)
