"""Tier (a), no ComfyUI: the identity value and file (round trip, every bad file's message, never unpickled),
names, blending, the PuLID file fingerprint, and ArcFace face similarity on the synthetic antelopev2."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import tolerance as tol
from encoders import load_face_analysis
from encoders import similarity
from pulid_flux.identity import build as ident
from pulid_flux.identity import file as fmt
from pulid_flux.identity.file import IdentityFileError
from pulid_flux.identity.store import identity_file_name
from support import encoder_fakes as fakes
from support.pulid_fakes import write_pulid_file
from support.identity_samples import make_full_size_identity


def write_raw(path, tensors, metadata):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return str(path)


# --- value and file -------------------------------------------------------------------------------------
def test_build_normalises_arcface_and_shrinks_the_preview():
    identity = make_full_size_identity()
    assert identity.id_tokens.dtype == identity.uncond_tokens.dtype == torch.float32
    tol.assert_close(identity.arcface.norm(dim=-1), torch.ones(2), torch.float32, tol.OPS)
    assert identity.preview.shape == (2, 128, 256, 3) and identity.preview.dtype == torch.uint8
    assert identity.meta["format"] == "pulid_flux_identity" and identity.meta["format_version"] == "1"
    assert identity.meta["references"] == "2" and identity.meta["use_gray"] == "true"
    assert identity.meta["pack_version"] == "0.1.0" and identity.meta["created"].endswith("+00:00")


def test_save_load_round_trip_is_bit_identical_and_small(tmp_path):
    identity = make_full_size_identity()
    path = fmt.save_identity(identity, str(tmp_path / "alice.safetensors"))
    assert os.path.getsize(path) < 1_000_000
    loaded = fmt.load_identity(path)
    for name in fmt.TENSORS:
        assert torch.equal(getattr(loaded, name), getattr(identity, name)), name
    assert loaded.meta == identity.meta and loaded.source == path and loaded.label == "alice.safetensors"
    with open(path, "rb") as f:  # metadata readable from the header alone
        header = json.loads(f.read(8 + int.from_bytes(open(path, "rb").read(8), "little"))[8:])
    assert header["__metadata__"]["pulid_file"] == "pulid_flux_v0.9.1.safetensors"
    assert fmt.read_identity_bytes(open(path, "rb").read()).meta == identity.meta


def test_save_never_overwrites_unless_asked(tmp_path):
    path = str(tmp_path / "bob.safetensors")
    fmt.save_identity(make_full_size_identity(0), path)
    with pytest.raises(FileExistsError, match="bob.safetensors already exists .*set overwrite"):
        fmt.save_identity(make_full_size_identity(1), path)
    assert torch.equal(fmt.load_identity(path).id_tokens, make_full_size_identity(0).id_tokens)
    fmt.save_identity(make_full_size_identity(1), path, overwrite=True)
    assert torch.equal(fmt.load_identity(path).id_tokens, make_full_size_identity(1).id_tokens)
    assert sorted(os.listdir(tmp_path)) == ["bob.safetensors"]  # no temp files left behind


def bad_files(tmp_path):
    """name -> (path, expected message fragment)."""
    good = make_full_size_identity()
    t = fmt.identity_tensors(good)
    out = {}
    p = tmp_path / "random.safetensors"
    p.write_bytes(os.urandom(100))
    out["not safetensors"] = (str(p), "not a safetensors file")
    p = tmp_path / "cut.safetensors"
    p.write_bytes(fmt.identity_bytes(good)[:5000])
    out["truncated"] = (str(p), "the file is truncated: it has 5,000 bytes, its header describes")
    out["pulid weights"] = (write_pulid_file(str(tmp_path / "pulid.safetensors"), ident_tiny_cfg(), seed=0),
                            "It holds PuLID-Flux model weights: put it in models/pulid")
    out["other safetensors"] = (write_raw(tmp_path / "lora.safetensors", {"lora_up.weight": torch.zeros(2, 2)}, {}),
                                "not a PuLID-Flux identity file (no 'pulid_flux_identity' format in its metadata; "
                                "tensors: lora_up.weight)")
    out["wrong shape"] = (write_raw(tmp_path / "shape.safetensors", dict(t, id_tokens=t["id_tokens"][0]), good.meta),
                          "wrong shape: id_tokens [32, 2048], expected [1, tokens, width]")
    out["uncond mismatch"] = (write_raw(tmp_path / "uncond.safetensors", dict(t, uncond_tokens=t["uncond_tokens"][..., :64]
                                                                            .contiguous()), good.meta),
                              "wrong shape: uncond_tokens [1, 32, 64] does not match id_tokens [1, 32, 2048]")
    out["missing tensor"] = (write_raw(tmp_path / "missing.safetensors", {k: v for k, v in t.items() if k != "arcface"},
                                       good.meta), "tensors missing: arcface")
    out["wrong dtype"] = (write_raw(tmp_path / "half.safetensors", dict(t, id_tokens=t["id_tokens"].half()), good.meta),
                          "'id_tokens' is F16, expected F32")
    nan = t["id_tokens"].clone()
    nan[0, 0, 0] = float("nan")
    out["nan"] = (write_raw(tmp_path / "nan.safetensors", dict(t, id_tokens=nan), good.meta),
                  "'id_tokens' holds NaN or infinite values")
    out["newer"] = (write_raw(tmp_path / "newer.safetensors", t, dict(good.meta, format_version="2")),
                    "made by a newer pack (identity format 2; this pack reads up to 1).")
    return out


def ident_tiny_cfg():
    from pulid_flux import TINY

    return TINY


def test_every_bad_file_gets_its_message_naming_the_file_and_the_fix(tmp_path):
    for what, (path, message) in bad_files(tmp_path).items():
        with pytest.raises(IdentityFileError) as e:
            fmt.load_identity(path)
        text = str(e.value)
        assert message in text, (what, text)
        assert text.startswith(os.path.basename(path) + ": ") and f"file: {path}" in text and "Fix: " in text, what
        with pytest.raises(IdentityFileError, match="upload"):  # the upload path uses the same checks
            fmt.read_identity_bytes(open(path, "rb").read(), "upload")
    with pytest.raises(IdentityFileError, match="nope.safetensors: identity file not found"):
        fmt.load_identity(str(tmp_path / "nope.safetensors"))


def test_a_pickle_renamed_to_safetensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.safetensors"
    fakes.write_malicious_pt(str(path), str(marker))
    with pytest.raises(IdentityFileError, match="not a safetensors file"):
        fmt.load_identity(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "/etc/passwd", "..\\x", "C:\\x", "c:x", "", "  ", ".hidden",
                                  "a\x00b", "con", "x.pt", "x" * 101, "bad*name"])
def test_traversal_and_odd_names_are_refused(name):
    with pytest.raises(ValueError, match="identity name .* refused: "):
        identity_file_name(name)


def test_plain_names_get_the_extension():
    assert identity_file_name("alice") == "alice.safetensors"
    assert identity_file_name("Alice Smith (2).safetensors") == "Alice Smith (2).safetensors"
    assert identity_file_name(" bob_v1.2 ") == "bob_v1.2.safetensors"


# --- blending -------------------------------------------------------------------------------------------
def test_blend_endpoints_are_exact_and_the_midpoint_is_the_weighted_mean():
    a, b = make_full_size_identity(1), make_full_size_identity(2)
    assert ident.blend_identities(a, b, 0.0) is a and ident.blend_identities(a, b, 1.0) is b
    mid = ident.blend_identities(a, b, 0.5)
    assert torch.equal(mid.id_tokens, (a.id_tokens + b.id_tokens) / 2)
    quarter = ident.blend_identities(a, b, 0.25)
    expected = (0.75 * a.id_tokens.double() + 0.25 * b.id_tokens.double()).float()
    tol.assert_close(quarter.id_tokens, expected, torch.float32, tol.ROUNDING)
    tol.assert_close(quarter.uncond_tokens, 0.75 * a.uncond_tokens.double() + 0.25 * b.uncond_tokens.double(),
                     torch.float32, tol.ROUNDING)
    arc = F.normalize(0.75 * a.mean_arcface().double() + 0.25 * b.mean_arcface().double(), dim=0)
    tol.assert_close(quarter.mean_arcface(), arc, torch.float32, tol.OPS)
    assert quarter.meta["references"] == "4" and json.loads(quarter.meta["blend"])["ratio"] == 0.25
    assert a.id_tokens.equal(make_full_size_identity(1).id_tokens)  # inputs untouched


def test_a_blend_keeps_neither_sources_photo_report_nor_fingerprint():
    import dataclasses

    a = make_full_size_identity(1)
    a = dataclasses.replace(a, meta=dict(a.meta, pulid_curation='{"references": []}', fingerprint=a.fingerprint))
    mid = ident.blend_identities(a, make_full_size_identity(2), 0.5)
    assert "pulid_curation" not in mid.meta and "fingerprint" not in mid.meta
    assert mid.fingerprint != a.fingerprint


def test_blend_refuses_other_pulid_files_and_other_token_counts():
    a = make_full_size_identity(1)
    with pytest.raises(ValueError, match="different PuLID-Flux files.*Encode both people with the same"):
        ident.blend_identities(a, make_full_size_identity(2, fingerprint="e" * 32), 0.5)
    with pytest.raises(ValueError, match=r"different token counts.*\[1, 32, 2048\].*\[1, 64, 2048\]"):
        ident.blend_identities(a, make_full_size_identity(2, tokens=64, fusion="concat"), 0.5)
    with pytest.raises(ValueError, match="ratio must be between 0 and 1"):
        ident.blend_identities(a, make_full_size_identity(2), 1.5)


# --- fingerprint ----------------------------------------------------------------------------------------
def test_fingerprint_tells_files_apart_reads_little_and_is_cached(tmp_path, monkeypatch):
    cfg = ident_tiny_cfg()
    one = write_pulid_file(str(tmp_path / "one.safetensors"), cfg, seed=1)
    two = write_pulid_file(str(tmp_path / "two.safetensors"), cfg, seed=2)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(open(one, "rb").read())
    assert ident.file_fingerprint(one) == ident.file_fingerprint(str(copy)) != ident.file_fingerprint(two)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: (reads.append(a[0]), real_open(*a, **k))[1])
    first = ident.file_fingerprint(str(big))
    assert ident.file_fingerprint(str(big)) == first and reads.count(str(big)) == 1  # cached
    monkeypatch.undo()
    assert 2**20 + ident.SAMPLE_CHUNKS * ident.SAMPLE_BYTES <= 2 * 2**20  # at most 2 MiB read
    with open(big, "r+b") as f:  # a change in a sampled region changes it
        f.seek(2**20)
        f.write(b"x")
    os.utime(big, ns=(1, 1))
    assert ident.file_fingerprint(str(big)) != first


# --- face similarity (ArcFace cosine, synthetic antelopev2) ---------------------------------------------
@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    fakes.write_antelopev2(str(root / "models" / "antelopev2"))
    return load_face_analysis(str(root), "CPU")


def astronaut():
    from skimage import data

    return data.astronaut()


def group_photo():
    import insightface

    bgr = cv2.imread(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))
    return np.ascontiguousarray(bgr[:, :, ::-1])


def test_a_reference_scores_1_against_itself_and_lower_against_another_face(analysis):
    ref, _ = similarity.reference_embedding(analysis, astronaut())
    scores = similarity.score_images(analysis, [astronaut(), group_photo()], ref[0])
    tol.assert_close(scores[0].score, 1.0, np.float32, tol.OPS)
    assert scores[1].score < 0.999 and len(scores[1].faces) == 1
    # independent computation: the raw ArcFace of the other face, cosine in numpy
    from encoders.faces import arcface_embedding, detect_faces
    from encoders.images import limit_long_side

    small, _ = limit_long_side(group_photo())
    frame = np.ascontiguousarray(small[:, :, ::-1])
    faces, _ = detect_faces(analysis, frame)
    other = arcface_embedding(analysis, frame, faces[0]).astype(np.float64)
    r = ref[0].double().numpy()
    tol.assert_close(scores[1].score, other @ r / np.linalg.norm(other) / np.linalg.norm(r), np.float32, tol.OPS)


def test_an_image_without_a_face_scores_0_with_a_note(analysis):
    ref, _ = similarity.reference_embedding(analysis, astronaut())
    black = np.zeros((256, 256, 3), np.uint8)
    result = similarity.score_images(analysis, [black], ref[0])[0]
    assert result.score == 0.0 and result.note == "no face detected" and result.faces == []
    text = similarity.report([result])
    assert text.splitlines()[0] == "image 1: 0.0000 (no face detected)"
    drawn = similarity.annotate(black, result)
    assert drawn.shape == black.shape and drawn.any() and not black.any()  # the note is drawn on a copy
    with pytest.raises(ValueError, match="no face detected in any reference image"):
        similarity.reference_embedding(analysis, black)


def test_annotation_draws_the_box_in_green(analysis):
    ref, _ = similarity.reference_embedding(analysis, astronaut())
    result = similarity.score_images(analysis, [astronaut()], ref[0])[0]
    drawn = similarity.annotate(astronaut(), result)
    x1, y1, x2, y2 = (int(round(v)) for v in result.best_box)
    assert tuple(drawn[(y1 + y2) // 2, x1]) == (0, 200, 0)  # left edge of the box
    assert (drawn != astronaut()).sum() > 0 and tuple(drawn[(y1 + y2) // 2, (x1 + x2) // 2]) == tuple(
        astronaut()[(y1 + y2) // 2, (x1 + x2) // 2])
