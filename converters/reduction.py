"""Reductions over axes: sums, means, extrema, norms, variances."""

from __future__ import annotations

import jax.numpy as jnp

from .registry import register


def _axes(x, dim):
    if dim is None or (isinstance(dim, tuple) and len(dim) == 0):
        return None
    return tuple(dim) if isinstance(dim, tuple) else (dim,)


@register("aten.sum.dim_IntList")
def sum_(x, dim=None, keepdim=False, dtype=None):
    return jnp.sum(x, axis=_axes(x, dim), keepdims=keepdim, dtype=dtype)


@register("aten.sum.default")
def sum_all(x, dtype=None):
    return jnp.sum(x, dtype=dtype)


@register("aten.mean.dim")
def mean(x, dim=None, keepdim=False, dtype=None):
    return jnp.mean(x, axis=_axes(x, dim), keepdims=keepdim, dtype=dtype)


@register("aten.mean.default")
def mean_all(x, dtype=None):
    return jnp.mean(x, dtype=dtype)


@register("aten.prod.dim_int")
def prod(x, dim, keepdim=False, dtype=None):
    return jnp.prod(x, axis=dim, keepdims=keepdim, dtype=dtype)


@register("aten.amax.default")
def amax(x, dim=(), keepdim=False):
    return jnp.max(x, axis=_axes(x, dim), keepdims=keepdim)


@register("aten.amin.default")
def amin(x, dim=(), keepdim=False):
    return jnp.min(x, axis=_axes(x, dim), keepdims=keepdim)


@register("aten.max.dim")
def max_dim(x, dim, keepdim=False):
    return jnp.max(x, axis=dim, keepdims=keepdim), jnp.argmax(x, axis=dim, keepdims=keepdim)


@register("aten.min.dim")
def min_dim(x, dim, keepdim=False):
    return jnp.min(x, axis=dim, keepdims=keepdim), jnp.argmin(x, axis=dim, keepdims=keepdim)


@register("aten.max.default")
def max_all(x):
    return jnp.max(x)


@register("aten.min.default")
def min_all(x):
    return jnp.min(x)


@register("aten.argmax.default")
def argmax(x, dim=None, keepdim=False):
    return jnp.argmax(x, axis=dim, keepdims=keepdim)


@register("aten.argmin.default")
def argmin(x, dim=None, keepdim=False):
    return jnp.argmin(x, axis=dim, keepdims=keepdim)


@register("aten.any.dim", "aten.any.dims")
def any_(x, dim=None, keepdim=False):
    return jnp.any(x, axis=_axes(x, dim), keepdims=keepdim)


@register("aten.any.default")
def any_all(x):
    return jnp.any(x)


@register("aten.all.dim", "aten.all.dims")
def all_(x, dim=None, keepdim=False):
    return jnp.all(x, axis=_axes(x, dim), keepdims=keepdim)


@register("aten.var.correction")
def var(x, dim=None, correction=None, keepdim=False):
    return jnp.var(x, axis=_axes(x, dim), ddof=1 if correction is None else correction, keepdims=keepdim)


@register("aten.linalg_vector_norm.default")
def linalg_vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):  # noqa: A002
    axes = _axes(x, dim)
    x = x if dtype is None else x.astype(dtype)
    if ord == 2:
        return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=keepdim))
    if ord == float("inf"):
        return jnp.max(jnp.abs(x), axis=axes, keepdims=keepdim)
    if ord == float("-inf"):
        return jnp.min(jnp.abs(x), axis=axes, keepdims=keepdim)
    if ord == 0:
        return jnp.sum(x != 0, axis=axes, keepdims=keepdim).astype(x.dtype)
    return jnp.sum(jnp.abs(x) ** ord, axis=axes, keepdims=keepdim) ** (1.0 / ord)


@register("aten.cumsum.default")
def cumsum(x, dim, dtype=None):
    return jnp.cumsum(x, axis=dim, dtype=dtype)
