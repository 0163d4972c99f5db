"""The real-browser test's machinery: what it needs installed (Debian `chromium`, `npm ci --prefix tests/browser`),
a ComfyUI base directory that looks like a user's (the pack in custom_nodes/, a placeholder for every model and
input picture the example workflows name, first-run dialogs done), and the Node runner
(tests/browser/frontend_check.js) that drives the frontend and reports what it saw as JSON."""
import json
import os
import re
import shutil
import subprocess

from PIL import Image

from support.server_harness import PACK_DIR_NAME

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROWSER_DIR = os.path.join(REPO_ROOT, "tests", "browser")
RUNNER = os.path.join(BROWSER_DIR, "frontend_check.js")
CHROMIUM = os.environ.get("PULID_TEST_CHROMIUM", "/usr/bin/chromium")
RUN_TIMEOUT_S = 240
MIN_NODE_MAJOR = 18  # playwright-core 1.61 (tests/browser/package.json): Debian 12's nodejs is 18
SETUP_HINT = ("the browser test needs Node.js 18+, Chromium at /usr/bin/chromium (Debian: `apt-get install chromium`; "
              "another path: PULID_TEST_CHROMIUM) and playwright-core (`npm ci --prefix tests/browser`)")
# Seen by the frontend as an existing user's settings: no template browser on first start, the locale explicit.
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Locale": "en"}
# Files of the user's own that example workflows name in a loader's widget: saved identities (comfy_layer/folders.py).
USER_FILE_WIDGETS = {"PulidFluxLoadIdentity": os.path.join("pulid", "identities")}
CJK = re.compile(r"[\u3400-\u9fff]")


def missing_tools() -> list[str]:
    """What is missing to run the browser test, each with how to install it (empty when everything is there)."""
    missing = []
    node = shutil.which("node")
    if node is None:
        missing.append("node is not on PATH (Debian: apt-get install nodejs npm)")
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        major = re.match(r"v(\d+)\.", version)
        if major is None or int(major.group(1)) < MIN_NODE_MAJOR:
            missing.append(f"node {version or '(no version)'} is older than {MIN_NODE_MAJOR} (playwright-core's need)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    if not os.path.isfile(os.path.join(BROWSER_DIR, "node_modules", "playwright-core", "package.json")):
        missing.append("tests/browser/node_modules has no playwright-core (npm ci --prefix tests/browser)")
    return missing


def example_workflows() -> dict:
    folder = os.path.join(REPO_ROOT, "example_workflows")
    workflows = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                workflows[name] = json.load(f)
    return workflows


def models_named_by(workflows: dict) -> set:
    """(folder under models/, name) of every model the workflows list (the `models` property the frontend checks
    against the server's model folders) and of the saved identities their Load identity nodes name."""
    files = set()
    for workflow in workflows.values():
        for node in workflow["nodes"]:
            files |= {(model["directory"], model["name"]) for model in node.get("properties", {}).get("models", [])}
            if node["type"] in USER_FILE_WIDGETS:
                files.add((USER_FILE_WIDGETS[node["type"]], node["widgets_values"][0]))
    return files


def pictures_named_by(workflows: dict, object_info: dict) -> set:
    """Input pictures the workflows show: the picture names in the widgets of nodes whose definition has an
    upload widget (LoadImage, Load identity card), which the frontend fetches from the input folder."""
    uploaders = {name for name, info in object_info.items()
                 if any(isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict)
                        and spec[1].get("image_upload")
                        for group in info.get("input", {}).values() for spec in group.values())}
    return {value for workflow in workflows.values() for node in workflow["nodes"] if node["type"] in uploaders
            for value in node.get("widgets_values") or [] if isinstance(value, str)
            and value.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))}


def prepare_base_directory(base: str, workflows: dict) -> None:
    """custom_nodes/ with this repository as the pack, an empty placeholder file for every model the workflows
    list (the server lists them and never loads them: nothing here queues a prompt), and a user whose first-run
    dialogs are done."""
    nodes_dir = os.path.join(base, "custom_nodes")
    os.makedirs(nodes_dir, exist_ok=True)
    os.symlink(REPO_ROOT, os.path.join(nodes_dir, PACK_DIR_NAME))
    for folder, name in models_named_by(workflows):
        path = os.path.join(base, "models", folder, *name.split("/"))  # model names use "/" on every OS
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    user = os.path.join(base, "user", "default")
    os.makedirs(user, exist_ok=True)
    with open(os.path.join(user, "comfy.settings.json"), "w", encoding="utf-8") as f:
        json.dump(USER_SETTINGS, f)


def write_input_pictures(base: str, workflows: dict, object_info: dict) -> set:
    """Small gray pictures under the names the workflows show, so the frontend's previews find them (as for a
    user who has the pictures); the server lists the input folder on each request, so this may follow its start."""
    names = pictures_named_by(workflows, object_info)
    os.makedirs(os.path.join(base, "input"), exist_ok=True)
    for name in names:
        Image.new("RGB", (64, 64), (128, 128, 128)).save(os.path.join(base, "input", name))
    return names


def run_frontend_check(config: dict, work: str) -> dict:
    """Run the Node runner with `config` (written to work/config.json); returns its JSON report. A crash or a
    timeout raises with the runner's output and the steps it got through."""
    config_path, report_path = os.path.join(work, "config.json"), os.path.join(work, "report.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(dict(config, chromium=CHROMIUM), f)
    try:
        done = subprocess.run(["node", RUNNER, config_path, report_path], cwd=BROWSER_DIR, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        output = f"timed out after {RUN_TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}"
    report = {}
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    if not report.get("done"):
        steps = "\n".join(report.get("steps", []))
        raise RuntimeError(f"the browser runner did not finish: {report.get('fatal') or ''}\n{output[-4000:]}\n"
                           f"steps done:\n{steps}\nscreenshots: {config['screenshots']}")
    return report


def markdown_headings(text: str) -> list[str]:
    """ATX headings outside code fences, as comparable keys (see heading_key)."""
    headings, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"^ {0,3}#{1,6}\s", line):
            headings.append(heading_key(re.sub(r"\]\([^)]*\)", "]", line.lstrip().lstrip("#"))))
    return headings


def heading_key(text: str) -> str:
    """Letters and digits only: Markdown markup (`code`, **bold**, [links]) and the rendered text compare equal."""
    return re.sub(r"[\W_]+", "", text).lower()


def markdown_images(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", text)


def has_cjk(text) -> bool:
    return bool(text) and CJK.search(text) is not None
