"""Pooling: max and average pooling (with all torch options) and adaptive pooling.

torch lowers the 1D pools to their 2D forms on `(N, C, 1, L)`, so every
function here pools over the trailing `len(kernel_size)` (or
`len(output_size)`) axes of an input `(*lead, *spatial)`.

Max and adaptive pools gather their windows from static position tables
into `(*lead, *out, K)` patches, positions outside the input masked, so
ceil_mode windows that run past the padding and adaptive windows of uneven
width need no special case. Average pooling sums with `reduce_window` and
divides by a static table of torch's divisors.

Max-pool gradients: torch sends each window's gradient to one element, its
first maximum. The max here is gathered at `argmax` (which also picks the
first maximum) rather than reduced, so gradients agree with torch even where
a window holds ties; with random inputs there are none, and then any max
gradient would do.

Max-pool indices are computed exactly as torch's: the flat (row-major) index
into the unpadded spatial axes of the input, of the first maximum. XLA drops
them when the graph does not use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .registry import register

IntOrInts = int | Sequence[int]


def _expand(value: IntOrInts, n: int, name: str) -> tuple[int, ...]:
    """`value` as one int per spatial axis; torch lets a single int (or 1-tuple) stand for all."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(values) == 1:
        values *= n
    if len(values) != n:
        raise ValueError(f"`{name}` must give 1 or {n} values for a {n}-d pool; got {value!r}")
    return values


def _output_size(length: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's `pooling_output_shape` for one axis."""
    span = dilation * (kernel - 1) + 1
    numerator = length + 2 * pad - span + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    # With ceil_mode the last window must still start inside the input or the
    # left padding, never wholly in the right padding.
    if ceil_mode and (out - 1) * stride >= length + pad:
        out -= 1
    return out


def _window_positions(
    length: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Input positions `(out, kernel)` each window reads, and which of them lie in `[0, length)`."""
    out = _output_size(length, kernel, stride, pad, dilation, ceil_mode)
    positions = np.arange(out)[:, None] * stride - pad + np.arange(kernel)[None, :] * dilation
    return positions, (positions >= 0) & (positions < length)


def _adaptive_positions(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions `(out, widest)` of torch's adaptive windows `[floor(i L/o), ceil((i+1) L/o))`, and a validity mask.

    Windows differ in width when `out` does not divide `length`; the narrow
    ones are padded to the widest and masked.
    """
    starts = (np.arange(out) * length) // out
    ends = -((-(np.arange(out) + 1) * length) // out)
    widest = int(np.max(ends - starts))
    positions = starts[:, None] + np.arange(widest)[None, :]
    return positions, positions < ends[:, None]


def _patches(
    x: jax.Array, windows: Sequence[tuple[np.ndarray, np.ndarray]], fill: float
) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """Gather the windows of `x` `(*lead, *spatial)` into `(*lead, *out, K)`, `K` the window's element count.

    `windows[d]` holds the positions `(out_d, k_d)` read on spatial axis `d`
    and which of them are valid; invalid entries read `fill`.

    **Returns:** the patches, and as numpy `(*out, K)` each entry's validity
    and flat row-major index into the spatial axes.
    """
    n = len(windows)
    lead = x.ndim - n
    spatial = x.shape[lead:]
    flat = np.zeros((), np.int64)
    mask = np.ones((), bool)
    for d, (pos, ok) in enumerate(windows):
        # Each step turns axis `lead + 2 d` of length L_d into (out_d, k_d).
        x = _split_axis_into_windows(x, lead + 2 * d, pos, spatial[d])
        row_stride = math.prod(spatial[d + 1 :])
        flat = np.expand_dims(flat, (-2, -1)) + pos * row_stride
        mask = np.expand_dims(mask, (-2, -1)) & ok
    x = jnp.where(jnp.asarray(mask), x, jnp.asarray(fill, x.dtype))
    # Interleaved (o_0, k_0, o_1, k_1, ...) -> (o_0, o_1, ..., k_0, k_1, ...).
    order = tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2))
    x = jnp.transpose(x, tuple(range(lead)) + tuple(lead + a for a in order))
    out_shape = x.shape[lead : lead + n]
    flat = np.transpose(flat, order).reshape((*out_shape, -1))
    mask = np.transpose(mask, order).reshape(flat.shape)
    return x.reshape((*x.shape[: lead + n], -1)), mask, flat


def _split_axis_into_windows(x: jax.Array, axis: int, positions: np.ndarray, length: int) -> jax.Array:
    """Replace `axis` of `x` by the windows `(out, k)` of input positions `positions`.

    Windows that tile the axis back to back (stride == kernel, no padding, no
    dilation: the common MaxPool1d(2)) are a slice and a reshape; XLA compiles
    the general gather, and above all its scatter-add gradient, far slower.
    """
    out, k = positions.shape
    if out * k <= length and np.array_equal(positions, np.arange(out * k).reshape(out, k)):
        x = lax.slice_in_dim(x, 0, out * k, axis=axis)
        return x.reshape((*x.shape[:axis], out, k, *x.shape[axis + 1 :]))
    step = int(positions[1, 0] - positions[0, 0]) if out > 1 else 1
    if k <= _MAX_SHIFTS and step >= 1 and np.array_equal(positions, positions[:1] + step * np.arange(out)[:, None]):
        return _shifted_windows(x, axis, positions, length, step)
    return jnp.take(x, jnp.asarray(np.clip(positions, 0, length - 1)), axis=axis)


# Overlapping windows at a regular step (InceptionTime's MaxPool1d(3, stride=1, padding=1),
# ResNet stems' MaxPool1d(3, stride=2, padding=1)) are read as `k` strided slices of the
# padded axis rather than gathered: a slice's gradient is a pad, where a gather's is a
# scatter-add. On CPU, stride 1 made InceptionTime's whole Jacobian 6-12% faster; at
# stride 2 the pool's forward plus 3-cotangent VJP alone runs 1.7-4.5x faster (channels
# first, 16-64 channels), while ResNet1d's whole Jacobian, where the stem's pool is a small
# part, moved within the noise of a loaded 2-core machine (0.96-1.05x). Wide windows
# (adaptive pools) stay gathers.
_MAX_SHIFTS = 16


def _shifted_windows(x: jax.Array, axis: int, positions: np.ndarray, length: int, step: int) -> jax.Array:
    """Windows `(out, k)` at a regular step: window `i` reads `positions[0] + step * i`; out-of-range reads are zeros."""
    out, k = positions.shape
    low = max(-int(positions.min()), 0)
    high = max(int(positions.max()) + 1 - length, 0)
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (low, high, 0)
    padded = lax.pad(x, jnp.zeros((), x.dtype), config)
    shifts = [
        lax.slice_in_dim(padded, int(p) + low, int(p) + low + step * (out - 1) + 1, step, axis=axis)
        for p in positions[0]
    ]
    return jnp.stack(shifts, axis=axis + 1)


def first_max(patches: jax.Array, axis: int, flat: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The maximum of `patches` over window axis `axis`, and the entry of `flat` at that maximum.

    `flat` holds each window element's flat input index, broadcastable to
    `patches`. The maximum is taken at the first argmax (NaN counts as the
    maximum, as in torch), so its gradient goes to that one element as
    torch's does, ties included; `reduce_window(max)` would also lack a
    gradient for dilated windows. The element is picked with a one-hot select
    rather than a gather: XLA differentiates the select elementwise, while a
    gather's gradient is a scatter, and this makes whole Jacobians of
    max-pooling CNNs about 40% faster on CPU.
    """
    arg = jnp.argmax(patches, axis=axis, keepdims=True)
    chosen = lax.broadcasted_iota(arg.dtype, patches.shape, axis % patches.ndim) == arg
    values = jnp.sum(jnp.where(chosen, patches, jnp.zeros((), patches.dtype)), axis=axis)
    indices = jnp.sum(jnp.where(chosen, flat, jnp.zeros((), flat.dtype)), axis=axis)
    return values, indices


def _max_at_first_argmax(patches: jax.Array, flat: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """`first_max` over the last axis of `patches` `(*lead, *out, K)`, with numpy flat indices `(*out, K)`."""
    # torch's indices are int64; JAX keeps its default integer width.
    return first_max(patches, -1, jnp.asarray(flat.astype(jax.dtypes.canonicalize_dtype(np.int64))))


def _kernel_args(
    kernel_size: IntOrInts, stride: IntOrInts, padding: IntOrInts, dilation: IntOrInts
) -> tuple[tuple[int, ...], ...]:
    """Per-axis `(kernel, stride, padding, dilation)`; an empty `stride` means the kernel size, as in torch."""
    kernel = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    n = len(kernel)
    strides = kernel if isinstance(stride, Sequence) and len(stride) == 0 else _expand(stride, n, "stride")
    return kernel, strides, _expand(padding, n, "padding"), _expand(dilation, n, "dilation")


def _right_pads(windows: Sequence[tuple[np.ndarray, np.ndarray]], spatial: Sequence[int]) -> list[int]:
    """Right padding per axis that lets `reduce_window` reach the last window, which ceil_mode may run past the input."""
    return [max(int(pos.max()) + 1 - length, 0) for (pos, _), length in zip(windows, spatial, strict=True)]


@register(
    "aten.max_pool3d_with_indices.default",
    "aten.max_pool2d_with_indices.default",
    "aten.max_pool1d_with_indices.default",
)
def max_pool_with_indices(
    x: jax.Array,
    kernel_size: IntOrInts,
    stride: IntOrInts = (),
    padding: IntOrInts = 0,
    dilation: IntOrInts = 1,
    ceil_mode: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """torch's max pooling of `x` `(*lead, *spatial)`.

    **Returns:** values and int indices, both `(*lead, *out)`; an index is
    the flat position of the window's first maximum in the unpadded spatial
    axes, as torch gives it.
    """
    kernel, strides, pads, dilations = _kernel_args(kernel_size, stride, padding, dilation)
    spatial = x.shape[x.ndim - len(kernel) :]
    windows = [
        _window_positions(*args, ceil_mode) for args in zip(spatial, kernel, strides, pads, dilations, strict=True)
    ]
    # Padding reads -inf, which never wins a window that holds an input element.
    patches, _, flat = _patches(x, windows, -jnp.inf)
    return _max_at_first_argmax(patches, flat)


def _avg_divisor(
    length: int, kernel: int, stride: int, pad: int, ceil_mode: bool, count_include_pad: bool
) -> np.ndarray:
    """torch's per-window divisor `(out,)` on one axis.

    With `count_include_pad` a window counts the padding it covers, but not
    the part of a ceil_mode window that runs past the right padding;
    without it only input elements count.
    """
    positions, valid = _window_positions(length, kernel, stride, pad, 1, ceil_mode)
    if not count_include_pad:
        return valid.sum(axis=1)
    return ((positions >= -pad) & (positions < length + pad)).sum(axis=1)


@register("aten.avg_pool3d.default", "aten.avg_pool2d.default", "aten.avg_pool1d.default")
def avg_pool(
    x: jax.Array,
    kernel_size: IntOrInts,
    stride: IntOrInts = (),
    padding: IntOrInts = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> jax.Array:
    """torch's average pooling of `x` `(*lead, *spatial)` into `(*lead, *out)`."""
    kernel, strides, pads, _ = _kernel_args(kernel_size, stride, padding, 1)
    lead = x.ndim - len(kernel)
    spatial = x.shape[lead:]
    windows = [_window_positions(*args, 1, ceil_mode) for args in zip(spatial, kernel, strides, pads, strict=True)]
    # A numpy zero: JAX recognises the window sum (and can differentiate it)
    # only from a concrete init value, and `jnp.asarray(0, float64)` is not one.
    sums = lax.reduce_window(
        x,
        np.zeros((), x.dtype),
        lax.add,
        (1,) * lead + kernel,
        (1,) * lead + strides,
        [(0, 0)] * lead + list(zip(pads, _right_pads(windows, spatial), strict=True)),
    )
    if divisor_override:
        return sums / divisor_override
    # The divisor of an n-d window is the product of its per-axis counts.
    divisor = np.ones(())
    for args in zip(spatial, kernel, strides, pads, strict=True):
        divisor = np.multiply.outer(divisor, _avg_divisor(*args, ceil_mode, count_include_pad))
    return sums / jnp.asarray(divisor, x.dtype)


def _adaptive_patches(
    x: jax.Array, output_size: Sequence[int], fill: float
) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """`_patches` of torch's adaptive windows over the trailing `len(output_size)` axes of `x`."""
    n = len(output_size)
    spatial = x.shape[x.ndim - n :]
    return _patches(x, [_adaptive_positions(*args) for args in zip(spatial, output_size, strict=True)], fill)


@register("aten._adaptive_avg_pool3d.default", "aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool1d.default")
def adaptive_avg_pool(x: jax.Array, output_size: Sequence[int]) -> jax.Array:
    """torch's adaptive average pooling of `x` `(*lead, *spatial)` into `(*lead, *output_size)`."""
    patches, valid, _ = _adaptive_patches(x, tuple(output_size), 0.0)
    return patches.sum(axis=-1) / jnp.asarray(valid.sum(axis=-1), x.dtype)


@register("aten.adaptive_max_pool3d.default", "aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default")
def adaptive_max_pool(x: jax.Array, output_size: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """torch's adaptive max pooling of `x` `(*lead, *spatial)`.

    **Returns:** values and flat int indices, both `(*lead, *output_size)`.
    Values are gathered at the first maximum, so the gradient goes to that
    one element as in torch.
    """
    patches, _, flat = _adaptive_patches(x, tuple(output_size), -jnp.inf)
    return _max_at_first_argmax(patches, flat)
