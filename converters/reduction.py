"""Reductions over axes: sums, means, extrema, norms, variances.

ATen spells "every axis" as `dim=None` *or* an empty list (`x.sum()`
exports as `sum.dim_IntList(x, [])`); `_axes` maps both to JAX's
`axis=None`. Gradients follow torch: `amax`/`max()` share the gradient
evenly among ties, while `max.dim` sends it to the one index it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array, lax

from .elementwise import abs_
from .registry import register

Dims = int | Sequence[int] | None


def _axes(dim: Dims) -> tuple[int, ...] | None:
    """JAX's `axis` for ATen's `dim`: None and `()` both mean every axis."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return (dim,)
    return tuple(dim) or None


@register("aten.sum.dim_IntList")
def sum_(x: Array, dim: Dims = None, keepdim: bool = False, dtype=None) -> Array:
    """Sum over `dim` (all axes when None or empty)."""
    return jnp.sum(x, axis=_axes(dim), keepdims=keepdim, dtype=dtype)


@register("aten.sum.default")
def sum_all(x: Array, dtype=None) -> Array:
    """Sum of every element, a scalar."""
    return jnp.sum(x, dtype=dtype)


@register("aten.mean.dim")
def mean(x: Array, dim: Dims = None, keepdim: bool = False, dtype=None) -> Array:
    """Mean over `dim` (all axes when None or empty)."""
    return jnp.mean(x, axis=_axes(dim), keepdims=keepdim, dtype=dtype)


@register("aten.mean.default")
def mean_all(x: Array, dtype=None) -> Array:
    """Mean of every element, a scalar."""
    return jnp.mean(x, dtype=dtype)


@register("aten.prod.dim_int")
def prod(x: Array, dim: int, keepdim: bool = False, dtype=None) -> Array:
    """Product along one axis."""
    return jnp.prod(x, axis=dim, keepdims=keepdim, dtype=dtype)


@register("aten.prod.default")
def prod_all(x: Array, dtype=None) -> Array:
    """Product of every element, a scalar."""
    return jnp.prod(x, dtype=dtype)


@register("aten.amax.default")
def amax(x: Array, dim: Dims = (), keepdim: bool = False) -> Array:
    """Max over `dim` (all axes when empty); ties share the gradient evenly, as in torch."""
    return jnp.max(x, axis=_axes(dim), keepdims=keepdim)


@register("aten.amin.default")
def amin(x: Array, dim: Dims = (), keepdim: bool = False) -> Array:
    """Min over `dim` (all axes when empty); ties share the gradient evenly, as in torch."""
    return jnp.min(x, axis=_axes(dim), keepdims=keepdim)


def _select_along(x: Array, index: Array, dim: int, keepdim: bool) -> Array:
    """`x` at `index` (kept-dims shape) along `dim`: the gradient goes to that element only."""
    values = jnp.take_along_axis(x, index, axis=dim)
    return values if keepdim else jnp.squeeze(values, axis=dim)


@register("aten.max.dim")
def max_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of the max along `dim`; the first of tied maxima wins, as in torch."""
    index = jnp.argmax(x, axis=dim, keepdims=True)
    return _select_along(x, index, dim, keepdim), index if keepdim else jnp.squeeze(index, axis=dim)


@register("aten.min.dim")
def min_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """`(values, indices)` of the min along `dim`; the first of tied minima wins, as in torch."""
    index = jnp.argmin(x, axis=dim, keepdims=True)
    return _select_along(x, index, dim, keepdim), index if keepdim else jnp.squeeze(index, axis=dim)


@register("aten.max.default")
def max_all(x: Array) -> Array:
    """Max of every element; ties share the gradient evenly, as in torch."""
    return jnp.max(x)


@register("aten.min.default")
def min_all(x: Array) -> Array:
    """Min of every element; ties share the gradient evenly, as in torch."""
    return jnp.min(x)


@register("aten.argmax.default")
def argmax(x: Array, dim: int | None = None, keepdim: bool = False) -> Array:
    """Index of the first maximum along `dim`, or into the flattened `x` when None."""
    return jnp.argmax(x, axis=dim, keepdims=keepdim)


@register("aten.argmin.default")
def argmin(x: Array, dim: int | None = None, keepdim: bool = False) -> Array:
    """Index of the first minimum along `dim`, or into the flattened `x` when None."""
    return jnp.argmin(x, axis=dim, keepdims=keepdim)


@register("aten.any.dim", "aten.any.dims")
def any_(x: Array, dim: Dims = None, keepdim: bool = False) -> Array:
    """Whether any element along `dim` is nonzero, as bool."""
    return jnp.any(x, axis=_axes(dim), keepdims=keepdim)


@register("aten.any.default")
def any_all(x: Array) -> Array:
    """Whether any element is nonzero, as bool."""
    return jnp.any(x)


@register("aten.all.dim", "aten.all.dims")
def all_(x: Array, dim: Dims = None, keepdim: bool = False) -> Array:
    """Whether every element along `dim` is nonzero, as bool."""
    return jnp.all(x, axis=_axes(dim), keepdims=keepdim)


@register("aten.all.default")
def all_all(x: Array) -> Array:
    """Whether every element is nonzero, as bool."""
    return jnp.all(x)


@register("aten.var.correction")
def var(x: Array, dim: Dims = None, *, correction: float | None = None, keepdim: bool = False) -> Array:
    """Variance over `dim`, dividing by `count - correction` (default 1, Bessel's correction)."""
    return jnp.var(x, axis=_axes(dim), ddof=1 if correction is None else correction, keepdims=keepdim)


@register("aten.var.dim")
def var_dim(x: Array, dim: Dims = None, unbiased: bool = True, keepdim: bool = False) -> Array:
    """Variance over `dim`, unbiased (divide by `count - 1`) or not."""
    return var(x, dim, correction=1 if unbiased else 0, keepdim=keepdim)


@register("aten.std.correction")
def std(x: Array, dim: Dims = None, *, correction: float | None = None, keepdim: bool = False) -> Array:
    """Standard deviation over `dim`, dividing by `count - correction` (default 1).

    Its gradient is 0 where the deviation is 0 (a constant slice), as torch's
    std backward masks it; `sqrt(var)` would give NaN there. torch.export
    would decompose `std` into that `sqrt(var)`, so jaxjac keeps it whole.
    """
    return _safe_root(var(x, dim, correction=correction, keepdim=keepdim), 2)


@register("aten.std.dim")
def std_dim(x: Array, dim: Dims = None, unbiased: bool = True, keepdim: bool = False) -> Array:
    """Standard deviation over `dim`, unbiased or not (see `std`)."""
    return std(x, dim, correction=1 if unbiased else 0, keepdim=keepdim)


@register("aten.std_mean.correction")
def std_mean(
    x: Array, dim: Dims = None, *, correction: float | None = None, keepdim: bool = False
) -> tuple[Array, Array]:
    """`(standard deviation, mean)` over `dim`, in torch's order (see `std`)."""
    return std(x, dim, correction=correction, keepdim=keepdim), mean(x, dim, keepdim)


@register("aten.var_mean.correction")
def var_mean(
    x: Array, dim: Dims = None, *, correction: float | None = None, keepdim: bool = False
) -> tuple[Array, Array]:
    """`(variance, mean)` over `dim`, in torch's order."""
    return var(x, dim, correction=correction, keepdim=keepdim), mean(x, dim, keepdim)


def _safe_root(total: Array, p: float) -> Array:
    """`total ** (1 / p)` whose gradient is 0, not NaN, where `total == 0`.

    torch's norm backward masks the division by a zero norm to 0; the inner
    `where` keeps the root's infinite slope at 0 out of the gradient.
    """
    zero = total == 0
    safe = jnp.where(zero, jnp.ones_like(total), total)
    root = jnp.sqrt(safe) if p == 2 else safe ** (1.0 / p)
    return jnp.where(zero, jnp.zeros_like(total), root)


@register("aten.linalg_vector_norm.default")
def linalg_vector_norm(x: Array, ord: float = 2, dim: Dims = None, keepdim: bool = False, dtype=None) -> Array:  # noqa: A002
    """The `ord`-norm of `x` over `dim` (all axes when None or empty).

    Used by `weight_norm` and `F.normalize`. As in torch, the gradient of a
    norm that is 0 is 0, `ord=inf` shares the gradient among tied maxima and
    `ord=0` counts nonzeros.
    """
    axes = _axes(dim)
    x = x if dtype is None else x.astype(dtype)
    magnitude = abs_(x)
    if ord == float("inf"):
        return jnp.max(magnitude, axis=axes, keepdims=keepdim)
    if ord == float("-inf"):
        return jnp.min(magnitude, axis=axes, keepdims=keepdim)
    if ord == 0:
        return jnp.sum(x != 0, axis=axes, keepdims=keepdim).astype(x.dtype)
    if ord == 1:
        return jnp.sum(magnitude, axis=axes, keepdims=keepdim)
    if ord == 2:
        return _safe_root(jnp.sum(x * x, axis=axes, keepdims=keepdim), 2)
    powered = lax.integer_pow(magnitude, int(ord)) if float(ord).is_integer() else magnitude**ord
    return _safe_root(jnp.sum(powered, axis=axes, keepdims=keepdim), ord)


@register("aten.cumsum.default")
def cumsum(x: Array, dim: int, dtype=None) -> Array:
    """Running sum along `dim`."""
    return jnp.cumsum(x, axis=dim, dtype=dtype)


@register("aten.cumprod.default")
def cumprod(x: Array, dim: int, dtype=None) -> Array:
    """Running product along `dim`."""
    return jnp.cumprod(x, axis=dim, dtype=dtype)


@register("aten.logcumsumexp.default")
def logcumsumexp(x: Array, dim: int) -> Array:
    """Running `log(sum(exp(x)))` along `dim`, computed stably."""
    return x if x.ndim == 0 else lax.cumlogsumexp(x, axis=dim % x.ndim)
