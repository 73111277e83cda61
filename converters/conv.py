"""Convolutions: `aten.convolution` in all its forms (1D/2D, transposed, grouped, dilated).

torch.export decomposes everything around the convolution itself before it
reaches here: `padding='same'` becomes a `constant_pad_nd` for the odd part
(even kernels pad one more on the right) plus symmetric padding here, and the
reflect/replicate/circular padding modes and `F.pad` become index, slice and
cat ops (see `converters/shape.py`). So the padding here is always zeros.

On CPU, a channels-last 1D convolution with few channels runs in a tiled
form with fatter channels (see `conv_tile`), and one that reads few inputs
per output position (a first layer on one or two input channels, say)
as one matrix product over its patches (see `patches_conv1d`), as does every
float64 one with a kernel of up to 16. A depthwise convolution (one input
channel per group) is a sum of shifted products there (see `depthwise_taps`),
and one with thin groups a dense convolution by a block-diagonal kernel or
one dense convolution per group (see `grouped_form`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .products import product_operands
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
    # torch records one value for all axes where it can: `padding="valid"` on a
    # Conv2d exports as `padding=[0]`, which torch's kernel repeats per axis.
    stride, padding, dilation, output_padding = (
        _per_axis(v, n_spatial) for v in (stride, padding, dilation, output_padding)
    )
    numbers = _dimension_numbers(n_spatial, channels_last)
    (x, weight), result = product_operands(x, weight)
    if transposed:
        y = _transposed(x, weight, stride, padding, dilation, output_padding, groups, numbers, result)
    else:
        xla = functools.partial(
            lax.conv_general_dilated,
            window_strides=tuple(stride),
            padding=[(p, p) for p in padding],
            rhs_dilation=tuple(dilation),
            dimension_numbers=numbers,
            feature_group_count=groups,
            preferred_element_type=result,
        )
        if _use_taps(weight, groups):
            taps = functools.partial(
                depthwise_taps, stride=stride, padding=padding, dilation=dilation, channels_last=channels_last
            )
            y = lax.platform_dependent(x, weight, cpu=functools.partial(taps, result=result), default=xla)
        elif channels_last:
            y = _cpu_form_or(xla, x, weight, stride, padding, dilation, groups, result)
        else:
            y = xla(x, weight)
    if bias is not None:
        # Explicit ranks: a user may run JAX with jax_numpy_rank_promotion="raise".
        y = y + bias.reshape((1,) * (n_spatial + 1) + (-1,) if channels_last else (1, -1) + (1,) * n_spatial)
    return y


def _per_axis(values: Sequence[int], n_spatial: int) -> tuple[int, ...]:
    """`values` for each spatial axis; one value stands for every axis, as in torch's convolution."""
    values = tuple(values)
    return values * n_spatial if len(values) == 1 else values


# Longer kernels' patches compile slowly: tsai's OmniScaleCNN (17 kernel sizes up to 53)
# converted in 46 s with every float64 layer as patches, against 12 s with XLA's convolution.
_MAX_FLOAT64_PATCHES = 16


def _cpu_form_or(
    xla: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    weight: jax.Array,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    result: jnp.dtype | None,
) -> jax.Array:
    """The channels-last convolution of `x` in the form measured fastest on CPU for its shape, `xla` elsewhere."""
    if x.ndim != 3:
        return xla(x, weight)
    options = {"stride": stride[0], "padding": (padding[0], padding[0]), "dilation": dilation[0]}
    if groups == 1:
        cpu = _dense_cpu_form(weight.shape, x.shape[1], x.dtype, options, result)
    else:
        cpu = _grouped_cpu_form(weight.shape, x.shape[1], x.dtype, groups, options, result)
    if cpu is None:
        return xla(x, weight)
    # XLA's own convolution elsewhere: these forms were chosen by timings on CPU only.
    return lax.platform_dependent(x, weight, cpu=cpu, default=xla)


def _dense_cpu_form(
    weight_shape: tuple[int, ...], length: int, dtype: jnp.dtype, options: dict, result: jnp.dtype | None
) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """The CPU form of a channels-last 1D convolution (`groups=1`) of this shape, or `None` for XLA's own."""
    out_channels, in_channels, kernel = weight_shape
    tile = conv_tile(
        in_channels, out_channels, kernel, length + sum(options["padding"]), options["stride"], options["dilation"]
    )
    if dtype == jnp.float64 and kernel <= _MAX_FLOAT64_PATCHES:
        # XLA's CPU convolution in float64 took 3-27x the time of this product (forward and
        # three-cotangent VJP, 8-256 channels, kernels 3-39), where in float32 it is the faster.
        return functools.partial(patches_conv1d, **options, preferred_element_type=result)
    if tile is not None:
        return functools.partial(tiled_conv1d, **options, tile=tile, preferred_element_type=result)
    if use_patches(in_channels, kernel):
        return functools.partial(patches_conv1d, **options, preferred_element_type=result)
    return None


# -- grouped convolutions -------------------------------------------------------
#
# XLA's CPU convolution with several input channels per group is slow. Timed on
# a 2-core Xeon as a ResNeXt-style net's Jacobian (four bottleneck blocks of
# 64 channels, 64 rows of 224 steps): thin groups (32 of 4 channels) ran 2.2x
# faster as one dense convolution by the block-diagonal kernel, which does 32
# times the multiply-adds, and 4-16 groups of 8-16 channels 1.3-2.1x faster as
# one dense convolution per group, concatenated (float64: 1.5-1.7x). The split
# is unrolled, and its compilation grows with the groups: a DenseNet-style net
# with 12 groups per convolution (as torch_ecg's lead-wise DenseNet) compiled
# its Jacobian in 13.9 s split against 4.7 s with XLA's convolution, for a run
# of 0.09 s against 0.14 s. So only up to 4 groups are split. float64 gains
# from the split only: its dense convolutions are patch products, and the
# block-diagonal one's extra work costs more than it saves there.
GROUPED_MAX_SPLIT = 4
BLOCK_DIAGONAL_MAX_GROUP_CHANNELS = 8
BLOCK_DIAGONAL_MAX_CHANNELS = 128


def grouped_form(in_per_group: int, groups: int, dtype: jnp.dtype) -> str | None:
    """How a channels-last 1D convolution with `groups > 1` runs on CPU: `"block-diagonal"`, `"split"` or `None` (XLA's)."""
    channels = in_per_group * groups
    # One input channel per group is depthwise: with up to `_MAX_TAPS` offsets it is never asked
    # here, and beyond, a block-diagonal kernel would do `groups` times a long kernel's work.
    thin = 1 < in_per_group <= BLOCK_DIAGONAL_MAX_GROUP_CHANNELS and channels <= BLOCK_DIAGONAL_MAX_CHANNELS
    if thin and dtype != jnp.float64:
        return "block-diagonal"
    if groups <= GROUPED_MAX_SPLIT:
        return "split"
    return None


def _grouped_cpu_form(
    weight_shape: tuple[int, ...],
    length: int,
    dtype: jnp.dtype,
    groups: int,
    options: dict,
    result: jnp.dtype | None,
) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """The CPU form of a channels-last 1D convolution with `groups > 1` (not depthwise taps), or `None` for XLA's."""
    out_channels, in_per_group, kernel = weight_shape
    form = grouped_form(in_per_group, groups, dtype)
    if form is None:
        return None

    def dense(shape: tuple[int, ...]) -> Callable[[jax.Array, jax.Array], jax.Array]:
        chosen = _dense_cpu_form(shape, length, dtype, options, result)
        return chosen or functools.partial(_xla_conv1d, **options, preferred_element_type=result)

    if form == "block-diagonal":
        conv = dense((out_channels, in_per_group * groups, kernel))
        return lambda x, weight: conv(x, block_diagonal_kernel(weight, groups))
    conv = dense((out_channels // groups, in_per_group, kernel))

    def split(x: jax.Array, weight: jax.Array) -> jax.Array:
        pairs = zip(jnp.split(x, groups, axis=2), jnp.split(weight, groups, axis=0), strict=True)
        return jnp.concatenate([conv(xs, ws) for xs, ws in pairs], axis=2)

    return split


def block_diagonal_kernel(weight: jax.Array, groups: int) -> jax.Array:
    """A grouped kernel `(C_out, C_in / g, k)` as the dense kernel `(C_out, C_in, k)`, zero outside each group's block."""
    out_channels, in_per_group, kernel = weight.shape
    blocks = weight.reshape(groups, out_channels // groups, in_per_group, kernel)
    # Each entry is one product with exactly 1 or 0: no rounding.
    eye = jnp.eye(groups, dtype=weight.dtype)
    dense = jnp.einsum("gh,goik->gohik", eye, blocks, precision=lax.Precision.HIGHEST)
    return dense.reshape(out_channels, groups * in_per_group, kernel)


def _xla_conv1d(
    x: jax.Array,
    weight: jax.Array,
    *,
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    preferred_element_type: jnp.dtype | None = None,
) -> jax.Array:
    """XLA's 1D convolution of channels-last `x` `(N, L, C_in)` by `weight` `(C_out, C_in, k)`."""
    return lax.conv_general_dilated(
        x,
        weight,
        (stride,),
        [padding],
        rhs_dilation=(dilation,),
        dimension_numbers=("NHC", "OIH", "NHC"),
        preferred_element_type=preferred_element_type,
    )


# -- depthwise convolutions as shifted products -------------------------------
#
# XLA's CPU grouped convolution is slow when each group reads one input channel
# (depthwise, as in separable convolutions): for 128 channels of 224 steps, 64
# rows, kernel 9, its forward took 71 ms and a three-cotangent VJP 363 ms in
# float32, 1.8 s and 5 s in float64, against 6.6 and 17 ms (float64: 6.8 and
# 34 ms) for the sum over kernel offsets of shifted inputs times one weight per
# channel, which XLA fuses into one loop (kernel 39: 150/724 ms against 21/81).

_MAX_TAPS = 64  # kernel offsets; beyond, the unrolled sum compiles slowly


def _use_taps(weight: jax.Array, groups: int) -> bool:
    """Whether a (non-transposed) convolution reads one input channel per group, with few kernel offsets."""
    return groups > 1 and weight.shape[1] == 1 and int(np.prod(weight.shape[2:])) <= _MAX_TAPS


def depthwise_taps(
    x: jax.Array,
    weight: jax.Array,
    *,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
    result: jnp.dtype | None = None,
) -> jax.Array:
    """A convolution whose every group reads one input channel, as a sum of shifted products.

    **Arguments:** `x` `(N, C_in, *spatial)` (or `(N, *spatial, C_in)` when
    `channels_last`); `weight` `(C_out, 1, *kernel)` with `C_out` a multiple
    `m * C_in` (output channel `o` reads input channel `o // m`, as in torch);
    `padding` symmetric zeros per spatial axis; `result` the dtype to
    multiply and sum in (None: the operands').

    **Returns:** `(N, C_out, *out)`, or `(N, *out, C_out)` when `channels_last`.
    """
    n_spatial = x.ndim - 2
    channel_axis = x.ndim - 1 if channels_last else 1
    spatial_axes = range(1, 1 + n_spatial) if channels_last else range(2, 2 + n_spatial)
    kernel = weight.shape[2:]
    pads = [(0, 0)] * x.ndim
    for axis, p in zip(spatial_axes, padding, strict=True):
        pads[axis] = (p, p)
    padded = jnp.pad(x, pads)
    multiplier = weight.shape[0] // x.shape[channel_axis]
    if multiplier > 1:
        padded = jnp.repeat(padded, multiplier, axis=channel_axis)
    if result is not None:
        padded, weight = padded.astype(result), weight.astype(result)
    out = [
        (padded.shape[axis] - d * (k - 1) - 1) // s + 1
        for axis, k, s, d in zip(spatial_axes, kernel, stride, dilation, strict=True)
    ]
    per_channel = [1] * x.ndim
    per_channel[channel_axis] = -1
    total = None
    for offset in np.ndindex(*kernel):
        window = [slice(None)] * x.ndim
        for axis, o, n, s, d in zip(spatial_axes, offset, out, stride, dilation, strict=True):
            window[axis] = slice(o * d, o * d + (n - 1) * s + 1, s)
        term = padded[tuple(window)] * weight[(slice(None), 0, *offset)].reshape(per_channel)
        total = term if total is None else total + term
    return total


# -- the tiled form of small-channel 1D convolutions --------------------------
#
# XLA's CPU convolution is a matrix product over C_in * k with C_out columns,
# and its input gradient one over C_out * k with C_in columns. With few
# channels these products are thin and run at a fraction of the machine's
# speed: 3-60 GFLOP/s for the benchmark models' first layers (C_in = 1) and
# InceptionTime's 8 -> 8 channel branches (kernels 9/19/39), against 100+ for
# 16 -> 16 channels. The tiled form regroups the same convolution as a
# convolution with fat channels: the input is cut into tiles of stride * T
# positions, each tile's positions and channels becoming the channels
# (stride * T * C_in) of one position of a shorter sequence, and the output
# likewise into tiles of T positions (T * C_out channels). Output tile i reads
# input tiles i .. i + pieces - 1, so the new convolution has `pieces` taps,
# and its kernel is the block-Toeplitz band of the old one: a fatter product,
# at the price of multiplying the zeros off the band. It stays an XLA
# convolution, forward and gradient, so its results do not depend on the
# batch size (XLA's CPU dot, for example, sums differently below ~50 rows).
# `bench/conv_probe.py` measures both forms, layer by layer and per model.

# The rule, from timings of 31 layer shapes (forward + input VJP) on a 2-core
# EPYC: tiling won for up to 8 input and 32 output channels, with tiles giving
# stride * T * C_in >= 32 input channels and at most 4 times the work (2.5
# above 8 output channels, where XLA's own forward product is less thin).
TILED_MAX_IN_CHANNELS = 8
TILED_MAX_OUT_CHANNELS = 32
TILED_MIN_CHANNELS = 32
TILED_MAX_OVERHEAD = 4.0
TILED_MAX_OVERHEAD_WIDE_OUT = 2.5


def conv_tile(
    in_channels: int, out_channels: int, kernel: int, padded_length: int, stride: int, dilation: int
) -> int | None:
    """The output tile T of the tiled lowering of a 1D convolution (`groups=1`), or `None` for XLA's own.

    **Arguments:** the convolution's shape; `padded_length` is the input
    length plus its zero padding.

    **Returns:** the number of output positions per tile (a power of two,
    at least 2), or `None` where XLA's convolution was measured as fast or
    faster: more than `TILED_MAX_IN_CHANNELS` input or
    `TILED_MAX_OUT_CHANNELS` output channels, windows that do not overlap
    (dilation * (k - 1) + 1 <= stride, a kernel of size 1 among them), or
    a tiling that would do more than `TILED_MAX_OVERHEAD` (above 8 output
    channels `TILED_MAX_OVERHEAD_WIDE_OUT`) times the convolution's work.
    """
    span = dilation * (kernel - 1) + 1
    out = (padded_length - span) // stride + 1
    if in_channels > TILED_MAX_IN_CHANNELS or out_channels > TILED_MAX_OUT_CHANNELS or span <= stride or out < 1:
        return None
    limit = TILED_MAX_OVERHEAD if out_channels <= 8 else TILED_MAX_OVERHEAD_WIDE_OUT
    tile = 2
    while stride * tile * in_channels < TILED_MIN_CHANNELS:
        tile *= 2
    while tile > 2 and _overhead(tile, kernel, span, stride, out) > limit:
        tile //= 2
    return tile if _overhead(tile, kernel, span, stride, out) <= limit else None


def _pieces(tile: int, span: int, stride: int) -> int:
    """How many input tiles (of stride * tile positions) one output tile reads."""
    return -(-(stride * (tile - 1) + span) // (stride * tile))


def _overhead(tile: int, kernel: int, span: int, stride: int, out: int) -> float:
    """The tiled convolution's multiply-adds over the convolution's own."""
    # Per output position: pieces * stride * tile taps of C_in channels, not k.
    tiles = -(-out // tile)
    return (tiles * tile / out) * _pieces(tile, span, stride) * stride * tile / kernel


def tiled_conv1d(
    x: jax.Array,
    weight: jax.Array,
    *,
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    tile: int,
    preferred_element_type: jnp.dtype | None = None,
) -> jax.Array:
    """The 1D convolution of channels-last `x` `(N, L, C_in)` computed in tiles of `tile` output positions.

    **Arguments:** `weight` `(C_out, C_in, k)` (`groups=1`); `padding` the
    zeros added on the left and right.

    **Returns:** `(N, L_out, C_out)`, equal to `lax.conv_general_dilated` up
    to the order of the floating-point sums.
    """
    out_channels, in_channels, kernel = weight.shape
    n, length = x.shape[0], x.shape[1]
    span = dilation * (kernel - 1) + 1
    out = (length + padding[0] + padding[1] - span) // stride + 1
    tiles = -(-out // tile)
    step = stride * tile  # input positions per tile
    pieces = _pieces(tile, span, stride)
    # Pad (or crop) to whole input tiles, then fold each tile into channels.
    right = (tiles + pieces - 1) * step - length - padding[0]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (padding[0], right, 0), (0, 0, 0)])
    x = x.reshape(n, tiles + pieces - 1, step * in_channels)
    y = lax.conv_general_dilated(
        x,
        _band(weight, tile, pieces, stride, dilation),
        (1,),
        [(0, 0)],
        dimension_numbers=("NHC", "HIO", "NHC"),
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(n, tiles * tile, out_channels)[:, :out]


def _band(weight: jax.Array, tile: int, pieces: int, stride: int, dilation: int) -> jax.Array:
    """The tiled kernel `(pieces, stride * tile * C_in, tile * C_out)`.

    Input position s of a window of `pieces` tiles feeds output position t of
    the tile through tap `(s - stride t) / dilation` when that is a whole tap.
    """
    out_channels, in_channels, kernel = weight.shape
    s, t, k = np.ogrid[: pieces * stride * tile, :tile, :kernel]
    taps = (s == stride * t + dilation * k).astype(weight.dtype)
    # (window, tile, C_out, C_in); each entry sums at most one product with 1.
    band = lax.dot_general(jnp.asarray(taps), weight, (((2,), (2,)), ((), ())), precision=lax.Precision.HIGHEST)
    return band.transpose(0, 3, 1, 2).reshape(pieces, stride * tile * in_channels, tile * out_channels)


# -- the patch-product form of thin convolutions -----------------------------
#
# A layer on 1-4 input channels with more outputs than the tiled form takes,
# like Conv1d(1, 64, 7), is also thin for XLA's CPU convolution, forward and
# backward: 20-25 GFLOP/s, against 200+ for 64 -> 128 channels. It runs
# faster as one matrix product of each output position's C_in * k inputs
# (k shifted slices) by the (C_in * k, C_out) kernel matrix. Timings of
# forward plus a 3-cotangent VJP, paired, on a 2-core Xeon: 1.26-1.51x for
# 1-4 input channels with kernels 7 and 15 (strides 1 and 2), 0.97x at 8
# input channels (k 3), and 1.06x for wide-cnn's whole Jacobian. Pointwise
# layers stay XLA's: 0.9-1.2x alone, and strided ones (ResNet shortcuts),
# though faster alone, made ResNet1d's whole Jacobian 9-16% slower.
PATCHES_MAX_IN_CHANNELS = 4
PATCHES_MAX_CONTRACTION = 32


def use_patches(in_channels: int, kernel: int) -> bool:
    """Whether a 1D convolution (`groups=1`, not tiled) runs as a product over its patches on CPU."""
    return kernel > 1 and in_channels <= PATCHES_MAX_IN_CHANNELS and in_channels * kernel <= PATCHES_MAX_CONTRACTION


def patches_conv1d(
    x: jax.Array,
    weight: jax.Array,
    *,
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    preferred_element_type: jnp.dtype | None = None,
) -> jax.Array:
    """The 1D convolution of channels-last `x` `(N, L, C_in)` as one product over its patches.

    **Arguments:** `weight` `(C_out, C_in, k)` (`groups=1`); `padding` the
    zeros added on the left and right.

    **Returns:** `(N, L_out, C_out)`, equal to `lax.conv_general_dilated` up
    to the order of the floating-point sums.
    """
    out_channels, in_channels, kernel = weight.shape
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (padding[0], padding[1], 0), (0, 0, 0)])
    out = (x.shape[1] - dilation * (kernel - 1) - 1) // stride + 1
    # (N, L_out, k * C_in), tap-major, matching the kernel matrix's rows.
    patches = jnp.concatenate(
        [
            lax.slice_in_dim(x, j * dilation, j * dilation + (out - 1) * stride + 1, stride, axis=1)
            for j in range(kernel)
        ],
        axis=2,
    )
    matrix = jnp.transpose(weight, (2, 1, 0)).reshape(kernel * in_channels, out_channels)
    return lax.dot_general(patches, matrix, (((2,), (0,)), ((), ())), preferred_element_type=preferred_element_type)


# -- transposed convolutions --------------------------------------------------


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
    preferred_element_type: jnp.dtype | None = None,
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
        preferred_element_type=preferred_element_type,
    )
