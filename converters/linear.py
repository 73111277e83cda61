"""Matrix products: `nn.Linear` (addmm), attention's batched products."""

from __future__ import annotations

import jax.numpy as jnp

from .registry import register


@register("aten.addmm.default")
def addmm(bias, a, b, beta=1, alpha=1):
    product = jnp.matmul(a, b)
    return beta * bias + alpha * product if (alpha, beta) != (1, 1) else bias + product


@register("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def mm(a, b):
    return jnp.matmul(a, b)


@register("aten.baddbmm.default")
def baddbmm(bias, a, b, beta=1, alpha=1):
    return beta * bias + alpha * jnp.matmul(a, b)


@register("aten.linear.default")
def linear(x, weight, bias=None):
    y = jnp.matmul(x, weight.T)
    return y if bias is None else y + bias
