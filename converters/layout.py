"""Channels-last execution: the same torch semantics with channels stored last.

torch graphs are channels-first, `(N, C, *spatial)`. XLA's CPU convolutions
run channels-last, and around every channels-first convolution XLA inserts
transposes that it cannot cancel across the pointwise ops, pools and norms in
between; the per-sample Jacobian of the seed-shaped CNN runs about 20% faster
when the whole conv stack stays channels-last (`bench/layout_probe.py`).

So the interpreter may carry a value as `ChannelsLast`: its *logical* shape is
torch's `(N, C, *spatial)` and its *physical* array is `(N, *spatial, C)`. A
convolution starts such a region; the rules below keep it going through ops
that do not care where the channel axis lives, and every other op sees the
value transposed back (`to_logical`), so results never change, only speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import pool
from .registry import register_channels_last


@dataclass(frozen=True)
class ChannelsLast:
    """A tensor of logical shape `(N, C, *spatial)` stored as `array` `(N, *spatial, C)`."""

    array: jax.Array

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical (torch) shape."""
        s = self.array.shape
        return (s[0], s[-1], *s[1:-1])


def to_physical(x: jax.Array) -> jax.Array:
    """Logical `(N, C, *spatial)` to physical `(N, *spatial, C)`."""
    return jnp.moveaxis(x, 1, -1)


def to_logical(value: Any) -> Any:
    """`value` with every `ChannelsLast` inside it transposed back to torch's layout."""
    if isinstance(value, ChannelsLast):
        return jnp.moveaxis(value.array, -1, 1)
    if isinstance(value, tuple):
        return tuple(to_logical(v) for v in value)
    return value


def contains_channels_last(value: Any) -> bool:
    """Whether `value` is, or is a tuple holding, a `ChannelsLast`."""
    if isinstance(value, ChannelsLast):
        return True
    return isinstance(value, tuple) and any(contains_channels_last(v) for v in value)


def physical_axis(dim: int, rank: int) -> int:
    """Where logical axis `dim` of a rank-`rank` tensor lives in the physical array."""
    dim %= rank
    if dim == 0:
        return 0
    return rank - 1 if dim == 1 else dim - 1


def _wrap(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, jax.Array) and value.ndim >= 3:
        return ChannelsLast(value)
    return value


# -- pointwise ops -------------------------------------------------------------

POINTWISE_OPS = tuple(
    f"aten.{name}"
    for name in (
        "add.Tensor add.Scalar sub.Tensor sub.Scalar rsub.Scalar rsub.Tensor mul.Tensor mul.Scalar "
        "div.Tensor div.Scalar div.Tensor_mode pow.Tensor_Scalar pow.Tensor_Tensor neg.default abs.default "
        "exp.default expm1.default log.default log1p.default sqrt.default rsqrt.default reciprocal.default "
        "sin.default cos.default tanh.default sigmoid.default relu.default gelu.default leaky_relu.default "
        "elu.default hardtanh.default hardswish.default hardsigmoid.default erf.default sign.default "
        "clamp.default clamp.Tensor clamp_min.default clamp_max.default maximum.default minimum.default fmax.default fmin.default "
        "where.self where.ScalarSelf where.ScalarOther eq.Tensor eq.Scalar ne.Tensor ne.Scalar gt.Tensor "
        "gt.Scalar ge.Tensor ge.Scalar lt.Tensor lt.Scalar le.Tensor le.Scalar logical_not.default "
        "logical_and.default logical_or.default clone.default alias.default detach.default "
        "_to_copy.default sinc.default"
    ).split()
)


@register_channels_last(*POINTWISE_OPS)
def pointwise(lowering, *args, **kwargs):
    """Apply a pointwise op to physical arrays, bringing plain tensor operands into the same layout.

    Elementwise ops commute with a transposition: broadcasting a plain operand
    to the logical rank and then transposing it like the channels-last ones
    lines everything up (for a parameter of shape `(C, 1)` this is free).
    """
    rank = max(a.ndim for a in (*args, *kwargs.values()) if isinstance(a, ChannelsLast))

    def align(a: Any) -> Any:
        if isinstance(a, ChannelsLast):
            return a.array
        if isinstance(a, jax.Array) and a.ndim > 0:
            if a.ndim > rank:
                raise _Fallback
            return to_physical(a.reshape((1,) * (rank - a.ndim) + a.shape))
        return a

    try:
        physical_args = [align(a) for a in args]
        physical_kwargs = {k: align(v) for k, v in kwargs.items()}
    except _Fallback:
        return NotImplemented
    return ChannelsLast(lowering(*physical_args, **physical_kwargs))


class _Fallback(Exception):
    """Raised inside a rule to ask for the plain lowering instead."""


# -- convolution and normalisation --------------------------------------------


@register_channels_last("aten.convolution.default")
def convolution(lowering, x, weight, bias, *rest):
    """A 1D convolution computed channels-last; it also starts channels-last regions from plain input."""
    if isinstance(weight, ChannelsLast) or x.ndim != 3:
        return NotImplemented
    physical = x.array if isinstance(x, ChannelsLast) else to_physical(x)
    return ChannelsLast(lowering(physical, weight, bias, *rest, channels_last=True))


@register_channels_last("aten._native_batch_norm_legit_no_training.default")
def batch_norm_eval(lowering, x, weight, bias, running_mean, running_var, momentum, eps):
    """Eval-mode BatchNorm; the channel vectors broadcast over the last axis."""
    if not isinstance(x, ChannelsLast):
        return NotImplemented
    y = (x.array - running_mean) * jax.lax.rsqrt(running_var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    empty = jnp.zeros((0,), y.dtype)
    return ChannelsLast(y), empty, empty


# -- pooling along the one non-trivial spatial axis ---------------------------
#
# torch runs a 1D pool as a 2D pool on (N, C, 1, L). Channels-last, that is
# (N, 1, L, C): the windows split axis L in place, and the max or mean over
# each window leaves the channel axis where it is, with no transposes.


def _pool_axis(x: ChannelsLast, kernel, strides, pads, dilations) -> int | None:
    """The physical axis a pool really windows, if all the others are trivial and of size 1."""
    spatial = x.array.shape[1:-1]
    n = len(kernel)
    if n > len(spatial):
        return None
    lead = len(spatial) - n
    if any(size != 1 for size in spatial[: len(spatial) - 1]):
        return None
    trivial = all(
        (k, s, p, d) == (1, 1, 0, 1)
        for k, s, p, d in zip(kernel[:-1], strides[:-1], pads[:-1], dilations[:-1], strict=True)
    )
    return 1 + lead + n - 1 if trivial else None


def _windows(array: jax.Array, axis: int, positions, valid, fill) -> jax.Array:
    """Split `axis` into `(out, k)` windows at `positions`, invalid entries reading `fill`."""
    patches = pool._split_axis_into_windows(array, axis, positions, array.shape[axis])
    if not valid.all():
        mask = valid.reshape((1,) * axis + valid.shape + (1,) * (array.ndim - axis - 1))
        patches = jnp.where(jnp.asarray(mask), patches, jnp.asarray(fill, patches.dtype))
    return patches


def _first_max(patches: jax.Array, axis: int, positions) -> tuple[jax.Array, jax.Array]:
    """`pool.first_max` over the window axis `axis + 1`; a window's flat index is its position on `axis`."""
    flat = jnp.asarray(positions.astype(jax.dtypes.canonicalize_dtype(np.int64)))
    flat = flat.reshape((1,) * axis + flat.shape + (1,) * (patches.ndim - axis - 2))
    return pool.first_max(patches, axis + 1, flat)


@register_channels_last("aten.max_pool2d_with_indices.default", "aten.max_pool1d_with_indices.default")
def max_pool(lowering, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    if not isinstance(x, ChannelsLast):
        return NotImplemented
    kernel, strides, pads, dilations = pool._kernel_args(kernel_size, stride, padding, dilation)
    axis = _pool_axis(x, kernel, strides, pads, dilations)
    if axis is None:
        return NotImplemented
    positions, valid = pool._window_positions(
        x.array.shape[axis], kernel[-1], strides[-1], pads[-1], dilations[-1], ceil_mode
    )
    values, indices = _first_max(_windows(x.array, axis, positions, valid, -jnp.inf), axis, positions)
    return ChannelsLast(values), ChannelsLast(indices)


@register_channels_last("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def avg_pool(
    lowering, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    if not isinstance(x, ChannelsLast):
        return NotImplemented
    kernel, strides, pads, _ = pool._kernel_args(kernel_size, stride, padding, 1)
    axis = _pool_axis(x, kernel, strides, pads, (1,) * len(kernel))
    if axis is None:
        return NotImplemented
    length = x.array.shape[axis]
    positions, valid = pool._window_positions(length, kernel[-1], strides[-1], pads[-1], 1, ceil_mode)
    sums = _windows(x.array, axis, positions, valid, 0).sum(axis=axis + 1)
    if divisor_override:
        return ChannelsLast(sums / divisor_override)
    divisor = pool._avg_divisor(length, kernel[-1], strides[-1], pads[-1], ceil_mode, count_include_pad)
    return ChannelsLast(sums / jnp.asarray(divisor.reshape(divisor.shape + (1,) * (sums.ndim - axis - 1)), sums.dtype))


def _adaptive_axis(x: ChannelsLast, output_size) -> int | None:
    output_size = tuple(output_size)
    spatial = x.array.shape[1:-1]
    if len(output_size) > len(spatial) or any(s != 1 for s in spatial[:-1]) or any(o != 1 for o in output_size[:-1]):
        return None
    return x.array.ndim - 2


@register_channels_last("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool1d.default")
def adaptive_avg_pool(lowering, x, output_size):
    if not isinstance(x, ChannelsLast) or (axis := _adaptive_axis(x, output_size)) is None:
        return NotImplemented
    positions, valid = pool._adaptive_positions(x.array.shape[axis], tuple(output_size)[-1])
    sums = _windows(x.array, axis, positions, valid, 0).sum(axis=axis + 1)
    counts = valid.sum(axis=1).reshape((-1,) + (1,) * (sums.ndim - axis - 1))
    return ChannelsLast(sums / jnp.asarray(counts, sums.dtype))


@register_channels_last("aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default")
def adaptive_max_pool(lowering, x, output_size):
    if not isinstance(x, ChannelsLast) or (axis := _adaptive_axis(x, output_size)) is None:
        return NotImplemented
    positions, valid = pool._adaptive_positions(x.array.shape[axis], tuple(output_size)[-1])
    values, indices = _first_max(_windows(x.array, axis, positions, valid, -jnp.inf), axis, positions)
    return ChannelsLast(values), ChannelsLast(indices)


# -- shape ops that only move spatial axes ------------------------------------


@register_channels_last("aten.unsqueeze.default")
def unsqueeze(lowering, x, dim):
    rank = x.ndim + 1
    dim %= rank
    if dim < 2:
        return NotImplemented
    return ChannelsLast(jnp.expand_dims(x.array, dim - 1))


@register_channels_last("aten.squeeze.dims", "aten.squeeze.dim")
def squeeze(lowering, x, dims):
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    logical = x.shape
    axes = [d % x.ndim for d in dims if logical[d] == 1]
    if any(d < 2 for d in axes) or x.ndim - len(axes) < 3:
        return NotImplemented
    return ChannelsLast(jnp.squeeze(x.array, tuple(d - 1 for d in axes)))


@register_channels_last("aten.slice.Tensor")
def slice_(lowering, x, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * x.ndim
    index[physical_axis(dim, x.ndim)] = slice(start, end, step)
    return ChannelsLast(x.array[tuple(index)])


@register_channels_last("aten.cat.default")
def cat(lowering, tensors: Sequence[Any], dim=0):
    """Concatenation, e.g. of Inception branches along channels; plain inputs are brought over."""
    rank = next(t.ndim for t in tensors if isinstance(t, ChannelsLast))
    if any(t.ndim != rank for t in tensors):
        return NotImplemented
    arrays = [t.array if isinstance(t, ChannelsLast) else to_physical(t) for t in tensors]
    return ChannelsLast(lowering(arrays, physical_axis(dim, rank)))


@register_channels_last("aten.constant_pad_nd.default")
def constant_pad(lowering, x, pad, value=0):
    """Padding of logical axes, from the last one backwards, applied to their physical positions."""
    config = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        config[physical_axis(x.ndim - 1 - i, x.ndim)] = (pad[2 * i], pad[2 * i + 1], 0)
    return ChannelsLast(jax.lax.pad(x.array, jnp.asarray(value, x.array.dtype), config))


@register_channels_last("aten.index.Tensor")
def index(lowering, x, indices):
    """The reflect/replicate padding pattern: one 1-D integer index on one axis, `None` elsewhere."""
    given = [(d, i) for d, i in enumerate(indices) if i is not None]
    if len(given) != 1 or given[0][1].ndim != 1 or not jnp.issubdtype(given[0][1].dtype, jnp.integer):
        return NotImplemented
    dim, idx = given[0]
    return ChannelsLast(jnp.take(x.array, idx, axis=physical_axis(dim, x.ndim)))


# -- reductions over spatial axes (global average pooling written as mean) ----


@register_channels_last("aten.mean.dim", "aten.sum.dim_IntList", "aten.amax.default")
def reduce_spatial(lowering, x, dim=None, keepdim=False, *rest, **kwargs):
    if dim is None or len(dim) == 0:
        return NotImplemented
    axes = sorted({d % x.ndim for d in dim})
    if axes[0] < 2:
        return NotImplemented
    result = lowering(x.array, tuple(a - 1 for a in axes), keepdim, *rest, **kwargs)
    if keepdim or result.ndim >= 3:
        return ChannelsLast(result)
    # (N, C): the physical and logical layouts coincide.
    return result
