"""Per-reference figures (pose, sharpness, size, consistency), verdicts, curation modes and curated fusion."""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from support import curation_fixtures as fx
from encoders.curation.figures import (ARCFACE_DIM, face_size, head_pose, leave_one_out,
                                       measure_references, sharpness, unit_rows)
from encoders.curation.selection import (BLURRED, CONSISTENT, NO_FACE, OTHER_PERSON, STRONG_TURN, TOO_SMALL,
                                         CurationError, Thresholds, curate, problems, verdict)
from encoders.images import FFHQ_TEMPLATE_512
from pulid_flux import FUSION_MODES, fuse_id_tokens
from pulid_flux.curated_fusion import fuse_curated

# cosines are computed in float64 from 512 products: rounding can move them by about 512 ulps of float64
COSINE_TOL = ARCFACE_DIM * np.finfo(np.float64).eps


# --- head pose from five landmarks --------------------------------------------------------------------------------
def test_alignment_template_is_frontal():
    yaw, pitch = head_pose(FFHQ_TEMPLATE_512)
    assert abs(yaw) < 1e-6 and abs(pitch) < 1e-6


@given(yaw=st.floats(-75, 75), pitch=st.floats(-60, 60), roll=st.floats(-180, 180), scale=st.floats(0.05, 20),
       dx=st.floats(-5000, 5000), dy=st.floats(-5000, 5000))
def test_pose_of_turned_head_is_recovered(yaw, pitch, roll, scale, dx, dy):
    """Seen from far away, any turn, tilt, in-image roll, size and position: the angles come back exactly."""
    found = head_pose(fx.projected(yaw, pitch, roll, scale, (dx, dy)))
    assert found is not None
    assert found[0] == pytest.approx(yaw, abs=1e-6) and found[1] == pytest.approx(pitch, abs=1e-6)


def test_pose_signs_follow_the_image():
    right = fx.projected(25, 0)
    assert right[2, 0] > (right[0, 0] + right[1, 0]) / 2  # nose to the image's right of the eyes' middle
    assert head_pose(right)[0] > 20
    up = fx.projected(0, 20)
    assert head_pose(up)[1] > 15 and up[2, 1] - up[0, 1] < fx.projected(0, 0)[2, 1] - fx.projected(0, 0)[0, 1]
    mirrored = right * [-1, 1]  # the mirror image: the person's left and right swap labels too
    mirrored = mirrored[[1, 0, 2, 4, 3]]
    assert head_pose(mirrored)[0] == pytest.approx(-head_pose(right)[0], abs=0.1)  # the template is not quite symmetric


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (20, 0), (-35, 10), (0, -25), (45, 15)])
def test_pose_under_perspective_is_close(yaw, pitch):
    """A camera 8 eye-distances away (a portrait at arm's length): within 3 degrees."""
    found = head_pose(fx.perspective(yaw, pitch, distance=8))
    assert abs(found[0] - yaw) < 3 and abs(found[1] - pitch) < 3


def test_pose_of_the_real_astronaut_is_frontal():
    yaw, pitch = head_pose(fx.ASTRONAUT_KPS)
    assert abs(yaw) < 10 and abs(pitch) < 10


def test_pose_and_sharpness_of_the_real_group_photo():
    """insightface's t1.jpg: the standing man turned away (about -45 degrees) is the one strong turn; every face of
    this ordinary JPEG is sharp enough (0.12 to 0.24), its 1 px blur is not (same face, blurred)."""
    poses = [head_pose(kps) for kps in fx.GROUP_KPS]
    limits = Thresholds()
    turned = [abs(yaw) > limits.max_yaw or abs(pitch) > limits.max_pitch for yaw, pitch in poses]
    assert turned == [False, False, False, False, True, False] and poses[4][0] < -40
    scores = [sharpness(fx.aligned(fx.group_photo(), kps)) for kps in fx.GROUP_KPS]
    assert min(scores) > limits.min_sharpness
    soft = [sharpness(fx.aligned(fx.blurred(fx.group_photo(), 2.0), kps)) for kps in fx.GROUP_KPS]
    assert all(b < a / 2 for a, b in zip(scores, soft)) and max(soft) < limits.min_sharpness


@pytest.mark.parametrize("kps", [np.zeros((5, 2)), np.full((5, 2), np.nan), np.ones(8), FFHQ_TEMPLATE_512 * [-1, 1]])
def test_pose_of_non_faces_is_none(kps):
    assert head_pose(kps) is None


# --- sharpness and size ---------------------------------------------------------------------------------------------
def test_blurred_copy_scores_lower():
    crop = fx.aligned(fx.astronaut())
    scores = [sharpness(crop)] + [sharpness(fx.aligned(fx.blurred(fx.astronaut(), s))) for s in (0.5, 1, 2, 3)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 5 * scores[3]
    assert scores[0] > Thresholds().min_sharpness > scores[3]  # the default separates sharp from 2 px of blur


def test_sharpness_ignores_brightness_and_contrast():
    crop = fx.aligned(fx.astronaut()).astype(np.float32)
    dimmer = np.clip(crop * 0.5 + 40, 0, 255).round().astype(np.uint8)
    assert sharpness(dimmer) == pytest.approx(sharpness(crop.astype(np.uint8)), rel=0.1)  # uint8 rounding: 10 %
    assert sharpness(np.full((512, 512, 3), 128, np.uint8)) == 0.0


def test_face_size_is_the_side_of_a_square_of_the_box_area():
    assert face_size([10, 20, 110, 220]) == pytest.approx(math.sqrt(100 * 200))
    assert face_size([5, 5, 4, 9]) == 0.0


# --- consistency ------------------------------------------------------------------------------------------------
def test_two_copies_of_one_photo_are_fully_consistent():
    photo = fx.photo_of(fx.person(0), 0.7, seed=1)
    figs = measure_references([fx.face_result(photo), fx.face_result(photo)])
    assert [r.consistency for r in figs.references] == [pytest.approx(1.0, abs=COSINE_TOL)] * 2
    assert figs.pairwise_min == pytest.approx(1.0, abs=COSINE_TOL)
    assert [verdict(r) for r in figs.references] == [CONSISTENT, CONSISTENT]


def test_one_photo_has_no_consistency_and_says_why():
    figs = measure_references([fx.no_face(), fx.face_result(fx.person(0))])
    assert figs.references[1].consistency is None and "only one photo" in figs.references[1].consistency_note
    assert figs.pairwise_min is None and figs.pairwise_median is None
    assert verdict(figs.references[1]) == CONSISTENT and verdict(figs.references[0]) == NO_FACE


def test_consistency_is_cosine_to_the_mean_of_the_others():
    rows = np.stack([fx.photo_of(fx.person(0), 0.7, seed=s) for s in range(4)])
    scores = leave_one_out(unit_rows(rows))
    for i in range(4):
        others = np.delete(rows, i, axis=0).mean(axis=0)
        assert scores[i] == pytest.approx(rows[i] @ others / np.linalg.norm(others), abs=COSINE_TOL)


def one_person_and_a_stranger():
    """Four photos of one person (pairwise cosine about 0.46, as real photos) and a fifth of someone else."""
    me, stranger = fx.person(0), fx.person(99)
    photos = [fx.photo_of(me, 0.68, seed=s) for s in range(4)] + [fx.photo_of(stranger, 0.68, seed=50)]
    return [fx.face_result(p) for p in photos]


def test_another_person_is_flagged():
    figs = measure_references(one_person_and_a_stranger())
    assert 0.3 < figs.pairwise_median < 0.6 and figs.pairwise_min < 0.2
    assert [verdict(r) for r in figs.references] == [CONSISTENT] * 4 + [OTHER_PERSON]
    assert figs.references[4].consistency < 0.15 < 0.35 < min(r.consistency for r in figs.references[:4])
    assert re.fullmatch(r"looks like another person \(consistency -?0\.\d\d < 0.25\)", problems(figs.references[4])[0])


def test_no_face_reasons_read_once():
    figs = measure_references([fx.no_face("no face detected (detector sizes 640 px)"),
                               fx.no_face("face index 2 requested with order 'largest', but only 1 face was detected")])
    assert [verdict(r) for r in figs.references] == [NO_FACE, NO_FACE]
    assert problems(figs.references[0]) == ["no face detected (detector sizes 640 px)"]
    assert problems(figs.references[1])[0].startswith("no face (face index 2 requested")


def with_cosines(gram) -> list:
    """Photos whose ArcFace vectors have exactly these pairwise cosines (rows of the Cholesky factor)."""
    rows = np.linalg.cholesky(np.asarray(gram, np.float64))
    return [fx.face_result(np.pad(r, (0, ARCFACE_DIM - len(r)))) for r in rows]


@pytest.mark.parametrize("pair,expected,flagged", [(0.46, 0.352, [False, False, True]),
                                                    (0.30, 0.241, [True, True, True])])
def test_the_documented_weak_spot_of_three_photos(pair, expected, flagged):
    """Thresholds' docstring: two photos of one person (cosine `pair`) and a stranger (0.05 to both)."""
    figs = measure_references(with_cosines([[1, pair, 0.05], [pair, 1, 0.05], [0.05, 0.05, 1]]))
    assert [r.consistency for r in figs.references][:2] == [pytest.approx(expected, abs=1e-3)] * 2
    assert [verdict(r) == OTHER_PERSON for r in figs.references] == flagged


def test_quality_problems_name_their_cause_first():
    small = fx.face_result(fx.person(0), bbox=[0, 0, 40, 50])
    turned = fx.face_result(fx.person(0), kps=fx.projected(55, 0, scale=0.35, shift=(225, 125)))
    soft = fx.face_result(fx.person(0), image=fx.blurred(fx.astronaut(), 2.5))
    figs = measure_references([small, turned, soft])
    assert [verdict(r) for r in figs.references] == [TOO_SMALL, STRONG_TURN, BLURRED]
    assert figs.references[1].yaw == pytest.approx(55, abs=1e-3)


# --- curation ---------------------------------------------------------------------------------------------------
def tokens_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 32, 2048, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["off", "warn"])
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_off_and_warn_are_bit_identical_to_today(mode, fusion):
    results = [fx.no_face()] + one_person_and_a_stranger()
    kept = curate(measure_references(results), mode)
    assert kept.kept == (1, 2, 3, 4, 5) and kept.weights is None and list(kept.dropped) == [0]
    tokens = tokens_for(5)
    fused = fuse_curated(tokens, fusion, kept.token_rows([1, 2, 3, 4, 5]), kept.weights)
    assert torch.equal(fused, fuse_id_tokens(tokens, fusion))


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_drop_leaves_the_stranger_out_and_equals_the_kept_photos_alone(fusion):
    figs = measure_references(one_person_and_a_stranger())
    kept = curate(figs, "drop")
    assert kept.kept == (0, 1, 2, 3) and OTHER_PERSON in kept.dropped[4]
    tokens = tokens_for(5)
    alone = fuse_id_tokens(tokens[:4].clone(), fusion)  # what the four photos give without the fifth
    assert torch.equal(fuse_curated(tokens, fusion, kept.token_rows(range(5))), alone)


def test_drop_of_every_photo_says_why_for_each():
    results = [fx.no_face("no face detected"), fx.face_result(fx.person(0), image=fx.blurred(fx.astronaut(), 3))]
    with pytest.raises(CurationError) as caught:
        curate(measure_references(results), "drop")
    text = str(caught.value)
    assert "photo 1: no face" in text and "photo 2: blurred (sharpness" in text and "'warn'" in text


def test_no_face_at_all_is_left_to_todays_no_face_handling():
    """Not a curation error: kept is empty, and the caller's NoFaceError / on_no_face apply as they do today."""
    for mode in ("off", "warn", "drop", "weight"):
        kept = curate(measure_references([fx.no_face(), fx.no_face("too small")]), mode)
        assert kept.kept == () and kept.weights is None and kept.dropped == {0: fx.no_face().reason,
                                                                            1: "no face (too small)"}


def test_weight_follows_consistency_and_zeroes_photos_pointing_away():
    me = fx.person(0)
    photos = [fx.photo_of(me, 0.8, seed=1), fx.photo_of(me, 0.6, seed=2), fx.photo_of(me, 0.7, seed=3), -me]
    figs = measure_references([fx.face_result(p) for p in photos])
    cons = [r.consistency for r in figs.references]
    assert cons[3] < 0
    kept = curate(figs, "weight")
    assert kept.kept == (0, 1, 2) and "weight 0" in kept.dropped[3]
    expected = np.array(cons[:3]) / sum(cons[:3])
    assert kept.weights == pytest.approx(tuple(expected), abs=1e-12)
    tokens = tokens_for(4).double()
    manual = (tokens[:3] * torch.tensor(expected).view(-1, 1, 1)).sum(0, keepdim=True)
    fused = fuse_curated(tokens, "mean", kept.token_rows(range(4)), kept.weights)
    assert torch.allclose(fused, manual, rtol=0, atol=64 * torch.finfo(torch.float64).eps)


def test_weight_of_one_photo_is_one_and_equal_weights_give_the_mean():
    kept = curate(measure_references([fx.face_result(fx.person(0))]), "weight")
    assert kept.weights == (1.0,)
    tokens = tokens_for(3)
    eps = torch.finfo(tokens.dtype).eps * tokens.abs().max().item()
    assert torch.allclose(fuse_curated(tokens, "mean", None, [1, 1, 1]), fuse_id_tokens(tokens), rtol=0, atol=4 * eps)


def test_weighted_fusion_refuses_what_it_cannot_do():
    tokens = tokens_for(2)
    with pytest.raises(ValueError, match="needs fusion 'mean'"):
        fuse_curated(tokens, "concat", None, [0.5, 0.5])
    for weights in ([1.0], [0, 0], [1, float("nan")], [-1, 2]):
        with pytest.raises(ValueError, match="weights"):
            fuse_curated(tokens, "mean", None, weights)
    with pytest.raises(ValueError, match="rows"):
        fuse_curated(tokens, "mean", [2])


def test_unknown_mode_and_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="curate mode 'strict'"):
        curate(measure_references([fx.face_result(fx.person(0))]), "strict")
    with pytest.raises(ValueError, match="min_sharpness"):
        Thresholds(min_sharpness=float("nan"))


def test_every_threshold_has_an_input_whose_range_holds_its_default():
    from dataclasses import asdict

    from encoders.curation.selection import THRESHOLD_INPUTS

    defaults = asdict(Thresholds())
    assert set(THRESHOLD_INPUTS) == set(defaults)
    for name, (low, high, step, tooltip) in THRESHOLD_INPUTS.items():
        assert low <= defaults[name] <= high and step > 0 and len(tooltip) > 40


def test_thresholds_move_the_verdicts():
    figs = measure_references(one_person_and_a_stranger())
    lenient = Thresholds(min_consistency=-1.0)
    assert curate(figs, "drop", lenient).kept == (0, 1, 2, 3, 4)


# --- through the real encoder path (synthetic antelopev2, random BiSeNet, tiny EVA) ------------------------------
def test_figures_from_the_encoders_own_results(tmp_path):
    from support.encoder_models import make_models

    encoders = make_models(str(tmp_path))
    photo = fx.astronaut()
    results = encoders.encode([photo, np.zeros((300, 200, 3), np.uint8), photo.copy()])
    figs = measure_references(results)
    first, black, copy = figs.references
    assert not black.face_found and "no face detected" in black.reason and verdict(black) == NO_FACE
    assert first.consistency == pytest.approx(1.0, abs=COSINE_TOL) and copy.consistency == first.consistency
    assert first.det_score > 0.5 and first.face_count == 1 and first.face_px > 64 and first.sharpness > 0
    assert first.yaw is not None and abs(first.yaw) < 5 and len(first.kps) == 5
    kept = curate(figs, "drop")
    assert kept.kept == (0, 2) and kept.token_rows([0, 2]) == [0, 1]
    photos = [photo, np.zeros((300, 200, 3), np.uint8), photo.copy()]
    located = [encoders.locate(rgb, image_index=i) for i, rgb in enumerate(photos)]
    assert measure_references(located).references == figs.references  # the same figures before EVA-CLIP


def test_the_id_encoder_is_not_batch_invariant_so_curate_before_encoding():
    """Why measure_references also takes the encoder's first stage: the ID tokens of a photo encoded in a batch of
    five differ (by ~1e-6) from the same photo encoded in a batch of four, so "the kept photos' embedding equals
    what they give alone", bit for bit, needs the dropped photos left out before the encoders run."""
    from pulid_flux import encode_id
    from pulid_flux.model import IDFormer

    torch.manual_seed(0)
    encoder = IDFormer().eval()
    id_cond, hidden = torch.randn(5, 1280), [torch.randn(5, 577, 1024) for _ in range(5)]
    all_five = encode_id(encoder, id_cond, hidden)
    four = encode_id(encoder, id_cond[:4].clone(), [h[:4].clone() for h in hidden])
    tol = 64 * torch.finfo(torch.float32).eps * four.abs().max().item()
    assert torch.allclose(all_five[:4], four, rtol=0, atol=tol)  # equal within float error, not always bit for bit


def figure_sets():
    """Any set of reference figures: faces or not, any yaw/pitch/size/sharpness/consistency (None for one face)."""
    maybe = lambda s: st.none() | s  # noqa: E731
    face = st.builds(dict, face_px=st.floats(0, 2000), yaw=maybe(st.floats(-90, 90)), pitch=st.floats(-90, 90),
                     sharpness=st.floats(0, 64), consistency=st.floats(-1, 1))
    return st.lists(st.none() | face, min_size=1, max_size=8)


@given(figure_sets(), st.sampled_from(["off", "warn", "drop", "weight"]))
def test_curation_never_keeps_nothing_silently(items, mode):
    from encoders.curation.figures import FigureSet, ReferenceFigures

    faces = sum(item is not None for item in items)
    refs = tuple(ReferenceFigures(i, False, "no face detected") if item is None else ReferenceFigures(
        i, True, face_count=1, det_score=0.9, **dict(item, consistency=item["consistency"] if faces > 1 else None))
        for i, item in enumerate(items))
    figs = FigureSet(refs, None, None, np.zeros((0, ARCFACE_DIM)))
    try:
        kept = curate(figs, mode)
    except CurationError as error:
        assert mode in ("drop", "weight") and faces and sorted(error.why) == list(range(len(items)))  # each says why
        return
    found = {r.index for r in refs if r.face_found}
    assert set(kept.kept) <= found and (kept.kept or not found)
    assert set(kept.kept).isdisjoint(kept.dropped) and set(kept.kept) | set(kept.dropped) == set(range(len(items)))
    if mode in ("off", "warn"):
        assert set(kept.kept) == found and kept.weights is None
    if mode == "weight" and kept.kept:
        assert sum(kept.weights) == pytest.approx(1.0) and min(kept.weights) > 0
    if mode == "drop":
        assert all(verdict(refs[i]) == CONSISTENT for i in kept.kept)
