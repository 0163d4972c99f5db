"""The tests' tolerances (tests/tolerance.py): BLAS-level noise passes, a real error fails, in any dtype/scale."""
import numpy as np
import pytest
import torch

from support import tolerance as tol


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_noise_of_another_summation_order_passes_and_a_real_error_fails(scale):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 512, generator=g) * scale, torch.randn(512, 64, generator=g)
    exact = a.double() @ b.double()
    blocked = sum(a[:, i:i + 32] @ b[i:i + 32] for i in range(0, 512, 32))  # another BLAS blocking, float32
    tol.assert_close(blocked, exact, torch.float32, tol.NETWORK)
    tol.assert_close(a @ b, exact, torch.float32, tol.NETWORK)
    wrong = exact.clone()
    wrong[3, 5] += 1e-3 * exact.abs().max()  # one value off by 0.1 % of the scale
    with pytest.raises(AssertionError, match="max |difference|"):
        tol.assert_close(blocked, wrong, torch.float32, tol.NETWORK)


def test_tolerance_follows_the_dtype_and_the_values():
    x = torch.full((3,), 2.0)
    assert tol.tolerance(x, torch.float32, 1) == pytest.approx(2 * torch.finfo(torch.float32).eps)
    assert tol.tolerance(x, torch.bfloat16, 1) == pytest.approx(2 * 2.0 ** -7)
    assert tol.tolerance(np.array([-8.0, 1.0]), np.float64, 2) == pytest.approx(16 * np.finfo(np.float64).eps)
    with pytest.raises(AssertionError):  # an all-zero expectation still demands zeros
        tol.assert_close(torch.tensor([1e-20]), torch.zeros(1), torch.float32, tol.NETWORK)
    with pytest.raises(AssertionError, match="shapes differ"):
        tol.assert_close(torch.zeros(2), torch.zeros(3))
