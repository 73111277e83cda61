"""Normalisation layers: BatchNorm (eval), InstanceNorm, LayerNorm, GroupNorm."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .registry import register


def _channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@register("aten._native_batch_norm_legit_no_training.default")
def batch_norm_eval(x, weight, bias, running_mean, running_var, momentum, eps):
    """BatchNorm with running statistics: `(N, C, *)`; returns torch's 3-tuple."""
    y = (x - _channel(running_mean, x.ndim)) * _channel(lax.rsqrt(running_var + eps), x.ndim)
    if weight is not None:
        y = y * _channel(weight, x.ndim)
    if bias is not None:
        y = y + _channel(bias, x.ndim)
    empty = jnp.zeros((0,), x.dtype)
    return y, empty, empty
