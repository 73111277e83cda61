"""Pointwise arithmetic, comparisons and logic on tensors and scalars."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .registry import register



@register("aten.add.Tensor", "aten.add.Scalar")
def add(a, b, alpha=1):
    return a + (b * alpha if alpha != 1 else b)


@register("aten.sub.Tensor", "aten.sub.Scalar")
def sub(a, b, alpha=1):
    return a - (b * alpha if alpha != 1 else b)


@register("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(a, b, alpha=1):
    return b - (a * alpha if alpha != 1 else a)


@register("aten.mul.Tensor", "aten.mul.Scalar")
def mul(a, b):
    return a * b


@register("aten.div.Tensor", "aten.div.Scalar")
def div(a, b):
    return _true_divide(a, b)


def _true_divide(a, b):
    # torch's true division promotes integers to the default float dtype.
    a, b = jnp.asarray(a), jnp.asarray(b)
    if jnp.issubdtype(a.dtype, jnp.integer) and jnp.issubdtype(b.dtype, jnp.integer):
        return a.astype(jnp.result_type(float)) / b.astype(jnp.result_type(float))
    return a / b


@register("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(a, b, rounding_mode=None):
    if rounding_mode is None:
        return _true_divide(a, b)
    if rounding_mode == "floor":
        return jnp.floor_divide(a, b)
    quotient = _true_divide(a, b)
    truncated = jnp.trunc(quotient)
    return truncated.astype(jnp.result_type(a, b)) if not jnp.issubdtype(jnp.result_type(a, b), jnp.floating) else truncated


@register("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(a, b):
    return jnp.power(a, b)


@register("aten.neg.default")
def neg(x):
    return -x


@register("aten.abs.default")
def abs_(x):
    return jnp.abs(x)


@register("aten.exp.default")
def exp(x):
    return jnp.exp(x)


@register("aten.expm1.default")
def expm1(x):
    return jnp.expm1(x)


@register("aten.log.default")
def log(x):
    return jnp.log(x)


@register("aten.log1p.default")
def log1p(x):
    return jnp.log1p(x)


@register("aten.log2.default")
def log2(x):
    return jnp.log2(x)


@register("aten.sqrt.default")
def sqrt(x):
    return jnp.sqrt(x)


@register("aten.rsqrt.default")
def rsqrt(x):
    return jax.lax.rsqrt(x)


@register("aten.reciprocal.default")
def reciprocal(x):
    return 1 / x


@register("aten.sin.default")
def sin(x):
    return jnp.sin(x)


@register("aten.cos.default")
def cos(x):
    return jnp.cos(x)


@register("aten.floor.default")
def floor(x):
    return jnp.floor(x)


@register("aten.ceil.default")
def ceil(x):
    return jnp.ceil(x)


@register("aten.round.default")
def round_(x):
    return jnp.round(x)


@register("aten.trunc.default")
def trunc(x):
    return jnp.trunc(x)


@register("aten.sign.default")
def sign(x):
    return jnp.sign(x)


@register("aten.erf.default")
def erf(x):
    return jax.scipy.special.erf(x)


@register("aten.maximum.default")
def maximum(a, b):
    return jnp.maximum(a, b)


@register("aten.minimum.default")
def minimum(a, b):
    return jnp.minimum(a, b)


@register("aten.clamp.default", "aten.clamp.Tensor")
def clamp(x, min=None, max=None):  # noqa: A002  (ATen's argument names)
    if min is not None:
        x = jnp.maximum(x, min)
    if max is not None:
        x = jnp.minimum(x, max)
    return x


@register("aten.clamp_min.default")
def clamp_min(x, min):  # noqa: A002
    return jnp.maximum(x, min)


@register("aten.clamp_max.default")
def clamp_max(x, max):  # noqa: A002
    return jnp.minimum(x, max)


@register("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(condition, a, b):
    return jnp.where(condition, a, b)


_COMPARISONS = {
    "eq": jnp.equal,
    "ne": jnp.not_equal,
    "gt": jnp.greater,
    "ge": jnp.greater_equal,
    "lt": jnp.less,
    "le": jnp.less_equal,
}
for _name, _fn in _COMPARISONS.items():
    register(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_fn)


@register("aten.logical_not.default")
def logical_not(x):
    return jnp.logical_not(x)


@register("aten.logical_and.default")
def logical_and(a, b):
    return jnp.logical_and(a, b)


@register("aten.logical_or.default")
def logical_or(a, b):
    return jnp.logical_or(a, b)


@register("aten.bitwise_not.default")
def bitwise_not(x):
    return jnp.logical_not(x) if x.dtype == jnp.bool_ else jnp.invert(x)


@register("aten.bitwise_and.Tensor")
def bitwise_and(a, b):
    return a & b


@register("aten.bitwise_or.Tensor")
def bitwise_or(a, b):
    return a | b


@register("aten.isnan.default")
def isnan(x):
    return jnp.isnan(x)


@register("aten.isinf.default")
def isinf(x):
    return jnp.isinf(x)
