"""The IMAGE and MASK checks the nodes make where the values enter (pulid_flux/inputs.py), without ComfyUI: explicit
cases for each class of bad input, and property tests (random shapes, dtypes, NaN/inf) asserting that only
InputError comes out and that whatever is accepted works downstream (to_rgb_list, tokens_mask)."""
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from encoders.images import to_rgb_list
from pulid_flux import tokens_mask
from pulid_flux.inputs import EmptyBatchError, InputError, check_apply_inputs, check_images, check_mask

NAN, INF = float("nan"), float("inf")


# --- images ----------------------------------------------------------------------------------------------------

def test_an_ordinary_image_batch_is_accepted():
    for channels in (1, 3, 4):
        assert check_images(torch.rand(2, 20, 30, channels)) is None
    assert check_images(torch.randint(0, 256, (1, 20, 20, 3), dtype=torch.uint8)) is None
    # resampling overshoot is clipped later, not refused
    assert check_images(torch.full((1, 20, 20, 3), 1.2)) is None and check_images(torch.full((1, 8, 8, 3), -0.2)) is None


def test_an_empty_image_batch_says_so():
    with pytest.raises(EmptyBatchError) as e:
        check_images(torch.zeros(0, 64, 64, 3), "image")
    assert str(e.value) == ("image is an empty batch (0 images): the node that feeds it produced no image. Connect at "
                            "least one image.")


@pytest.mark.parametrize("value,kind", [(NAN, "NaN"), (INF, "infinite"), (-INF, "infinite")])
def test_non_finite_pixels_name_the_input_and_the_image(value, kind):
    images = torch.rand(3, 16, 16, 3)
    images[1, 4, 5, 0] = value
    with pytest.raises(InputError) as e:
        check_images(images, "reference")
    assert str(e.value).startswith(f"reference holds {kind} values (image 2 of 3): the node that feeds it produced "
                                   f"invalid numbers")
    images[2] = NAN
    images[1] = INF
    with pytest.raises(InputError, match=r"^image holds NaN and infinite values \(images 2, 3 of 3\)"):
        check_images(images)
    with pytest.raises(InputError, match=r"^image holds NaN values \(the image\)"):
        check_images(torch.full((1, 8, 8, 3), NAN))  # read as a black photo before


@pytest.mark.parametrize("scale,low,high,looks", [(255.0, 0, 255, "0..255"), (2.0, -1, 1, "-1..1")])
def test_pixels_on_another_scale_are_refused(scale, low, high, looks):
    images = torch.linspace(low, high, 16 * 16 * 3).reshape(1, 16, 16, 3)
    with pytest.raises(InputError) as e:
        check_images(images)
    assert str(e.value) == (f"image: pixel values run from {low:g} to {high:g}, but an IMAGE holds 0..1 (this looks "
                            f"like a {looks} image). Scale it to 0..1 before this node.")


@pytest.mark.parametrize("value", [torch.rand(16, 16, 3), torch.rand(1, 16, 16, 2), torch.rand(1, 16, 16, 5),
                                   torch.rand(2, 16, 16), np.zeros((1, 8, 8, 3)), None],
                         ids=["no-batch", "2-channels", "5-channels", "mask", "numpy", "none"])
def test_what_is_not_an_image_batch_is_refused_naming_the_input(value):
    with pytest.raises(InputError, match=r"^images: expected an IMAGE"):
        check_images(value, "images")


def test_empty_pixels_and_integer_pixels_are_refused():
    with pytest.raises(InputError, match=r"^image: the images are 0x16 px, empty"):
        check_images(torch.zeros(1, 16, 0, 3))
    with pytest.raises(InputError, match=r"^image: expected float pixels 0..1 \(or uint8\), got torch.int32"):
        check_images(torch.zeros(1, 16, 16, 3, dtype=torch.int32))


# --- masks -----------------------------------------------------------------------------------------------------

def test_an_ordinary_mask_is_passed_through_unchanged():
    mask = torch.rand(2, 32, 48)
    assert check_mask(mask) is mask
    assert check_mask(None) is None
    flat = torch.rand(32, 48)
    assert check_mask(flat) is flat
    hard = torch.rand(1, 8, 8) > 0.5
    assert check_mask(hard) is hard


def test_an_empty_mask_batch_is_refused_before_it_reaches_the_sampler():
    with pytest.raises(EmptyBatchError) as e:
        check_mask(torch.zeros(0, 64, 64))
    assert str(e.value) == ("attn_mask is an empty batch (0 masks): the node that feeds it produced no mask. Connect a "
                            "mask, or leave attn_mask unconnected to apply the identity to the whole image.")
    with pytest.raises(ZeroDivisionError):  # what the sampler hit
        tokens_mask(torch.zeros(0, 64, 64), 8, 8, 1)
    with pytest.raises(InputError, match=r"^attn_mask is 0x64 px, empty"):
        check_mask(torch.zeros(1, 64, 0))


@pytest.mark.parametrize("value,kind", [(NAN, "NaN"), (INF, "infinite")])
def test_non_finite_mask_values_are_refused(value, kind):
    mask = torch.ones(2, 16, 16)
    mask[0, 3, 3] = value
    with pytest.raises(InputError) as e:
        check_mask(mask)
    assert str(e.value).startswith(f"attn_mask holds {kind} values (mask 1 of 2)")
    with pytest.raises(InputError, match=rf"^attn_mask holds {kind} values \(the mask\)"):
        check_mask(torch.full((16, 16), value))


@pytest.mark.parametrize("value", [torch.rand(1, 1, 8, 8), torch.rand(8), [[1.0]], torch.ones(1, 8, 8) * 1j],
                         ids=["4d", "1d", "list", "complex"])
def test_what_is_not_a_mask_is_refused(value):
    with pytest.raises(InputError, match=r"^attn_mask: expected"):
        check_mask(value)


def test_mask_values_outside_0_1_are_clipped_with_one_warning(caplog):
    mask = torch.tensor([[[-2.0, 0.25], [0.5, 255.0]]])
    with caplog.at_level(logging.WARNING, logger="PuLID-Flux"):
        used = check_mask(mask)
    assert used.tolist() == [[[0.0, 0.25], [0.5, 1.0]]] and mask[0, 1, 1] == 255.0  # the input is not changed
    assert [r.getMessage() for r in caplog.records] == [
        "PuLID-Flux: attn_mask values run from -2 to 255; a MASK holds 0..1, so they are clipped to 0..1."]
    assert check_mask(torch.full((1, 4, 4), 255, dtype=torch.uint8)).max() == 1.0


# --- properties --------------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64,
          torch.bool]
SPECIALS = [NAN, INF, -INF, 0.0, 1.0, -1.0, 300.0, 1e-30]


SIDE = st.sampled_from([4, 1, 6, 2, 0])
IMAGE_SHAPE = (SIDE, SIDE, SIDE, st.sampled_from([3, 1, 4]))
MASK_SHAPE = (SIDE, SIDE, SIDE)


def _kind(error: InputError) -> str:
    text = str(error)
    return next(k for k in ("empty batch", "holds", "expected", "pixel values", "empty", "") if k in text)


@st.composite
def tensors(draw, max_dims=5, near=IMAGE_SHAPE):
    """Near-valid shapes (an IMAGE [B,H,W,C] or a MASK [B,H,W] with small or empty sides) or any shape; any of the
    dtypes a node might send; a few NaN/inf/out-of-range values or none."""
    if draw(st.integers(0, 3)):
        shape = draw(st.tuples(*near))
    else:
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=max_dims))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2 ** 16))
    values = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * draw(st.sampled_from([1.0, 1.4, 3.0]))
    if values.numel() and not draw(st.integers(0, 2)):
        flat = values.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, values.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    if dtype == torch.bool:
        return values > 0.5
    if not dtype.is_floating_point:
        return values.nan_to_num(0, 0, 0).clamp(-100, 100).to(dtype)
    return values.to(dtype)


@given(tensors())
def test_property_check_images_refuses_with_input_error_or_accepts_what_to_rgb_list_reads(images):
    try:
        check_images(images)
    except InputError as e:
        assert str(e).startswith("image")
        event(f"refused: {_kind(e)}")
        return
    event("accepted")
    rgbs = to_rgb_list(images)
    assert len(rgbs) == images.shape[0] >= 1
    assert all(r.dtype == np.uint8 and r.shape == (*images.shape[1:3], 3) for r in rgbs)
    if images.is_floating_point():
        assert bool(torch.isfinite(images).all())


@given(tensors(max_dims=4, near=MASK_SHAPE), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4))
def test_property_check_mask_refuses_with_input_error_or_gives_a_usable_mask(mask, height, width, batch):
    try:
        used = check_mask(mask)
    except InputError as e:
        assert str(e).startswith("attn_mask")
        event(f"refused: {_kind(e)}")
        return
    event("accepted")
    weights = tokens_mask(used, height, width, batch)
    assert weights.shape == (batch, height * width, 1)
    assert bool(torch.isfinite(weights).all()) and 0 <= float(weights.min()) and float(weights.max()) <= 1
    if used.is_floating_point():
        assert math.isfinite(float(used.min())) and 0 <= float(used.min()) and float(used.max()) <= 1


def test_apply_inputs_must_be_finite_and_ordered():
    check_apply_inputs(1.0, 0.0, 1.0)
    check_apply_inputs(-1, 0.5, 0.5)
    for name, values in (("weight", (float("nan"), 0.0, 1.0)), ("start_at", (1.0, float("nan"), 1.0)),
                         ("end_at", (1.0, 0.0, float("inf"))), ("weight", (float("-inf"), 0.0, 1.0))):
        bad = values[("weight", "start_at", "end_at").index(name)]
        with pytest.raises(ValueError) as e:
            check_apply_inputs(*values)
        assert str(e.value) == f"{name} must be a finite number, got {bad}."
    with pytest.raises(ValueError, match=r"^start_at \(0.6\) must not be after end_at \(0.4\)"):
        check_apply_inputs(1.0, 0.6, 0.4)
