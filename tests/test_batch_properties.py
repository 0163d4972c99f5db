"""Property-based tests (hypothesis, the "ci" profile of conftest.py) of the parsers of `queue` and `batch`:
the manifest reader, the --set parser, the --server parser and the prompts file. For any input only the
documented error comes out (or, for the manifest, none: damaged lines are warnings), and a valid input
round-trips. The examples that found bugs are kept as explicit tests below each property."""
import json
import os
import tempfile

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pulid_tools.comfy_http import graph as graphs
from pulid_tools.comfy_http.api import ServerURLError, parse_server
from pulid_tools.batch.jobs import read_prompts
from pulid_tools.batch.manifest import parse_manifest, record_problem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASIC = os.path.join(REPO, "examples", "api", "pulid_flux_basic.json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
file_names = st.from_regex(r"[a-z0-9_]{1,12}\.png", fullmatch=True)
done_records = st.fixed_dictionaries(
    {"key": st.from_regex(r"[0-9a-f]{32}", fullmatch=True), "status": st.just("done"),
     "files": st.lists(file_names, min_size=1, max_size=3), "prompt": st.text(max_size=30),
     "scores": st.none() | st.lists(st.floats(-1, 1), min_size=1, max_size=3),
     "seed": st.none() | st.integers(0, 2 ** 64 - 1)})


def manifest_line(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


# Lines a crash, a hand edit or a disk error leaves: JSON of any type, bytes, cut records, huge numbers.
damaged_lines = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),  # one line each: the test numbers the lines
    done_records.map(manifest_line).flatmap(lambda b: st.integers(1, len(b) - 1).map(lambda n: b[:n])),
    st.sampled_from([b"1" * 5000, b"1e999", b"-Infinity", b"NaN", b"[" * 5000, b"\xff\xfe",
                     b'{"status": "done", "key": "k", "files": ["../x.png"]}',
                     b'{"status": "done", "key": "k", "files": ["a.png"], "scores": [1e999]}',
                     b'{"status": "done", "key": "k", "files": ["a.png"], "prompt": ["x"]}',
                     # the batch's own files: --keep-best moved manifest.jsonl into rejected/ (exit 0) before
                     b'{"status": "done", "key": "k", "files": ["manifest.jsonl"], "scores": [0.1]}',
                     b'{"status": "done", "key": "k", "files": ["a.png", "Rejected"], "scores": [0.9]}',
                     b'{"status": "done", "key": "k", "files": [".pulid_batch.lock"]}']))


@given(st.lists(st.one_of(done_records.map(lambda r: ("good", r)), damaged_lines.map(lambda b: ("bad", b))),
                max_size=12))
def test_the_manifest_reader_is_total_and_keeps_every_whole_record(lines):
    data = b"\n".join(manifest_line(x) if kind == "good" else x for kind, x in lines)
    done, warnings = parse_manifest(data, "m.jsonl")
    expected = {}
    for kind, x in lines:
        if kind == "good":
            expected[x["key"]] = x
    assert {k: v for k, v in done.items() if k in expected} == expected  # every whole record, the last wins
    for key, record in done.items():
        assert record_problem(record) is None  # whatever else came through is a usable record
    bad_numbers = {n for n, (kind, x) in enumerate(lines, 1) if kind == "bad"}
    for warning in warnings:
        assert int(warning.split(":")[1]) in bad_numbers and "its job runs again" in warning


@pytest.mark.parametrize("line", [b"42", b"null", b"[1]", b'"done"', b"\xff\xfe{}", b"1" * 5000, b"[" * 100000,
                                  b'{"status": "done", "key": 5}', b'{"status": "done", "key": "k", "files": "a.png"}',
                                  b'{"status": "done", "key": "k", "files": ["a.png"], "scores": [NaN]}'])
def test_lines_that_broke_the_reader(line):  # each raised a traceback on every resume before
    whole = manifest_line({"key": "a" * 32, "status": "done", "files": ["a.png"], "scores": None, "prompt": "x"})
    done, warnings = parse_manifest(whole + b"\n" + line + b"\n", "m.jsonl")
    assert list(done) == ["a" * 32] and len(warnings) == 1 and warnings[0].startswith("m.jsonl:2: damaged record")


# --- --set NODE.INPUT=VALUE ------------------------------------------------------------------------------
names = st.text(st.characters(blacklist_characters="=.", blacklist_categories=("Cs",)), min_size=1, max_size=12)


@given(st.text(max_size=60))
@example("3.steps=" + "1" * 5000)
@example("3.steps=" + "[" * 5000)
def test_the_set_parser_is_total(text):
    try:
        node, name, value = graphs.parse_assignment(text)
    except graphs.GraphError as e:
        assert "NODE.INPUT=VALUE" in str(e)
    else:
        assert node and name and "=" not in node + name and "." not in name


@given(names | names.map(lambda n: n + ".x"), names,
       json_values.filter(lambda v: not isinstance(v, str)) | st.text(max_size=20).filter(
           lambda t: not _parses_as_json(t)))
def test_a_valid_assignment_round_trips(node, name, value):
    text = f"{node}.{name}={json.dumps(value) if not isinstance(value, str) else value}"
    assert graphs.parse_assignment(text) == (node, name, value)


def _parses_as_json(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


@given(st.sampled_from(["13", "KSampler", "Image size", "Sampler", "99"]),
       st.sampled_from(["steps", "stepz", "width", "text", "seed"]) | names)
def test_set_input_sets_only_inputs_that_exist(node, name):
    graph = graphs.load_graph(BASIC)
    try:
        targets = graphs.set_input(graph, node, name, 7)
    except graphs.GraphError as e:
        assert "no node" in str(e) or f"has no input '{name}'" in str(e) and "Its inputs:" in str(e)
    else:
        assert targets and all(graph[k]["inputs"][name] == 7 for k in targets)


# --- --server --------------------------------------------------------------------------------------------
hosts = st.one_of(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z]{2,5}){0,2}", fullmatch=True),
                  st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
                  st.just("[::1]"))


@given(st.text(max_size=40))
@example("htp:/x")
@example("http://host:port")
@example("http://[::1")
def test_the_server_parser_is_total(text):
    try:
        url = parse_server(text)
    except ServerURLError as e:
        assert str(e).startswith(f"--server {text!r}: ")
    else:
        assert url.split("://")[0] in ("http", "https") and parse_server(url) == url


@given(st.sampled_from(["", "http://", "https://"]), hosts, st.none() | st.integers(1, 65535),
       st.sampled_from(["", "/", "/comfy", "/a/b/"]))
def test_a_valid_address_round_trips(scheme, host, port, path):
    netloc = host + (f":{port}" if port is not None else "")
    url = parse_server(f"{scheme}{netloc}{path}" if scheme else netloc)
    assert url == f"{scheme or 'http://'}{netloc}{path if scheme else ''}".rstrip("/")


# --- the prompts file (JSONL) ------------------------------------------------------------------------------
@given(st.lists(json_values.map(json.dumps) | st.dictionaries(
    st.sampled_from(["prompt", "negative", "seed", "weight", "face", "set", "KSampler.steps"]), json_values,
    max_size=4).map(json.dumps) | st.sampled_from(['{"seed": ' + "1" * 5000 + "}", "[" * 5000]),
    min_size=1, max_size=5))
def test_the_prompts_reader_is_total(lines):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "p.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        try:
            entries = read_prompts(path)
        except graphs.GraphError as e:
            assert "p.jsonl" in str(e)
        else:
            assert all(isinstance(entry, dict) for _, entry in entries)


@pytest.mark.parametrize("line, message", [('{"seed": "x"}', '"seed" must be a whole number'),
                                           ('{"seed": 1.5}', '"seed" must be a whole number'),
                                           ('{"weight": "high"}', '"weight" must be a number'),
                                           ('{"face": 3}', '"face" must be a photo path'),
                                           ('{"set": ["KSampler.steps", 3]}', '"set" must be an object'),
                                           ('{"prompt": ["a", "b"]}', '"prompt" must be text'),
                                           ('{"seed": ' + "1" * 5000 + "}", "not a JSON object")])
def test_prompt_lines_that_broke_the_batch(tmp_path, line, message):  # tracebacks (or a seed cut to int) before
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(graphs.GraphError, match=f"p.jsonl:1: {message}"):
        read_prompts(str(path))
