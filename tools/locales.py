"""Write the English locale (locales/en/nodeDefs.json, locales/en/main.json) from the nodes' own texts, so that
tooltips, display names, descriptions and categories exist once, in the code; copy each English help page
web/docs/<Node>.md to web/docs/<Node>/en.md; and list what another locale lacks.

  COMFYUI_PATH=/path/to/ComfyUI python tools/locales.py            # rewrite locales/en/
  COMFYUI_PATH=/path/to/ComfyUI python tools/locales.py --check    # exit 1 if en/ is stale or a locale lacks a text

The nodes are imported through the real ComfyUI (as ComfyUI imports the pack). The frontend's keys
(comfyui-frontend-package 1.27 and 1.47): nodeDefs.<NodeClass>.{display_name, description,
inputs.<input>.{name, tooltip}, outputs.<index>.{name, tooltip}}; main.json's nodeCategories.<part> for each
"/"-separated part of a CATEGORY, dataTypes.<TYPE> for an output shown by its type. Those two tables are shared with
ComfyUI's own locale, so a part ComfyUI has too ("loaders") must read as ComfyUI's own does in that language.
The help panel asks for web/docs/<Node>/<locale>.md first and then web/docs/<Node>.md (the page for every other
language): en.md spares English readers a 404 in the browser console."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.dont_write_bytecode = True  # the ComfyUI checkout may be read-only: no __pycache__ written there
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALES = os.path.join(REPO, "locales")
DOCS = os.path.join(REPO, "web", "docs")
# English titles of category parts that are not plain words; every other part reads as written ("loaders").
CATEGORY_TITLES = {"pulid_flux": "PuLID-Flux"}
# The pack's own data types (ComfyUI's are translated by the frontend itself).
OWN_TYPES = ("PULIDFLUX", "EVA_CLIP", "FACEANALYSIS", "PULIDFLUX_IDENTITY", "PULIDFLUX_FACE_CROP")


def _options(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def node_defs(mappings: dict, display_names: dict) -> dict:
    """nodeDefs.json for the classes in `mappings` (NODE_CLASS_MAPPINGS), in their order and their inputs' order."""
    defs = {}
    for name, cls in mappings.items():
        entry = {"display_name": display_names.get(name, name)}
        if getattr(cls, "DESCRIPTION", ""):
            entry["description"] = cls.DESCRIPTION
        inputs = {}
        for section in ("required", "optional"):  # "hidden" inputs have no socket or widget
            for input_name, spec in cls.INPUT_TYPES().get(section, {}).items():
                tooltip = _options(spec).get("tooltip")
                inputs[input_name] = {"name": input_name, **({"tooltip": tooltip} if tooltip else {})}
        entry["inputs"] = inputs
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None) or ()
        outputs = {}
        for index, output_name in enumerate(names):
            tip = tips[index] if index < len(tips) else None
            outputs[str(index)] = {"name": output_name, **({"tooltip": tip} if tip else {})}
        if outputs:
            entry["outputs"] = outputs
        defs[name] = entry
    return defs


def main_json(mappings: dict) -> dict:
    """main.json: a title for every part of every category, and for the pack's own data types."""
    parts = {}
    for cls in mappings.values():
        for part in cls.CATEGORY.split("/"):
            parts.setdefault(part, CATEGORY_TITLES.get(part, part))
    types = [t for t in OWN_TYPES if any(t in cls.RETURN_TYPES for cls in mappings.values())]
    return {"nodeCategories": parts, "dataTypes": {t: t for t in types}}


def missing(english: dict, english_main: dict, defs: dict, main: dict) -> list[str]:
    """Every text the English locale has and a locale's (defs, main) lacks, as dotted keys."""
    gaps = []
    for node, entry in english.items():
        got = defs.get(node)
        if not isinstance(got, dict):
            gaps.append(f"nodeDefs.{node}")
            continue
        for key in ("display_name", "description"):
            if key in entry and not got.get(key):
                gaps.append(f"nodeDefs.{node}.{key}")
        for kind in ("inputs", "outputs"):
            for slot, texts in entry.get(kind, {}).items():
                have = (got.get(kind) or {}).get(slot) or {}
                gaps += [f"nodeDefs.{node}.{kind}.{slot}.{key}" for key in texts if not have.get(key)]
    for table, wanted in english_main.items():
        gaps += [f"{table}.{key}" for key in wanted if not (main.get(table) or {}).get(key)]
    return gaps


def english_pages() -> dict[str, str]:
    """web/docs/<Node>/en.md (relative to the repository) -> the text of web/docs/<Node>.md it copies."""
    pages = {}
    for name in sorted(os.listdir(DOCS)) if os.path.isdir(DOCS) else []:
        if name.endswith(".md"):
            with open(os.path.join(DOCS, name), encoding="utf-8") as f:
                pages[f"web/docs/{name[:-3]}/en.md"] = f.read()
    return pages


def dumps(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read(lang: str, name: str) -> dict:
    path = os.path.join(LOCALES, lang, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def import_pack():
    """ComfyUI (COMFYUI_PATH) and this pack imported as ComfyUI imports it (tests/support's harness)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from support import comfy_harness

    comfy_harness.import_comfyui()
    return comfy_harness.import_pack(tempfile.mkdtemp(prefix="pulid_locales_"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is stale or missing")
    args = parser.parse_args(argv)
    pack = import_pack()
    english = {"nodeDefs.json": node_defs(pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS),
               "main.json": main_json(pack.NODE_CLASS_MAPPINGS)}
    wanted = {f"locales/en/{name}": dumps(data) for name, data in english.items()} | english_pages()
    problems = []
    for rel, text in wanted.items():
        path = os.path.join(REPO, rel)
        if os.path.isfile(path) and read_text(path) == text:
            continue
        if args.check:
            problems.append(f"{rel} is not what the code and pages say: run tools/locales.py")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            print(f"wrote {rel}")
    for lang in sorted(os.listdir(LOCALES)):
        if lang != "en":
            problems += [f"locales/{lang}: no {key}" for key in missing(
                english["nodeDefs.json"], english["main.json"], read(lang, "nodeDefs.json"), read(lang, "main.json"))]
    print("\n".join(problems) or "every locale has every text")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
