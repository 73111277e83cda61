"""Tensors made from nothing or from another's shape, window functions, and dtype casts.

Every `dtype` reaching these functions is already a JAX dtype: the lowering
fills a `dtype=None` from torch's traced result, and the interpreter maps
float32/float64 to the model's float dtype. Where an op carries no dtype at
all, the dtype follows torch's inference from the Python fill values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .registry import ModelError, register

Scalar = bool | int | float


def _canonical(dtype: jnp.dtype | None, default: jnp.dtype | type) -> jnp.dtype:
    # int64/float64 name JAX's default width: asking JAX for int64 with x64
    # off would warn and truncate anyway.
    return jax.dtypes.canonicalize_dtype(default if dtype is None else dtype)


def _as_default_float(value: Scalar) -> Scalar:
    # With no dtype, torch makes a float tensor in its default dtype, float32,
    # even in a float64 model: the float32-rounded value (0.1 -> 0.100000001490116).
    return float(np.float32(value)) if isinstance(value, float) else value


def _infer_dtype(*values: Scalar) -> jnp.dtype:
    # torch: any float gives the default float dtype (float32, in a float64
    # model too), else any int gives int64 (JAX's default int), else bool.
    if any(isinstance(v, float) for v in values):
        return jnp.dtype(jnp.float32)
    if all(isinstance(v, bool) for v in values):
        return jnp.dtype(bool)
    return _canonical(None, jnp.int64)


@register("aten.arange.start_step", "aten.arange.start")
def arange_start(start: Scalar, end: Scalar, step: Scalar = 1, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(ceil((end - start) / step),)`: `start + i * step`, computed in float64 like torch's CPU kernel."""
    inferred = dtype is None
    dtype = _canonical(dtype, _infer_dtype(start, end, step))
    count = max(math.ceil((end - start) / step), 0)
    if jnp.issubdtype(dtype, jnp.integer) and all(isinstance(v, int) for v in (start, end, step)):
        values = start + step * np.arange(count, dtype=np.int64)
    else:
        values = start + step * np.arange(count, dtype=np.float64)
        if inferred:
            values = values.astype(np.float32)
    return jnp.asarray(values.astype(dtype))


@register("aten.triu_indices.default")
def triu_indices(row: int, col: int, offset: int = 0, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(2, n)`: the row and column indices of a `row` x `col` matrix's upper triangle, row by row.

    `offset` shifts the diagonal as in torch (and numpy's `k`).
    """
    return _triangle(np.triu_indices(row, offset, col), dtype)


@register("aten.tril_indices.default")
def tril_indices(row: int, col: int, offset: int = 0, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(2, n)`: the row and column indices of a `row` x `col` matrix's lower triangle, row by row."""
    return _triangle(np.tril_indices(row, offset, col), dtype)


def _triangle(indices: tuple[np.ndarray, np.ndarray], dtype: jnp.dtype | None) -> jax.Array:
    return jnp.asarray(np.stack(indices).astype(_canonical(dtype, jnp.int64)))


@register("aten.arange.default")
def arange(end: Scalar, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(ceil(end),)`: `0, 1, ..., ceil(end) - 1`."""
    return arange_start(0, end, 1, dtype=_canonical(dtype, _infer_dtype(end)))


@register("aten.linspace.default")
def linspace(start: float, end: float, steps: int, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(steps,)` evenly spaced values from `start` to `end` inclusive."""
    return jnp.asarray(np.linspace(start, end, steps), _canonical(dtype, jnp.float32))


@register("aten.full.default")
def full(size: Sequence[int], fill_value: Scalar, dtype: jnp.dtype | None = None) -> jax.Array:
    """`size` filled with `fill_value`."""
    if dtype is None:
        fill_value = _as_default_float(fill_value)
    return jnp.full(tuple(size), fill_value, dtype=_canonical(dtype, _infer_dtype(fill_value)))


@register("aten.new_full.default")
def new_full(x: jax.Array, size: Sequence[int], fill_value: Scalar, dtype: jnp.dtype | None = None) -> jax.Array:
    """`size` filled with `fill_value`, in `x`'s dtype unless `dtype` is given."""
    return jnp.full(tuple(size), fill_value, dtype=_canonical(dtype, x.dtype))


@register("aten.full_like.default")
def full_like(x: jax.Array, fill_value: Scalar, dtype: jnp.dtype | None = None) -> jax.Array:
    """`x.shape` filled with `fill_value`, in `x`'s dtype unless `dtype` is given."""
    return jnp.full(x.shape, fill_value, dtype=_canonical(dtype, x.dtype))


@register("aten.zeros.default", "aten.empty.memory_format")
def zeros(size: Sequence[int], dtype: jnp.dtype | None = None) -> jax.Array:
    """Zeros of `size` (also for `empty`, whose contents torch leaves undefined)."""
    return jnp.zeros(tuple(size), dtype=_canonical(dtype, jnp.float64))


@register("aten.empty_permuted.default")
def empty_permuted(size: Sequence[int], physical_layout: Sequence[int], dtype: jnp.dtype | None = None) -> jax.Array:
    """Zeros of `size` (`torch.empty_like`'s op: its memory order does not change the values)."""
    return zeros(size, dtype)


@register("aten.empty_strided.default")
def empty_strided(size: Sequence[int], stride: Sequence[int], dtype: jnp.dtype | None = None) -> jax.Array:
    """Zeros of `size`; strides mean nothing for JAX arrays."""
    return zeros(size, dtype)


@register("aten.new_zeros.default", "aten.new_empty.default")
def new_zeros(x: jax.Array, size: Sequence[int], dtype: jnp.dtype | None = None) -> jax.Array:
    """Zeros of `size` in `x`'s dtype unless `dtype` is given."""
    return jnp.zeros(tuple(size), dtype=_canonical(dtype, x.dtype))


@register("aten.ones.default")
def ones(size: Sequence[int], dtype: jnp.dtype | None = None) -> jax.Array:
    """Ones of `size`."""
    return jnp.ones(tuple(size), dtype=_canonical(dtype, jnp.float64))


@register("aten.new_ones.default")
def new_ones(x: jax.Array, size: Sequence[int], dtype: jnp.dtype | None = None) -> jax.Array:
    """Ones of `size` in `x`'s dtype unless `dtype` is given."""
    return jnp.ones(tuple(size), dtype=_canonical(dtype, x.dtype))


@register("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(x: jax.Array, dtype: jnp.dtype | None = None) -> jax.Array:
    """Zeros shaped like `x`."""
    return jnp.zeros(x.shape, dtype=_canonical(dtype, x.dtype))


@register("aten.ones_like.default")
def ones_like(x: jax.Array, dtype: jnp.dtype | None = None) -> jax.Array:
    """Ones shaped like `x`."""
    return jnp.ones(x.shape, dtype=_canonical(dtype, x.dtype))


@register("aten.scalar_tensor.default")
def scalar_tensor(s: Scalar, dtype: jnp.dtype | None = None) -> jax.Array:
    """A 0-D array holding `s` (torch's default dtype here is float)."""
    return jnp.asarray(s, dtype=_canonical(dtype, jnp.float32))


@register("aten._to_copy.default")
def to_copy(x: jax.Array, dtype: jnp.dtype | None = None) -> jax.Array:
    """`x` cast to `dtype` (float to int truncates toward zero, as in torch)."""
    return x if dtype is None else x.astype(_canonical(dtype, x.dtype))


@register("aten._assert_async.msg", "aten._assert_async.default")
def assert_async(condition: jax.Array, message: str = "assertion failed") -> None:
    """torch's run-time assertion (`F.one_hot`'s range check, for one), checked where its value is known.

    Under `jax.jit` a traced condition has no value until run time, and XLA
    programs do not raise, so there it is not checked: what follows computes
    as the graph says (`one_hot` of an index out of range is a row of zeros).
    """
    if not isinstance(condition, jax.core.Tracer) and not bool(np.asarray(condition)):
        raise ModelError(f"torch's assertion in the model failed: {message}")
    return None


@register("aten._assert_tensor_metadata.default")
def assert_tensor_metadata(x: jax.Array, *args, **kwargs) -> None:
    """Nothing: torch.export's check that a cast input has the traced dtype, which holds by construction."""
    return None


def _window(length: int, periodic: bool, dtype: jnp.dtype | None, shape) -> jax.Array:  # noqa: ANN001
    """A window of `length` points from `shape(n, N)`, `n = 0..N-1`, computed in float64 like torch's CPU kernel.

    A periodic window is the symmetric one of `length + 1` points without its
    last, as torch builds it; `length` 1 is a single 1.
    """
    points = length + 1 if periodic and length > 1 else length
    values = np.ones(length) if length == 1 else shape(np.arange(points, dtype=np.float64), points)[:length]
    return jnp.asarray(values, _canonical(dtype, jnp.float32))


@register(
    "aten.hamming_window.default",
    "aten.hamming_window.periodic",
    "aten.hamming_window.periodic_alpha",
    "aten.hamming_window.periodic_alpha_beta",
)
def hamming_window(
    length: int, periodic: bool = True, alpha: float = 0.54, beta: float = 0.46, dtype: jnp.dtype | None = None
) -> jax.Array:
    """`(length,)`: `alpha - beta cos(2 pi n / (N - 1))`."""
    return _window(length, periodic, dtype, lambda n, N: alpha - beta * np.cos(2 * np.pi * n / (N - 1)))


@register("aten.blackman_window.default", "aten.blackman_window.periodic")
def blackman_window(length: int, periodic: bool = True, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(length,)`: `0.42 - 0.5 cos(2 pi n / (N - 1)) + 0.08 cos(4 pi n / (N - 1))`."""
    return _window(
        length,
        periodic,
        dtype,
        lambda n, N: 0.42 - 0.5 * np.cos(2 * np.pi * n / (N - 1)) + 0.08 * np.cos(4 * np.pi * n / (N - 1)),
    )


@register("aten.bartlett_window.default", "aten.bartlett_window.periodic")
def bartlett_window(length: int, periodic: bool = True, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(length,)`: the triangle `1 - |2 n / (N - 1) - 1|`."""
    return _window(length, periodic, dtype, lambda n, N: 1 - np.abs(2 * n / (N - 1) - 1))


@register("aten.kaiser_window.default", "aten.kaiser_window.periodic", "aten.kaiser_window.beta")
def kaiser_window(length: int, periodic: bool = True, beta: float = 12.0, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(length,)`: `I0(beta sqrt(1 - ((n - (N - 1) / 2) / ((N - 1) / 2))²)) / I0(beta)`."""
    return _window(
        length,
        periodic,
        dtype,
        lambda n, N: (
            np.i0(beta * np.sqrt(np.clip(1 - ((n - (N - 1) / 2) / ((N - 1) / 2)) ** 2, 0, None))) / np.i0(beta)
        ),
    )


@register("aten.fft_rfftfreq.default")
def rfftfreq(n: int, d: float = 1.0, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(n // 2 + 1,)`: the frequencies of `torch.fft.rfft`'s bins, for sample spacing `d`."""
    return jnp.asarray(np.arange(n // 2 + 1) / (n * d), _canonical(dtype, jnp.float32))


@register("aten.fft_fftfreq.default")
def fftfreq(n: int, d: float = 1.0, dtype: jnp.dtype | None = None) -> jax.Array:
    """`(n,)`: the frequencies of `torch.fft.fft`'s bins, negative ones last, for sample spacing `d`."""
    return jnp.asarray(np.fft.fftfreq(n, d), _canonical(dtype, jnp.float32))
