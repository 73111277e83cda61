"""Pooling: max and average pooling (with all torch options) and adaptive pooling.

torch lowers the 1D pools to their 2D forms on `(N, C, 1, L)`, so these
functions handle any number of trailing spatial axes.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .registry import register


def _tuple(v, n):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def _output_size(length, kernel, stride, pad, dilation, ceil_mode):
    span = dilation * (kernel - 1) + 1
    numerator = length + 2 * pad - span
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    # torch: the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= length + pad:
        out -= 1
    return out


def _window_config(x, kernel_size, stride, padding, dilation, ceil_mode):
    n = len(_tuple(kernel_size, 1)) if not isinstance(kernel_size, int) else 1
    kernel = _tuple(kernel_size, n)
    stride = _tuple(stride, n) if stride not in ((), None) and len(_tuple(stride, n)) else kernel
    padding, dilation = _tuple(padding, n), _tuple(dilation, n)
    lead = x.ndim - n
    pads = []
    for length, k, s, p, d in zip(x.shape[lead:], kernel, stride, padding, dilation, strict=True):
        out = _output_size(length, k, s, p, d, ceil_mode)
        right = (out - 1) * s + d * (k - 1) + 1 - length - p
        pads.append((p, max(right, 0)))
    dims = (1,) * lead + kernel
    return dims, (1,) * lead + stride, [(0, 0)] * lead + pads, (1,) * lead + dilation


@register("aten.max_pool2d_with_indices.default", "aten.max_pool1d_with_indices.default")
def max_pool_with_indices(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """Max pooling; returns `(values, None)`: indices are not lowered."""
    dims, strides, pads, dil = _window_config(x, kernel_size, stride, padding, dilation, ceil_mode)
    values = lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads, window_dilation=dil)
    return values, None
