"""Fourier transforms and the complex values they make.

`torch.fft.*` (and `torch.stft`) export as three ATen ops that name the
scaling they apply: `normalization` 0 is none, 1 is `1/sqrt(n)` and 2 is
`1/n`, over the transformed sizes. NumPy's `norm` names where the `1/n` goes
instead, so the forward and the inverse ops map the codes differently.
Complex intermediate values (spectral filters, `view_as_real`, `abs` of a
spectrum) are plain complex JAX arrays; the gradient of a real output with
respect to the real input is the same as torch's.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from .registry import register

# The numpy `norm` that applies torch's `normalization` code in a forward and in an inverse transform.
_FORWARD_NORM = {0: "backward", 1: "ortho", 2: "forward"}
_INVERSE_NORM = {0: "forward", 1: "ortho", 2: "backward"}


def _complex(x: Array) -> Array:
    """`x` as a complex array of its own precision."""
    if jnp.iscomplexobj(x):
        return x
    return x.astype(jnp.result_type(x.dtype, np.complex64))


@register("aten._fft_r2c.default")
def fft_r2c(x: Array, dim: Sequence[int], normalization: int, onesided: bool) -> Array:
    """The FFT of real `x` over `dim`; `onesided` keeps the non-negative frequencies of the last of them."""
    axes = tuple(dim)
    if onesided:
        return jnp.fft.rfftn(x, axes=axes, norm=_FORWARD_NORM[normalization])
    return jnp.fft.fftn(_complex(x), axes=axes, norm=_FORWARD_NORM[normalization])


@register("aten._fft_c2c.default")
def fft_c2c(x: Array, dim: Sequence[int], normalization: int, forward: bool) -> Array:
    """The FFT (`forward`) or the inverse FFT of complex `x` over `dim`."""
    axes = tuple(dim)
    if not axes:
        return x
    if forward:
        return jnp.fft.fftn(_complex(x), axes=axes, norm=_FORWARD_NORM[normalization])
    return jnp.fft.ifftn(_complex(x), axes=axes, norm=_INVERSE_NORM[normalization])


@register("aten._fft_c2r.default")
def fft_c2r(x: Array, dim: Sequence[int], normalization: int, last_dim_size: int) -> Array:
    """The inverse of a one-sided FFT over `dim`: a real signal whose last transformed axis has `last_dim_size` points."""
    axes = tuple(dim)
    sizes = [x.shape[axis] for axis in axes[:-1]] + [last_dim_size]
    return jnp.fft.irfftn(_complex(x), s=sizes, axes=axes, norm=_INVERSE_NORM[normalization])


@register("aten.view_as_real.default")
def view_as_real(x: Array) -> Array:
    """Complex `x` as real `(..., 2)`: real and imaginary parts on a new last axis."""
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


@register("aten.view_as_complex.default")
def view_as_complex(x: Array) -> Array:
    """Real `(..., 2)` as complex `(...)`."""
    return lax.complex(x[..., 0], x[..., 1])


@register("aten.complex.default")
def complex_(real: Array, imag: Array) -> Array:
    """`real + i * imag`."""
    real, imag = jnp.broadcast_arrays(real, imag)
    return lax.complex(real, imag)


@register("aten.polar.default")
def polar(magnitude: Array, angle: Array) -> Array:
    """`magnitude * exp(i * angle)`."""
    return complex_(magnitude * jnp.cos(angle), magnitude * jnp.sin(angle))


@register("aten.real.default")
def real(x: Array) -> Array:
    """The real part (`x` itself when real)."""
    return jnp.real(x)


@register("aten.imag.default")
def imag(x: Array) -> Array:
    """The imaginary part of complex `x`."""
    return jnp.imag(x)


@register("aten.angle.default")
def angle(x: Array) -> Array:
    """The argument of complex `x`; for real `x` it is pi below zero, else 0 (NaN stays NaN), with zero gradient."""
    if jnp.iscomplexobj(x):
        return jnp.angle(x)
    x = lax.stop_gradient(x)
    return jnp.where(jnp.isnan(x), x, jnp.where(x < 0, jnp.pi, 0.0).astype(x.dtype))


@register("aten.conj_physical.default", "aten._conj.default", "aten.conj.default")
def conj(x: Array) -> Array:
    """The complex conjugate (`x` itself when real)."""
    return jnp.conj(x) if jnp.iscomplexobj(x) else x


@register("aten.resolve_conj.default", "aten.resolve_neg.default")
def resolve(x: Array) -> Array:
    """Materialise a lazy conjugate or negation: values are never lazy here."""
    return x
