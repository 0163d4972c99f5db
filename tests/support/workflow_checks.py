"""The example workflow files (UI format, API graphs, batch graphs, the original pack's saved workflows) and the
checks of a UI workflow or an API graph against node definitions in the /object_info format: node types, link
types, widget values in input order (with the extra control_after_generate value after seeds), required inputs.
For test_workflows.py (definitions imported in process) and test_server_e2e.py (a real server's /object_info)."""
import glob
import os

from support import comfy_harness as H

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
