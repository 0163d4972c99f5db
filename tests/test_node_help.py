"""Node help in ComfyUI's own interface, checked against the nodes as the real ComfyUI imports them: the English
locale is what the code says (tools/locales.py regenerates it here), every other locale has every title,
description, input, output and tooltip, every node has a DESCRIPTION and its help pages (web/docs/<Node>.md,
<Node>/en.md, <Node>/zh.md) naming each of its inputs and outputs, every picture a page shows exists; and a real
ComfyUI server serves the pages where the frontend's help panel asks for them and the locales in its /i18n."""
import copy
import importlib.util
import json
import os
import re
import urllib.request

import pytest

from support import comfy_harness as H
from support import server_harness as S

REPO = H.REPO_ROOT
WEB = os.path.join(REPO, "web")
DOCS = os.path.join(WEB, "docs")
LANGUAGES = sorted(d for d in os.listdir(os.path.join(REPO, "locales")) if d != "en")
PAGE_LANGUAGES = ("en", "zh")
PICTURE_BUDGET = 1 << 20  # web/ ships in the registry archive: pictures stay small


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    H.import_comfyui()
    return H.import_pack(str(tmp_path_factory.mktemp("help")))


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pulid_locales_tool", os.path.join(REPO, "tools", "locales.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def english(pack, tool):
    return (tool.node_defs(pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS),
            tool.main_json(pack.NODE_CLASS_MAPPINGS))


def read_json(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return json.load(f)


def flat(data, prefix=""):
    """{'a.b.c': leaf} of nested dicts, so a difference is named by its key."""
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def test_the_english_locale_is_what_the_code_says(english, tool):
    for name, generated in zip(("nodeDefs.json", "main.json"), english):
        committed = read_json("locales", "en", name)
        want, got = flat(generated), flat(committed)
        stale = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        assert stale == [], f"locales/en/{name} differs from the code at {stale[:10]}: run tools/locales.py"
        with open(os.path.join(REPO, "locales", "en", name), encoding="utf-8") as f:
            assert f.read() == tool.dumps(generated), f"locales/en/{name} is not formatted as tools/locales.py writes"


def test_every_node_input_output_and_tooltip_is_in_the_english_locale(pack, english):
    defs = english[0]
    assert list(defs) == list(pack.NODE_CLASS_MAPPINGS)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = [*spec.get("required", {}), *spec.get("optional", {})]
        assert list(defs[name]["inputs"]) == inputs, name
        assert all(defs[name]["inputs"][i].get("tooltip") for i in inputs), f"{name}: an input has no tooltip"
        outputs = defs[name].get("outputs", {})
        assert [o["name"] for o in outputs.values()] == list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)
        assert all(o.get("tooltip") for o in outputs.values()), f"{name}: an output has no OUTPUT_TOOLTIPS entry"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_locale_has_every_text(english, tool, lang):
    gaps = tool.missing(*english, tool.read(lang, "nodeDefs.json"), tool.read(lang, "main.json"))
    assert gaps == [], f"locales/{lang} lacks: {', '.join(gaps)}"


def test_a_missing_text_is_named(english, tool):
    defs, main = copy.deepcopy(tool.read("zh", "nodeDefs.json")), copy.deepcopy(tool.read("zh", "main.json"))
    del defs["ApplyPulidFlux"]["inputs"]["weight"]["tooltip"]
    del defs["PulidFluxFaceSimilarity"]["outputs"]["5"]
    defs.pop("PulidFluxBlendIdentities")
    del main["nodeCategories"]["loaders"]
    assert tool.missing(*english, defs, main) == [
        "nodeDefs.ApplyPulidFlux.inputs.weight.tooltip", "nodeDefs.PulidFluxBlendIdentities",
        "nodeDefs.PulidFluxFaceSimilarity.outputs.5.name", "nodeDefs.PulidFluxFaceSimilarity.outputs.5.tooltip",
        "nodeCategories.loaders"]


def test_categories_are_the_four_library_folders(pack, english):
    folders = {cls.CATEGORY for cls in pack.NODE_CLASS_MAPPINGS.values()}
    assert folders <= {"pulid_flux/loaders", "pulid_flux/apply", "pulid_flux/identities", "pulid_flux/faces"}
    assert english[1]["nodeCategories"]["pulid_flux"] == "PuLID-Flux"
    # parts ComfyUI's own locale has too read as there (frontend 1.27 and 1.47: en "loaders", zh "加载器")
    assert english[1]["nodeCategories"]["loaders"] == "loaders"
    assert read_json("locales", "zh", "main.json")["nodeCategories"]["loaders"] == "加载器"


def test_every_node_has_a_description(pack):
    bare = [name for name, cls in pack.NODE_CLASS_MAPPINGS.items() if not getattr(cls, "DESCRIPTION", "").strip()]
    assert bare == [], f"no DESCRIPTION: {bare}"


def page_path(node: str, lang: str) -> str:
    return os.path.join(DOCS, f"{node}.md") if lang == "" else os.path.join(DOCS, node, f"{lang}.md")


def test_every_node_has_its_help_pages(pack):
    missing = [os.path.relpath(page_path(node, lang), REPO) for node in pack.NODE_CLASS_MAPPINGS
               for lang in ("", *PAGE_LANGUAGES) if not os.path.isfile(page_path(node, lang))]
    assert missing == [], f"no help page: {missing}"
    for node in pack.NODE_CLASS_MAPPINGS:
        with open(page_path(node, ""), encoding="utf-8") as a, open(page_path(node, "en"), encoding="utf-8") as b:
            assert a.read() == b.read(), f"web/docs/{node}/en.md is not a copy of {node}.md: run tools/locales.py"


def test_every_page_names_each_input_and_output(pack):
    unnamed = []
    for node, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        names = [*spec.get("required", {}), *spec.get("optional", {}),
                 *(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)]
        for lang in ("", "zh"):
            if not os.path.isfile(page_path(node, lang)):
                continue  # test_every_node_has_its_help_pages names it
            with open(page_path(node, lang), encoding="utf-8") as f:
                text = f.read()
            unnamed += [f"{os.path.relpath(page_path(node, lang), REPO)}: `{n}`" for n in names if f"`{n}`" not in text]
    assert unnamed == [], f"pages that do not explain an input or output: {unnamed}"


def test_the_diagrams_are_what_tools_doc_pictures_draws():
    """Node titles in the diagrams come from the locales: a renamed node needs `python tools/doc_pictures.py`."""
    spec = importlib.util.spec_from_file_location("pulid_doc_pictures", os.path.join(REPO, "tools", "doc_pictures.py"))
    drawing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drawing)
    stale = []
    for node in drawing.DIAGRAMS:
        for lang, suffix in (("en", ""), ("zh", ".zh")):
            path = os.path.join(DOCS, "images", f"graph_{node}{suffix}.svg")
            with open(path, encoding="utf-8") as f:
                if f.read() != drawing.diagram_svg(node, lang):
                    stale.append(os.path.basename(path))
    assert stale == [], f"diagrams out of date (run tools/doc_pictures.py): {stale}"


def pictures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(r"<img[^>]*\ssrc=[\"']([^\"']+)", text)


def test_every_picture_a_page_shows_exists_and_web_stays_small():
    shown, broken = set(), []
    for folder, _, files in os.walk(DOCS):
        for name in files:
            if not name.endswith(".md"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for src in pictures(f.read()):
                    # the panel resolves a relative src against web/docs/, whichever page shows it
                    path = os.path.normpath(os.path.join(DOCS, src))
                    shown.add(path)
                    if src.startswith(("/", "http:", "https:")) or not os.path.isfile(path):
                        broken.append(f"{os.path.relpath(os.path.join(folder, name), REPO)}: {src}")
    assert broken == [] and shown, f"pictures not found under web/docs/: {broken}"
    size = sum(os.path.getsize(os.path.join(folder, f)) for folder, _, files in os.walk(WEB) for f in files)
    assert size < PICTURE_BUDGET, f"web/ holds {size} bytes"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI with the pack in custom_nodes/ and no model files: pages and locales need none."""
    base = str(tmp_path_factory.mktemp("help_server"))
    S.prepare_base_directory(base, str(tmp_path_factory.mktemp("no_models")))
    with S.ComfyServer(H.comfyui_path(), base) as srv:
        yield srv


def fetch(server, path: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        return r.read(), r.headers.get("Content-Type", "")


def test_the_server_serves_the_pages_where_the_help_panel_asks(server, pack):
    """The panel (frontend 1.27 and 1.47) takes the pack's folder from python_module and fetches
    /extensions/<folder>/docs/<Node>/<locale>.md, then /extensions/<folder>/docs/<Node>.md; relative pictures are
    resolved against /extensions/<folder>/docs/. A reply of type text/html counts as missing in 1.47."""
    info = server.get_json("/object_info/ApplyPulidFlux")["ApplyPulidFlux"]
    assert info["python_module"] == f"custom_nodes.{S.PACK_DIR_NAME}"
    assert (info["category"], info["description"]) == ("pulid_flux/apply", pack.nodes.ApplyPulidFlux.DESCRIPTION)
    base = f"/extensions/{S.PACK_DIR_NAME}/docs/"
    for node in pack.NODE_CLASS_MAPPINGS:
        for lang in ("", *PAGE_LANGUAGES):
            body, kind = fetch(server, base + os.path.relpath(page_path(node, lang), DOCS).replace(os.sep, "/"))
            with open(page_path(node, lang), "rb") as f:
                assert body == f.read() and "text/html" not in kind, (node, lang, kind)
    body, kind = fetch(server, base + "images/preview_apply.png")
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and kind == "image/png"
    body, kind = fetch(server, base + "images/graph_ApplyPulidFlux.zh.svg")
    assert body.startswith(b"<svg") and kind.startswith("image/svg+xml")


def test_the_server_hands_the_locales_to_the_frontend(server):
    translations = server.get_json("/i18n")
    for lang in ("en", *LANGUAGES):
        defs, main = read_json("locales", lang, "nodeDefs.json"), read_json("locales", lang, "main.json")
        assert translations[lang]["nodeDefs"]["ApplyPulidFlux"] == defs["ApplyPulidFlux"]
        assert translations[lang]["nodeCategories"]["identities"] == main["nodeCategories"]["identities"]
    assert translations["zh"]["nodeDefs"]["ApplyPulidFlux"]["display_name"] == "应用 PuLID-Flux"
