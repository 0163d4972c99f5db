"""Face similarity's copy score (encoders/similarity.py on curation/copying.py) through the real detection and
ArcFace path (synthetic antelopev2): the reference itself is the worst copy, and ranking keeps today's order
unless a copy penalty is asked for."""
import numpy as np
import pytest

from support import curation_fixtures as fx
from encoders import similarity
from encoders.curation.copying import rank_best_of_n


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    from support.encoder_models import make_models

    return make_models(str(tmp_path_factory.mktemp("models"))).face_analysis


def generated() -> list[np.ndarray]:
    a = fx.astronaut()
    return [np.clip(a.astype(np.int16) + 40, 0, 255).astype(np.uint8), a.copy(), np.ascontiguousarray(a[::-1]),
            np.zeros((256, 256, 3), np.uint8)]


def test_copy_score_is_highest_for_the_reference_itself(analysis):
    refs, kps, notes = similarity.reference_faces(analysis, [fx.astronaut(), fx.group_photo()])
    assert refs.shape == (2, 512) and kps.shape == (2, 5, 2) and notes == []
    scores = similarity.score_images(analysis, generated(), refs.mean(0))
    copies = similarity.copy_scores(scores, refs, kps)
    assert copies[3] is None and scores[3].arcface is None  # no face: no copy score
    values = [c.copy for c in copies[:3]]
    assert values[1] == pytest.approx(1.0, abs=1e-6) and copies[1].closest == 0  # the first reference itself
    assert values[1] > values[0] and values[1] > values[2]
    assert copies[1].pose_closeness == pytest.approx(1.0, abs=1e-6)
    no_pose = similarity.copy_scores(scores, refs)  # landmarks unknown (an identity file without a report)
    assert no_pose[1].pose_closeness is None and no_pose[1].copy == pytest.approx(1.0, abs=1e-6)


def test_best_face_keeps_its_landmarks_in_image_pixels(analysis):
    ref, _ = similarity.reference_embedding(analysis, fx.astronaut())
    score = similarity.score_images(analysis, [fx.astronaut()], ref[0])[0]
    x1, y1, x2, y2 = score.best_box
    assert score.kps.shape == (5, 2) and ((score.kps >= [x1, y1]) & (score.kps <= [x2, y2])).all()
    assert score.arcface.shape == (512,)


def test_default_ranking_is_todays_and_a_penalty_moves_the_copy_down(analysis):
    refs, kps, _ = similarity.reference_faces(analysis, [fx.astronaut(), fx.group_photo()])
    scores = similarity.score_images(analysis, generated()[:3], refs.mean(0))
    copies = similarity.copy_scores(scores, refs, kps)
    likeness = [s.score for s in scores]
    today = max(range(len(scores)), key=lambda i: scores[i].score)
    assert rank_best_of_n(likeness)[0] == today
    penalised = rank_best_of_n(likeness, [c.copy for c in copies], copy_penalty=10.0)
    assert penalised[-1] == 1  # the reference itself comes last
