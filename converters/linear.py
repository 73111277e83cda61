"""Matrix products: `nn.Linear` (addmm, mm), `nn.Bilinear`, attention's and recurrences' batched products, distances.

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
import numpy as np

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


@register("aten.addbmm.default")
def addbmm(bias: jax.Array, a: jax.Array, b: jax.Array, beta: float = 1, alpha: float = 1) -> jax.Array:
    """`beta * bias + alpha * sum_i (a[i] @ b[i])` for `a (B, n, k)`, `b (B, k, m)`: `(n, m)`."""
    return _scaled_sum(bias, _matmul(a, b).sum(0), beta, alpha)


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


# torch.cdist computes p = 2 distances by matrix products (`_euclidean_dist`)
# when either set has more rows than this, or `compute_mode` asks for it.
_CDIST_MM_ROWS = 25
_USE_MM, _NO_MM = 1, 2  # compute_mode: 0 or None "if necessary", 1 "use_mm...", 2 "donot_use_mm..."


@register("aten.cdist.default")
def cdist_any(x1: jax.Array, x2: jax.Array, p: float = 2.0, compute_mode: int | None = None) -> jax.Array:
    """`torch.cdist`: p-norm distances `(..., P, R)` between rows of `x1` `(..., P, M)` and `x2` `(..., R, M)`.

    Computed by the path torch takes: for p = 2 by matrix products when
    `compute_mode` says so or, by default, when P or R exceeds 25 rows;
    otherwise by differences. Each path has its own values and gradient.
    """
    mode = compute_mode or 0
    if p == 2 and (mode == _USE_MM or (mode != _NO_MM and max(x1.shape[-2], x2.shape[-2]) > _CDIST_MM_ROWS)):
        return euclidean_dist(x1, x2)
    return cdist(x1, x2, p, compute_mode)


@register("aten._euclidean_dist.default")
def euclidean_dist(x1: jax.Array, x2: jax.Array) -> jax.Array:
    """Euclidean distances `(..., P, R)` by matrix products, with torch's values and gradient.

    The value is torch's `sqrt(max(|a|² + |b|² - 2 a·b, 0))`, in its order of
    operations. Its gradient is torch's own formula, `(a - b) / distance`,
    zero where the distance is 0: differentiating the square root there
    gives inf times the clamp's 0, NaN, which is what decomposing the op did.
    """
    norm1 = jnp.sum(x1 * x1, axis=-1, keepdims=True)
    norm2 = jnp.sum(x2 * x2, axis=-1, keepdims=True)
    a = jnp.concatenate([-2 * x1, norm1, jnp.ones_like(norm1)], axis=-1)
    b = jnp.concatenate([x2, jnp.ones_like(norm2), norm2], axis=-1)
    squared = _matmul(a, jnp.swapaxes(b, -1, -2))
    distance = jax.lax.stop_gradient(jnp.sqrt(jnp.maximum(squared, 0)))
    # d distance = d squared / (2 distance): carried by `squared`, scaled by a constant.
    half_inverse = jnp.where(distance == 0, 0, 0.5 / jnp.where(distance == 0, 1, distance))
    return distance + half_inverse * (squared - jax.lax.stop_gradient(squared))


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


@register("aten._pdist_forward.default")
def pdist(x: jax.Array, p: float = 2.0) -> jax.Array:
    """p-norm distances between all pairs of rows `i < j` of `x` `(N, M)`: `(N (N - 1) / 2,)`, in row order.

    Differences, as `_cdist_forward` takes them: a zero distance has zero gradient.
    """
    upper = np.triu_indices(x.shape[0], 1)
    return cdist(x, x, p)[upper]


@register("aten._trilinear.default")
def trilinear(
    i1: jax.Array,
    i2: jax.Array,
    i3: jax.Array,
    expand1: list[int],
    expand2: list[int],
    expand3: list[int],
    sumdim: list[int],
    unroll_dim: int = 1,
) -> jax.Array:
    """`sum over sumdim of i1 * i2 * i3`, each first given size-1 axes at its `expand` positions.

    `nn.Bilinear` (`x1 (N, a)`, `weight (out, a, b)`, `x2 (N, b)`) is this with
    `expand1=[1, 3]`, `expand2=[0]`, `expand3=[1, 2]`, `sumdim=[2, 3]`, `(N, out)`.
    `unroll_dim` is torch's choice of loop, which does not change the result.
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    rank = i1.ndim + len(expand1)
    inputs = [
        "".join(letters[axis] for axis in range(rank) if axis not in expanded)
        for expanded in (expand1, expand2, expand3)
    ]
    output = "".join(letters[axis] for axis in range(rank) if axis not in sumdim)
    # einsum reads a size-1 axis of one operand against a longer one as broadcasting, as torch does.
    operands, result = product_operands(i1, i2, i3)
    return jnp.einsum(f"{inputs[0]},{inputs[1]},{inputs[2]}->{output}", *operands, preferred_element_type=result)
