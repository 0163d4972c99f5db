"""Numeric tolerances derived from the dtype a result was computed in and the size of its values.

A tolerance is `ulps` machine epsilons of that dtype, times the largest magnitude of the expected values: another
BLAS path (blocking, FMA, thread count, a batched kernel) moves a float32 result by a few dozen epsilons of its
scale, never by the 1e-3 relative a wrong weight, a dropped term or a swapped input causes."""
import numpy as np
import torch

ROUNDING = 4  # the same maths, only rounded once more (float64 -> float32, a reordered sum of a few terms)
OPS = 64  # a short chain of element-wise ops and small reductions in the dtype
NETWORK = 1024  # a whole forward pass (matmuls over hundreds of terms, softmax, norms, several layers)


def eps(dtype) -> float:
    return float(torch.finfo(dtype).eps) if isinstance(dtype, torch.dtype) else float(np.finfo(dtype).eps)


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _dtype_of(x):
    return x.dtype if isinstance(x, (torch.Tensor, np.ndarray)) else np.float64


def tolerance(expected, dtype=torch.float32, ulps: int = OPS) -> float:
    """Absolute tolerance: `ulps` epsilons of `dtype`, relative to the largest |value| of `expected` (at least 1e-30,
    so an all-zero expectation still demands zeros up to rounding)."""
    scale = float(np.abs(_as_float64(expected)).max(initial=0.0))
    return ulps * eps(dtype) * max(scale, 1e-30)


def max_error(actual, expected) -> float:
    a, e = _as_float64(actual), _as_float64(expected)
    assert a.shape == e.shape, f"shapes differ: {a.shape} vs {e.shape}"
    return float(np.abs(a - e).max(initial=0.0))


def assert_close(actual, expected, dtype=None, ulps: int = OPS) -> None:
    """|actual - expected| <= tolerance(expected, dtype, ulps) everywhere. `dtype`: the precision the tested code
    computed in; by default the coarser of the two inputs' dtypes."""
    if dtype is None:
        dtype = max((_dtype_of(actual), _dtype_of(expected)), key=eps)
    err, tol = max_error(actual, expected), tolerance(expected, dtype, ulps)
    assert err <= tol, f"max |difference| {err:.3g} > {tol:.3g} ({ulps} eps of {dtype} at scale {tol / ulps / eps(dtype):.3g})"


def relative(dtype, ulps: int = NETWORK) -> float:
    """Tolerance for a norm-relative error ||actual - expected|| / ||expected||."""
    return ulps * eps(dtype)
