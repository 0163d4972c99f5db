"""Batch jobs: the prompts file (text or JSONL) x seeds, each job's filled graph and its key.

A job's key is a hash of its filled graph, with each reference photo standing for the sha256 of its bytes and
the identity for the sha256 of its identity file (the file itself, or the one a card carries), since the names a
server gives uploads differ between servers and runs. So the same arguments give the same keys, a resumed batch
recognises what is done, and a card and the identity file inside it are the same jobs. (For an identity file the
key is what it always was; a batch begun from a card before this rule runs its jobs once more.)"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from ..comfy_http import graph as graphs
from ..comfy_http.api import content_digest, identity_file_bytes

JOB_FIELDS = ("prompt", "negative", "seed", "weight", "face", "set")


@dataclass
class Job:
    key: str
    number: int           # 1-based, in the order of the prompts file
    prompt_no: int        # 1-based line of the prompts file the job came from
    prompt: str
    seed: int | None
    graph: dict           # filled; images and identity still hold local placeholders
    faces: tuple = ()     # local photo paths for the LoadImage nodes, in node id order
    fields: dict = field(default_factory=dict)
    attempts: int = 0

    def stem(self) -> str:
        seed = f"_s{self.seed}" if self.seed is not None else ""
        return f"p{self.prompt_no:03d}{seed}_{self.key[:10]}"


def read_prompts(path: str) -> list[tuple[int, dict]]:
    """[(line number, fields)]: a text file has one prompt per line (blank lines and lines starting with #
    are skipped); a .jsonl file (or one whose lines all start with '{') has one JSON object per line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1)]
    except OSError as e:
        raise graphs.GraphError(f"cannot read --prompts {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise graphs.GraphError(f"--prompts {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    jsonl = path.endswith(".jsonl") or (lines and all(line.startswith("{") for _, line in lines))
    entries = []
    for n, line in lines:
        if not jsonl:
            entries.append((n, {"prompt": line}))
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as e:  # also a number past int's digit limit, nesting too deep
            raise graphs.GraphError(f"{path}:{n}: not a JSON object ({str(e)[:200]})") from None
        if not isinstance(entry, dict):
            raise graphs.GraphError(f"{path}:{n}: expected a JSON object such as {{\"prompt\": \"...\"}}")
        unknown = [k for k in entry if k not in JOB_FIELDS and "." not in k]
        if unknown:
            raise graphs.GraphError(f"{path}:{n}: unknown field(s) {', '.join(unknown)}; use "
                                    f"{', '.join(JOB_FIELDS)} or NODE.INPUT keys (like --set)")
        problem = field_problem(entry)
        if problem:
            raise graphs.GraphError(f"{path}:{n}: {problem}")
        entries.append((n, entry))
    if not entries:
        raise graphs.GraphError(f"--prompts {path} holds no prompt")
    return entries


MAX_SEED = 2 ** 64 - 1  # ComfyUI's seed inputs


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def field_problem(entry: dict) -> str | None:
    """What is wrong with the types of a JSONL line's fields (None: nothing)."""
    for name in ("prompt", "negative"):
        if entry.get(name) is not None and not isinstance(entry[name], str):
            return f'"{name}" must be text'
    seed = entry.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        return f'"seed" must be a whole number from 0 to {MAX_SEED}'
    if entry.get("weight") is not None and not _is_number(entry["weight"]):
        return '"weight" must be a number'
    face = entry.get("face")
    if face is not None and not (isinstance(face, str) or (isinstance(face, list) and face
                                                           and all(isinstance(p, str) for p in face))):
        return '"face" must be a photo path or a list of them'
    sets = entry.get("set")
    if sets is not None and not (isinstance(sets, dict) and all(
            node and name for node, _, name in (k.rpartition(".") for k in sets))):
        return '"set" must be an object of "NODE.INPUT": value'
    return None


def _faces_of(entry: dict, default: tuple, where: str) -> tuple:
    faces = entry.get("face", default)
    faces = (faces,) if isinstance(faces, str) else tuple(faces)
    missing = [p for p in faces if not os.path.isfile(p)]
    if missing:
        raise graphs.GraphError(f"{where}: image not found: {', '.join(missing)}")
    return faces


def placeholder(path: str, digests: dict) -> str:
    if path not in digests:
        digests[path] = "sha256:" + content_digest(path)
    return digests[path]


def identity_placeholder(path: str, digests: dict) -> str:
    """The identity's stand-in in the key: the sha256 of its identity file's bytes, whether --identity names the
    file or a card carrying it."""
    if path not in digests:
        digests[path] = "sha256:" + hashlib.sha256(identity_file_bytes(path)).hexdigest()
    return digests[path]


def make_jobs(base: dict, prompts_path: str, seeds: int, faces: list[str], identity: str | None,
              assignments: list[str]) -> tuple[list[Job], int]:
    """(jobs, duplicates dropped). Lines without a seed give `seeds` jobs (seeds 0..N-1); a JSONL line
    with "seed" gives one job. Per line, "face" replaces --face for that line's jobs."""
    overrides = [graphs.parse_assignment(a) for a in assignments]
    checked = copy.deepcopy(base)
    for node, name, value in overrides:  # a --set typo is reported once, not against a prompts line
        graphs.set_input(checked, node, name, value)
    digests: dict = {}
    jobs, seen, duplicates = [], set(), 0
    has_seed = bool(graphs_seed_nodes(base))
    for line_no, entry in read_prompts(prompts_path):
        where = f"{prompts_path}:{line_no}"
        job_faces = _faces_of(entry, tuple(faces), where)
        if entry.get("seed") is not None:
            seed_list = [int(entry["seed"])]
        else:
            seed_list = list(range(seeds)) if has_seed else [None]
        for seed in seed_list:
            graph = copy.deepcopy(base)
            try:
                fill_job(graph, entry, seed, overrides)
                if job_faces:
                    graphs.set_images(graph, [placeholder(p, digests) for p in job_faces])
                if identity:
                    graphs.set_identity(graph, identity_placeholder(identity, digests))
            except graphs.GraphError as e:
                raise graphs.GraphError(f"{where}: {e}") from e
            key = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()[:32]
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            fields = {k: v for k, v in entry.items() if k not in ("prompt", "seed")}
            jobs.append(Job(key, len(jobs) + 1, line_no, str(entry.get("prompt", "")), seed, graph, job_faces,
                            fields))
    return jobs, duplicates


def graphs_seed_nodes(graph: dict) -> list[str]:
    return [k for k, node in graph.items() for name in graphs.SEED_INPUTS
            if name in node["inputs"] and not graphs.is_link(node["inputs"][name])]


def fill_job(graph: dict, entry: dict, seed, overrides: list) -> None:
    if entry.get("prompt") is not None:
        graphs.set_prompt(graph, str(entry["prompt"]))
    if entry.get("negative") is not None:
        graphs.set_prompt(graph, str(entry["negative"]), negative=True)
    if seed is not None:
        graphs.set_seed(graph, seed)
    if entry.get("weight") is not None:
        graphs.set_weight(graph, float(entry["weight"]))
    for node, name, value in overrides:
        graphs.set_input(graph, node, name, value)
    sets = dict(entry.get("set") or {})
    sets.update({k: v for k, v in entry.items() if "." in k})
    for target, value in sets.items():
        node, _, name = target.rpartition(".")
        if not node or not name:
            raise graphs.GraphError(f"set {target!r}: expected NODE.INPUT")
        graphs.set_input(graph, node, name, value)


def server_graph(job: Job, image_names: dict, identity_name: str | None,
                 identity_fingerprint: str | None = None) -> dict:
    """The job's graph for one server: the placeholders replaced by that server's upload names (and the identity's
    fingerprint, so the server checks its file holds that identity)."""
    graph = copy.deepcopy(job.graph)
    if job.faces:
        graphs.set_images(graph, [image_names[p] for p in job.faces])
    if identity_name is not None:
        graphs.set_identity(graph, identity_name, identity_fingerprint)
    return graph
