"""API-format graphs (ComfyUI's "Export (API)"): load them and fill in the prompt, seed, weight, reference
images and any other input, so one saved graph serves many runs.

Rules, so a graph says where things go without extra files:
- prompt / negative: the `text` input of nodes whose title contains "positive" / "negative" (the examples'
  "Positive prompt", "Negative prompt"); a graph without such titles takes the prompt into its only node
  with a `text` input.
- seed: every literal `seed` and `noise_seed` input.
- weight: the `weight` input of every ApplyPulidFlux / PulidFluxApplyIdentity node.
- images: LoadImage nodes in ascending node id order, one uploaded file each.
- identity: the `identity_file` input of every PulidFluxLoadIdentity node (the name the upload route gave) and its
  `fingerprint` input (the uploaded identity's, as the route reports it).
- `--set NODE.INPUT=VALUE`: any input the node has (a name it lacks is an error listing its inputs); NODE is a
  node id, a title or a class name (all of its kind); VALUE is JSON when it parses (28, 3.5, true), else text."""
from __future__ import annotations

import difflib
import json

PULID_APPLY = "ApplyPulidFlux"
LOAD_IDENTITY = "PulidFluxLoadIdentity"
WEIGHTED = (PULID_APPLY, "PulidFluxApplyIdentity")
SEED_INPUTS = ("seed", "noise_seed")


class GraphError(ValueError):
    """The graph or an override does not fit; the message says what to change."""


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def title(node: dict) -> str:
    return str((node.get("_meta") or {}).get("title") or node.get("class_type", ""))


def load_graph(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            graph = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # also not UTF-8, a number past int's digit limit
        raise GraphError(f"cannot read {path}: {str(e)[:300]}") from None
    return check_api_format(graph, path)


def check_api_format(graph, where: str = "graph") -> dict:
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise GraphError(f"{where} is a UI workflow (what ComfyUI saves and the template browser loads), not an "
                         "API graph. Load it in ComfyUI and use Workflow > Export (API), or use the matching file "
                         "in examples/api/.")
    if isinstance(graph, dict) and isinstance(graph.get("prompt"), dict):
        graph = graph["prompt"]  # a saved /prompt request body
    if not isinstance(graph, dict) or not graph or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict) for n in graph.values()):
        raise GraphError(f"{where} is not an API graph: expected {{node id: {{class_type, inputs}}}}")
    return graph


def _by_id_order(graph: dict) -> list[str]:
    return sorted(graph, key=lambda k: (0, int(k)) if k.isdigit() else (1, k))


def text_nodes(graph: dict, word: str) -> list[str]:
    return [k for k in _by_id_order(graph) if "text" in graph[k]["inputs"]
            and not is_link(graph[k]["inputs"]["text"]) and word in title(graph[k]).lower()]


def set_prompt(graph: dict, text: str, negative: bool = False) -> list[str]:
    word = "negative" if negative else "positive"
    targets = text_nodes(graph, word)
    if not targets and not negative:
        candidates = [k for k in graph if isinstance(graph[k]["inputs"].get("text"), str)]
        if len(candidates) == 1:
            targets = candidates
    if not targets:
        raise GraphError(f"no node for the {word} prompt: give the text node a title containing '{word}' "
                         f"(e.g. '{word.capitalize()} prompt') or use --set NODE.text=...")
    for k in targets:
        graph[k]["inputs"]["text"] = text
    return targets


def set_seed(graph: dict, seed: int) -> list[str]:
    targets = []
    for k in _by_id_order(graph):
        for name in SEED_INPUTS:
            if name in graph[k]["inputs"] and not is_link(graph[k]["inputs"][name]):
                graph[k]["inputs"][name] = int(seed)
                targets.append(k)
    if not targets:
        raise GraphError("no literal seed or noise_seed input in this graph")
    return targets


def set_weight(graph: dict, weight: float) -> list[str]:
    targets = [k for k in _by_id_order(graph) if graph[k]["class_type"] in WEIGHTED]
    if not targets:
        raise GraphError(f"no {' or '.join(WEIGHTED)} node in this graph")
    for k in targets:
        graph[k]["inputs"]["weight"] = float(weight)
    return targets


def image_nodes(graph: dict) -> list[str]:
    return [k for k in _by_id_order(graph) if graph[k]["class_type"] == "LoadImage"]


def set_images(graph: dict, names: list[str]) -> list[str]:
    """Put uploaded image names (as /upload/image returned them) into the LoadImage nodes, in id order."""
    slots = image_nodes(graph)
    if len(names) > len(slots):
        raise GraphError(f"{len(names)} images given, but the graph has {len(slots)} LoadImage node(s) "
                         f"({', '.join(slots) or 'none'})")
    for k, name in zip(slots, names):
        graph[k]["inputs"]["image"] = name
    return slots[:len(names)]


def set_identity(graph: dict, name: str, fingerprint: str | None = None) -> list[str]:
    """Name the identity in every Load identity node and, when known, its fingerprint (the server then refuses a
    file of that name that holds another identity)."""
    targets = [k for k in _by_id_order(graph) if graph[k]["class_type"] == LOAD_IDENTITY]
    if not targets:
        raise GraphError(f"--identity needs a {LOAD_IDENTITY} node (Load identity) in the graph; use a graph "
                         "such as examples/batch/pulid_flux_identity.json, or give --face photos instead")
    for k in targets:
        graph[k]["inputs"]["identity_file"] = name
        if fingerprint:
            graph[k]["inputs"]["fingerprint"] = fingerprint
    return targets


def parse_assignment(text: str) -> tuple[str, str, object]:
    """'NODE.INPUT=VALUE' -> (node, input, value); VALUE is JSON when it parses (numbers, true, lists), else text."""
    target, sep, raw = text.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise GraphError(f"--set {text!r}: expected NODE.INPUT=VALUE, e.g. --set 3.steps=28 or "
                         "--set KSampler.cfg=3.5")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, a number past int's digit limit, nesting past the stack
        value = raw
    return node, name, value


def set_input(graph: dict, node: str, name: str, value) -> list[str]:
    """Set an input that the node has (a typo is an error listing the nodes or the node's inputs)."""
    if node in graph:
        targets = [node]
    else:
        targets = [k for k in _by_id_order(graph) if title(graph[k]) == node] or \
                  [k for k in _by_id_order(graph) if graph[k]["class_type"] == node]
    if not targets:
        known = ", ".join(f"{k} ({title(graph[k])})" for k in _by_id_order(graph))
        raise GraphError(f"--set: no node '{node}' (by id, title or class). Nodes: {known}")
    for k in targets:
        inputs = graph[k]["inputs"]
        if name not in inputs:
            close = difflib.get_close_matches(name, list(inputs), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise GraphError(f"--set {node}.{name}: {describe(graph, k)} has no input '{name}'{hint}. "
                             f"Its inputs: {', '.join(inputs) or 'none'}")
    for k in targets:
        graph[k]["inputs"][name] = value
    return targets


def describe(graph: dict, node_id) -> str:
    node = graph.get(str(node_id)) if node_id is not None else None
    if node is None:
        return f"node {node_id}"
    name = title(node)
    if name == node["class_type"]:
        return f"{name} (node {node_id})"
    return f"{name} [{node['class_type']}] (node {node_id})"
