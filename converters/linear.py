"""Matrix products: `nn.Linear` (addmm, mm), attention's and recurrences' batched products.

Products and convolutions take their precision from JAX's
`default_matmul_precision` setting rather than fixing it here, so that one
option chooses it for the whole model: jaxjac's forward and Jacobian functions
ask for true float32 by default (on GPUs JAX would otherwise use TF32, whose
10-bit mantissa alone breaks agreement with torch at a relative 1e-4), and
`precision="tf32"` or `"bfloat16"` trades accuracy for speed knowingly
(bfloat16 rounds the operands here, see `converters/products.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .elementwise import abs_
from .products import product_operands
from .registry import register


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    (a, b), result = product_operands(a, b)
    return jnp.matmul(a, b, preferred_element_type=result)


def _scaled_sum(bias: jax.Array, product: jax.Array, beta: float, alpha: float) -> jax.Array:
    # torch ignores `bias` entirely when beta == 0, so NaN or inf there does not propagate.
    if beta == 0:
        return alpha * product if alpha != 1 else product
    scaled_bias = bias if beta == 1 else beta * bias
    return scaled_bias + (product if alpha == 1 else alpha * product)


@register("aten.addmm.default")
def addmm(bias: jax.Array, a: jax.Array, b: jax.Array, beta: float = 1, alpha: float = 1) -> jax.Array:
    """`beta * bias + alpha * (a @ b)` for `a (n, k)`, `b (k, m)`, `bias` broadcast to `(n, m)`."""
    return _scaled_sum(bias, _matmul(a, b), beta, alpha)


@register("aten.baddbmm.default")
def baddbmm(bias: jax.Array, a: jax.Array, b: jax.Array, beta: float = 1, alpha: float = 1) -> jax.Array:
    """`beta * bias + alpha * (a @ b)` for `a (B, n, k)`, `b (B, k, m)`."""
    return _scaled_sum(bias, _matmul(a, b), beta, alpha)


@register("aten.addmv.default")
def addmv(bias: jax.Array, a: jax.Array, v: jax.Array, beta: float = 1, alpha: float = 1) -> jax.Array:
    """`beta * bias + alpha * (a @ v)` for `a (n, k)`, `v (k,)`."""
    return _scaled_sum(bias, _matmul(a, v), beta, alpha)


@register("aten.mm.default", "aten.bmm.default", "aten.matmul.default", "aten.mv.default", "aten.dot.default")
def mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b`: `(n, k) @ (k, m)`, `(B, n, k) @ (B, k, m)`, matrix-vector or vector-vector."""
    return _matmul(a, b)


@register("aten.linear.default")
def linear(x: jax.Array, weight: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """`x @ weight.T + bias` for `x (*, in)`, `weight (out, in)`: `(*, out)`."""
    y = _matmul(x, weight.T)
    return y if bias is None else y + bias


@register("aten._cdist_forward.default")
def cdist(x1: jax.Array, x2: jax.Array, p: float, compute_mode: int | None = None) -> jax.Array:
    """p-norm distances `(..., P, R)` between the rows of `x1` `(..., P, M)` and `x2` `(..., R, M)`.

    As in torch, a zero distance has zero gradient for every `p`.
    """
    diff = abs_(x1[..., :, None, :] - x2[..., None, :, :])
    if p == 0:
        return jnp.sum(diff != 0, axis=-1).astype(diff.dtype)
    if p == 1:
        return jnp.sum(diff, axis=-1)
    if p == float("inf"):
        return jnp.max(diff, axis=-1)
    powered = jnp.sum(diff**p, axis=-1)
    zero = powered == 0
    # The double `where` keeps the root's infinite slope at 0 out of the gradient.
    return jnp.where(zero, 0.0, jnp.where(zero, 1.0, powered) ** (1.0 / p)).astype(diff.dtype)
