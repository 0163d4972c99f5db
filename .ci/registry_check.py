"""CI's registry stage: the archive the Comfy Registry would get, built and installed the way users get it.

    python3 .ci/registry_check.py --server COMFYUI=PYTHON [--server COMFYUI=PYTHON ...] [--comfy-venv DIR]

1. comfy-cli (pinned, in its own virtual environment, never in a ComfyUI test venv): ruff with the registry's
   rules (S102 exec, S307 eval, E702 `a; b`) finds nothing; `comfy node validate` passes with no warning
   (it only warns about ruff findings, so step 1 makes them an error); `comfy node pack` builds node.zip.
2. The archive holds exactly the git-tracked files minus the development-only ones below (.comfyignore's job).
3. For each ComfyUI (a checkout and a Python that has its requirements and the pack's): the archive is unpacked
   into a fresh --base-directory's custom_nodes/ComfyUI-PuLID-Flux, the server started on 127.0.0.1, and every node
   of nodes.py must be in /object_info from this pack, with no import failure for it in the log; its routes,
   example workflows, web files and locales must be served. Nothing is written into the ComfyUI checkout.
Prints what it checked; exits 1 on the first failed check."""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_DIR_NAME = "ComfyUI-PuLID-Flux"
COMFY_CLI = "comfy-cli==1.23.0"
RUFF_RULES = "S102,S307,E702"
# What .comfyignore must keep out, and only this: tests, benchmarks, CI, the dev tools, their requirements and the
# ignore files.
DEV_ONLY = ("tests/", "bench/", ".ci/", "tools/", "requirements-test.txt", ".gitignore", ".comfyignore")
START_TIMEOUT_S = 180
QUIET_CLI = {"DO_NOT_TRACK": "1", "COMFY_NO_UPDATE_CHECK": "1", "RUFF_NO_CACHE": "true"}


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str, detail: str = "") -> None:
    if not condition:
        raise CheckFailed(what + (f"\n{detail}" if detail else ""))
    print(f"  ok: {what}")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def comfy_cli(venv: str) -> str:
    """The comfy executable of `venv`, installed there first unless it already has the pinned version."""
    comfy = os.path.join(venv, "bin", "comfy")
    wanted = COMFY_CLI.split("==")[1]
    if os.path.exists(comfy) and wanted in run([comfy, "--version"], env=dict(os.environ, **QUIET_CLI)).stdout:
        print(f"  {COMFY_CLI} already in {venv}")
        return comfy
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--no-compile",
                    COMFY_CLI], check=True)
    print(f"  installed {COMFY_CLI} into {venv} in {time.monotonic() - t0:.0f} s")
    return comfy


def registry_tools(comfy: str, out: str) -> str:
    """Steps 1: ruff, validate, pack. Returns the archive's path under `out`."""
    env = dict(os.environ, **QUIET_CLI)
    python = os.path.join(os.path.dirname(comfy), "python")
    ruff = run([python, "-m", "ruff", "check", ".", "--select", RUFF_RULES, "--no-cache"], cwd=REPO, env=env)
    check(ruff.returncode == 0, f"ruff --select {RUFF_RULES} over the whole tree finds nothing", ruff.stdout)
    validate = run([comfy, "--skip-prompt", "--no-json", "node", "validate"], cwd=REPO, env=env)
    text = validate.stdout + validate.stderr
    check(validate.returncode == 0 and "All validation checks passed" in text
          and "warning" not in text.lower() and "error" not in text.lower(),
          "comfy node validate passes with no warning", text)
    archive = os.path.join(REPO, "node.zip")
    if os.path.exists(archive):
        raise CheckFailed(f"{archive} exists already (a pack made by hand?): move it away first")
    pack = run([comfy, "--skip-prompt", "--no-json", "node", "pack"], cwd=REPO, env=env)
    made = os.path.exists(archive)
    if made:
        shutil.move(archive, os.path.join(out, "node.zip"))
    check(pack.returncode == 0 and made, "comfy node pack builds node.zip", pack.stdout + pack.stderr)
    return os.path.join(out, "node.zip")


def archive_contents(archive: str) -> list[str]:
    """Step 2: the archive against the tracked files."""
    tracked = run(["git", "ls-files"], cwd=REPO, check=True).stdout.split("\n")
    tracked = {name for name in tracked if name and os.path.isfile(os.path.join(REPO, name))}
    expected = {name for name in tracked if not any(name == d or name.startswith(d) for d in DEV_ONLY)}
    with zipfile.ZipFile(archive) as z:
        names = [info.filename for info in z.infolist() if not info.is_dir()]
    unsafe = [n for n in names if n.startswith("/") or ".." in n.split("/")]
    check(not unsafe, "every archive path is relative, inside the pack", str(unsafe))
    missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
    check(not missing and not extra,
          f"the archive is the {len(expected)} tracked files minus the development ones ({', '.join(DEV_ONLY)})",
          f"missing from the archive: {missing}\nshould not be in it: {extra}")
    tops: dict[str, int] = {}
    for name in names:
        top = name.split("/")[0] + ("/" if "/" in name else "")
        tops[top] = tops.get(top, 0) + 1
    print("  archive: " + ", ".join(f"{top} {n}" if top.endswith("/") else top for top, n in sorted(tops.items())))
    return names


def pack_node_names(nodes_py: str) -> list[str]:
    """The keys of nodes.py's NODES table (class name -> (class, display name)), read without importing it."""
    with open(nodes_py, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NODES" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            return [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    raise CheckFailed(f"no NODES = {{...}} table in {nodes_py}: update pack_node_names()")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def comfyui_version(comfyui: str) -> str:
    with open(os.path.join(comfyui, "comfyui_version.py"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def install_and_load(archive: str, names: list[str], comfyui: str, python: str, out: str) -> None:
    """Step 3 for one ComfyUI."""
    version = comfyui_version(comfyui)
    print(f"--- ComfyUI {version} ({comfyui}), {python}")
    base = os.path.join(out, f"base-{version}")
    pack = os.path.join(base, "custom_nodes", PACK_DIR_NAME)
    os.makedirs(pack)
    with zipfile.ZipFile(archive) as z:
        z.extractall(pack)
    port = free_port()
    log_path = os.path.join(base, "server.log")
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", base,
           "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]  # the default database is in the checkout
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                raise CheckFailed(f"ComfyUI exited with {server.returncode}:\n{read_log(log_path)[-4000:]}")
            if time.monotonic() - t0 > START_TIMEOUT_S:
                raise CheckFailed(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{read_log(log_path)[-4000:]}")
            try:
                if get(url + "/system_stats", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        print(f"  server up in {time.monotonic() - t0:.0f} s (port {port}, base {base})")
        served_checks(url, pack, names)
        log = read_log(log_path)
        pack_lines = [line for line in log.splitlines() if PACK_DIR_NAME in line]
        failures = [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line
                    or "Traceback" in line or "Skip" in line]
        check(not failures and any(line.strip().endswith(pack) for line in pack_lines),
              "the log lists the unpacked pack among the imported custom nodes, with no import failure",
              "\n".join(failures) or log[-4000:])
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def served_checks(url: str, pack: str, names: list[str]) -> None:
    expected = pack_node_names(os.path.join(pack, "nodes.py"))
    info = json.loads(get(url + "/object_info", timeout=120)[1])
    ours = sorted(n for n, d in info.items() if d.get("python_module") == f"custom_nodes.{PACK_DIR_NAME}")
    check(ours == sorted(expected), f"/object_info has the pack's {len(expected)} nodes, from the unpacked pack",
          f"expected {sorted(expected)}\nserved   {ours}")
    status, body = get(url + "/pulid_flux/identities")
    check(status == 200 and json.loads(body) == {"identities": []}, "GET /pulid_flux/identities answers (routes on)")
    workflows = sorted(n.split("/")[1][:-len(".json")] for n in names
                       if n.startswith("example_workflows/") and n.endswith(".json"))
    templates = json.loads(get(url + "/workflow_templates")[1]).get(PACK_DIR_NAME, [])
    check(sorted(templates) == workflows, f"the {len(workflows)} example workflows are in /workflow_templates",
          f"served {sorted(templates)}")
    web = [n for n in names if n.startswith("web/")]  # WEB_DIRECTORY = "./web"
    wrong = []
    for name in web:
        try:
            served = get(f"{url}/extensions/{PACK_DIR_NAME}/{urllib.request.quote(name[len('web/'):])}")[1]
        except urllib.error.HTTPError as e:
            served = f"HTTP {e.code}".encode()
        with open(os.path.join(pack, name), "rb") as f:
            if served != f.read():
                wrong.append(name)
    check(not wrong, f"the {len(web)} files under web/ are served at /extensions/{PACK_DIR_NAME}/ as packed",
          f"not served as packed: {wrong}")
    locales = [n for n in names if n.startswith("locales/") and n.endswith("/nodeDefs.json")]
    i18n = json.loads(get(url + "/i18n")[1]) if locales else {}
    untranslated = {}
    for name in locales:
        lang = name.split("/")[1]
        with open(os.path.join(pack, name), encoding="utf-8") as f:
            missing = set(json.load(f)) - set(i18n.get(lang, {}).get("nodeDefs", {}))
        if missing:
            untranslated[lang] = sorted(missing)
    check(not untranslated, f"/i18n serves the node translations of the {len(locales)} locale(s) packed",
          f"missing from /i18n: {untranslated}")


def read_log(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", default=[], metavar="COMFYUI=PYTHON",
                        help="a ComfyUI checkout and the Python to run it with (repeatable)")
    parser.add_argument("--comfy-venv", default=os.path.join(REPO, ".venv", "comfy-cli"),
                        help="virtual environment for comfy-cli (made when it lacks the pinned version)")
    args = parser.parse_args(argv)
    servers = []
    for pair in args.server:
        comfyui, sep, python = pair.partition("=")
        if not sep or not os.path.isfile(os.path.join(comfyui, "main.py")) or not os.path.isfile(python):
            parser.error(f"--server {pair!r}: want COMFYUI=PYTHON, a checkout with main.py and a Python executable")
        servers.append((os.path.abspath(comfyui), os.path.abspath(python)))
    if not servers:
        parser.error("name at least one --server")
    t0 = time.monotonic()
    out = tempfile.mkdtemp(prefix="pulid-registry-")
    try:
        print("--- registry tools")
        archive = registry_tools(comfy_cli(os.path.abspath(args.comfy_venv)), out)
        names = archive_contents(archive)
        for comfyui, python in servers:
            install_and_load(archive, names, comfyui, python, out)
    except CheckFailed as e:
        print(f"REGISTRY CHECK FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"registry checks passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
