"""Every example workflow (UI format), every API graph and the original pack's saved workflows, checked
against the node definitions: node types, link types, widget values in input order (with the extra
control_after_generate value after seeds), required inputs, and the model files they name.

The pack's own nodes are always checked (without ComfyUI they are imported with stand-ins for the few
ComfyUI modules nodes.py imports). ComfyUI's core nodes are checked when COMFYUI_PATH is set; without it,
links between core nodes are still checked for consistent types."""
import asyncio
import copy
import glob
import importlib
import importlib.machinery
import json
import os
import sys
import types

import pytest

from support import comfy_harness as H
from pulid_tools.doctor import catalog

REPO = H.REPO_ROOT
UI_FILES = sorted(glob.glob(os.path.join(REPO, "example_workflows", "*.json")))
API_FILES = sorted(glob.glob(os.path.join(REPO, "examples", "api", "*.json")))
BATCH_FILES = sorted(glob.glob(os.path.join(REPO, "examples", "batch", "*.json")))


def _compat_files() -> list[str]:
    """The original pack's saved workflows: in shared/ beside this checkout (CI), else beside the ComfyUI checkout."""
    dirs = [os.path.join(os.path.dirname(REPO), "shared", "compat")]
    if H.comfyui_path():
        dirs.append(os.path.join(os.path.dirname(H.comfyui_path()), "compat"))
    return next((files for files in (sorted(glob.glob(os.path.join(d, "*.json"))) for d in dirs) if files), [])


COMPAT_FILES = _compat_files()
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
GGUF_NODES = {"UnetLoaderGGUF", "DualCLIPLoaderGGUF"}  # city96/ComfyUI-GGUF, used by one of balazik's workflows
FILE_INPUTS = {"unet_name", "clip_name1", "clip_name2", "vae_name", "pulid_file", "eva_file", "image", "identity_file"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CORE_EXTRAS = ("nodes_mask.py", "nodes_flux.py", "nodes_sd3.py", "nodes_custom_sampler.py")
STUBBED_PACK = "pulid_pack_with_stubbed_comfyui"


# The model files each node type needs (an identity graph without Encode needs no EVA-CLIP or BiSeNet).
LOADER_MODELS = {"UNETLoader": (catalog.FLUX_DEV,), "DualCLIPLoader": (catalog.T5XXL, catalog.CLIP_L),
                 "VAELoader": (catalog.FLUX_VAE,), "PulidFluxModelLoader": (catalog.PULID,),
                 "PulidFluxEvaClipLoader": (catalog.EVA_CLIP,),
                 "PulidFluxInsightFaceLoader": (catalog.DETECTOR, catalog.RECOGNIZER),
                 "ApplyPulidFlux": (catalog.PARSER,), "PulidFluxEncodeIdentity": (catalog.PARSER,)}


def names(paths):
    return [os.path.basename(p) for p in paths]


# --- node definitions (the /object_info format) ------------------------------------------------------
def node_info(cls) -> dict:
    if hasattr(cls, "GET_NODE_INFO_V1"):  # ComfyUI's v3 node schema
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()}, "output": list(cls.RETURN_TYPES)}


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__dict__.update(attrs)
    return module


def pack_definitions_without_comfyui(tmp_root) -> dict:
    """Import the pack with stand-ins for the ComfyUI modules nodes.py and comfy_layer/ import, read the
    definitions, then remove every trace (stubs and the pack's modules) from sys.modules."""
    folder_paths = _module("folder_paths", models_dir=os.path.join(str(tmp_root), "models"),
                           folder_names_and_paths={}, get_filename_list=lambda name: [],
                           get_folder_paths=lambda name: [], get_full_path=lambda *a: None,
                           get_input_directory=lambda: str(tmp_root))
    comfy = _module("comfy")
    stubs = {
        "comfy": comfy,
        "comfy.model_base": _module("comfy.model_base", Flux=type("Flux", (), {})),
        "comfy.patcher_extension": _module("comfy.patcher_extension", WrappersMP=types.SimpleNamespace(
            OUTER_SAMPLE="outer_sample", DIFFUSION_MODEL="diffusion_model")),
        "comfy.model_management": _module("comfy.model_management"),
        "comfy.model_patcher": _module("comfy.model_patcher", ModelPatcher=object),
        "comfy.utils": _module("comfy.utils", ProgressBar=object),
        "folder_paths": folder_paths,
    }
    for name, module in stubs.items():
        if name.startswith("comfy."):
            setattr(comfy, name.split(".", 1)[1], module)
    saved = {name: sys.modules.get(name) for name in stubs}
    link = os.path.join(str(tmp_root), STUBBED_PACK)
    if not os.path.exists(link):
        os.symlink(REPO, link)
    sys.path.append(str(tmp_root))
    try:
        sys.modules.update(stubs)
        pack = importlib.import_module(STUBBED_PACK)
        return {name: node_info(cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
    finally:
        sys.path.remove(str(tmp_root))
        for name in [n for n in sys.modules if n == STUBBED_PACK or n.startswith(STUBBED_PACK + ".")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def definitions_from_comfyui(tmp_root) -> dict:
    H.import_comfyui()
    import nodes

    extras = os.path.join(H.comfyui_path(), "comfy_extras")
    for file_name in CORE_EXTRAS:  # just the comfy_extras modules the workflows use: fast, no server imports
        assert asyncio.run(nodes.load_custom_node(os.path.join(extras, file_name), module_parent="comfy_extras"))
    pack = H.import_pack(str(tmp_root))
    mapping = dict(nodes.NODE_CLASS_MAPPINGS, **pack.NODE_CLASS_MAPPINGS)
    return {name: node_info(cls) for name, cls in mapping.items()}


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    """(definitions, whether ComfyUI's core nodes are included)."""
    root = tmp_path_factory.mktemp("pack")
    if H.comfyui_path():
        return definitions_from_comfyui(root), True
    return pack_definitions_without_comfyui(root), False


# --- the checks -----------------------------------------------------------------------------------------
def kind(spec):
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(t, list):
        return "COMBO", dict(opts, options=t)
    return t, opts


def ordered_inputs(info):
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(n, s, info["input"][s][n]) for s in ("required", "optional") for n in order.get(s, [])]


def spec_of(info, name):
    return next((spec for n, _, spec in ordered_inputs(info) if n == name), None)


def is_widget(spec) -> bool:
    t, opts = kind(spec)
    return t in WIDGET_TYPES and not opts.get("forceInput")


def ui_widget_slots(info):
    """(name, section, spec) per widgets_values position; spec None for the frontend's extra values."""
    slots = []
    for name, section, spec in ordered_inputs(info):
        if not is_widget(spec):
            continue
        slots.append((name, section, spec))
        t, opts = kind(spec)
        if (t == "INT" and name in ("seed", "noise_seed")) or opts.get("control_after_generate"):
            slots.append(("control_after_generate", section, None))
        if opts.get("image_upload"):
            slots.append(("upload", section, None))
    return slots


def value_problem(name, spec, value):
    t, opts = kind(spec)
    ok = {"INT": isinstance(value, int) and not isinstance(value, bool),
          "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
          "BOOLEAN": isinstance(value, bool), "STRING": isinstance(value, str),
          "COMBO": isinstance(value, str) and (name in FILE_INPUTS or value in opts.get("options", []))}.get(t, True)
    if not ok:
        return f"{name}={value!r} is not a valid {t}" + (f" {opts['options']}" if t == "COMBO" else "")
    if t in ("INT", "FLOAT") and not opts.get("min", value) <= value <= opts.get("max", value):
        return f"{name}={value!r} outside {opts.get('min')}..{opts.get('max')}"
    return None


def link_tuple(link):
    if isinstance(link, dict):  # newer frontends may write links as objects
        return (link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                link["type"])
    return tuple(link)


def check_ui_workflow(wf, defs, core_known, allow_unknown=()):
    problems = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, link_type in map(link_tuple, wf["links"]):
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: node {src} or {dst} does not exist")
            continue
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        if {out["type"], inp["type"]} - {link_type, "*"}:
            problems.append(f"link {link_id}: {out['type']} -> {inp['type']} carries {link_type}")
        if inp.get("link") != link_id or link_id not in (out.get("links") or []):
            problems.append(f"link {link_id}: not recorded on both nodes")
    for node in wf["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        info = defs.get(node["type"])
        if info is None:
            if core_known and node["type"] not in allow_unknown:
                problems.append(f"{where}: unknown node type")
            continue
        for inp in node.get("inputs", []):
            spec = spec_of(info, inp["name"])
            if spec is None:
                problems.append(f"{where}: no input named {inp['name']}")
            elif inp["type"] != kind(spec)[0] and not (inp.get("widget") and kind(spec)[0] == "COMBO"):
                problems.append(f"{where}: input {inp['name']} is {inp['type']}, defined as {kind(spec)[0]}")
        connected = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, section, spec in ordered_inputs(info):
            if section == "required" and not is_widget(spec) and name not in connected and node.get("mode", 0) == 0:
                problems.append(f"{where}: required input {name} is not connected")
        for slot, out in enumerate(node.get("outputs", [])):
            if slot >= len(info["output"]) or out["type"] != info["output"][slot]:
                problems.append(f"{where}: output {slot} is {out['type']}, defined as {info['output'][slot:slot + 1]}")
        slots = ui_widget_slots(info)
        values = node.get("widgets_values") or []
        if len(values) > len(slots):
            problems.append(f"{where}: {len(values)} widget values for {len(slots)} widgets {[s[0] for s in slots]}")
        for (name, _, spec), value in zip(slots, values):
            if spec is None:
                if name == "control_after_generate" and value not in CONTROL_VALUES:
                    problems.append(f"{where}: expected a control_after_generate value after the seed, got {value!r}")
            elif value_problem(name, spec, value):
                problems.append(f"{where}: {value_problem(name, spec, value)}")
        for name, section, spec in slots[len(values):]:
            if section == "required" and spec is not None:  # later (optional) widgets may be missing: defaults
                problems.append(f"{where}: no value for the required widget {name}")
    return problems


def is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def check_api_graph(graph, defs, core_known):
    problems = []
    for node_id, node in graph.items():
        where = f"node {node_id} ({node['class_type']})"
        info = defs.get(node["class_type"])
        if info is None:
            if core_known or node["class_type"] in FRONTEND_ONLY:
                problems.append(f"{where}: unknown node type")
            continue
        for name, value in node["inputs"].items():
            spec = spec_of(info, name)
            if spec is None:
                problems.append(f"{where}: no input named {name}")
            elif is_link(value):
                src = graph.get(value[0])
                src_info = defs.get(src["class_type"]) if src else None
                if src is None:
                    problems.append(f"{where}: {name} links to missing node {value[0]}")
                elif src_info is not None and (value[1] >= len(src_info["output"])
                                               or src_info["output"][value[1]] not in (kind(spec)[0], "*")):
                    problems.append(f"{where}: {name} ({kind(spec)[0]}) linked to output {value[1]} of "
                                    f"{src['class_type']} {src_info['output'][value[1]:value[1] + 1]}")
            elif not is_widget(spec):
                problems.append(f"{where}: {name} must be linked, got {value!r}")
            elif value_problem(name, spec, value):
                problems.append(f"{where}: {value_problem(name, spec, value)}")
        for name, section, _ in ordered_inputs(info):
            if section == "required" and name not in node["inputs"]:
                problems.append(f"{where}: required input {name} missing")
    if not any(n["class_type"] in ("SaveImage", "PreviewImage") for n in graph.values()):
        problems.append("no output node (SaveImage/PreviewImage)")
    return problems


def ui_to_api(wf, defs):
    """The API graph ComfyUI's frontend would export (widgets only where the definitions are known)."""
    links = {link_tuple(link)[0]: link_tuple(link) for link in wf["links"]}
    graph = {}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        inputs = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                  for i in node.get("inputs", []) if i.get("link") is not None}
        info = defs.get(node["type"])
        if info is not None:
            for (name, _, spec), value in zip(ui_widget_slots(info), node.get("widgets_values") or []):
                if spec is not None and name not in inputs:
                    inputs[name] = value
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


# --- tests --------------------------------------------------------------------------------------------
def test_the_examples_exist_in_both_formats():
    assert names(UI_FILES) == names(API_FILES) == [
        "pulid_flux_basic.json", "pulid_flux_curation.json", "pulid_flux_identity_best_of_n.json",
        "pulid_flux_identity_blend.json", "pulid_flux_identity_card.json",
        "pulid_flux_identity_encode_save.json", "pulid_flux_identity_load_apply.json",
        "pulid_flux_multi_reference.json", "pulid_flux_true_cfg.json", "pulid_flux_two_people.json"]
    assert names(BATCH_FILES) == ["pulid_flux_batch.json", "pulid_flux_identity.json"]


@pytest.mark.parametrize("path", UI_FILES + COMPAT_FILES, ids=names(UI_FILES + COMPAT_FILES))
def test_ui_workflow_matches_the_node_definitions(path, defs):
    definitions, core_known = defs
    with open(path, encoding="utf-8") as f:
        wf = json.load(f)
    assert check_ui_workflow(wf, definitions, core_known, allow_unknown=GGUF_NODES) == []
    assert any(n["type"] in ("ApplyPulidFlux", "PulidFluxEncodeIdentity", "PulidFluxApplyIdentity") for n in wf["nodes"])


def test_balazik_workflows_are_present_and_keep_their_apply_values(defs):
    if not COMPAT_FILES:
        pytest.skip("../shared/compat (the original pack's saved workflows) is not next to this checkout")
    slots = [s[0] for s in ui_widget_slots(defs[0]["ApplyPulidFlux"])]
    assert slots[:3] == ["weight", "start_at", "end_at"]
    for path in COMPAT_FILES:
        with open(path, encoding="utf-8") as f:
            apply = next(n for n in json.load(f)["nodes"] if n["type"] == "ApplyPulidFlux")
        assert dict(zip(slots, apply["widgets_values"])) == {"weight": 1, "start_at": 0, "end_at": 1}


@pytest.mark.parametrize("path", API_FILES + BATCH_FILES, ids=names(API_FILES + BATCH_FILES))
def test_api_graph_matches_the_node_definitions(path, defs):
    with open(path, encoding="utf-8") as f:
        graph = json.load(f)
    assert check_api_graph(graph, *defs) == []


@pytest.mark.parametrize("name", names(API_FILES))
def test_api_graph_is_the_same_graph_as_the_ui_workflow(name, defs):
    definitions, _ = defs
    with open(os.path.join(REPO, "example_workflows", name), encoding="utf-8") as f:
        converted = ui_to_api(json.load(f), definitions)
    with open(os.path.join(REPO, "examples", "api", name), encoding="utf-8") as f:
        api = json.load(f)
    assert sorted(converted) == sorted(api)
    for node_id, node in converted.items():
        assert node["class_type"] == api[node_id]["class_type"], node_id
        expected = api[node_id]["inputs"]
        if node["class_type"] not in definitions:  # core node without ComfyUI: only its links are known
            expected = {k: v for k, v in expected.items() if is_link(v)}
        assert node["inputs"] == expected, node_id


@pytest.mark.parametrize("path", UI_FILES, ids=names(UI_FILES))
def test_workflow_names_every_model_file_for_the_missing_model_dialog(path):
    with open(path, encoding="utf-8") as f:
        wf = json.load(f)
    entries = []
    for node in wf["nodes"]:
        for entry in (node.get("properties") or {}).get("models", []):
            assert set(entry) == {"name", "url", "directory"} and entry["url"].startswith("https://"), entry
            entries.append(entry)
            if node["type"] in ("UNETLoader", "DualCLIPLoader", "VAELoader", "PulidFluxModelLoader"):
                assert entry["name"] in node["widgets_values"], (node["type"], entry["name"])
    expected = [m.as_workflow_entry() for m in catalog.ALL_MODELS]
    assert all(e in expected for e in entries)
    needed = [m.as_workflow_entry() for node in wf["nodes"] for m in LOADER_MODELS.get(node["type"], ())]
    assert needed and all(e in entries for e in needed)  # every file the graph's loaders need is named


def test_readme_lists_every_model_file_and_the_commands():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for model in catalog.ALL_MODELS:
        assert model.url in text and f"`{model.name.rsplit('/', 1)[-1]}`" in text, model.name
    for folder in ("`pulid/`", "`clip/`", "`insightface/models/antelopev2/`", "`facexlib/`", "`diffusion_models/`"):
        assert folder in text
    for command in ("python -m pulid_tools queue examples/api/", "python -m pulid_tools doctor --comfyui",
                    "python -m pip install -r requirements.txt", "python -m pytest -q"):
        assert command in text


def test_the_checks_catch_broken_workflows(defs):
    definitions, core_known = defs
    with open(os.path.join(REPO, "example_workflows", "pulid_flux_basic.json"), encoding="utf-8") as f:
        good = json.load(f)
    apply = next(n for n in good["nodes"] if n["type"] == "ApplyPulidFlux")

    def problems_after(change):
        wf = copy.deepcopy(good)
        change(wf, next(n for n in wf["nodes"] if n["id"] == apply["id"]))
        return check_ui_workflow(wf, definitions, False)

    assert problems_after(lambda wf, n: n["widgets_values"].insert(0, 0.5))  # shifted values
    assert problems_after(lambda wf, n: n["widgets_values"].__setitem__(0, 9.0))  # weight above max 5
    assert problems_after(lambda wf, n: n["widgets_values"].__setitem__(3, "average"))  # not a fusion mode
    assert problems_after(lambda wf, n: n["widgets_values"].__delitem__(slice(1, None)))  # end_at missing
    assert problems_after(lambda wf, n: n["inputs"][1].__setitem__("type", "MODEL"))  # pulid_flux typed MODEL
    assert problems_after(lambda wf, n: n["inputs"][0].__setitem__("link", None))  # model unconnected
    sampler = next(n for n in good["nodes"] if n["type"] == "KSampler")
    sampler_values = list(sampler["widgets_values"])
    sampler["widgets_values"] = [sampler_values[0]] + sampler_values[2:]  # the seed's control value dropped
    assert bool(check_ui_workflow(good, definitions, core_known)) == core_known
    sampler["widgets_values"] = sampler_values
    if not core_known:
        assert "comfy" not in sys.modules and "folder_paths" not in sys.modules  # the stand-ins are gone
    with open(os.path.join(REPO, "examples", "api", "pulid_flux_basic.json"), encoding="utf-8") as f:
        api = json.load(f)
    node_id = next(k for k, v in api.items() if v["class_type"] == "ApplyPulidFlux")
    broken = copy.deepcopy(api)
    broken[node_id]["inputs"]["pulid_flux"] = ["5", 0]  # the EVA loader's output
    del broken[node_id]["inputs"]["end_at"]
    assert len(check_api_graph(broken, definitions, False)) == 2
