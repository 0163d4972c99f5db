"""Tier (a), no ComfyUI, no browser: the frontend extension web/js/pulid_identity_fingerprint.js, run by Node.js
against stand-ins of the frontend's scripts/app.js and scripts/api.js (the shims both frontends ship, 1.27 and
1.47). It must parse, register one extension, fill Load identity's fingerprint from the pack's route when a file is
picked (and once when the fingerprint is empty), never replace a saved fingerprint on load, drop a late answer for
an older choice, and leave other nodes alone. A real-browser check belongs to the browser harness."""
import json
import os
import shutil
import subprocess

REPO_ROOT = __file__.rsplit("/tests/", 1)[0]
EXTENSION = os.path.join(REPO_ROOT, "web", "js", "pulid_identity_fingerprint.js")
FINGERPRINT_ROUTE = "/pulid_flux/identities/fingerprint"  # comfy_layer/routes.py; test_identity_cards_servers uses it

APP_STUB = "export const app = { registerExtension(extension) { (globalThis.registered ??= []).push(extension); } };\n"
API_STUB = """export const api = {
  async fetchApi(url) {
    globalThis.requests.push(url);
    await new Promise((resolve) => setTimeout(resolve, globalThis.delays[url] ?? 1));
    const fingerprint = globalThis.files[decodeURIComponent(url.split("?name=")[1] ?? "")];
    if (url.includes("broken")) return { ok: false, status: 500, async json() { return {}; } };
    return { ok: true, status: 200,
             async json() { return fingerprint ? { fingerprint } : { fingerprint: null, error: "not on this server" }; } };
  },
};
"""
DRIVER = """
globalThis.requests = []; globalThis.delays = {};
globalThis.files = { "a.safetensors": "pfid1-aaaa", "b b+.safetensors": "pfid1-bbbb" };
await import("./extensions/ComfyUI-PuLID-Flux/js/pulid_identity_fingerprint.js");
const settle = () => new Promise((resolve) => setTimeout(resolve, 30));
const [extension] = globalThis.registered;
function loadIdentity(file, fingerprint, cls = "PulidFluxLoadIdentity") {
  const calls = [];
  const node = { comfyClass: cls, widgets: [
    { name: "identity_file", value: file, callback(v) { calls.push(v); } }, { name: "fingerprint", value: fingerprint }] };
  node.pick = (value) => { node.widgets[0].value = value; node.widgets[0].callback(value); };
  node.print = () => node.widgets[1].value;
  node.calls = calls;
  extension.nodeCreated(node);
  return node;
}
const out = { count: globalThis.registered.length, name: extension.name };
const fresh = loadIdentity("a.safetensors", "");
const saved = loadIdentity("a.safetensors", "pfid1-saved");
const other = loadIdentity("a.safetensors", "", "LoadImage");
const bare = { comfyClass: "PulidFluxLoadIdentity", widgets: [{ name: "identity_file", value: "a.safetensors" }] };
extension.nodeCreated(bare);
await settle();
out.fresh = fresh.print(); out.saved = saved.print(); out.other = other.print();
saved.pick("b b+.safetensors"); await settle();
out.picked = saved.print(); out.calls = saved.calls;
saved.pick("missing.safetensors"); await settle();
out.missing = saved.print();
saved.pick("broken.safetensors"); await settle();
out.broken = saved.print();
globalThis.delays["/pulid_flux/identities/fingerprint?name=b%20b%2B.safetensors"] = 20;
fresh.pick("b b+.safetensors"); fresh.pick("a.safetensors"); await settle(); await settle();
out.raced = fresh.print();
out.requests = globalThis.requests;
console.log(JSON.stringify(out));
"""


def node_binary() -> str:
    found = shutil.which("node") or shutil.which("nodejs")
    assert found, "Node.js is needed to check the frontend extension (.ci/run installs it: apt-get install nodejs)"
    return found


def test_the_extension_parses():
    result = subprocess.run([node_binary(), "--check", EXTENSION], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_extension_fills_the_fingerprint_when_a_file_is_picked(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP_STUB)
    (tmp_path / "scripts" / "api.js").write_text(API_STUB)
    js = tmp_path / "extensions" / "ComfyUI-PuLID-Flux" / "js"
    js.mkdir(parents=True)
    shutil.copy(EXTENSION, js)  # served as /extensions/<pack folder>/js/...: its imports are ../../../scripts/*
    (tmp_path / "driver.mjs").write_text(DRIVER)
    result = subprocess.run([node_binary(), "driver.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["count"] == 1 and out["name"].startswith("PuLIDFlux.")
    assert out["fresh"] == "pfid1-aaaa"          # a new node (or a workflow saved without it): filled once
    assert out["saved"] == "pfid1-saved"         # a saved fingerprint is kept on load: it names the chosen identity
    assert out["other"] == ""                    # other nodes are left alone
    assert out["picked"] == "pfid1-bbbb"  # picked: filled from the route
    assert out["calls"] == ["b b+.safetensors", "missing.safetensors", "broken.safetensors"]  # its own callback runs
    assert out["missing"] == ""                  # a file this server cannot vouch for: no fingerprint
    assert out["broken"] == ""                   # a failed request: no fingerprint, no exception
    assert out["raced"] == "pfid1-aaaa"          # a late answer for an earlier pick is dropped
    route = FINGERPRINT_ROUTE + "?name="
    assert out["requests"][0] == route + "a.safetensors" and route + "b%20b%2B.safetensors" in out["requests"]
    assert all(r.startswith(route) for r in out["requests"])
