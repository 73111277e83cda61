"""Convolutions: `aten.convolution` in all its forms (1D/2D, transposed, grouped, dilated).

torch.export decomposes everything around the convolution itself before it
reaches here: `padding='same'` becomes a `constant_pad_nd` for the odd part
(even kernels pad one more on the right) plus symmetric padding here, and the
reflect/replicate/circular padding modes and `F.pad` become index, slice and
cat ops (see `converters/shape.py`). So the padding here is always zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from .registry import register

_SPATIAL = "HWD"


def _dimension_numbers(n_spatial: int, channels_last: bool = False) -> tuple[str, str, str]:
    """Input and output `NC...` (torch's layout) or `N...C`; the kernel stays torch's `OI...`."""
    spatial = _SPATIAL[:n_spatial]
    data = f"N{spatial}C" if channels_last else f"NC{spatial}"
    return (data, f"OI{spatial}", data)


@register("aten.convolution.default")
def convolution(
    x: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    *,
    channels_last: bool = False,
) -> jax.Array:
    """torch's convolution of channels-first `x` `(N, C_in, *spatial)`.

    **Arguments:** as `aten.convolution`. `weight` is `(C_out, C_in / groups,
    *kernel)`, or `(C_in, C_out / groups, *kernel)` when `transposed`;
    `bias` is `(C_out,)` or `None`; `padding` is symmetric zero padding per
    spatial axis.

    **Returns:** `(N, C_out, *out)`. With `channels_last`, `x` is laid out
    `(N, *spatial, C_in)` and the result `(N, *out, C_out)`.
    """
    n_spatial = x.ndim - 2
    numbers = _dimension_numbers(n_spatial, channels_last)
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
        y = y + (bias if channels_last else bias.reshape((1, -1) + (1,) * n_spatial))
    return y


def _transposed_kernel(weight: jax.Array, groups: int) -> jax.Array:
    """A transposed convolution's kernel `(C_in, C_out / g, *k)` as the equivalent forward kernel `(C_out, C_in / g, *k)`.

    The in/out channel axes swap within each group and the kernel flips.
    """
    in_channels, out_per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    w = weight.reshape((groups, in_channels // groups, out_per_group, *kernel))
    w = jnp.swapaxes(w, 1, 2).reshape((groups * out_per_group, in_channels // groups, *kernel))
    return jnp.flip(w, axis=tuple(range(2, w.ndim)))


def _transposed(
    x: jax.Array,
    weight: jax.Array,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    output_padding: Sequence[int],
    groups: int,
    numbers: tuple[str, str, str],
) -> jax.Array:
    """torch's transposed convolution of `x` `(N, C_in, *spatial)`, without bias.

    **Returns:** `(N, C_out, *out)` with `out = (L - 1) stride - 2 padding +
    dilation (k - 1) + output_padding + 1` per axis.
    """
    # A transposed convolution is the gradient of a convolution: dilate the
    # input by the stride, pad by dilation*(k-1)-padding on each side (plus
    # output_padding on the right) and convolve with the flipped kernel.
    # Padding beyond dilation*(k-1) makes these negative, which crops.
    kernel = weight.shape[2:]
    pads = [
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, d, op in zip(kernel, padding, dilation, output_padding, strict=True)
    ]
    return lax.conv_general_dilated(
        x,
        _transposed_kernel(weight, groups),
        window_strides=(1,) * len(kernel),
        padding=pads,
        lhs_dilation=tuple(stride),
        rhs_dilation=tuple(dilation),
        dimension_numbers=numbers,
        feature_group_count=groups,
    )
