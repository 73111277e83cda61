"""Activation functions and (log-)softmax.

Only the activations that stay whole in core ATen live here (`relu`,
`hardtanh` for ReLU6/Hardtanh, `leaky_relu`, `elu` for ELU/SELU, `gelu`,
`sigmoid`, `tanh`, softmax); SiLU, Mish, Hardswish, Softplus, PReLU, CELU and
LogSigmoid reach jaxjac decomposed into the pointwise ops of `elementwise.py`.

Each lowering takes `x` of any shape and returns the same shape. At the kinks
the gradient follows torch's backward formulas, written out below, rather
than `jnp`'s (which often averages the two sides).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from .registry import ModelError, register


@register("aten.relu.default")
def relu(x: Array) -> Array:
    """`max(x, 0)`; the gradient at 0 is 0, as in torch (`jnp.maximum` gives 1/2), and NaN stays NaN."""
    return jnp.where(x <= 0, jnp.zeros_like(x), x)


@register("aten.hardtanh.default")
def hardtanh(x: Array, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """`x` clipped to `[min_val, max_val]`; ReLU6 is `hardtanh(x, 0, 6)`.

    torch's `hardtanh_backward` is 0 where `x <= min_val` or `x >= max_val`,
    so the gradient is 0 at both bounds (unlike `clamp`, whose gradient is 1 there).
    """
    inside = (x > min_val) & (x < max_val)
    clipped = jnp.where(x <= min_val, jnp.asarray(min_val, x.dtype), jnp.asarray(max_val, x.dtype))
    # NaN fails both comparisons; torch's hardtanh propagates it.
    return jnp.where(inside | jnp.isnan(x), x, clipped)


@register("aten.leaky_relu.default")
def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """`x` for `x > 0`, else `negative_slope * x`; the gradient at 0 is `negative_slope`, as in torch."""
    return jnp.where(x > 0, x, x * negative_slope)


@register("aten.elu.default")
def elu(x: Array, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Array:
    """ELU, and SELU through `scale`: `scale * x` for `x > 0`, else `alpha * scale * (exp(input_scale * x) - 1)`.

    The gradient at 0 is the negative branch's, `alpha * scale * input_scale`,
    as in torch's `elu_backward`.
    """
    # Feed expm1 only non-positive values: the unused branch of a `where`
    # still gets differentiated, and exp of a large x would make 0 * inf = NaN.
    negative = jnp.where(x > 0, jnp.zeros_like(x), x)
    return jnp.where(x > 0, x * scale, jnp.expm1(negative * input_scale) * (alpha * scale))


@register("aten.gelu.default")
def gelu(x: Array, approximate: str = "none") -> Array:
    """GELU, exact (`x * Phi(x)` via erf) or with torch's tanh approximation."""
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + jnp.tanh(inner))
    if approximate != "none":
        raise ValueError(f"gelu approximate must be 'none' or 'tanh'; got {approximate!r}")
    return 0.5 * x * (1.0 + jax.scipy.special.erf(x * (1.0 / math.sqrt(2.0))))


@register("aten.sigmoid.default")
def sigmoid(x: Array) -> Array:
    """`1 / (1 + exp(-x))`."""
    return jax.nn.sigmoid(x)


@register("aten.tanh.default")
def tanh(x: Array) -> Array:
    """Hyperbolic tangent."""
    return jnp.tanh(x)


@register("aten._softmax.default")
def softmax(x: Array, dim: int, half_to_float: bool = False) -> Array:
    """Softmax along axis `dim` (negative counts from the end)."""
    return jax.nn.softmax(x, axis=dim)


@register("aten._log_softmax.default")
def log_softmax(x: Array, dim: int, half_to_float: bool = False) -> Array:
    """Log-softmax along axis `dim` (negative counts from the end)."""
    return jax.nn.log_softmax(x, axis=dim)


@register("aten.hardswish.default")
def hardswish(x):
    """torch's hardswish, kept whole so that its gradient is 0 at -3 and 1 at 3 like torch's kernel."""
    inner = jnp.where(x <= -3, jnp.zeros_like(x), jnp.where(x >= 3, x, x * (x + 3) / 6))
    return inner


@register("aten.hardsigmoid.default")
def hardsigmoid(x):
    """torch's hardsigmoid; zero gradient at and beyond +-3, like torch's kernel."""
    return jnp.where(x <= -3, jnp.zeros_like(x), jnp.where(x >= 3, jnp.ones_like(x), x / 6 + 0.5))


@register("aten.rrelu_with_noise_functional.default")
def rrelu_with_noise(
    x: Array, noise: Array, lower: float = 1 / 8, upper: float = 1 / 3, training: bool = False, generator=None
) -> tuple[Array, Array]:
    """RReLU in eval mode: a leaky ReLU of slope `(lower + upper) / 2`; `noise` passes through unchanged."""
    if training:
        raise ModelError("RReLU in training mode draws random slopes; put the model in eval mode (net.eval())")
    return leaky_relu(x, (lower + upper) / 2), noise
