"""Order statistics: sort, topk, median and nanmedian, kthvalue, mode, and running extrema.

Values are gathered from the input at the indices the op returns, so the
gradient goes to those positions, as torch's backward sends it. Order follows
torch: NaN sorts above every number, ties keep their input order in an
ascending or a descending sort, `median` is the lower of the two middle
values, and `cummax`/`cummin` move to a later equal value and stay on NaN.
Which of several *equal* values torch's `topk`, `median.dim` and `kthvalue`
pick is unspecified (its selection algorithm decides); here it is the first in
input order. The values are the same either way, and only a Jacobian row at an
exact tie can differ.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax

from .registry import register


def _order(x: Array, dim: int, descending: bool) -> Array:
    """Indices that sort `x` along `dim`, stably, NaN last (first when `descending`), as torch does."""
    # A stable sort of the reversed axis, reversed back, is a stable descending sort.
    return jnp.argsort(x, axis=dim, stable=True, descending=descending)


def _gather(x: Array, index: Array, dim: int) -> Array:
    return jnp.take_along_axis(x, index, axis=dim)


@register("aten.sort.default")
def sort(x: Array, dim: int = -1, descending: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of `x` sorted along `dim`."""
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    index = _order(x, dim, descending)
    return _gather(x, index, dim), index


@register("aten.sort.stable")
def sort_stable(
    x: Array, *, stable: bool | None = None, dim: int = -1, descending: bool = False
) -> tuple[Array, Array]:
    """`torch.sort(..., stable=...)`: the same stable sort."""
    return sort(x, dim, descending)


@register("aten.topk.default")
def topk(x: Array, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple[Array, Array]:
    """`(values, indices)` of the `k` largest (or smallest) entries along `dim`, in sorted order.

    With `sorted=False` torch returns them in an order of its own choosing;
    sorted order is one such order.
    """
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    index = lax.slice_in_dim(_order(x, dim, largest), 0, k, axis=dim % x.ndim)
    return _gather(x, index, dim), index


def _kth(x: Array, position: Array | int, dim: int, keepdim: bool) -> tuple[Array, Array]:
    """`(values, indices)` of the entry at `position` of the ascending order along `dim`."""
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    axis = dim % x.ndim
    order = _order(x, axis, False)
    reduced_shape = x.shape[:axis] + x.shape[axis + 1 :]
    index = _gather(order, jnp.expand_dims(jnp.broadcast_to(position, reduced_shape), axis), axis)
    values = _gather(x, index, dim)
    if not keepdim:
        values, index = jnp.squeeze(values, dim), jnp.squeeze(index, dim)
    return values, index


@register("aten.kthvalue.default")
def kthvalue(x: Array, k: int, dim: int = -1, keepdim: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of the `k`-th smallest entry (1-based) along `dim`."""
    return _kth(x, k - 1, dim, keepdim)


@register("aten.mode.default")
def mode(x: Array, dim: int = -1, keepdim: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of the most frequent entry along `dim`: the smallest of several, at its last position.

    Counts compare every pair of entries of a slice, `n**2` of them.
    """
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    axis = dim % x.ndim
    moved = jnp.moveaxis(x, axis, -1)
    counts = jnp.sum(moved[..., :, None] == moved[..., None, :], axis=-1)
    frequent = counts == jnp.max(counts, axis=-1, keepdims=True)
    top = jnp.array(jnp.inf if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.iinfo(x.dtype).max, x.dtype)
    value = jnp.min(jnp.where(frequent, lax.stop_gradient(moved), top), axis=-1, keepdims=True)
    n = moved.shape[-1]
    last = n - 1 - jnp.argmax(jnp.flip(moved == value, -1), axis=-1, keepdims=True)
    values = jnp.take_along_axis(moved, last, axis=-1)
    values, last = jnp.moveaxis(values, -1, axis), jnp.moveaxis(last, -1, axis)
    if not keepdim:
        values, last = jnp.squeeze(values, axis), jnp.squeeze(last, axis)
    return values, last


@register("aten.median.dim")
def median_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of the lower median along `dim`; NaN (the first NaN) when the slice holds one."""
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    n = x.shape[dim]
    nans = jnp.sum(jnp.isnan(x), axis=dim)
    # NaN sorts last, so the first NaN in sorted order sits at n - nans.
    position = jnp.where(nans > 0, n - nans, (n - 1) // 2)
    return _kth(x, position, dim, keepdim)


@register("aten.median.default")
def median(x: Array) -> Array:
    """The lower median of all entries; its gradient is shared evenly among the entries equal to it.

    That is torch's rule for the all-entries median (the `dim` form sends it
    to the one index it returns instead).
    """
    flat = x.reshape(-1)
    return _shared_among_ties(flat, median_dim(flat, 0)[0])


def _shared_among_ties(flat: Array, value: Array) -> Array:
    """`value`, one of the entries of `flat`, with its gradient shared evenly among the entries equal to it (NaN: the NaNs)."""
    value = lax.stop_gradient(value)
    ties = jnp.where(jnp.isnan(value), jnp.isnan(flat), flat == value)
    share = jnp.where(ties, flat - lax.stop_gradient(flat), 0).sum() / jnp.sum(ties)
    return value + share


@register("aten.nanmedian.dim")
def nanmedian_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of the lower median of the non-NaN entries along `dim`; NaN where all are NaN."""
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    numbers = x.shape[dim] - jnp.sum(jnp.isnan(x), axis=dim)
    # NaN sorts last: the median of the numbers sits at (numbers - 1) // 2, a NaN at 0 when there are none.
    return _kth(x, jnp.maximum(numbers - 1, 0) // 2, dim, keepdim)


@register("aten.nanmedian.default")
def nanmedian(x: Array) -> Array:
    """The lower median of all non-NaN entries; its gradient is shared evenly among the entries equal to it."""
    flat = x.reshape(-1)
    return _shared_among_ties(flat, nanmedian_dim(flat, 0)[0])


def _running_extremum(x: Array, dim: int, better) -> tuple[Array, Array]:
    """`(values, indices)` of the running extremum along `dim`: an entry `better` than or equal to it, or NaN, takes over."""
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int32)
    axis = dim % x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    positions = jnp.broadcast_to(jnp.arange(x.shape[axis], dtype=jnp.int32).reshape(shape), x.shape)
    detached = lax.stop_gradient(x)

    def combine(earlier, later):
        (value_a, index_a), (value_b, index_b) = earlier, later
        take_b = jnp.isnan(value_b) | ((better(value_b, value_a) | (value_b == value_a)) & ~jnp.isnan(value_a))
        return jnp.where(take_b, value_b, value_a), jnp.where(take_b, index_b, index_a)

    _, index = lax.associative_scan(combine, (detached, positions), axis=axis)
    return _gather(x, index, axis), index


@register("aten.cummax.default")
def cummax(x: Array, dim: int) -> tuple[Array, Array]:
    """`(values, indices)` of the running maximum along `dim`; the gradient goes to the index returned."""
    return _running_extremum(x, dim, jnp.greater)


@register("aten.cummin.default")
def cummin(x: Array, dim: int) -> tuple[Array, Array]:
    """`(values, indices)` of the running minimum along `dim`; the gradient goes to the index returned."""
    return _running_extremum(x, dim, jnp.less)
