"""Convolutions: `aten.convolution` in all its forms (1D/2D, transposed, grouped, dilated)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .registry import register

_SPATIAL = "HWD"


def _dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
    spatial = _SPATIAL[:n_spatial]
    return (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}")


@register("aten.convolution.default")
def convolution(
    x: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    transposed: bool,
    output_padding: tuple[int, ...],
    groups: int,
) -> jax.Array:
    """torch's convolution on channels-first `x` `(N, C, *spatial)`.

    Padding here is always explicit zeros: torch decomposes `padding='same'`
    and the reflect/replicate/circular modes into pad ops before this.
    """
    n_spatial = x.ndim - 2
    numbers = _dimension_numbers(n_spatial)
    if not transposed:
        y = lax.conv_general_dilated(
            x,
            weight,
            window_strides=tuple(stride),
            padding=[(p, p) for p in padding],
            rhs_dilation=tuple(dilation),
            dimension_numbers=numbers,
            feature_group_count=groups,
            )
    else:
        y = _transposed(x, weight, stride, padding, dilation, output_padding, groups, numbers)
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * n_spatial)
    return y


def _transposed(x, weight, stride, padding, dilation, output_padding, groups, numbers):
    # A transposed convolution is the gradient of a convolution: dilate the
    # input by the stride, pad by dilation*(k-1)-padding on each side (plus
    # output_padding on the right) and convolve with the flipped kernel whose
    # in/out channel axes are swapped within each group.
    in_channels, out_per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    w = weight.reshape((groups, in_channels // groups, out_per_group, *kernel))
    w = jnp.swapaxes(w, 1, 2).reshape((groups * out_per_group, in_channels // groups, *kernel))
    w = jnp.flip(w, axis=tuple(range(2, w.ndim)))
    pads = [
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, d, op in zip(kernel, padding, dilation, output_padding, strict=True)
    ]
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(1,) * len(kernel),
        padding=pads,
        lhs_dilation=tuple(stride),
        rhs_dilation=tuple(dilation),
        dimension_numbers=numbers,
        feature_group_count=groups,
    )
