"""Normalisation layers: BatchNorm (eval), InstanceNorm, LayerNorm, GroupNorm.

Each lowering returns the same tuple as its ATen op, `(out, mean, rstd)`, so
that `getitem` indices recorded by the export resolve. Where the statistics
are computed anyway (batch statistics, layer and group norm) `mean` and
`rstd` are the real values; with running statistics torch returns empty
tensors, and so does jaxjac. InstanceNorm1d has no op of its own: torch
exports it as a batch norm over a `(1, N * C, L)` view.

Statistics are biased (divide by the count), like torch's forward pass, and
differentiated through, so Jacobians include the dependence of the
statistics on the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array, lax

from .registry import register


def _channel(v: Array, ndim: int) -> Array:
    """A per-channel vector `(C,)` as `(1, C, 1, ...)` for an `ndim`-dimensional `(N, C, *)` tensor."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _affine(y: Array, weight: Array | None, bias: Array | None, shape: tuple[int, ...]) -> Array:
    """`y * weight + bias` with each optional parameter reshaped to `shape` first."""
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _moments(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """Mean and biased variance of `x` over `axes`, kept as size-1 axes."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    return mean, jnp.mean(centred * centred, axis=axes, keepdims=True)


def _batch_norm_running(x, weight, bias, running_mean, running_var, eps):
    """Normalise `(N, C, *)` with stored per-channel statistics `(C,)`; torch's 3-tuple."""
    y = (x - _channel(running_mean, x.ndim)) * _channel(lax.rsqrt(running_var + eps), x.ndim)
    y = _affine(y, weight, bias, (1, -1) + (1,) * (x.ndim - 2))
    empty = jnp.zeros((0,), x.dtype)
    return y, empty, empty


def _batch_norm_batch_stats(x, weight, bias, eps):
    """Normalise `(N, C, *)` with the statistics of this batch per channel.

    **Returns:** `(out, mean (C,), rstd (C,))`, like torch's
    `_native_batch_norm_legit` in training mode.
    """
    axes = (0, *range(2, x.ndim))
    mean, var = _moments(x, axes)
    rstd = lax.rsqrt(var + eps)
    y = _affine((x - mean) * rstd, weight, bias, (1, -1) + (1,) * (x.ndim - 2))
    return y, mean.reshape(-1), rstd.reshape(-1)


@register("aten._native_batch_norm_legit_no_training.default")
def batch_norm_eval(x, weight, bias, running_mean, running_var, momentum, eps):
    """BatchNorm (and InstanceNorm with `track_running_stats`) in eval mode.

    **Arguments:** `x` `(N, C, *)`; `weight`, `bias` `(C,)` or None;
    running statistics `(C,)`; `momentum` is unused in eval.

    **Returns:** `(out, empty, empty)`, as torch does.
    """
    return _batch_norm_running(x, weight, bias, running_mean, running_var, eps)


@register("aten._native_batch_norm_legit.no_stats")
def batch_norm_no_stats(x, weight, bias, training, momentum, eps):
    """BatchNorm with no running statistics, and InstanceNorm: normalise by batch statistics.

    The graph is traced at batch size 1, so for BatchNorm this is per-sample
    normalisation over the length axis; InstanceNorm arrives as `(1, N*C, L)`.

    **Returns:** `(out, mean (C,), rstd (C,))`.
    """
    return _batch_norm_batch_stats(x, weight, bias, eps)


@register("aten._native_batch_norm_legit.default")
def batch_norm_legit(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """BatchNorm that holds running statistics: batch statistics if `training`, else the running ones.

    jaxjac cannot update the running statistics in place; it exports in
    eval mode, where torch emits the `_no_training` op instead.
    """
    if training:
        return _batch_norm_batch_stats(x, weight, bias, eps)
    return _batch_norm_running(x, weight, bias, running_mean, running_var, eps)


@register("aten.native_layer_norm.default")
def layer_norm(x: Array, normalized_shape: Sequence[int], weight, bias, eps: float):
    """LayerNorm over the trailing `len(normalized_shape)` axes of `x`.

    **Arguments:** `x` `(*lead, *normalized_shape)`; `weight`, `bias` of
    shape `normalized_shape` or None.

    **Returns:** `(out, mean, rstd)`, the statistics of shape `(*lead, 1, ..., 1)`.
    """
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean, var = _moments(x, axes)
    rstd = lax.rsqrt(var + eps)
    y = _affine((x - mean) * rstd, weight, bias, tuple(normalized_shape))
    return y, mean, rstd


@register("aten.native_group_norm.default")
def group_norm(x: Array, weight, bias, N: int, C: int, HxW: int, group: int, eps: float):  # noqa: N803  (ATen's names)
    """GroupNorm: statistics over each group of `C // group` channels and all positions.

    **Arguments:** `x` `(N, C, *)` with `prod(*) == HxW`; `weight`, `bias`
    `(C,)` or None.

    **Returns:** `(out, mean (N, group), rstd (N, group))`.
    """
    grouped = x.reshape(N, group, (C // group) * HxW)
    mean, var = _moments(grouped, (2,))
    rstd = lax.rsqrt(var + eps)
    y = ((grouped - mean) * rstd).reshape(x.shape)
    y = _affine(y, weight, bias, (1, -1) + (1,) * (x.ndim - 2))
    return y, mean.reshape(N, group), rstd.reshape(N, group)
