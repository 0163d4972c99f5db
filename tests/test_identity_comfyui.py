"""Tier (b): the identity nodes inside a real ComfyUI (COMFYUI_PATH), sampling a full-width random Flux on the CPU.
Save -> load -> Apply identity is bit-identical to ApplyPulidFlux; Apply identity loads no encoder."""
import dataclasses
import logging
import os

import pytest
import torch

from support import comfy_harness as H
from support.comfy_nodes_env import load_env
from support import tolerance as tol

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def env(tmp_path_factory, comfy_models):
    root = tmp_path_factory.mktemp("comfy_identity")
    identities = str(root / "identities")  # never ComfyUI's own tree
    e = load_env(root, comfy_models, lambda folder_paths: folder_paths.add_model_folder_path(
        "pulid_identities", identities, is_default=True))
    e.identities = identities
    return e


def sample(env, model, cfg=1.0, seed=3, steps=2):
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    return env.comfy_nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", env.positive, env.negative,
                                           latent, denoise=1.0)[0]["samples"]


def encode(env, image=None, **kw):
    return env.N["PulidFluxEncodeIdentity"]().encode(env.pulid, env.eva, env.faces,
                                                     env.image if image is None else image, **kw)["result"]


def saved_and_loaded(env, name, identity, overwrite=True):
    env.N["PulidFluxSaveIdentity"]().save(identity, name, overwrite)
    return env.N["PulidFluxLoadIdentity"]().load(name + ".safetensors")["result"]


def apply_identity(env, identity, model=None, **kw):
    args = dict(weight=1.0, start_at=0.0, end_at=1.0)
    args.update(kw)
    return env.N["PulidFluxApplyIdentity"]().apply(model or env.model, env.pulid, identity, **args)[0]


def test_the_contracts_node_names_and_type(env):
    assert set(env.N) >= {"PulidFluxEncodeIdentity", "PulidFluxApplyIdentity", "PulidFluxSaveIdentity",
                          "PulidFluxLoadIdentity", "PulidFluxBlendIdentities", "PulidFluxFaceSimilarity"}
    assert list(env.N["PulidFluxLoadIdentity"].INPUT_TYPES()["required"]) == ["identity_file"]
    assert env.N["PulidFluxEncodeIdentity"].RETURN_TYPES[0] == "PULIDFLUX_IDENTITY"
    assert env.N["PulidFluxFaceSimilarity"].OUTPUT_NODE and env.N["PulidFluxSaveIdentity"].OUTPUT_NODE
    for name in [k for k in env.N if k.startswith("PulidFlux") and "Loader" not in k] + ["ApplyPulidFlux"]:
        cls = env.N[name]
        assert cls.CATEGORY in ("pulid_flux/apply", "pulid_flux/identities", "pulid_flux/faces"), name
        for section in cls.INPUT_TYPES().values():
            for inp, spec in section.items():
                assert spec[1].get("tooltip"), (name, inp)
        assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES), name


@pytest.mark.parametrize("cfg,uncond", [(1.0, "same"), (3.0, "uncond_id")])
def test_save_load_apply_identity_is_bit_identical_to_apply_pulid_flux(env, cfg, uncond):
    identity, preview = encode(env)
    loaded, loaded_preview = saved_and_loaded(env, "astronaut", identity)
    assert loaded.source.startswith(env.identities) and loaded_preview.shape == (1, 128, 256, 3)
    direct = env.pack.nodes.ApplyPulidFlux().apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, env.image,
                                                                1.0, 0.1, 0.9, uncond=uncond)
    reference = sample(env, direct[0], cfg=cfg)
    via_file = sample(env, apply_identity(env, loaded, start_at=0.1, end_at=0.9, uncond=uncond), cfg=cfg)
    assert torch.equal(via_file, reference)
    assert (reference - sample(env, env.model, cfg=cfg)).abs().max() > 1e-4  # the identity does act
    assert torch.equal(direct[1], preview)


def test_identity_uncond_tokens_are_the_embeddings_uncond_tokens(env):
    layer = env.pack.comfy_layer
    emb = layer.encoding.embed_references(env.pulid, env.eva, env.faces, env.image, "mean", "largest", 0, True)
    identity, _ = encode(env)
    # the ID encoder on zeros, as test_comfyui_embedding checks against an independent computation
    assert torch.equal(identity.uncond_tokens, env.pulid.uncond_tokens())
    assert env.pulid.uncond_tokens() is env.pulid.uncond_tokens()  # cached once per model
    assert torch.equal(identity.id_tokens, emb.id_tokens)
    tol.assert_close(identity.arcface, torch.nn.functional.normalize(emb.arcface, dim=-1), torch.float32, tol.ROUNDING)


def test_apply_identity_loads_no_encoder(env, monkeypatch):
    import comfy.model_management as mm

    identity, _ = saved_and_loaded(env, "astronaut_no_encoders", encode(env)[0])
    mm.unload_all_models()
    asked = []
    real = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: (asked.extend(models), real(models, *a, **k))[1])
    patched = apply_identity(env, identity)
    seen = []

    def probe(args, extra):
        seen.extend(loaded.model for loaded in mm.current_loaded_models if loaded.model is not None)
        return inner(args, extra)

    probed = patched.clone()
    inner = probed.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    probed.set_model_patch_replace(probe, "dit", "double_block", 0)
    probed.set_additional_models("pulid_probe", [env.pulid.ca])
    sample(env, probed)
    # every BiSeNet loaded so far in this process (earlier test modules register their own models folders)
    encoders = [env.eva.patcher, env.pulid.encoder] + list(env.pack.comfy_layer.models._parsers.values())
    assert len(encoders) >= 3
    assert seen and any(m is env.pulid.ca for m in seen)  # the cross-attentions are loaded while sampling
    for m in encoders:
        assert not any(m is s for s in seen) and not any(m is a for a in asked)
        assert not any(loaded.model is m for loaded in mm.current_loaded_models)


def test_another_pulid_file_warns_and_wrong_shapes_refuse(env, caplog):
    identity, _ = encode(env)
    other = type(identity)(identity.id_tokens, identity.uncond_tokens, identity.arcface, identity.preview,
                           dict(identity.meta, pulid_file="pulid_flux_v0.9.0.safetensors", pulid_fingerprint="0" * 32),
                           source="/x/bob.safetensors")
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        apply_identity(env, other)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "bob.safetensors was made with pulid_flux_v0.9.0.safetensors" in text
    assert "Load pulid_flux_v0.9.0.safetensors in Load PuLID-Flux Model, or encode the identity again" in text
    narrow = type(identity)(identity.id_tokens[..., :64], identity.uncond_tokens[..., :64], identity.arcface,
                            identity.preview, identity.meta, source="/x/narrow.safetensors")
    with pytest.raises(ValueError, match=r"narrow.safetensors: its ID tokens \[1, 32, 64\] do not fit"):
        apply_identity(env, narrow)


def test_blend_node_endpoints_and_midpoint(env):
    a, _ = encode(env)
    flipped = torch.flip(env.image, dims=[2]).contiguous()
    b, _ = encode(env, image=flipped)
    blend = env.N["PulidFluxBlendIdentities"]().blend
    assert blend(a, b, 0.0)[0] is a and blend(a, b, 1.0)[0] is b
    assert torch.equal(blend(a, b, 0.5)[0].id_tokens, (a.id_tokens + b.id_tokens) / 2)
    out_a = sample(env, apply_identity(env, blend(a, b, 0.0)[0]))
    assert torch.equal(out_a, sample(env, apply_identity(env, a)))


def test_face_similarity_node(env):
    identity, _ = encode(env)
    black = torch.zeros_like(env.image)
    node = env.N["PulidFluxFaceSimilarity"]()
    out = node.score(env.faces, torch.cat([black, env.image]), identity=identity)
    values = out["ui"]["pulid_similarity"]
    assert len(values) == 2 and values[0] == 0.0
    tol.assert_close(values[1], 1.0, torch.float32, tol.OPS)
    scores, text, best, best_image, annotated, copy = out["result"]
    assert scores == values and best == 1 and torch.equal(best_image, env.image) and copy[0] == 0.0  # no face
    assert "image 1: 0.0000 (no face detected)" in text and out["ui"]["text"] == [text]
    assert annotated.shape == (2, 512, 512, 3) and not torch.equal(annotated[1], env.image[0])
    by_photo = node.score(env.faces, env.image, reference=env.image)["ui"]["pulid_similarity"]
    tol.assert_close(by_photo[0], 1.0, torch.float32, tol.OPS)
    with pytest.raises(ValueError, match="needs an identity or a reference image"):
        node.score(env.faces, env.image)


def test_save_node_refuses_traversal_and_overwrite(env):
    identity, _ = encode(env)
    save = env.N["PulidFluxSaveIdentity"]().save
    for bad in ("../escape", "/tmp/abs", "sub/name"):
        with pytest.raises(ValueError, match="refused: it is a path"):
            save(identity, bad, True)
    result = save(identity, "once", False)
    assert result["ui"]["text"] == [os.path.join(env.identities, "once.safetensors")]
    with pytest.raises(FileExistsError, match="once.safetensors already exists"):
        save(identity, "once", False)
    assert not os.path.exists(os.path.join(os.path.dirname(env.identities), "escape.safetensors"))


def test_load_node_lists_files_reloads_changes_and_names_bad_files(env):
    identity, _ = encode(env)
    env.N["PulidFluxSaveIdentity"]().save(identity, "listed", True)
    load = env.N["PulidFluxLoadIdentity"]
    assert "listed.safetensors" in load.INPUT_TYPES()["required"]["identity_file"][0]
    before = load.IS_CHANGED("listed.safetensors")
    os.utime(os.path.join(env.identities, "listed.safetensors"), ns=(1, 1))
    assert load.IS_CHANGED("listed.safetensors") != before
    bad = os.path.join(env.identities, "not_an_identity.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not_an_identity.safetensors: not a PuLID-Flux identity file"):
        load().load("not_an_identity.safetensors")
    with pytest.raises(ValueError, match="gone.safetensors: not in any identities folder") as e:
        load().load("gone.safetensors")
    assert "Fix: save it with Save identity or upload it" in str(e.value)
    # identity files never show up as PuLID-Flux weights in the model loader
    assert not [n for n in env.N["PulidFluxModelLoader"].INPUT_TYPES()["required"]["pulid_file"][0] if "identities" in n]


def test_identities_folder_keeps_yaml_entries_first(env):
    paths = env.folder_paths.get_folder_paths("pulid_identities")
    assert paths[0] == env.identities
    assert os.path.join(env.folder_paths.models_dir, "pulid", "identities") in paths
    assert env.pack.comfy_layer.folders.save_folder() == env.identities


def test_encode_identity_shares_the_embedding_cache(env, monkeypatch):
    encode(env)
    calls = []
    monkeypatch.setattr(env.pack.comfy_layer.encoding, "FaceEncoders", lambda *a, **k: calls.append(1))
    identity, _ = encode(env)
    env.pack.nodes.ApplyPulidFlux().apply_pulid_flux(env.model, env.pulid, env.eva, env.faces, env.image, 0.5, 0.0, 1.0)
    assert calls == [] and identity.meta["references"] == "1"
    tol.assert_close(identity.arcface.norm(), 1.0, torch.float32, tol.OPS)


@pytest.fixture
def comfy_dirs(env, tmp_path, monkeypatch):
    """ComfyUI's input and output folders, in tmp_path for this test."""
    for kind in ("input", "output"):
        os.makedirs(tmp_path / kind)
        monkeypatch.setattr(env.folder_paths, f"{kind}_directory", str(tmp_path / kind))
    return tmp_path


def test_save_writes_a_card_that_load_identity_card_reads_as_the_file(env, comfy_dirs, caplog):
    card_module = env.pack.pulid_flux.identity.card
    identity, _ = encode(env)
    (comfy_dirs / "input" / "photo of me.png").write_bytes(b"\x89PNG\r\n\x1a\n a photo, not a card")
    with pytest.raises(FileExistsError, match="photo of me.png in .*input is a picture that is not an identity card"):
        env.N["PulidFluxSaveIdentity"]().save(identity, "photo of me", True, True)  # even with overwrite
    assert not os.path.exists(os.path.join(env.identities, "photo of me.safetensors"))  # checked before writing
    result = env.N["PulidFluxSaveIdentity"]().save(identity, "carded", True, True)
    assert result["ui"]["images"] == [{"filename": "carded.png", "subfolder": "", "type": "output"}]
    with open(os.path.join(env.identities, "carded.safetensors"), "rb") as f:
        assert card_module.read_card((comfy_dirs / "output" / "carded.png").read_bytes(), "c").identity_bytes == f.read()
    # the same card in the input folder: Load identity card lists it, ComfyUI-Distributed's media sync finds it
    assert (comfy_dirs / "input" / "carded.png").read_bytes() == (comfy_dirs / "output" / "carded.png").read_bytes()
    assert str(comfy_dirs / "input" / "carded.png") in result["ui"]["text"][1]
    env.N["PulidFluxSaveIdentity"]().save(identity, "carded", True, True)  # a card is replaced with overwrite
    # a photo whose compressed bytes happen to hold the card chunk's name is still a photo
    (comfy_dirs / "input" / "lucky.png").write_bytes(b"\x89PNG\r\n\x1a\n compressed bytes holding puLi by chance")
    with pytest.raises(FileExistsError, match="lucky.png in .*input is a picture that is not an identity card"):
        env.N["PulidFluxSaveIdentity"]().save(identity, "lucky", True, True)
    node = env.N["PulidFluxLoadIdentityCard"]
    (files, options), = node.INPUT_TYPES()["required"].values()
    assert list(node.INPUT_TYPES()["required"]) == ["image"] and "carded.png" in files and options["image_upload"]
    assert node.VALIDATE_INPUTS("carded.png") is True
    with caplog.at_level(logging.INFO, logger="PuLID-Flux"):
        out = node().load("carded.png")
        from_card, preview = out["result"]
        from_file = env.N["PulidFluxLoadIdentity"]().load("carded.safetensors")["result"][0]
        apply_identity(env, from_card)
    for name in ("id_tokens", "uncond_tokens", "arcface", "preview"):
        assert torch.equal(getattr(from_card, name), getattr(from_file, name)), name
    assert from_card.meta == from_file.meta and preview.shape == (1, 128, 256, 3)
    assert out["ui"]["text"] == [f"carded.png: fingerprint {identity.fingerprint}"]
    short = env.pack.pulid_flux.identity.fingerprint.short_fingerprint(identity.fingerprint)
    assert f"applying identity carded.png ({short})" in caplog.text

    before = node.IS_CHANGED("carded.png")
    (comfy_dirs / "input" / "carded.png").write_bytes(card_module.identity_card_bytes(encode(env, image=torch.flip(
        env.image, dims=[2]))[0]))
    assert node.IS_CHANGED("carded.png") != before  # a card replaced under the same name is read again
    with pytest.raises(FileExistsError, match="carded.png already exists"):
        env.N["PulidFluxSaveIdentity"]().save(identity, "carded", False, True)


def test_missing_identities_and_cards_are_named_at_validation(env, comfy_dirs):
    message = env.N["PulidFluxLoadIdentity"].VALIDATE_INPUTS("nobody.safetensors")
    assert message.startswith("identity 'nobody.safetensors' is not on server ") and len(message) < 600, message
    assert f"(looked in {env.identities}" in message and "extra_model_paths.yaml" in message
    assert "--identity nobody.safetensors --keep-name" in message and "/pulid_flux/identities" in message
    somebody = encode(env)[0]
    env.N["PulidFluxSaveIdentity"]().save(somebody, "somebody", True)
    load = env.N["PulidFluxLoadIdentity"]
    assert load.VALIDATE_INPUTS("somebody.safetensors") is True
    assert list(load.INPUT_TYPES()["optional"]) == ["fingerprint"]  # after identity_file: old workflows still load
    for same in (somebody.fingerprint, somebody.fingerprint[:18].upper(), ""):
        assert load.VALIDATE_INPUTS("somebody.safetensors", same) is True, same
    wanted = "pfid1-" + "0" * 32
    stale = load.VALIDATE_INPUTS("somebody.safetensors", wanted)
    assert f"fingerprint {somebody.fingerprint} here, {wanted} in the workflow" in stale, stale
    assert "is not an identity fingerprint" in load.VALIDATE_INPUTS("somebody.safetensors", "alice")
    with pytest.raises(ValueError, match="is not the one this workflow chose"):  # replaced after validation
        load().load("somebody.safetensors", wanted)
    assert load().load("somebody.safetensors", somebody.fingerprint)["result"][0].fingerprint == somebody.fingerprint
    reply = env.pack.comfy_layer.routes.fingerprint_reply  # GET /pulid_flux/identities/fingerprint?name=...
    assert reply("somebody.safetensors") == (200, {"name": "somebody.safetensors", "fingerprint": somebody.fingerprint})
    assert reply("")[0] == reply(None)[0] == 400
    for name in ("../somebody.safetensors", "nobody.safetensors"):  # a lookup: no 4xx in the browser's console
        assert reply(name) == (200, {"name": name, "fingerprint": None,
                                     "error": f"identity {name!r} is not on this server"}), name
    with open(os.path.join(env.identities, "broken.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    status, body = reply("broken.safetensors")
    assert (status, body["fingerprint"]) == (200, None) and body["error"].startswith("broken.safetensors: ")
    assert load.VALIDATE_INPUTS("broken.safetensors", wanted).startswith("broken.safetensors: ")
    os.remove(os.path.join(env.identities, "broken.safetensors"))
    node = env.N["PulidFluxLoadIdentityCard"]
    (comfy_dirs / "outside.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for bad in ("nope.png", "../outside.png", "", 5):
        assert f"is not in the input folder of server " in node.VALIDATE_INPUTS(bad), bad
        assert f"({comfy_dirs / 'input'})" in node.VALIDATE_INPUTS(bad), bad
    message = node.VALIDATE_INPUTS("elsewhere.png [output]")
    assert f"is not in the output folder of server " in message and f"({comfy_dirs / 'output'})" in message
    assert "Fix: a card in an output folder is not copied to other servers" in message
    assert "choose 'elsewhere.png' in Load identity card's list" in message
    with pytest.raises(ValueError, match="^outside.png: is not in the input folder of server ") as e:
        node().load("../outside.png")
    assert "file: ../outside.png" in str(e.value) and "Fix: upload the card to this server" in str(e.value) and node.IS_CHANGED("nope.png") == "missing"
    (comfy_dirs / "input" / "photo.png").write_bytes((comfy_dirs / "outside.png").read_bytes() + b"\0" * 30)
    with pytest.raises(ValueError, match="photo.png: the PNG is damaged"):
        node().load("photo.png")

def test_cli_writes_the_same_identity_as_the_nodes(env, tmp_path):
    import subprocess
    import sys

    from PIL import Image
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    out, card = tmp_path / "cli.safetensors", tmp_path / "cli.png"
    cmd = [sys.executable, "-m", "pulid_tools", "identity", "--face", str(photo), "--models", env.models, "--out",
           str(out), "--card", str(card)]
    result = subprocess.run(cmd, cwd=H.REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out), str(card)] and "7/7" in result.stderr  # 4 models, 1 photo, 1 batch, ID
    cli = env.pack.pulid_flux.identity.file.load_identity(str(out))
    node, _ = encode(env)
    for name in ("id_tokens", "uncond_tokens", "arcface", "preview"):
        assert torch.equal(getattr(cli, name), getattr(node, name)), name
    for key in ("pulid_file", "pulid_fingerprint", "fusion", "use_gray", "references", "format"):
        assert cli.meta[key] == node.meta[key], key
    # two encodes of the same photo: the same fingerprint, and the same file apart from its creation time
    assert f"fingerprint {node.fingerprint}" in result.stderr and cli.fingerprint == node.fingerprint
    fmt = env.pack.pulid_flux.identity.file
    same_time = dataclasses.replace(node, meta=dict(node.meta, created=cli.meta["created"]))
    assert out.read_bytes() == fmt.identity_bytes(same_time)
    from_card = env.pack.pulid_flux.identity.card.load_identity_card(str(card))
    assert from_card.fingerprint == node.fingerprint and torch.equal(from_card.id_tokens, node.id_tokens)
    again = subprocess.run(cmd, cwd=H.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists: choose another name or add --overwrite" in again.stderr


# --- curation and copy detection (issue 17) ------------------------------------------------------------------------
CURATION_INPUTS = ["curate", "min_consistency", "min_face_px", "max_yaw", "max_pitch", "min_sharpness"]


def test_curation_inputs_and_copy_score_come_after_everything_older(env):
    apply = env.N["ApplyPulidFlux"].INPUT_TYPES()["optional"]
    assert list(apply) == ["attn_mask", "fusion", "face_order", "face_index", "use_gray", "uncond",
                           "on_no_face"] + CURATION_INPUTS
    assert apply["curate"][1]["default"] == "off"
    encode_inputs = env.N["PulidFluxEncodeIdentity"].INPUT_TYPES()["optional"]
    assert list(encode_inputs) == ["fusion", "face_order", "face_index", "use_gray"] + CURATION_INPUTS
    assert encode_inputs["min_consistency"] == apply["min_consistency"]  # declared once
    similarity = env.N["PulidFluxFaceSimilarity"]
    assert list(similarity.INPUT_TYPES()["optional"]) == ["identity", "reference", "copy_penalty"]
    assert similarity.RETURN_NAMES == ("similarity", "report", "best_index", "best_image", "annotated", "copy_score")
    assert similarity.OUTPUT_IS_LIST[-1] and "high similarity with a low copy score" in similarity.OUTPUT_TOOLTIPS[-1]


def one_person_and_a_stranger(env):
    """The astronaut twice and mirrored: to the antelopev2 stand-in (random weights) the mirror image is another
    person (consistency about 0.1), and it has no face detector problem; then a photo without a face."""
    mirrored = env.image.flip(2)
    return torch.cat([env.image, env.image, mirrored, torch.zeros_like(env.image)])


def test_drop_leaves_the_stranger_out_and_equals_the_kept_photos_alone(env, caplog):
    from encoders.curation.preview import DROPPED_RGB
    from encoders.curation.report import parse_report

    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        identity, preview = encode(env, one_person_and_a_stranger(env), curate="drop")
    alone, alone_preview = encode(env, torch.cat([env.image, env.image]))
    assert torch.equal(identity.id_tokens, alone.id_tokens) and torch.equal(identity.arcface, alone.arcface)
    assert identity.meta["references"] == "2" and alone_preview.shape[0] == 2
    assert preview.shape[0] == 4  # every photo with its verdict; the dropped one framed red
    assert tuple((preview[2, -1, 0] * 255).round().int().tolist()) == DROPPED_RGB
    report, why = parse_report(identity.meta["pulid_curation"])
    assert why == "" and [r["kept"] for r in report["references"]] == [True, True, False, False]
    assert report["references"][2]["verdict"] == "looks like another person"
    assert any("reference image 3 skipped: looks like another person" in r.getMessage() for r in caplog.records)
    loaded, _ = saved_and_loaded(env, "curated", identity)
    assert loaded.meta["pulid_curation"] == identity.meta["pulid_curation"]
    direct = env.pack.nodes.ApplyPulidFlux().apply_pulid_flux(env.model, env.pulid, env.eva, env.faces,
                                                                one_person_and_a_stranger(env), 1.0, 0.0, 1.0,
                                                                curate="drop")
    assert torch.equal(sample(env, direct[0]), sample(env, apply_identity(env, alone)))


def test_off_is_unchanged_and_warn_only_reports(env, caplog):
    photos = one_person_and_a_stranger(env)
    plain, plain_preview = encode(env, photos)
    warned, warned_preview = encode(env, photos, curate="warn")
    assert torch.equal(plain.id_tokens, warned.id_tokens) and plain_preview.shape[0] == 3
    assert warned_preview.shape[0] == 4 and plain.meta["references"] == warned.meta["references"] == "3"
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        encode(env, photos, curate="warn")
    assert any("reference image 3 used (curate 'warn'): looks like another person" in r.getMessage()
               for r in caplog.records)


def test_curation_that_leaves_nothing_is_a_clear_error(env):
    with pytest.raises(ValueError, match=r"curate 'drop' left no reference photo.*photo 1: face too small"):
        encode(env, curate="drop", min_face_px=4000.0)


def test_face_similarity_copy_score_is_highest_for_the_reference_itself(env):
    import dataclasses

    identity, _ = encode(env)
    images = torch.cat([env.image.flip(2), env.image, (env.image * 0.8).clamp(0, 1)])
    node = env.N["PulidFluxFaceSimilarity"]()
    out = node.score(env.faces, images, identity=identity)["result"]
    similarity, text, best, _, _, copy = out
    # the report keeps landmarks to 0.1 px, which moves the pose part of a perfect copy by under 1 %
    assert len(out) == 6 and len(copy) == 3 and copy[1] == pytest.approx(1.0, abs=0.01)
    assert copy[1] > copy[0] and copy[1] > copy[2] and "copy" in text
    assert best == max(range(3), key=lambda i: similarity[i])  # no penalty: today's ranking
    penalised = node.score(env.faces, images, identity=identity, copy_penalty=10.0)["result"]
    assert penalised[2] != 1 and penalised[5] == copy
    old = dataclasses.replace(identity, meta={k: v for k, v in identity.meta.items() if k != "pulid_curation"})
    without_pose = node.score(env.faces, images, identity=old)["result"][5]  # a file from before: identity part
    assert without_pose[1] == pytest.approx(1.0, abs=1e-4)
    by_photo = node.score(env.faces, images, reference=env.image)["result"][5]
    assert by_photo[1] == pytest.approx(1.0, abs=1e-4) and by_photo[1] > max(by_photo[0], by_photo[2])
