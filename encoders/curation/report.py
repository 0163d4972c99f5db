"""The curation report: a JSON-able dict (for identity metadata and `--json`), a text table (for the command line),
and a total reader for a report read back from a file's metadata.

Shape (REPORT_FORMAT, version 1); floats are rounded (4 decimals, pixels 1) and null where a figure cannot exist:
    {"format": "pulid_curation", "version": 1,
     "references": [            # one per reference photo, batch order
        {"index": 0,            # 0-based position in the reference batch
         "face_found": true, "reason": "",     # reason: why no face (the encoder's words)
         "face_count": 1,       # faces detected in the photo
         "bbox": [x1, y1, x2, y2] | null, "kps": [[x, y] x 5] | null,   # the face used, photo pixels
         "det_score": 0.87 | null, "face_px": 142.0 | null, "yaw": -3.1 | null, "pitch": 4.0 | null,
         "sharpness": 0.31 | null,
         "consistency": 0.52 | null,           # ArcFace cosine to the mean of the other photos; null for one photo
         "verdict": "consistent",              # one of selection.VERDICTS
         "problems": ["blurred (sharpness 0.020 < 0.05)", ...],
         "kept": true, "weight": 0.4 | null}], # weight: only in curate mode 'weight'
     "summary": {"mode": "drop", "photos": 3, "faces": 3, "kept": [0, 1],
                 "pairwise_min": 0.12 | null, "pairwise_median": 0.44 | null,  # cosines between photos with a face
                 "consistency_note": "",        # why consistency is null, if it is
                 "thresholds": {"min_consistency": 0.25, "min_face_px": 64.0, "max_yaw": 40.0, "max_pitch": 30.0,
                                "min_sharpness": 0.05}}}"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, fields

from .figures import FigureSet
from .selection import CURATE_MODES, VERDICTS, Curation, Thresholds, problems, verdict

REPORT_FORMAT = "pulid_curation"
REPORT_VERSION = 1
METADATA_KEY = "pulid_curation"  # suggested identity-file header key holding json.dumps(report)
MAX_REPORT_CHARS = 1_000_000  # safetensors headers are small; anything longer is not a report of ours

_FIGURES = ("det_score", "face_px", "yaw", "pitch", "sharpness", "consistency")


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def build_report(figures: FigureSet, curation: Curation, limits: Thresholds = Thresholds()) -> dict:
    """The report for one set of reference photos and the curation applied to it (shape: module docstring)."""
    weights = dict(zip(curation.kept, curation.weights)) if curation.weights is not None else {}
    references = []
    for ref in figures.references:
        entry = {"index": ref.index, "face_found": ref.face_found, "reason": ref.reason,
                 "face_count": ref.face_count,
                 "bbox": None if ref.bbox is None else [round(v, 1) for v in ref.bbox],
                 "kps": None if ref.kps is None else [[round(x, 1), round(y, 1)] for x, y in ref.kps]}
        entry.update({name: _round(getattr(ref, name)) for name in _FIGURES})
        entry.update(verdict=verdict(ref, limits), problems=problems(ref, limits), kept=ref.index in curation.kept,
                     weight=_round(weights.get(ref.index)))
        references.append(entry)
    summary = {"mode": curation.mode, "photos": len(figures.references), "faces": len(figures.found),
               "kept": list(curation.kept), "pairwise_min": _round(figures.pairwise_min),
               "pairwise_median": _round(figures.pairwise_median), "consistency_note": figures.consistency_note,
               "thresholds": {k: float(v) for k, v in asdict(limits).items()}}
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "references": references, "summary": summary}


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def problem_lines(report: dict) -> list[str]:
    """One line per photo with a problem, e.g. 'photo 3: looks like another person (consistency 0.05 < 0.25)';
    what the nodes log with curate warn/drop/weight."""
    return [f"photo {ref['index'] + 1}: " + "; ".join(ref["problems"]) + ("" if ref["kept"] else " (left out)")
            for ref in report["references"] if ref["problems"]]


def render_table(report: dict) -> str:
    """A plain-text table of a (built or parsed) report, one row per photo, then the set's summary. Any report
    parse_report returns renders, whatever mix of null figures it holds."""
    head = ("photo", "face", "det", "size px", "yaw", "pitch", "sharp", "consist.", "verdict", "used")
    rows = []
    for ref in report["references"]:
        used = ("kept" if ref["weight"] is None else f"w {ref['weight']:.2f}") if ref["kept"] else "dropped"
        face = f"{'yes' if ref['face_found'] else 'no'} ({ref['face_count']} found)"
        rows.append((str(ref["index"] + 1), face, _fmt(ref["det_score"], ".2f"), _fmt(ref["face_px"], ".0f"),
                     _fmt(ref["yaw"], "+.0f"), _fmt(ref["pitch"], "+.0f"), _fmt(ref["sharpness"], ".3f"),
                     _fmt(ref["consistency"], ".3f"), ref["verdict"], used))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out += problem_lines(report)
    s = report["summary"]
    if s["pairwise_median"] is None:
        out.append(f"consistency: {s['consistency_note'] or 'not measured'}")
    else:
        out.append(f"pairwise ArcFace cosine between photos: min {_fmt(s['pairwise_min'], '.3f')}, median "
                   f"{s['pairwise_median']:.3f} (real photos of one person: about 0.46; other people: under 0.2)")
    kept = ", ".join(str(i + 1) for i in s["kept"]) or "none"
    out.append(f"curate '{s['mode']}': {len(s['kept'])} of {s['photos']} photos used ({kept})")
    return "\n".join(out)


# --- reading a report back: total, every value checked -----------------------------------------------------------
class _Invalid(Exception):
    pass


def _number(value, where: str, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(f"{where} is not a finite number")
    return value


def _integer(value, where: str):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(f"{where} is not a count or index (an integer >= 0)")
    return value


def _text(value, where: str):
    if not isinstance(value, str):
        raise _Invalid(f"{where} is not text")
    return value


def _points(value, where: str, count: int, size: int):
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        raise _Invalid(f"{where} is not a list of {count}")
    if size == 1:
        return [_number(v, where, optional=False) for v in value]
    return [_points(v, where, size, 1) for v in value]


def _mapping(value, where: str, keys) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} is not an object")
    missing = [k for k in keys if k not in value]
    if missing:
        raise _Invalid(f"{where} lacks {', '.join(missing)}")
    return value


_REFERENCE_KEYS = ("index", "face_found", "reason", "face_count", "bbox", "kps", *_FIGURES, "verdict", "problems",
                   "kept", "weight")
_SUMMARY_KEYS = ("mode", "photos", "faces", "kept", "pairwise_min", "pairwise_median", "consistency_note",
                 "thresholds")
_THRESHOLD_KEYS = tuple(f.name for f in fields(Thresholds))


def _reference(value, where: str) -> dict:
    ref = _mapping(value, where, _REFERENCE_KEYS)
    if not isinstance(ref["face_found"], bool) or not isinstance(ref["kept"], bool):
        raise _Invalid(f"{where}: face_found and kept must be true or false")
    if ref["verdict"] not in VERDICTS:
        raise _Invalid(f"{where}: verdict is not one of {', '.join(VERDICTS)}")
    if not isinstance(ref["problems"], list):
        raise _Invalid(f"{where}: problems is not a list")
    out = {"index": _integer(ref["index"], f"{where}.index"), "face_found": ref["face_found"],
           "reason": _text(ref["reason"], f"{where}.reason"),
           "face_count": _integer(ref["face_count"], f"{where}.face_count"),
           "bbox": _points(ref["bbox"], f"{where}.bbox", 4, 1), "kps": _points(ref["kps"], f"{where}.kps", 5, 2)}
    out.update({name: _number(ref[name], f"{where}.{name}") for name in _FIGURES})
    out.update(verdict=ref["verdict"], problems=[_text(p, f"{where}.problems") for p in ref["problems"]],
               kept=ref["kept"], weight=_number(ref["weight"], f"{where}.weight"))
    return out


def _summary(value, count: int) -> dict:
    s = _mapping(value, "summary", _SUMMARY_KEYS)
    if s["mode"] not in CURATE_MODES:
        raise _Invalid(f"summary.mode is not one of {', '.join(CURATE_MODES)}")
    if not isinstance(s["kept"], list):
        raise _Invalid("summary.kept is not a list")
    kept = [_integer(i, "summary.kept") for i in s["kept"]]
    if any(i >= count for i in kept):
        raise _Invalid("summary.kept names a photo the report does not have")
    limits = _mapping(s["thresholds"], "summary.thresholds", _THRESHOLD_KEYS)
    return {"mode": s["mode"], "photos": _integer(s["photos"], "summary.photos"),
            "faces": _integer(s["faces"], "summary.faces"), "kept": kept,
            "pairwise_min": _number(s["pairwise_min"], "summary.pairwise_min"),
            "pairwise_median": _number(s["pairwise_median"], "summary.pairwise_median"),
            "consistency_note": _text(s["consistency_note"], "summary.consistency_note"),
            "thresholds": {k: _number(limits[k], f"summary.thresholds.{k}", optional=False) for k in _THRESHOLD_KEYS}}


def parse_report(text) -> tuple[dict | None, str]:
    """A report read back from metadata -> (report, "") or (None, why). Total: any input, including None (an old
    file without a report), non-text, broken or hostile JSON, gives one of the two and never raises. The report
    returned has exactly the documented keys (unknown extra keys are left out), every value checked."""
    if text is None or text == "":
        return None, "no curation report"
    if not isinstance(text, str):
        return None, f"the curation report is {type(text).__name__}, not text"
    if len(text) > MAX_REPORT_CHARS:
        return None, f"the curation report is longer than {MAX_REPORT_CHARS} characters"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and over-long integers
        return None, f"the curation report is not valid JSON ({type(error).__name__})"
    try:
        top = _mapping(data, "report", ("format", "version", "references", "summary"))
        if top["format"] != REPORT_FORMAT or type(top["version"]) is not int:
            raise _Invalid(f"it is not a {REPORT_FORMAT} report")
        if top["version"] != REPORT_VERSION:
            raise _Invalid(f"version {top['version']} is not {REPORT_VERSION} (made by another version of the pack)")
        if not isinstance(top["references"], list):
            raise _Invalid("references is not a list")
        references = [_reference(r, f"references[{i}]") for i, r in enumerate(top["references"])]
        summary = _summary(top["summary"], len(references))
    except _Invalid as error:
        return None, f"the curation report is unusable: {error}"
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "references": references, "summary": summary}, ""
