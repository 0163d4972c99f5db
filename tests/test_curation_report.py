"""Likeness versus copying, best-of-N ranking, the JSON report, its total reader, the text table and the preview."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import curation_fixtures as fx
from encoders.curation.copying import (POSE_TOLERANCE, TYPICAL_SAME_PERSON_COSINE, describe, landmark_distance,
                                       likeness_and_copy, rank_best_of_n, rank_scores)
from encoders.curation.figures import ARCFACE_DIM, measure_references
from encoders.curation.preview import DROPPED_RGB, annotate_previews, annotate_reference
from encoders.curation.report import REPORT_FORMAT, build_report, parse_report, render_table
from encoders.curation.selection import CONSISTENT, OTHER_PERSON, VERDICTS, Thresholds, curate

COSINE_TOL = ARCFACE_DIM * np.finfo(np.float64).eps


def references(count: int = 4, similarity: float = 0.68):
    """`count` photos of person 0 (pairwise cosine about similarity**2) with landmarks of different turns."""
    me = fx.person(0)
    arcface = np.stack([fx.photo_of(me, similarity, seed=s) for s in range(count)])
    kps = np.stack([fx.projected(yaw, 0, scale=0.5, shift=(200, 150)) for yaw in (-25, 0, 25, 10)[:count]])
    return me, arcface, kps


# --- likeness and copy -------------------------------------------------------------------------------------------
def test_copy_score_is_highest_for_the_reference_itself():
    me, arcface, kps = references()
    candidates = [(arcface[2], kps[2])]  # the reference photo itself
    candidates += [(fx.photo_of(me, 0.68, seed=s), fx.projected(-10, 5, scale=0.8, shift=(400, 300)))
                   for s in (20, 21, 22)]  # new photos of the person
    candidates += [(0.5 * arcface[2] + 0.5 * fx.photo_of(me, 0.68, seed=30), kps[2])]  # half a copy, same pose
    scores = [likeness_and_copy(a, arcface, k, kps) for a, k in candidates]
    assert scores[0].copy == pytest.approx(1.0, abs=1e-6) and scores[0].closest == 2
    assert scores[0].copy == max(s.copy for s in scores)
    assert all(s.copy < 0.2 for s in scores[1:4])  # other photos of the person are not copies
    assert 0.3 < scores[4].copy < 0.95


def test_two_copies_of_one_photo_raise_no_copy_alarm_against_different_photos():
    me = fx.person(0)
    photo = fx.photo_of(me, 0.68, seed=1)
    figs = measure_references([fx.face_result(photo), fx.face_result(photo)])
    assert all(r.consistency == pytest.approx(1.0, abs=COSINE_TOL) for r in figs.references)
    refs, kps = np.stack([photo, photo]), np.stack([fx.projected(0, 0)] * 2)
    for seed in (5, 6, 7):
        result = likeness_and_copy(fx.photo_of(me, 0.68, seed=seed), refs, fx.projected(15, 0), kps)
        assert result.copy == 0.0 and result.identity_copy == 0.0 and 0.2 < result.likeness < 0.8


def test_one_reference_uses_the_typical_baseline_and_the_pose_part_still_works():
    me = fx.person(0)
    ref = fx.photo_of(me, 0.68, seed=1)
    close = 0.95 * ref + np.sqrt(1 - 0.95 ** 2) * fx.photo_of(fx.person(7), 1.0, seed=0)
    frontal, turned = fx.projected(0, 0), fx.projected(30, 0)
    same_pose = likeness_and_copy(close, ref[None], frontal, frontal[None])
    other_pose = likeness_and_copy(close, ref[None], turned, frontal[None])
    assert same_pose.baseline == TYPICAL_SAME_PERSON_COSINE
    assert same_pose.pose_closeness == pytest.approx(1.0) and other_pose.pose_closeness == 0.0
    assert same_pose.copy > 0.8 and other_pose.copy == 0.0
    without_landmarks = likeness_and_copy(close, ref[None])
    assert without_landmarks.pose_closeness is None and without_landmarks.copy == without_landmarks.identity_copy


def test_copy_figures_read_as_one_line_and_bad_shapes_are_named():
    me, arcface, kps = references()
    line = describe(likeness_and_copy(arcface[2], arcface, kps[2], kps))
    assert line.startswith("likeness 0.") and "copy 1.00 (closest reference 3: cosine 1.000" in line
    assert line.endswith("; pose 1.00)")
    for face, refs in ((arcface[0][:100], arcface), (arcface[0], np.zeros((0, 512))), (arcface[0], arcface[:, :5])):
        with pytest.raises(ValueError, match="512-value ArcFace embedding"):
            likeness_and_copy(face, refs)


def test_likeness_is_cosine_to_the_mean_identity():
    me, arcface, _ = references()
    face = fx.photo_of(me, 0.7, seed=40)
    mean = arcface.mean(axis=0)
    expected = face @ mean / np.linalg.norm(mean)
    assert likeness_and_copy(face * 17.0, arcface * 3.0).likeness == pytest.approx(expected, abs=COSINE_TOL)


@given(angle=st.floats(-180, 180), scale=st.floats(0.01, 100), dx=st.floats(-1e4, 1e4), dy=st.floats(-1e4, 1e4),
       yaw=st.floats(-40, 40))
def test_landmark_distance_ignores_size_place_and_roll(angle, scale, dx, dy, yaw):
    ref = fx.projected(yaw, 0)
    moved = fx.projected(yaw, 0, roll=angle, scale=scale, shift=(dx, dy))
    assert landmark_distance(moved, ref) == pytest.approx(0.0, abs=1e-6)


def test_landmark_distance_grows_with_the_turn():
    ref = fx.projected(0, 0)
    distances = [landmark_distance(fx.projected(yaw, 0), ref) for yaw in (0, 10, 20, 30)]
    assert distances == sorted(distances) and distances[2] == pytest.approx(POSE_TOLERANCE, abs=0.01)
    assert landmark_distance(np.zeros((5, 2)), ref) is None and landmark_distance(ref, np.full((5, 2), np.nan)) is None


def test_ranking_defaults_to_likeness_and_can_penalise_copies():
    likeness, copy = [0.55, 0.71, 0.71, 0.62], [0.0, 0.9, 0.1, 0.0]
    assert rank_best_of_n(likeness) == [1, 2, 3, 0]  # ties: the earlier image first, like today's max()
    assert rank_best_of_n(likeness)[0] == max(range(4), key=lambda i: likeness[i])
    assert rank_best_of_n(likeness, copy, copy_penalty=0.5) == [2, 3, 0, 1]
    with pytest.raises(ValueError, match="copy scores"):
        rank_best_of_n(likeness, None, copy_penalty=0.5)


def test_a_non_finite_score_ranks_last_instead_of_freezing_the_ranking():
    """Before: sorted() with a NaN key left image 1 first whatever the others scored (the NaN copy_penalty case:
    every score NaN, best_index 0), and one NaN likeness stopped the images after it from being compared."""
    nan, inf = float("nan"), float("inf")
    assert rank_best_of_n([nan, 0.2, 0.9, 0.5]) == [2, 3, 1, 0]
    assert rank_best_of_n([0.3, 0.8, 0.4], [0.0, nan, 0.1], copy_penalty=1.0) == [2, 0, 1]
    assert rank_scores([0.1, -inf, inf, nan, 0.7]) == [4, 0, 1, 2, 3]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12))
def test_rank_scores_is_a_permutation_with_the_finite_scores_first_in_order(scores):
    order = rank_scores(scores)
    assert sorted(order) == list(range(len(scores)))
    finite = [i for i in order if np.isfinite(scores[i])]
    assert order[:len(finite)] == finite and all(not np.isfinite(scores[i]) for i in order[len(finite):])
    assert [scores[i] for i in finite] == sorted((scores[i] for i in finite), reverse=True)


# --- the report ---------------------------------------------------------------------------------------------------
def stranger_report(mode: str = "drop"):
    me, stranger = fx.person(0), fx.person(99)
    photos = [fx.photo_of(me, 0.68, seed=s) for s in range(3)] + [fx.photo_of(stranger, 0.68, seed=50)]
    results = [fx.face_result(p) for p in photos[:2]] + [fx.no_face()] + [fx.face_result(p) for p in photos[2:]]
    figs = measure_references(results)
    return figs, build_report(figs, curate(figs, mode), Thresholds())


REFERENCE_KEYS = {"index", "face_found", "reason", "face_count", "bbox", "kps", "det_score", "face_px", "yaw",
                  "pitch", "sharpness", "consistency", "verdict", "problems", "kept", "weight"}


def test_report_has_the_documented_shape():
    _, report = stranger_report()
    assert set(report) == {"format", "version", "references", "summary"} and report["format"] == REPORT_FORMAT
    assert [set(r) for r in report["references"]] == [REFERENCE_KEYS] * 5
    assert [r["verdict"] for r in report["references"]] == [CONSISTENT, CONSISTENT, "no face", CONSISTENT,
                                                            OTHER_PERSON]
    assert [r["kept"] for r in report["references"]] == [True, True, False, True, False]
    assert report["references"][2]["consistency"] is None and report["references"][2]["bbox"] is None
    assert isinstance(report["references"][0]["consistency"], float)
    assert len(report["references"][0]["kps"]) == 5 and len(report["references"][0]["bbox"]) == 4
    summary = report["summary"]
    assert summary["kept"] == [0, 1, 3] and summary["photos"] == 5 and summary["faces"] == 4
    assert summary["thresholds"] == {"min_consistency": 0.25, "min_face_px": 64.0, "max_yaw": 40.0,
                                     "max_pitch": 30.0, "min_sharpness": 0.05}
    assert summary["pairwise_min"] <= summary["pairwise_median"]
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # plain JSON, no NaN


def test_report_of_one_photo_has_null_consistency():
    figs = measure_references([fx.face_result(fx.person(0))])
    report = build_report(figs, curate(figs, "warn"))
    assert report["references"][0]["consistency"] is None and report["references"][0]["verdict"] == CONSISTENT
    assert "only one photo" in report["summary"]["consistency_note"]
    assert "only one photo" in render_table(report)


def test_report_of_photos_without_faces_renders():
    figs = measure_references([fx.no_face(), fx.no_face("too small")])
    report = build_report(figs, curate(figs, "drop"))
    assert [r["verdict"] for r in report["references"]] == ["no face", "no face"] and report["summary"]["kept"] == []
    assert "0 of 2 photos used (none)" in render_table(report) and "no photo with a face" in render_table(report)
    assert annotate_previews(np.zeros((0, 128, 256, 3), np.uint8), report).shape == (2, 128, 256, 3)
    assert parse_report(json.dumps(report)) == (report, "")


def test_weights_appear_in_the_report():
    figs, _ = stranger_report()
    report = build_report(figs, curate(figs, "weight"))
    kept = [r for r in report["references"] if r["kept"]]
    assert sum(r["weight"] for r in kept) == pytest.approx(1.0, abs=1e-3)
    assert all(r["weight"] is None for r in report["references"] if not r["kept"])


def test_table_shows_each_photo_and_the_summary():
    _, report = stranger_report()
    text = render_table(report)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["photo", "face", "det"] and len(lines) >= 7
    assert "looks like another person" in lines[6] and "dropped" in lines[6]
    assert "photo 5: looks like another person (consistency" in text
    assert "curate 'drop': 3 of 5 photos used (1, 2, 4)" in text and "median" in text


# --- reading it back: total ------------------------------------------------------------------------------------
def test_report_round_trips_through_text():
    _, report = stranger_report()
    assert parse_report(json.dumps(report)) == (report, "")


@pytest.mark.parametrize("text,why", [
    (None, "no curation report"), ("", "no curation report"), (b"{}", "bytes, not text"), ("{", "not valid JSON"),
    ("[" * 100000 + "]" * 100000, "not valid JSON"), ("1" * 5000, "not valid JSON"), ("[]", "not an object"),
    ('{"format": "x", "version": 1, "references": [], "summary": {}}', "not a pulid_curation report"),
    ('{"format": "pulid_curation", "version": 2, "references": [], "summary": {}}', "version 2"),
    ("x" * 1_000_001, "longer than"),
])
def test_unusable_text_gives_none_and_a_reason(text, why):
    report, reason = parse_report(text)
    assert report is None and why in reason


@pytest.mark.parametrize("path,value", [
    (("references", 0, "consistency"), float("nan")), (("references", 0, "consistency"), "0.5"),
    (("references", 0, "index"), -1), (("references", 0, "index"), True), (("references", 0, "kept"), 1),
    (("references", 0, "verdict"), "fine"), (("references", 0, "kps"), [[1, 2]] * 4),
    (("references", 0, "bbox"), [1, 2, 3, "4"]), (("references", 0, "problems"), "blurred"),
    (("summary", "mode"), "strict"), (("summary", "kept"), [9]), (("summary", "thresholds"), {}),
    (("summary", "pairwise_min"), float("inf")),
])
def test_a_damaged_value_is_named(path, value):
    _, report = stranger_report()
    node = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    parsed, reason = parse_report(json.dumps(report))
    assert parsed is None and "curation report" in reason


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=20)


@given(st.text(max_size=200))
def test_any_text_is_read_without_an_exception(text):
    report, reason = parse_report(text)
    assert (report is None) != (reason == "")


@given(JSON)
def test_any_json_is_read_without_an_exception(value):
    report, reason = parse_report(json.dumps(value))
    assert report is None and reason


@given(st.data())
def test_any_damaged_report_is_read_without_an_exception(data):
    """A valid report with one value somewhere replaced by any JSON value: a valid report or (None, reason)."""
    _, report = stranger_report()
    node, key = report, None
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        if not isinstance(node[key], (dict, list)) or not node[key] or data.draw(st.booleans()):
            break
        node = node[key]
    node[key] = data.draw(JSON)
    parsed, reason = parse_report(json.dumps(report))
    if parsed is None:
        assert reason
    else:
        assert reason == "" and parse_report(json.dumps(parsed)) == (parsed, "")
        assert all(r["verdict"] in VERDICTS for r in parsed["references"])
        assert "curate '" in render_table(parsed)  # what parses, renders
        for ref in parsed["references"]:
            assert annotate_reference(np.zeros((128, 256, 3), np.uint8), ref).shape == (128, 256, 3)


# --- the preview ------------------------------------------------------------------------------------------------
def test_preview_rows_get_verdicts_and_photos_without_a_face_a_row():
    figs, report = stranger_report()
    rows = np.stack([np.concatenate([fx.aligned(fx.astronaut())] * 2, axis=1)] * 4)  # [4, 512, 1024, 3]
    before = rows.copy()
    out = annotate_previews(rows, report)
    assert out.shape == (5, 512, 1024, 3) and out.dtype == np.uint8 and np.array_equal(rows, before)
    assert not np.array_equal(out[0, :40], rows[0, :40]) and np.array_equal(out[0, 200:], rows[0, 200:])
    assert np.all(out[4, 300, 0] == DROPPED_RGB) and not np.all(out[0, 300, 0] == DROPPED_RGB)  # dropped: framed
    assert np.all(out[2, 300, 500] == 96)  # the photo without a face: a gray row
    with pytest.raises(ValueError, match="3 preview rows for 4 photos"):
        annotate_previews(rows[:3], report)


def test_annotation_survives_any_text_a_file_may_hold():
    _, report = stranger_report()
    ref = dict(report["references"][2], reason="\ud800 \u00e9\u4e2d" + "x" * 5000)  # lone surrogate, non-ASCII
    parsed, _ = parse_report(json.dumps(dict(report, references=[ref] + report["references"][1:])))
    out = annotate_reference(np.zeros((128, 256, 3), np.uint8), parsed["references"][0])
    assert out.shape == (128, 256, 3) and out.any()


def test_annotation_fits_a_small_identity_preview():
    _, report = stranger_report()
    small = np.full((128, 256, 3), 200, np.uint8)
    out = annotate_reference(small, report["references"][4])
    assert out.shape == small.shape and (out != small).any() and (out[64:120, 10:240] == 200).all()
