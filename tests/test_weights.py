"""The loader against files in the official layout: keys, shapes, dtypes and every kind of bad file."""
import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pulid_flux import OFFICIAL, TINY, PulidWeightsError, load_pulid_flux
from support.pulid_fakes import random_state_dict, write_pulid_file


def official_layout():
    """The official key/shape table, written out from the published model (not from our config code)."""
    t = {"pulid_encoder.latents": (1, 32, 1024), "pulid_encoder.proj_out": (1024, 2048)}
    for L in range(10):
        p = f"pulid_encoder.layers.{L}."
        t.update({p + "0.norm1.weight": (1024,), p + "0.norm1.bias": (1024,), p + "0.norm2.weight": (1024,),
                  p + "0.norm2.bias": (1024,), p + "0.to_q.weight": (1024, 1024), p + "0.to_kv.weight": (2048, 1024),
                  p + "0.to_out.weight": (1024, 1024), p + "1.0.weight": (1024,), p + "1.0.bias": (1024,),
                  p + "1.1.weight": (4096, 1024), p + "1.3.weight": (1024, 4096)})
    for name, d_in, d_out in [(f"mapping_{m}", 1024, 1024) for m in range(5)] + [("id_embedding_mapping", 1280, 5120)]:
        p = f"pulid_encoder.{name}."
        t.update({p + "0.weight": (1024, d_in), p + "0.bias": (1024,), p + "1.weight": (1024,), p + "1.bias": (1024,),
                  p + "3.weight": (1024, 1024), p + "3.bias": (1024,), p + "4.weight": (1024,), p + "4.bias": (1024,),
                  p + "6.weight": (d_out, 1024), p + "6.bias": (d_out,)})
    for c in range(20):
        p = f"pulid_ca.{c}."
        t.update({p + "norm1.weight": (2048,), p + "norm1.bias": (2048,), p + "norm2.weight": (3072,),
                  p + "norm2.bias": (3072,), p + "to_q.weight": (2048, 3072), p + "to_kv.weight": (4096, 2048),
                  p + "to_out.weight": (3072, 2048)})
    return t


@pytest.fixture(scope="module")
def full_fp16(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    yield write_pulid_file(str(folder / "pulid_flux_v0.9.1.safetensors"), OFFICIAL, seed=1)
    shutil.rmtree(folder, ignore_errors=True)  # 1 GB: gone when the module is done


def test_full_size_file_has_the_official_layout(full_fp16):
    layout = official_layout()
    assert len(layout) == 312
    assert sum(torch.Size(s).numel() for s in layout.values()) == 571_033_600
    state = load_file(full_fp16)
    assert {k: tuple(v.shape) for k, v in state.items()} == layout
    assert os.path.getsize(full_fp16) > 2 * 571_033_600
    model = load_pulid_flux(full_fp16)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    assert sum(p.numel() for p in model.parameters()) == 571_033_600
    assert sum(k.startswith("pulid_encoder.") for k in layout) == 172


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_tiny_round_trip_keeps_values_and_dtype(tmp_path, dtype, ext):
    path = write_pulid_file(str(tmp_path / f"tiny{ext}"), TINY, seed=3, dtype=dtype)
    if ext == ".pt":  # a .pt carries no config metadata, so only official files load from it
        with pytest.raises(PulidWeightsError, match="wrong shapes"):
            load_pulid_flux(path)
        return
    model = load_pulid_flux(path)
    expected = random_state_dict(TINY, seed=3, dtype=dtype)
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k].dtype == dtype and torch.equal(got[k], v), k
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_full_size_round_trip(tmp_path, dtype):
    path = write_pulid_file(str(tmp_path / "full.safetensors"), OFFICIAL, seed=2, dtype=dtype)
    model = load_pulid_flux(path)
    ref = load_file(path)
    for k, v in model.state_dict().items():
        assert v.dtype == dtype and torch.equal(v, ref[k]), k


def test_full_size_pt_round_trip(tmp_path, full_fp16):
    path = str(tmp_path / "pulid_flux.pt")
    torch.save(load_file(full_fp16), path)
    model = load_pulid_flux(path)
    assert model.pulid_ca[19].to_out.weight.dtype == torch.float16
    assert torch.equal(model.pulid_ca[19].to_out.weight, load_file(full_fp16)["pulid_ca.19.to_out.weight"])


def _msg(excinfo):
    return str(excinfo.value)


def test_sdxl_pulid_is_refused_with_the_right_download(tmp_path):
    path = str(tmp_path / "pulid_v1.1.safetensors")
    save_file({"id_adapter.body.0.weight": torch.zeros(4, 4),
               "id_adapter_attn_layers.1.id_to_k.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(PulidWeightsError) as e:
        load_pulid_flux(path)
    assert "SDXL" in _msg(e) and "pulid_flux_v0.9.1.safetensors" in _msg(e) and "models/pulid" in _msg(e)
    assert "pulid_v1.1.safetensors" in _msg(e)


@pytest.mark.parametrize("state,expected", [
    # cubiq's PuLID_ComfyUI (PuLID for SDXL): image_proj = its IDEncoder (body, mapping_i), ip_adapter = to_k/v_ip
    ({"image_proj.body.0.weight": torch.zeros(8, 4), "image_proj.mapping_0.0.weight": torch.zeros(4, 4),
      "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 8), "ip_adapter.1.to_v_ip.weight": torch.zeros(4, 8)},
     "PuLID for SDXL in cubiq's PuLID_ComfyUI layout (ip-adapter_pulid_sdxl_fp16.safetensors)"),
    ({"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)},
     "an IP-Adapter model"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
      "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.zeros(1, 4)},
     "a Stable Diffusion / SDXL checkpoint"),
    ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, "a Flux diffusion model"),
], ids=["cubiq-pulid-sdxl", "ip-adapter", "sdxl-checkpoint", "flux"])
def test_other_models_are_named_for_what_they_are(tmp_path, state, expected):
    """Before: an SDXL checkpoint was 'a Flux diffusion model' and cubiq's PuLID for SDXL only a list of keys."""
    path = str(tmp_path / "model.safetensors")
    save_file(state, path)
    with pytest.raises(PulidWeightsError) as e:
        load_pulid_flux(path)
    assert expected in _msg(e) and "pulid_flux_v0.9.1.safetensors" in _msg(e), _msg(e)
    if expected != "a Flux diffusion model":
        assert "Flux diffusion model" not in _msg(e)


def test_truncated_file_is_refused(tmp_path):
    path = write_pulid_file(str(tmp_path / "pulid_flux_v0.9.1.safetensors"), TINY)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])
    with pytest.raises(PulidWeightsError, match="truncated") as e:
        load_pulid_flux(path)
    assert path in _msg(e)
    open(path, "wb").write(data[:5])
    with pytest.raises(PulidWeightsError, match="truncated"):
        load_pulid_flux(path)


def test_corrupt_header_is_refused(tmp_path):
    path = str(tmp_path / "pulid_flux.safetensors")
    open(path, "wb").write((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(PulidWeightsError, match="damaged safetensors header: not valid JSON"):
        load_pulid_flux(path)


def test_missing_unexpected_and_wrong_shape_keys_are_listed(tmp_path):
    state = random_state_dict(TINY)
    del state["pulid_ca.7.to_q.weight"]
    state["pulid_ca.20.to_q.weight"] = torch.zeros(1)
    state["pulid_encoder.proj_out"] = torch.zeros(3, 3)
    path = str(tmp_path / "odd.safetensors")
    save_file(state, path, metadata={"pulid_config": TINY.to_json()})
    with pytest.raises(PulidWeightsError) as e:
        load_pulid_flux(path)
    m = _msg(e)
    assert "missing keys (1): pulid_ca.7.to_q.weight" in m
    assert "unexpected keys (1): pulid_ca.20.to_q.weight" in m
    assert re.search(r"pulid_encoder.proj_out: file \[3, 3\], expected \[32, 24\]", m)


def test_official_layout_is_enforced_without_metadata(tmp_path):
    """A file with no config metadata must match the real release exactly."""
    path = str(tmp_path / "pulid_flux.safetensors")
    save_file(random_state_dict(TINY), path)
    with pytest.raises(PulidWeightsError, match="wrong shapes"):
        load_pulid_flux(path)


def test_missing_file_and_other_models(tmp_path):
    with pytest.raises(PulidWeightsError, match="not found"):
        load_pulid_flux(str(tmp_path / "nope.safetensors"))
    flux = str(tmp_path / "flux.safetensors")
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, flux)
    with pytest.raises(PulidWeightsError, match="Flux diffusion model"):
        load_pulid_flux(flux)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = str(tmp_path / "pulid_flux.pt")
    torch.save({"pulid_encoder.latents": Evil()}, path)
    with pytest.raises(PulidWeightsError, match="refused"):
        load_pulid_flux(path)
    assert not marker.exists()


def test_bad_metadata_config(tmp_path):
    path = str(tmp_path / "p.safetensors")
    save_file(random_state_dict(TINY), path, metadata={"pulid_config": json.dumps({"nonsense": 1})})
    with pytest.raises(PulidWeightsError, match="metadata is invalid"):
        load_pulid_flux(path)


def _write_header(path, header: dict, data: bytes = b"\0" * 64):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [4]},                                   # no data_offsets
    {"shape": [4], "data_offsets": [0, 16]},                          # no dtype
    {"dtype": "F32", "data_offsets": [0, 16]},                        # no shape
    {"dtype": "F32", "shape": [4], "data_offsets": [0]},              # one offset
    {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]},      # offsets not ints
    {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]},          # end before begin
    {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]},          # shape not a list
    {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},         # negative dimension
    {"dtype": 7, "shape": [4], "data_offsets": [0, 16]},              # dtype not a string
    "not an object",
], ids=["no-offsets", "no-dtype", "no-shape", "one-offset", "str-offsets", "reversed", "str-shape", "neg-dim",
        "int-dtype", "str-entry"])
def test_header_entries_missing_or_mistyped_name_the_corrupt_file(tmp_path, entry):
    path = _write_header(str(tmp_path / "pulid_flux_v0.9.1.safetensors"), {"pulid_encoder.latents": entry})
    with pytest.raises(PulidWeightsError, match="damaged safetensors header") as e:
        load_pulid_flux(path)
    assert path in _msg(e) and "pulid_encoder.latents" in _msg(e)


@pytest.mark.parametrize("header", [[1, 2, 3], {"__metadata__": "x"}, {"__metadata__": {"pulid_config": 5}}],
                         ids=["list", "str-metadata", "int-metadata-value"])
def test_header_that_is_not_a_tensor_table_names_the_corrupt_file(tmp_path, header):
    path = _write_header(str(tmp_path / "pulid_flux.safetensors"), header)
    with pytest.raises(PulidWeightsError, match="damaged safetensors header") as e:
        load_pulid_flux(path)
    assert path in _msg(e)


@pytest.mark.parametrize("change", [{"num_scales": 0}, {"num_scales": -5}, {"num_scales": 2.5}, {"depth": 0},
                                    {"heads": True}, {"num_scales": "5"}, {"double_interval": 0}, {"dim": None}],
                         ids=["zero-scales", "neg-scales", "float-scales", "zero-depth", "bool-heads", "str-scales",
                              "zero-interval", "none-dim"])
def test_bad_config_metadata_values_are_a_corrupt_file(tmp_path, change):
    import dataclasses

    path = str(tmp_path / "p.safetensors")
    config = dict(dataclasses.asdict(TINY), **change)
    save_file(random_state_dict(TINY), path, metadata={"pulid_config": json.dumps(config)})
    with pytest.raises(PulidWeightsError, match="corrupt file: its 'pulid_config' metadata is invalid") as e:
        load_pulid_flux(path)
    assert path in _msg(e) and next(iter(change)) in _msg(e)


def test_truncated_pt_is_reported_as_broken_not_as_code(tmp_path):
    path = str(tmp_path / "pulid_flux.pt")
    torch.save(random_state_dict(TINY, dtype=torch.float32), path)
    data = open(path, "rb").read()
    for size in (len(data) // 2, 100, 0):
        open(path, "wb").write(data[:size])
        with pytest.raises(PulidWeightsError) as e:
            load_pulid_flux(path)
        assert "the file is truncated or broken" in _msg(e) and "download it again" in _msg(e), size
        assert "safely" not in _msg(e) and "code" not in _msg(e) and path in _msg(e)


@pytest.mark.parametrize("data", [bytes(range(256)) * 4, b"<html>404 Not Found</html>", b"\x80\x02\xb2junk"],
                         ids=["binary", "html", "bad-opcode"])
def test_bytes_that_are_no_pickle_are_reported_as_broken_not_as_python_objects(tmp_path, data):
    path = str(tmp_path / "pulid_flux.pt")
    open(path, "wb").write(data)
    with pytest.raises(PulidWeightsError) as e:
        load_pulid_flux(path)
    assert "the file is truncated or broken" in _msg(e) and "download it again" in _msg(e)
    assert "Python objects" not in _msg(e) and "\x1b" not in _msg(e)


def test_pickle_refusal_is_one_clean_line_naming_the_global(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("hi",))

    path = str(tmp_path / "pulid_flux.pt")
    torch.save({"pulid_encoder.latents": Evil()}, path)
    with pytest.raises(PulidWeightsError) as e:
        load_pulid_flux(path)
    first = _msg(e).splitlines()[0]
    assert first == ("pulid_flux.pt: refused: it holds Python objects other than tensors (pickled code such as "
                     "print), which is refused for safety; use the .safetensors release.")
    assert "\x1b" not in _msg(e) and "two options" not in _msg(e)
