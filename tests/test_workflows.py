"""Every example workflow (UI format), every API graph and the original pack's saved workflows, checked
against the node definitions: node types, link types, widget values in input order (with the extra
control_after_generate value after seeds), required inputs, and the model files they name.

The pack's own nodes are always checked (without ComfyUI they are imported with stand-ins for the few
ComfyUI modules nodes.py imports). ComfyUI's core nodes are checked when COMFYUI_PATH is set; without it,
links between core nodes are still checked for consistent types. The file lists and the checks themselves are in
support/workflow_checks.py (test_server_e2e.py uses them against a real server's /object_info)."""
import asyncio
import copy
import importlib
import importlib.machinery
import json
import os
import sys
import types

import pytest

from support import comfy_harness as H
from support.workflow_checks import (API_FILES, BATCH_FILES, COMPAT_FILES, FRONTEND_ONLY, GGUF_NODES, REPO, UI_FILES,
                                     check_api_graph, check_ui_workflow, is_link, link_tuple, ui_widget_slots)
from pulid_tools.doctor import catalog

CORE_EXTRAS = ("nodes_mask.py", "nodes_flux.py", "nodes_sd3.py", "nodes_custom_sampler.py", "nodes_edit_model.py")
STUBBED_PACK = "pulid_pack_with_stubbed_comfyui"


# The model files each node type needs (an identity graph without Encode needs no EVA-CLIP or BiSeNet); a UNETLoader
# needs the FLUX.1 file it names (dev, Fill or Kontext).
FLUX_FILES = {m.name: m for m in (catalog.FLUX_DEV, *catalog.EDIT_MODELS)}
LOADER_MODELS = {"DualCLIPLoader": (catalog.T5XXL, catalog.CLIP_L),
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
        "pulid_flux_basic.json", "pulid_flux_curation.json", "pulid_flux_face_fix.json", "pulid_flux_face_swap.json",
        "pulid_flux_identities_to_faces.json", "pulid_flux_identity_best_of_n.json",
        "pulid_flux_identity_blend.json", "pulid_flux_identity_card.json",
        "pulid_flux_identity_encode_save.json", "pulid_flux_identity_load_apply.json",
        "pulid_flux_kontext_edit.json", "pulid_flux_multi_reference.json", "pulid_flux_true_cfg.json",
        "pulid_flux_two_people.json"]
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
    needed += [FLUX_FILES[node["widgets_values"][0]].as_workflow_entry() for node in wf["nodes"]
               if node["type"] == "UNETLoader"]
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
