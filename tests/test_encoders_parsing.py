"""BiSeNet face parsing: loading without downloads, labels, white background and gray face."""
import os

import numpy as np
import pytest
import torch

from support import tolerance as tol
from encoders import EncoderModelError
from encoders.parsing import face_features_image, load_face_parser, parse_labels
from support import encoder_fakes as fakes


@pytest.fixture(scope="module")
def parser_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("facexlib")
    fakes.write_bisenet(str(folder / "parsing_bisenet.pth"))
    return str(folder)


@pytest.fixture(scope="module")
def parser(parser_folder):
    return load_face_parser(parser_folder)


def face_batch():
    from skimage import data

    crop = data.astronaut()[:256, 100:356]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0


def test_loads_from_folder_or_file(parser_folder, parser):
    from facexlib.parsing.bisenet import BiSeNet

    from_file = load_face_parser(os.path.join(parser_folder, "parsing_bisenet.pth"))
    assert isinstance(parser, BiSeNet) and not parser.training
    for a, b in zip(parser.state_dict().values(), from_file.state_dict().values()):
        assert torch.equal(a, b)
    saved = torch.load(os.path.join(parser_folder, "parsing_bisenet.pth"), weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in parser.state_dict().items())


def test_labels_equal_an_independent_forward(parser):
    from torchvision.transforms.functional import normalize

    rgb = face_batch()
    expected = parser(normalize(rgb, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))[0].argmax(1, keepdim=True)
    labels = parse_labels(parser, rgb)
    assert labels.shape == (1, 1, 256, 256)
    assert torch.equal(labels, expected)


def test_white_background_and_gray_face_against_numpy():
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 3, 16, 16), dtype=np.float32)
    labels = rng.integers(0, 19, (2, 1, 16, 16))
    background = np.isin(labels, [0, 16, 18, 7, 8, 9, 14, 15])
    gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    expected_gray = np.where(background, 1.0, gray[:, None].repeat(3, 1))
    expected_colour = np.where(background, 1.0, rgb)
    out_gray = face_features_image(torch.from_numpy(rgb), torch.from_numpy(labels))
    out_colour = face_features_image(torch.from_numpy(rgb), torch.from_numpy(labels), use_gray=False)
    tol.assert_close(out_gray, expected_gray, torch.float32, tol.OPS)
    np.testing.assert_allclose(out_colour.numpy(), expected_colour, atol=0)
    assert background.any() and (~background).any()
    kept = ~background[:, 0]
    tol.assert_close(out_gray[:, 0].numpy()[kept], out_gray[:, 2].numpy()[kept], np.float32, tol.ROUNDING)  # 3 equal channels


def test_runs_in_the_module_dtype(parser_folder):
    bf16 = load_face_parser(parser_folder, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    labels = parse_labels(bf16, face_batch()[..., :64, :64])  # float32 input is cast to the module's dtype
    assert labels.shape == (1, 1, 64, 64) and labels.dtype == torch.int64


def test_missing_file_names_folder_and_download(tmp_path):
    with pytest.raises(EncoderModelError) as e:
        load_face_parser(str(tmp_path))
    message = str(e.value)
    assert os.path.join(str(tmp_path), "parsing_bisenet.pth") in message
    assert "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth" in message
    with pytest.raises(EncoderModelError, match="not found"):
        load_face_parser(str(tmp_path / "nothing.pth"))


def test_wrong_file_is_refused(tmp_path):
    path = str(tmp_path / "parsing_bisenet.pth")
    torch.save({"encoder.0.weight": torch.zeros(4, 3, 3, 3), "decoder.0.weight": torch.zeros(4)}, path)
    with pytest.raises(EncoderModelError, match="ParseNet"):
        load_face_parser(path)
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(EncoderModelError, match="not a facexlib BiSeNet"):
        load_face_parser(path)


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "ran.txt"
    path = fakes.write_malicious_pt(str(tmp_path / "parsing_bisenet.pth"), str(marker))
    with pytest.raises(EncoderModelError, match="refused"):
        load_face_parser(path)
    assert not marker.exists()
