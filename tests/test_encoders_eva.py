"""EVA02-CLIP-L-14-336 via timm: BAAI and open_clip layouts, hidden states, embedding, refused files."""
import os

import pytest
import torch

from support import tolerance as tol
from encoders import EncoderModelError, load_eva_clip
from encoders.eva import EvaConfig, build_timm_eva, read_eva_state_dict
from support import encoder_fakes as fakes

TINY = fakes.TINY_EVA


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eva")
    return {"baai": fakes.write_eva_baai(str(folder / "EVA02_CLIP_L_336_psz14_s6B.pt"), TINY, seed=3),
            "open_clip": fakes.write_eva_open_clip(str(folder / "open_clip_model.safetensors"), TINY, seed=3)}


@pytest.fixture(scope="module")
def eva(files):
    return load_eva_clip(files["baai"], config=TINY)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))


def test_baai_and_safetensors_give_identical_outputs(files, eva, pixels):
    other = load_eva_clip(files["open_clip"], config=TINY)
    embedding_a, hidden_a = eva(pixels)
    embedding_b, hidden_b = other(pixels)
    assert embedding_a.shape == (2, 768) and torch.equal(embedding_a, embedding_b)
    assert len(hidden_a) == 5 and all(torch.equal(a, b) for a, b in zip(hidden_a, hidden_b))


def test_timm_named_file_loads(tmp_path, eva, pixels):
    from safetensors.torch import save_file

    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in eva.trunk.state_dict().items()}, path)
    assert torch.equal(load_eva_clip(path, config=TINY)(pixels)[0], eva(pixels)[0])


def test_key_mapping_equals_timm_checkpoint_filter(files):
    from timm.models.eva import checkpoint_filter_fn

    raw = torch.load(files["baai"], weights_only=True)
    assert any(k.startswith("text.") for k in raw) and any(".rope." in k for k in raw)  # dropped paths exercised
    reference = checkpoint_filter_fn(raw, build_timm_eva(TINY, device="cpu"))
    ours = read_eva_state_dict(files["baai"], TINY)
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_hidden_states_are_block_outputs_3_7_11_15_19(eva, pixels):
    captured = {}
    hooks = [eva.trunk.blocks[i].register_forward_hook(lambda m, args, out, i=i: captured.__setitem__(i, out))
             for i in (3, 7, 11, 15, 19)]
    try:
        _, hidden = eva(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    for i, h in zip((3, 7, 11, 15, 19), hidden):
        assert h.shape == (2, 577, TINY.width)  # CLS token included
        assert torch.equal(h, captured[i])


def test_embedding_equals_timm_forward_unnormalized(eva, pixels):
    embedding, _ = eva(pixels)
    reference = eva.trunk(pixels)  # timm forward: final norm, CLS token, 768-d head
    tol.assert_close(embedding, reference, torch.float32, tol.NETWORK)
    assert not torch.allclose(embedding.norm(dim=-1), torch.ones(2))


def test_preprocess_is_bicubic_336_with_openai_stats(eva):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import normalize, resize

    images = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    expected = normalize(resize(images, [336, 336], InterpolationMode.BICUBIC, antialias=False),
                         [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    tol.assert_close(eva.preprocess(images), expected, torch.float32, tol.OPS)


def test_dtype_and_device_parameters(files, pixels):
    model = load_eva_clip(files["open_clip"], dtype=torch.bfloat16, config=TINY)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    embedding, hidden = model(pixels)
    assert embedding.dtype == torch.bfloat16 and hidden[0].dtype == torch.bfloat16
    assert all(not p.requires_grad for p in model.parameters()) and not model.training


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = fakes.write_malicious_pt(str(tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"), str(marker))
    with pytest.raises(EncoderModelError) as e:
        load_eva_clip(path, config=TINY)
    assert "refused" in str(e.value) and path in str(e.value)
    assert not marker.exists()


def test_refusal_is_one_clean_line_naming_the_global(tmp_path):
    path = fakes.write_malicious_pt(str(tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"), str(tmp_path / "pwned.txt"))
    with pytest.raises(EncoderModelError) as e:
        load_eva_clip(path, config=TINY)
    first = str(e.value).splitlines()[0]
    assert first == ("EVA02_CLIP_L_336_psz14_s6B.pt: refused: it holds Python objects other than tensors (pickled "
                     "code such as exec), which is refused for safety; use the original file or its "
                     ".safetensors version.")
    assert "\x1b" not in str(e.value) and "two options" not in str(e.value)


@pytest.mark.parametrize("fraction", [0.5, 0.01, 0.0])
def test_truncated_pt_is_reported_as_broken_not_as_refused_code(tmp_path, files, fraction):
    """An interrupted download of the BAAI .pt: torch's zip reader fails; that is no pickle asking for code."""
    path = str(tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt")
    with open(files["baai"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(int(os.path.getsize(files["baai"]) * fraction)))
    with pytest.raises(EncoderModelError) as e:
        load_eva_clip(path, config=TINY)
    message = str(e.value)
    assert message.startswith("EVA02_CLIP_L_336_psz14_s6B.pt: the file is truncated or broken (")
    assert "download it again" in message and path in message
    assert "refused" not in message and "code" not in message


def test_malicious_fixture_really_runs_code_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = fakes.write_malicious_pt(str(tmp_path / "evil.pt"), str(marker))
    torch.load(path, weights_only=False)  # only here, in a temp dir, to prove the double is a real threat
    assert marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(EncoderModelError, match="not found") as e:
        load_eva_clip(str(tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"), config=TINY)
    assert "huggingface.co/QuanSun/EVA-CLIP" in str(e.value)
    assert "eva02_large_patch14_clip_336.merged2b_s6b_b61k" in str(e.value)


def test_sdxl_file_is_refused(tmp_path):
    path = fakes.write_sdxl_like(str(tmp_path / "sd_xl_base_1.0.safetensors"))
    with pytest.raises(EncoderModelError, match="diffusion model checkpoint") as e:
        load_eva_clip(path, config=TINY)
    assert "EVA02_CLIP_L_336_psz14_s6B.pt" in str(e.value)


def test_other_foreign_files_are_named(tmp_path):
    from safetensors.torch import save_file

    cases = {"pulid_encoder.latents": "PuLID-Flux weight file", "id_adapter.weight": "PuLID for SDXL",
             "vision_model.embeddings.patch_embedding.weight": "different CLIP model", "foo": "no EVA02 CLIP"}
    for key, expected in cases.items():
        path = str(tmp_path / "x.safetensors")
        save_file({key: torch.zeros(1)}, path)
        with pytest.raises(EncoderModelError, match=expected):
            load_eva_clip(path, config=TINY)


def test_224px_eva_is_refused_with_resolution(tmp_path):
    path = fakes.write_eva_open_clip(str(tmp_path / "eva224.safetensors"), EvaConfig(32, 20, 2, image_size=224))
    with pytest.raises(EncoderModelError, match="works at 224 px .* needs the 336 px model"):
        load_eva_clip(path, config=TINY)


def test_other_width_is_refused(tmp_path):
    path = fakes.write_eva_baai(str(tmp_path / "narrow.pt"), EvaConfig(16, 20, 2))
    with pytest.raises(EncoderModelError, match="width 16 and 20 blocks; expected width 32"):
        load_eva_clip(path, config=TINY)


def test_truncated_safetensors(tmp_path, files):
    path = str(tmp_path / "cut.safetensors")
    with open(files["open_clip"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(os.path.getsize(files["open_clip"]) // 2))
    with pytest.raises(EncoderModelError, match="corrupt or truncated"):
        load_eva_clip(path, config=TINY)


@pytest.mark.slow
def test_full_size_eva02_clip_l_336(tmp_path):
    """Full EVA02-CLIP-L-14-336 (304 M parameters) from both layouts; hidden states [1,577,1024], 768-d output."""
    baai = fakes.write_eva_baai(str(tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"), fakes.FULL_EVA)
    model = load_eva_clip(baai)
    assert sum(p.numel() for p in model.trunk.parameters()) == 304_432_832
    pixels = model.preprocess(torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)))
    captured = {}
    hooks = [model.trunk.blocks[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
             for i in (3, 7, 11, 15, 19)]
    embedding, hidden = model(pixels)
    for hook in hooks:
        hook.remove()
    assert embedding.shape == (1, 768) and [tuple(h.shape) for h in hidden] == [(1, 577, 1024)] * 5
    assert all(torch.equal(h, captured[i]) for i, h in zip((3, 7, 11, 15, 19), hidden))
    tol.assert_close(embedding, model.trunk(pixels), torch.float32, tol.NETWORK)
    del model
    other = load_eva_clip(fakes.write_eva_open_clip(str(tmp_path / "open_clip_model.safetensors"), fakes.FULL_EVA))
    embedding_b, hidden_b = other(pixels)
    assert torch.equal(embedding, embedding_b) and all(torch.equal(a, b) for a, b in zip(hidden, hidden_b))
