"""The one encode path (encoders/references.py) on real photos with synthetic antelopev2, random BiSeNet, a tiny
EVA-CLIP and a tiny ID encoder: curate 'off' is today's encoding bit for bit, curation runs before EVA-CLIP and
the ID encoder, and the report has its documented shape."""
import json

import numpy as np
import pytest
import torch

from support import curation_fixtures as fx
from encoders import FaceEncoders, NoFace
from encoders.curation.preview import DROPPED_RGB, KEPT_RGB
from encoders.curation.report import METADATA_KEY, parse_report, render_table
from encoders.curation.selection import OTHER_PERSON, CurationError, Thresholds
from encoders.pipeline import Located
from encoders.references import (NoUsableFace, ReferenceSettings, encode_references, locate_references,
                                 report_references)
from pulid_flux import FUSION_MODES, TINY, IDFormer, encode_id, fuse_id_tokens
from pulid_flux.curated_fusion import IdTokenMaker

COSINE_TOL = 512 * np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from support.encoder_models import make_models

    return make_models(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def id_encoder():
    torch.manual_seed(0)
    return IDFormer(TINY).eval().requires_grad_(False)


def photos() -> list[np.ndarray]:
    """Four photos with a face for the fake detector (the astronaut, mirrored, brighter, shifted) and one without."""
    a = fx.astronaut()
    return [a, np.ascontiguousarray(a[:, ::-1]), np.clip(a.astype(np.int16) + 25, 0, 255).astype(np.uint8),
            np.zeros((300, 200, 3), np.uint8), np.ascontiguousarray(np.roll(a, 7, axis=1))]


class ChosenArcFace(FaceEncoders):
    """The real encoders, but ArcFace says who is who: photo i gets the raw embedding vectors[i] (the antelopev2
    stand-in has random weights and sees everyone as the same person)."""

    def __init__(self, encoders: FaceEncoders, vectors: dict[int, np.ndarray]):
        super().__init__(encoders.face_analysis, encoders.eva, encoders.parser)
        self.vectors = vectors

    def locate(self, rgb, order="largest", index=0, image_index=0):
        found = super().locate(rgb, order, index, image_index)
        if isinstance(found, Located):
            found.arcface = (np.asarray(self.vectors[image_index]) * 23.0).astype(np.float32)
        return found


def one_person_and_a_stranger(encoders) -> ChosenArcFace:
    """Photos 0, 1, 2, 4 of one person (pairwise cosine about 0.5), photo 2 another person."""
    me, other = fx.person(0), fx.person(99)
    vectors = {0: fx.photo_of(me, 0.75, 1), 1: fx.photo_of(me, 0.7, 2), 2: fx.photo_of(other, 0.8, 3),
               4: fx.photo_of(me, 0.72, 4)}
    return ChosenArcFace(encoders, vectors)


def todays_encoding(encoders, id_encoder, images, fusion):
    """What Apply PuLID-Flux computed before curation existed (comfy_support.embed_references of that time)."""
    results = encoders.encode(images, batch_size=16)
    ok = [r for r in results if not isinstance(r, NoFace)]
    id_cond = torch.cat([r.id_cond for r in ok])
    hidden = [torch.cat([r.hidden_states[s] for r in ok]) for s in range(len(ok[0].hidden_states))]
    tokens = fuse_id_tokens(encode_id(id_encoder, id_cond, hidden).float(), fusion).cpu()
    preview = torch.stack([torch.from_numpy(np.concatenate([r.aligned, r.parsed], axis=1)) for r in ok]) / 255.0
    return tokens, preview, id_cond[:, :512].float().cpu(), [i for i, r in enumerate(results) if r.ok]


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_off_is_todays_encoding_bit_for_bit(encoders, id_encoder, fusion):
    tokens, preview, arcface, used = todays_encoding(encoders, id_encoder, photos(), fusion)
    got = encode_references(encoders, IdTokenMaker(id_encoder), photos(), ReferenceSettings(fusion=fusion))
    assert torch.equal(got.id_tokens, tokens) and torch.equal(got.preview, preview)
    assert torch.equal(got.arcface, arcface) and got.used == used == [0, 1, 2, 4]
    assert list(got.skipped) == [3] and "no face detected" in got.skipped[3]
    assert got.report is None and got.annotated_preview is None and got.face_preview is got.preview


def test_two_copies_of_one_photo_are_fully_consistent(encoders, id_encoder):
    photo = fx.astronaut()
    got = encode_references(encoders, IdTokenMaker(id_encoder), [photo, photo.copy()], ReferenceSettings(curate="drop"))
    refs = got.report["references"]
    assert [r["consistency"] for r in refs] == pytest.approx([1.0, 1.0], abs=COSINE_TOL)
    assert [r["verdict"] for r in refs] == ["consistent"] * 2 and got.used == [0, 1]
    assert got.report["summary"]["pairwise_min"] == pytest.approx(1.0, abs=COSINE_TOL)


def test_drop_leaves_the_stranger_out_before_encoding(encoders, id_encoder):
    """The kept photos' ID tokens are bit for bit those of the kept photos encoded alone: the stranger never reaches
    BiSeNet, EVA-CLIP or the ID encoder (which are not batch-invariant)."""
    chosen = one_person_and_a_stranger(encoders)
    maker = IdTokenMaker(id_encoder)
    got = encode_references(chosen, maker, photos(), ReferenceSettings(curate="drop"))
    assert got.used == [0, 1, 4] and list(got.skipped) == [2, 3]
    assert got.skipped[2].startswith(OTHER_PERSON) and "no face detected" in got.skipped[3]
    kept = [photos()[i] for i in got.used]
    alone_vectors = ChosenArcFace(encoders, {j: chosen.vectors[i] for j, i in enumerate(got.used)})
    alone = encode_references(alone_vectors, maker, kept, ReferenceSettings())
    assert torch.equal(got.id_tokens, alone.id_tokens) and torch.equal(got.arcface, alone.arcface)
    assert torch.equal(got.preview, alone.preview)
    everyone = encode_references(chosen, maker, photos(), ReferenceSettings(curate="warn"))
    assert everyone.used == [0, 1, 2, 4] and not torch.equal(everyone.id_tokens, got.id_tokens)
    stranger = next(r for r in everyone.report["references"] if r["index"] == 2)
    assert stranger["verdict"] == OTHER_PERSON and stranger["kept"] and stranger["consistency"] < 0.25


def test_warn_changes_no_output_and_adds_the_report(encoders, id_encoder):
    chosen = one_person_and_a_stranger(encoders)
    maker = IdTokenMaker(id_encoder)
    off = encode_references(chosen, maker, photos(), ReferenceSettings())
    warn = encode_references(chosen, maker, photos(), ReferenceSettings(curate="warn"))
    assert torch.equal(off.id_tokens, warn.id_tokens) and torch.equal(off.preview, warn.preview)
    assert warn.used == off.used and warn.skipped == off.skipped
    assert warn.annotated_preview.shape == (5, 512, 1024, 3)  # one row per photo, the one without a face too


def test_weight_follows_consistency(encoders, id_encoder):
    chosen = one_person_and_a_stranger(encoders)
    got = encode_references(chosen, IdTokenMaker(id_encoder), photos(), ReferenceSettings(curate="weight"))
    refs = {r["index"]: r for r in got.report["references"] if r["face_found"]}
    weights = [refs[i]["weight"] for i in got.used]
    assert sum(weights) == pytest.approx(1.0, abs=1e-3) and refs[2]["weight"] == min(weights)
    consistency = np.array([refs[i]["consistency"] for i in got.used])
    assert weights == pytest.approx(list(consistency / consistency.sum()), abs=1e-4)  # the report rounds to 4 places


def test_weight_with_another_fusion_is_refused_before_any_work():
    with pytest.raises(ValueError, match="curate 'weight'.*fusion 'mean'"):
        ReferenceSettings(curate="weight", fusion="concat")
    with pytest.raises(ValueError, match="curate: unknown mode 'strict'"):
        ReferenceSettings(curate="strict")


def test_nothing_left_says_why(encoders, id_encoder):
    maker = IdTokenMaker(id_encoder)
    with pytest.raises(NoUsableFace) as caught:
        encode_references(encoders, maker, [np.zeros((300, 200, 3), np.uint8)], ReferenceSettings(curate="drop"))
    assert caught.value.skipped.keys() == {0} and "image 1: no face detected" in str(caught.value)
    strict = ReferenceSettings(curate="drop", thresholds=Thresholds(min_face_px=4000))
    with pytest.raises(CurationError, match=r"photo 1: face too small \(\d+ px < 4000 px\)"):
        encode_references(encoders, maker, [fx.astronaut()], strict)


def test_report_has_the_documented_shape_and_reads_back(encoders, id_encoder):
    chosen = one_person_and_a_stranger(encoders)
    got = encode_references(chosen, IdTokenMaker(id_encoder), photos(), ReferenceSettings(curate="drop"))
    text = json.dumps(got.report)
    back, why = parse_report(text)
    assert why == "" and back == json.loads(text) and METADATA_KEY == "pulid_curation"
    assert [r["index"] for r in back["references"]] == [0, 1, 2, 3, 4]
    assert [r["kept"] for r in back["references"]] == [True, True, False, False, True]
    for ref in back["references"]:
        assert "consistency" in ref and ref["face_found"] == (ref["index"] != 3)
    assert back["summary"]["kept"] == [0, 1, 4] and back["summary"]["mode"] == "drop"
    assert "curate 'drop': 3 of 5 photos used (1, 2, 5)" in render_table(back)


def test_preview_shows_each_photo_with_its_verdict(encoders, id_encoder):
    chosen = one_person_and_a_stranger(encoders)
    got = encode_references(chosen, IdTokenMaker(id_encoder), photos(), ReferenceSettings(curate="drop"))
    rows = (got.face_preview * 255).round().to(torch.uint8).numpy()
    assert rows.shape == (5, 512, 1024, 3) and got.preview.shape[0] == 3  # the identity keeps the rows it used
    corner = [tuple(int(v) for v in row[-1, 0]) for row in rows]  # the border of a dropped photo is red
    assert corner[2] == corner[3] == DROPPED_RGB and corner[0] != DROPPED_RGB
    kept_band = rows[0, :40].reshape(-1, 3)
    assert (np.abs(kept_band.astype(int) - KEPT_RGB).sum(axis=1) < 60).any()  # the green caption of a kept photo
    assert not torch.equal(got.preview[0], got.face_preview[0])  # annotated; the identity's rows stay clean


def test_report_without_the_embedding_models(encoders):
    """What `pulid_tools identity --report` needs: antelopev2 only, no BiSeNet, EVA-CLIP or ID encoder."""
    chosen = one_person_and_a_stranger(encoders)
    faces_only = ChosenArcFace(FaceEncoders(encoders.face_analysis, None, None), chosen.vectors)
    report, error = report_references(faces_only, photos())
    assert error is None and report["summary"]["mode"] == "off" and report["summary"]["kept"] == [0, 1, 2, 4]
    refs = report["references"]
    assert refs[2]["verdict"] == OTHER_PERSON and refs[0]["verdict"] == "consistent" and not refs[3]["face_found"]
    located = locate_references(faces_only, photos(), ReferenceSettings(curate="drop"))
    assert [item.index for item in located.kept] == [0, 1, 4] and located.report["summary"]["kept"] == [0, 1, 4]


def test_report_of_a_curation_that_leaves_nothing_says_why_for_each(encoders):
    strict = ReferenceSettings(curate="drop", thresholds=Thresholds(min_face_px=4000))
    report, error = report_references(FaceEncoders(encoders.face_analysis, None, None), photos()[:2], strict)
    assert isinstance(error, CurationError) and report["summary"]["kept"] == []
    assert [r["kept"] for r in report["references"]] == [False, False]
    assert all(r["problems"][0].startswith("face too small") for r in report["references"])


def test_progress_counts_photos_then_the_batches_of_kept_faces(encoders, id_encoder):
    chosen = one_person_and_a_stranger(encoders)
    calls = []
    encode_references(chosen, IdTokenMaker(id_encoder), photos(), ReferenceSettings(curate="drop", batch_size=2),
                      progress=lambda done, total: calls.append((done, total)))
    # while locating, every photo still to come might be a face (5 photos -> 3 batches of 2); 3 kept -> 2 batches
    assert calls == [(1, 8), (2, 8), (3, 8), (4, 7), (5, 7), (6, 7), (7, 7)]


def test_uncond_tokens_are_the_encoder_on_zeros_of_one_face(id_encoder):
    from pulid_flux import encode_uncond_id

    id_cond, hidden = torch.randn(3, 1280), [torch.randn(3, 577, TINY.vit_dim) for _ in range(TINY.num_scales)]
    assert torch.equal(IdTokenMaker(id_encoder).uncond(577), encode_uncond_id(id_encoder, id_cond, hidden))
