"""Shared test helpers: the torch autograd reference and one closeness assertion."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import jax
import numpy as np
import torch

import jaxjac

# Relative to the largest reference magnitude: float32 kernels in torch and
# XLA sum in different orders, float64 must agree to rounding.
RTOL = {"float32": 1e-4, "float64": 1e-9}
# float32 rows summed in another order differ by a few ulps of the row's scale.
SAME_ROWS_RTOL = 1e-5
# TF32 (and XLA's default precision) on GPUs: inputs rounded to 10 mantissa bits (2**-11 = 4.9e-4),
# and a Jacobian sums many such products. On CPUs they compute in float32. bfloat16 has its own test.
REDUCED_RTOL = {"tf32": 4e-3, "default": 4e-3}
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def assert_close(actual, expected, dtype: str, what: str = "values") -> None:
    """Assert `max|actual - expected| <= RTOL[dtype] * max|expected|`, with a readable message."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch's {expected.shape}"
    assert np.all(np.isfinite(actual) == np.isfinite(expected)), f"{what}: non-finite entries differ from torch"
    err, scale = _error_and_scale(actual, expected)
    assert err <= RTOL[dtype] * max(scale, 1e-30), (
        f"{what}: max abs error {err:.3g} vs scale {scale:.3g} (relative {err / max(scale, 1e-30):.3g}, "
        f"tolerance {RTOL[dtype]:g}, {dtype})"
    )


def assert_same_rows(actual, expected, what: str = "rows") -> None:
    """The same rows computed in other batches or on other devices: alike to float32 rounding, NaN for NaN.

    Not bit for bit: the kernels XLA picks depend on the batch shape (GPU
    libraries choose their convolution algorithm by it, and XLA's CPU kernels
    differ in the last bit on AMD EPYC, though not on Intel Xeon), which
    changes the order of the sums. A row from another sample, or one mixed
    with its batch, misses SAME_ROWS_RTOL by orders of magnitude.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{what}: NaN entries differ"
    err, scale = _error_and_scale(actual, expected)
    assert err <= SAME_ROWS_RTOL * max(scale, 1e-30), f"{what}: max abs difference {err:.3g} vs scale {scale:.3g}"


def _error_and_scale(actual, expected) -> tuple[float, float]:
    """`(max|actual - expected|, max|expected|)` in float64, over the entries where `expected` is finite."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    finite = np.isfinite(expected)
    scale = float(np.max(np.abs(expected[finite]), initial=0.0))
    return float(np.max(np.abs(actual[finite] - expected[finite]), initial=0.0)), scale


class Fn(torch.nn.Module):
    """A function of the input as a module, for op tests."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Float64Buffer(torch.nn.Module):
    """A float32 model whose float64 buffer holds a difference float32 cannot: (1 + 1e-9) - 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 2, 3)
        self.register_buffer("c", torch.tensor([1.0, 1e-9], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(1)
        return (y + ((self.c[0] + self.c[1]) - self.c[0]) * 1e9 * y).float()  # 2y in float64, y in float32


def cast(net: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """`net` with float tensors in `dtype` and complex ones in its complex counterpart.

    `net.to(torch.float64)` would drop the imaginary part of complex parameters.
    """
    real = TORCH_DTYPES[dtype]
    complex_ = torch.complex128 if real == torch.float64 else torch.complex64
    return net._apply(lambda t: t.to(real) if t.is_floating_point() else t.to(complex_) if t.is_complex() else t)


def torch_reference(net: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Torch's per-sample outputs `(N, *out)` and Jacobians `(N, K, *sample_shape)` in eval mode."""
    net.eval()
    outputs, jacobians = [], []
    for i in range(x.shape[0]):
        row = x[i : i + 1]
        with torch.no_grad():
            out = net(row)
        outputs.append(out.reshape(out.shape[1:] if out.ndim and out.shape[0] == 1 else out.shape).numpy())
        jac = torch.autograd.functional.jacobian(net, row, vectorize=True)
        jacobians.append(jac.reshape(-1, *row.shape[1:]).numpy())
    return np.stack(outputs), np.stack(jacobians)


@contextlib.contextmanager
def precision(dtype: str):
    """Enable 64-bit JAX for the block when `dtype` is float64."""
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
        yield


def assert_converts(
    net: torch.nn.Module,
    sample_shape: tuple[int, ...],
    dtype: str = "float32",
    *,
    n: int = 3,
    seed: int = 0,
    x: np.ndarray | None = None,
    methods: tuple[str, ...] = ("vmap-jacrev",),
) -> jaxjac.ConvertedModel:
    """Convert `net` and assert its outputs and Jacobians match torch autograd.

    **Arguments:**

    - `net`: a torch module, converted in `dtype`.
    - `sample_shape`: the shape of one sample.
    - `x`: the inputs to compare on `(n, *sample_shape)`; default standard normal.
    - `methods`: Jacobian formulations to check.
    """
    net = cast(copy.deepcopy(net), dtype).eval()
    if x is None:
        x = np.random.default_rng(seed).standard_normal((n, *sample_shape))
    xt = torch.as_tensor(np.asarray(x)).to(TORCH_DTYPES[dtype])
    expected_out, expected_jac = torch_reference(net, xt)
    with precision(dtype):
        model = jaxjac.convert(net, xt, dtype=dtype, check=False)
        actual_out = np.asarray(model(xt.numpy()))
        assert_close(actual_out, expected_out, dtype, "outputs")
        for method in methods:
            actual_jac = jaxjac.jacobian(model, xt.numpy(), method=method)
            assert_close(actual_jac, expected_jac, dtype, f"Jacobians ({method})")
    return model


def swap_lowering(monkeypatch, request, op: str, fn) -> None:
    """Replace `op`'s lowering with `fn` for one test, as a stand-in for a lowering bug.

    Compiled functions are cached per graph, so they are dropped before the
    swap (other tests may have compiled the same graph) and after the test.
    """
    from jaxjac import _formulations, _run
    from jaxjac._graph_model import batched_forward
    from jaxjac.converters import registry

    def drop_compiled() -> None:
        for cache in (batched_forward, _formulations._core, _run._jacobian_program):
            cache.cache_clear()
        _run._COMPILED.clear()

    drop_compiled()
    request.addfinalizer(drop_compiled)
    monkeypatch.setitem(registry._LOWERINGS, op, fn)
