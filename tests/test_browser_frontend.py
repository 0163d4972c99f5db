"""The pack in ComfyUI's own frontend, in a real browser: a ComfyUI server (COMFYUI_PATH, its own --base-directory,
127.0.0.1) with this pack, and the `comfyui_frontend_package` that ComfyUI installed (1.27 for v0.3.64, 1.47 for
v0.29.0) in headless Chromium driven by playwright-core (tests/browser/frontend_check.js). One browser session per
module; every test below asserts on its report:
- every example workflow loads through app.loadGraphData with no missing node type, no missing-node message and no
  console error (and a workflow with an undefined node type is caught by the same checks);
- Apply PuLID-Flux's docs page is served and rendered in the node documentation panel (selection toolbox, info);
- with Comfy.Locale = zh, node titles, the node library and a widget tooltip show the Chinese locale's text;
- every node in NODE_CLASS_MAPPINGS is in the frontend's node definitions, with its display name and description.
Screenshots land in pytest's temporary folder (help-en.png, help-zh.png, library-zh.png, tooltip-zh.png).
Needs Chromium and `npm ci --prefix tests/browser` (README, Tests): without them the tests fail, they never skip."""
import json
import os
import urllib.error
import urllib.request

import pytest

from support import browser_harness as B
from support import comfy_harness as H
from support.server_harness import PACK_DIR_NAME, ComfyServer

DOCS_NODE = "ApplyPulidFlux"
TOOLTIP_INPUT = "weight"  # the input whose Chinese tooltip is hovered, when the zh locale has one
CONTROL_TYPE = "PulidFluxNodeThatDoesNotExist"
DOCS_URL = f"/extensions/{PACK_DIR_NAME}/docs/"
DOCS_DIR = os.path.join(B.REPO_ROOT, "web", "docs")
ZH_NODE_DEFS = os.path.join(B.REPO_ROOT, "locales", "zh", "nodeDefs.json")


def shown_page(locale: str) -> str:
    """The page the panel shows in `locale` (relative to web/docs/): the frontends ask for <Node>/<locale>.md and
    fall back to <Node>.md."""
    localized = f"{DOCS_NODE}/{locale}.md"
    return localized if os.path.isfile(os.path.join(DOCS_DIR, localized)) else f"{DOCS_NODE}.md"


def read_text(path: str) -> str:
    assert os.path.isfile(path), f"{os.path.relpath(path, B.REPO_ROOT)} is missing"
    with open(path, encoding="utf-8") as f:
        return f.read()


def zh_tooltip_choice(zh_defs: dict) -> tuple[str, str]:
    """(input, Chinese tooltip) on the docs node: TOOLTIP_INPUT if the zh locale translates its tooltip, else the
    first translated one."""
    inputs = zh_defs.get(DOCS_NODE, {}).get("inputs", {})
    tips = {name: entry["tooltip"] for name, entry in inputs.items()
            if isinstance(entry, dict) and entry.get("tooltip")}
    assert tips, f"locales/zh/nodeDefs.json translates no input tooltip of {DOCS_NODE}"
    name = TOOLTIP_INPUT if TOOLTIP_INPUT in tips else next(iter(tips))
    return name, tips[name]


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    """(pack, report, screenshot folder): one server and one browser session for the whole module."""
    if H.comfyui_path() is None:
        H.import_comfyui()  # skips, with its reason: the real-ComfyUI tier runs when COMFYUI_PATH is set
    missing = B.missing_tools()
    if missing:
        pytest.fail(f"{B.SETUP_HINT}; missing: " + "; ".join(missing), pytrace=False)
    zh_defs = json.loads(read_text(ZH_NODE_DEFS))
    tooltip_input, _ = zh_tooltip_choice(zh_defs)
    workflows = B.example_workflows()
    control = json.loads(json.dumps(workflows["pulid_flux_basic.json"]))
    next(n for n in control["nodes"] if n["type"] == DOCS_NODE)["type"] = CONTROL_TYPE
    base, work = tmp_path_factory.mktemp("browser_base"), tmp_path_factory.mktemp("browser_run")
    shots = tmp_path_factory.mktemp("browser_screenshots")
    B.prepare_base_directory(str(base), workflows)
    server = ComfyServer(H.comfyui_path(), str(base))
    server.start()
    try:  # the mappings under test, imported here as ComfyUI imports the pack, while the server starts
        H.import_comfyui()
        pack = H.import_pack(str(work))
        server.wait_until_ready()
        assert B.write_input_pictures(str(base), workflows, server.get_json("/object_info"))
        config = {"url": server.url + "/", "workflows": workflows, "control_workflow": control,
                  "node_classes": sorted(pack.NODE_CLASS_MAPPINGS), "python_module": f"custom_nodes.{PACK_DIR_NAME}",
                  "docs_node": DOCS_NODE, "zh_tooltip": {"node": DOCS_NODE, "input": tooltip_input},
                  "screenshots": str(shots)}
        report = B.run_frontend_check(config, str(work))
        served = {}
        for page in {f"{DOCS_NODE}.md", shown_page("en"), shown_page("zh")}:
            try:
                with urllib.request.urlopen(server.url + DOCS_URL + page, timeout=30) as r:
                    served[page] = (r.status, r.read().decode("utf-8"))
            except urllib.error.HTTPError as e:  # reported by the docs tests, not as an error of every test
                served[page] = (e.code, e.read().decode("utf-8", "replace"))
        report["served"] = served
    finally:
        server.__exit__(None, None, None)
    print(f"browser test: frontend {report.get('frontend_version')}, screenshots in {shots}")
    return pack, report, str(shots)


def pack_errors(events: list[str]) -> list[str]:
    """Errors that concern the pack (its extension files, translations or docs), among a page's start-up errors."""
    return [e for e in events if PACK_DIR_NAME in e or "/i18n" in e or DOCS_NODE in e]


def test_every_example_workflow_loads_without_missing_nodes_or_console_errors(frontend):
    _, report, _ = frontend
    workflows = B.example_workflows()
    assert sorted(report["workflows"]) == sorted(workflows)
    problems = {}
    for name, seen in report["workflows"].items():
        expected = len(workflows[name]["nodes"])
        found = {k: seen[k] for k in ("missing", "messages", "errors") if seen[k]}
        if seen["node_count"] != expected:
            found["node_count"] = f"{seen['node_count']} nodes in the graph, {expected} in the file"
        if found:
            problems[name] = found
    assert problems == {}, f"example workflows in frontend {report['frontend_version']}: {problems}"
    assert pack_errors(report["startup"]["errors"]) == []


def test_a_workflow_with_an_undefined_node_is_caught(frontend):
    _, report, _ = frontend
    control = report["control"]
    assert control["missing"] == [CONTROL_TYPE]
    assert any(CONTROL_TYPE in m for m in control["messages"]), control["messages"]


def test_every_pack_node_is_in_the_frontend_node_definitions(frontend):
    pack, report, _ = frontend
    definitions = report["definitions_en"]
    mappings = pack.NODE_CLASS_MAPPINGS
    assert sorted(definitions["from_pack"]) == sorted(mappings), "the frontend's pack nodes differ from the mappings"
    absent = [name for name, seen in definitions["nodes"].items() if seen is None]
    assert absent == [], f"not in the frontend's node definitions: {absent}"
    for name, seen in definitions["nodes"].items():
        assert seen["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[name], name
        assert seen["description"] == (getattr(mappings[name], "DESCRIPTION", "") or ""), name


def check_panel(panel: dict, page: str, locale: str) -> None:
    assert panel["visible"], f"the {locale} documentation panel is not on screen"
    assert panel["rendered"] and not panel["fallback"], (
        f"the {locale} panel shows the fallback (description and inputs), not the docs page: {panel['text'][:300]}")
    assert panel["headings"], f"the {locale} panel rendered no heading"
    assert [B.heading_key(h) for h in panel["headings"]] == B.markdown_headings(page)
    assert len(panel["images"]) == len(B.markdown_images(page)), panel["images"]
    assert all(image["loaded"] for image in panel["images"]), panel["images"]
    assert [e for e in panel["errors"] if e.startswith("pageerror")] == []
    probe = f"/docs/{DOCS_NODE}/{locale}.md"  # asked first; a 404 is the frontend's way to the fallback page
    expected_probe_404 = shown_page(locale) == f"{DOCS_NODE}.md"
    assert [e for e in pack_errors(panel["errors"]) if not (expected_probe_404 and probe in e)] == []


def test_apply_docs_page_is_served_and_rendered_in_the_documentation_panel(frontend):
    _, report, _ = frontend
    plain = f"{DOCS_NODE}.md"  # what every locale falls back to
    assert report["served"][plain] == (200, read_text(os.path.join(DOCS_DIR, plain)))
    page = read_text(os.path.join(DOCS_DIR, shown_page("en")))
    assert report["served"][shown_page("en")] == (200, page)
    check_panel(report["help_en"], page, "en")


def test_zh_locale_shows_chinese_titles_tooltip_library_and_docs(frontend):
    pack, report, _ = frontend
    zh = report["zh"]
    assert zh["locale"] == "zh"
    zh_defs = json.loads(read_text(ZH_NODE_DEFS))
    expected = {name: zh_defs[name]["display_name"] for name in pack.NODE_CLASS_MAPPINGS
                if zh_defs.get(name, {}).get("display_name")}
    assert DOCS_NODE in expected, f"locales/zh/nodeDefs.json has no display_name for {DOCS_NODE}"
    assert all(B.has_cjk(title) for title in expected.values()), expected
    assert {name: zh["titles"][name] for name in expected} == expected
    assert {name: zh["definitions"]["nodes"][name]["display_name"] for name in expected} == expected
    missing_in_library = [title for title in expected.values() if title not in zh["library"]["text"]]
    assert missing_in_library == [], f"not shown in the zh node library: {missing_in_library}"
    tooltip_input, tooltip = zh_tooltip_choice(zh_defs)
    assert zh["tooltip"]["found"], f"{DOCS_NODE} has no widget or input named {tooltip_input}"
    assert zh["tooltip"]["text"] == tooltip.strip(), zh["tooltip"]
    assert B.has_cjk(zh["tooltip"]["text"])
    assert shown_page("zh") == f"{DOCS_NODE}/zh.md", f"web/docs/{DOCS_NODE}/zh.md is missing"
    page = read_text(os.path.join(DOCS_DIR, shown_page("zh")))
    assert report["served"][shown_page("zh")] == (200, page)
    check_panel(zh["help"], page, "zh")
    assert B.has_cjk(" ".join(zh["help"]["headings"]))
    assert pack_errors(zh["errors_on_reload"] + zh["errors"]) == []
