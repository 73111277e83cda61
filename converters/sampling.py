"""Sampling a tensor at computed positions: `F.grid_sample` (`grid_sampler_2d`).

Deformable and warping layers (a learned time shift, a spatial transformer
over a spectrogram) sample their input at positions the network computes, so
the Jacobian flows both into the sampled values and into the positions.
Positions, padding and rounding follow torch's `GridSampler.h`: `align_corners`
maps -1 and 1 to the corner pixels' centres (else to their outer edges),
`"border"` clamps a position into the image, `"reflection"` reflects it off
the edges, and `"zeros"` reads 0 outside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .registry import ModelError, register

_BILINEAR, _NEAREST = 0, 1
_ZEROS, _BORDER, _REFLECTION = 0, 1, 2


def _unnormalized(coordinate: jax.Array, size: int, align_corners: bool) -> jax.Array:
    if align_corners:
        return (coordinate + 1) / 2 * (size - 1)
    return ((coordinate + 1) * size - 1) / 2


def _reflected(coordinate: jax.Array, twice_low: int, twice_high: int) -> jax.Array:
    """`coordinate` reflected into `[twice_low / 2, twice_high / 2]`, as torch's `reflect_coordinates`."""
    if twice_low == twice_high:
        return jnp.zeros_like(coordinate)
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    shifted = coordinate - low
    # Not abs(): torch's gradient at 0 is +1, abs' is 0.
    distance = jnp.where(shifted < 0, -shifted, shifted)
    extra = jnp.fmod(distance, span)
    flips = jnp.floor(distance / span)
    return jnp.where(jnp.fmod(flips, 2) == 0, extra + low, span - extra + low)


def _source_position(coordinate: jax.Array, size: int, padding: int, align_corners: bool) -> jax.Array:
    position = _unnormalized(coordinate, size, align_corners)
    if padding == _REFLECTION:
        position = _reflected(position, 0, 2 * (size - 1)) if align_corners else _reflected(position, -1, 2 * size - 1)
    if padding in (_BORDER, _REFLECTION):
        position = jnp.clip(position, 0, size - 1)
    return position


def _read(image: jax.Array, ix: jax.Array, iy: jax.Array) -> jax.Array:
    """`image[n, :, iy, ix]` `(N, C, Ho, Wo)` at integer positions `(N, Ho, Wo)`; 0 outside the image."""
    n, c, h, w = image.shape
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (jnp.clip(iy, 0, h - 1) * w + jnp.clip(ix, 0, w - 1)).astype(jnp.int32).reshape(n, 1, -1)
    values = jnp.take_along_axis(image.reshape(n, c, h * w), jnp.broadcast_to(flat, (n, c, flat.shape[-1])), axis=2)
    return jnp.where(inside[:, None], values.reshape(n, c, *ix.shape[1:]), 0)


@register("aten.grid_sampler_2d.default")
def grid_sampler_2d(
    image: jax.Array, grid: jax.Array, interpolation_mode: int, padding_mode: int, align_corners: bool
) -> jax.Array:
    """`image` `(N, C, H, W)` sampled at `grid` `(N, Ho, Wo, 2)` (x, then y, in [-1, 1]): `(N, C, Ho, Wo)`.

    Bilinear or nearest (ties to even, as torch's `nearbyint`); bicubic is not covered.
    """
    if interpolation_mode not in (_BILINEAR, _NEAREST):
        raise ModelError("grid_sample with mode='bicubic' is not covered; use 'bilinear' or 'nearest'")
    h, w = image.shape[-2:]
    x = _source_position(grid[..., 0], w, padding_mode, align_corners)
    y = _source_position(grid[..., 1], h, padding_mode, align_corners)
    if interpolation_mode == _NEAREST:
        return _read(image, jnp.round(x), jnp.round(y))
    x0, y0 = jnp.floor(x), jnp.floor(y)
    dx, dy = x - x0, y - y0
    return (
        _read(image, x0, y0) * ((1 - dx) * (1 - dy))[:, None]
        + _read(image, x0 + 1, y0) * (dx * (1 - dy))[:, None]
        + _read(image, x0, y0 + 1) * ((1 - dx) * dy)[:, None]
        + _read(image, x0 + 1, y0 + 1) * (dx * dy)[:, None]
    )
