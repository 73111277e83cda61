"""Pointwise arithmetic, math functions, comparisons and logic on tensors and scalars.

Every function here broadcasts like torch and takes JAX arrays or Python
scalars. Two torch rules need care in JAX:

- *Integer to float.* torch's float-valued ops (true division, `sqrt`, `exp`,
  ...) turn integer and bool tensors into the default float dtype, float32,
  in a float64 model too (which then promotes where they meet its tensors).
  Here they do the same, so a float64 conversion rounds those steps as torch does.
- *Gradients at kinks.* `clamp` passes the gradient through at its bounds
  (torch's `self >= min & self <= max`), where `jnp.clip` would halve it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from .registry import register

# A tensor operand or a Python scalar, as ATen passes them.
Operand = Any


def _is_exact(x: Operand) -> bool:
    """True for integer and bool arrays and Python ints/bools."""
    if isinstance(x, bool | int):
        return True
    if isinstance(x, float):
        return False
    return jnp.issubdtype(jnp.result_type(x), jnp.integer) or jnp.result_type(x) == jnp.bool_


def as_float(x: Operand) -> Operand:
    """`x` unchanged if it is floating, else a weakly typed float copy (torch's int -> float promotion)."""
    if isinstance(x, float):
        return x
    if _is_exact(x):
        return jnp.asarray(x, jnp.float32)
    return x


def _float_scalar_promotes(a: Operand, b: Operand) -> tuple[Operand, Operand]:
    """`a` and `b` in the dtypes torch computes their arithmetic in.

    An integer or bool tensor meeting a Python float becomes float32 (torch's
    default dtype), not float64; a 0-dim float tensor does not widen a
    tensor with dimensions (`y * self.scale[0]`, a float64 buffer's element,
    is float32 for a float32 `y`), where JAX would promote both.
    """
    if isinstance(b, float) and not isinstance(a, bool | int) and _is_exact(a):
        a = as_float(a)
    if isinstance(a, float) and not isinstance(b, bool | int) and _is_exact(b):
        b = as_float(b)
    return _narrowed_to_dimensioned(a, b), _narrowed_to_dimensioned(b, a)


def _narrowed_to_dimensioned(x: Operand, other: Operand) -> Operand:
    """`x` in `other`'s float dtype when `x` is a 0-dim float array wider than `other`, a float array with dimensions."""
    if not (isinstance(x, Array | np.ndarray) and isinstance(other, Array | np.ndarray) and x.ndim == 0 < other.ndim):
        return x
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(other.dtype, jnp.floating):
        return x.astype(other.dtype) if x.dtype.itemsize > other.dtype.itemsize else x
    return x


def unary_float(fn):
    """Wrap a float-only `jnp` function so that it promotes integer inputs first."""

    def lowering(x):
        return fn(as_float(x))

    lowering.__name__ = lowering.__qualname__ = getattr(fn, "__name__", "unary")
    lowering.__doc__ = f"torch's `{lowering.__name__}`, elementwise; integer inputs become float."
    return lowering


# --- arithmetic --------------------------------------------------------------


@register("aten.add.Tensor", "aten.add.Scalar")
def add(a: Operand, b: Operand, alpha: float = 1) -> Operand:
    """`a + alpha * b`, broadcast."""
    a, b = _float_scalar_promotes(a, b)
    b = b * alpha if alpha != 1 else b
    if _is_positive_zero(b) and _is_float_array(a):
        return a + _opaque_zero(a)
    if _is_positive_zero(a) and _is_float_array(b):
        return _opaque_zero(b) + b
    return a + b


def _is_positive_zero(x: Operand) -> bool:
    return isinstance(x, float) and x == 0.0 and not math.copysign(1.0, x) < 0


def _is_float_array(x: Operand) -> bool:
    return not isinstance(x, bool | int | float) and jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _opaque_zero(like: Array) -> Array:
    """+0.0 that XLA cannot see: its simplifier folds `x + 0.0` to `x`, which keeps -0.0 where IEEE gives +0.0.

    Code adds 0.0 on purpose to clear the sign of zero before `atan2` (nnAudio's
    phase spectrogram): folded, a phase of +pi turns into -pi.
    """
    return lax.optimization_barrier(jnp.zeros((), jnp.result_type(like)))


@register("aten.sub.Tensor", "aten.sub.Scalar")
def sub(a: Operand, b: Operand, alpha: float = 1) -> Operand:
    """`a - alpha * b`, broadcast."""
    a, b = _float_scalar_promotes(a, b)
    return a - (b * alpha if alpha != 1 else b)


@register("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(a: Operand, b: Operand, alpha: float = 1) -> Operand:
    """`b - alpha * a`, broadcast (ATen's reversed subtraction)."""
    a, b = _float_scalar_promotes(a, b)
    return b - (a * alpha if alpha != 1 else a)


@register("aten.mul.Tensor", "aten.mul.Scalar")
def mul(a: Operand, b: Operand) -> Operand:
    """`a * b`, broadcast."""
    a, b = _float_scalar_promotes(a, b)
    return a * b


def _true_divide(a: Operand, b: Operand) -> Operand:
    # torch's true division of two integer operands gives a float.
    if _is_exact(a) and _is_exact(b):
        a = as_float(a)
    a, b = _float_scalar_promotes(a, b)
    return a / b


@register("aten.div.Tensor", "aten.div.Scalar")
def div(a: Operand, b: Operand) -> Operand:
    """True division `a / b`; integers divide as floats."""
    return _true_divide(a, b)


@register("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(a: Operand, b: Operand, rounding_mode: str | None = None) -> Operand:
    """Division with `rounding_mode` None (true), ``"floor"`` or ``"trunc"``.

    Integer operands keep an integer result for floor and trunc, as in torch.
    """
    if rounding_mode is None:
        return _true_divide(a, b)
    if rounding_mode == "floor":
        return jnp.floor_divide(a, b)
    if rounding_mode != "trunc":
        raise ValueError(f"rounding_mode must be None, 'floor' or 'trunc'; got {rounding_mode!r}")
    if _is_exact(a) and _is_exact(b):
        # C-style integer division rounds towards zero, exactly; going through
        # floats would lose precision for large int64 values.
        dtype = jnp.result_type(a, b)
        a, b = jnp.broadcast_arrays(jnp.asarray(a, dtype), jnp.asarray(b, dtype))
        return lax.div(a, b)
    return jnp.trunc(a / b)


@register("aten.remainder.Tensor", "aten.remainder.Scalar")
def remainder(a: Operand, b: Operand) -> Operand:
    """Python-style modulus: the result has the sign of `b`."""
    return jnp.remainder(a, b)


@register("aten.fmod.Tensor", "aten.fmod.Scalar")
def fmod(a: Operand, b: Operand) -> Operand:
    """C-style modulus: the result has the sign of `a`."""
    return jnp.fmod(a, b)


@register("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(a: Operand, b: Operand) -> Operand:
    """`a ** b`; an integer tensor raised to a float becomes float, as in torch."""
    if isinstance(b, float) and _is_exact(a):
        a = as_float(a)
    if isinstance(b, float) and b.is_integer() and not isinstance(a, float):
        # x ** 2.0 from a decomposition: integer_pow is exact and its gradient
        # at x = 0 is finite, like torch's.
        return lax.integer_pow(a, int(b))
    return jnp.power(a, b)


@register("aten.neg.default")
def neg(x: Operand) -> Operand:
    """`-x`."""
    return -x


@register("aten.abs.default")
def abs_(x: Operand) -> Operand:
    """`|x|`; the gradient at 0 is 0 (sign(0)), as in torch.

    `jnp.abs`'s gradient at 0 is 1, which matters: zero-padded records put
    exact zeros under `abs(conv(x))` and `norm(x, 1)`.
    """
    if jnp.iscomplexobj(x):
        return jnp.abs(x)
    return x * jnp.sign(x)  # d/dx = sign(x), since sign's own derivative is 0


@register("aten.sign.default")
def sign(x: Operand) -> Operand:
    """-1, 0 or 1 in `x`'s dtype."""
    return jnp.sign(x)


@register("aten.reciprocal.default")
def reciprocal(x: Operand) -> Operand:
    """`1 / x`; integers become float."""
    return 1.0 / as_float(x)


@register("aten.rsqrt.default")
def rsqrt(x: Operand) -> Operand:
    """`1 / sqrt(x)`; integers become float."""
    return lax.rsqrt(as_float(x))


def _saturate(y: Array) -> Array:
    """`y` with +inf replaced by the largest finite value of its dtype."""
    return jnp.minimum(y, jnp.finfo(y.dtype).max)


# exp and expm1 whose derivative saturates at the largest finite float instead
# of reaching inf. Softplus, Mish and CELU export as
# `where(x > threshold, x, log1p(exp(x)))`: for large x the unused branch
# overflows, and its zero cotangent times exp's inf slope would make the
# Jacobian NaN where torch's fused backward gives 1.
@jax.custom_jvp
def _saturating_exp(x: Array) -> Array:
    return jnp.exp(x)


@_saturating_exp.defjvp
def _saturating_exp_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    y = _saturating_exp(x)
    return y, t * _saturate(y)


@jax.custom_jvp
def _saturating_expm1(x: Array) -> Array:
    return jnp.expm1(x)


@_saturating_expm1.defjvp
def _saturating_expm1_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    return _saturating_expm1(x), t * _saturate(_saturating_exp(x))


# Float-valued unary math, promoted like torch.
for _op, _fn in {
    "exp": _saturating_exp,
    "exp2": jnp.exp2,
    "expm1": _saturating_expm1,
    "log": jnp.log,
    "log1p": jnp.log1p,
    "log2": jnp.log2,
    "log10": jnp.log10,
    "sqrt": jnp.sqrt,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tan": jnp.tan,
    "asin": jnp.arcsin,
    "acos": jnp.arccos,
    "atan": jnp.arctan,
    "sinh": jnp.sinh,
    "cosh": jnp.cosh,
    "asinh": jnp.arcsinh,
    "acosh": jnp.arccosh,
    "atanh": jnp.arctanh,
    "erf": jax.scipy.special.erf,
    "erfc": jax.scipy.special.erfc,
    "erfinv": jax.scipy.special.erfinv,
}.items():
    register(f"aten.{_op}.default")(unary_float(_fn))


@register("aten.sinc.default")
def sinc(x: Operand) -> Operand:
    """`sin(pi x) / (pi x)`, 1 at 0, with torch's derivative 0 there (`jnp.sinc` gives NaN)."""
    x = as_float(x)
    zero = x == 0
    safe = jnp.where(zero, jnp.ones_like(x), x) * jnp.pi
    return jnp.where(zero, jnp.ones_like(x), jnp.sin(safe) / safe)


@register("aten.atan2.default")
def atan2(a: Operand, b: Operand) -> Operand:
    """The angle of `(b, a)`, elementwise."""
    return jnp.arctan2(as_float(a), as_float(b))


@register("aten.hypot.default")
def hypot(a: Operand, b: Operand) -> Operand:
    """`sqrt(a**2 + b**2)` without overflow."""
    return jnp.hypot(a, b)


# Rounding keeps integers as they are (torch returns them unchanged).
@register("aten.floor.default")
def floor(x: Operand) -> Operand:
    """Round down; identity on integers."""
    return x if _is_exact(x) else jnp.floor(x)


@register("aten.ceil.default")
def ceil(x: Operand) -> Operand:
    """Round up; identity on integers."""
    return x if _is_exact(x) else jnp.ceil(x)


@register("aten.trunc.default")
def trunc(x: Operand) -> Operand:
    """Round towards zero; identity on integers."""
    return x if _is_exact(x) else jnp.trunc(x)


@register("aten.round.default")
def round_(x: Operand) -> Operand:
    """Round half to even, like torch; identity on integers."""
    return x if _is_exact(x) else jnp.round(x)


@register("aten.round.decimals")
def round_decimals(x: Operand, decimals: int = 0) -> Operand:
    """Round half to even at `decimals` decimal places."""
    return jnp.round(x, decimals)


# --- extrema and clamping ----------------------------------------------------


@register("aten.maximum.default")
def maximum(a: Operand, b: Operand) -> Operand:
    """Elementwise max; NaN propagates and ties split the gradient, both as in torch."""
    return jnp.maximum(a, b)


@register("aten.fmax.default")
def fmax(a: Operand, b: Operand) -> Operand:
    """The larger of `a` and `b`, ignoring a NaN; ties and NaN `b` take `a` (and its gradient), as in torch."""
    return jnp.where((a >= b) | jnp.isnan(b), a, b)


@register("aten.fmin.default")
def fmin(a: Operand, b: Operand) -> Operand:
    """The smaller of `a` and `b`, ignoring a NaN; ties and NaN `b` take `a` (and its gradient), as in torch."""
    return jnp.where((a <= b) | jnp.isnan(b), a, b)


@register("aten.minimum.default")
def minimum(a: Operand, b: Operand) -> Operand:
    """Elementwise min; NaN propagates and ties split the gradient, both as in torch."""
    return jnp.minimum(a, b)


def _lower_bound(x: Operand, low: Operand) -> Operand:
    # torch's clamp gradient is 1 at the bound itself; jnp.maximum would give 1/2.
    result = jnp.where(x < low, low, x)
    return result.astype(jnp.result_type(x, low))


def _upper_bound(x: Operand, high: Operand) -> Operand:
    result = jnp.where(x > high, high, x)
    return result.astype(jnp.result_type(x, high))


@register("aten.clamp.default", "aten.clamp.Tensor")
def clamp(x: Operand, min: Operand = None, max: Operand = None) -> Operand:  # noqa: A002  (ATen's argument names)
    """`min(max(x, min), max)`, with scalar or broadcast tensor bounds.

    As in torch, `max` wins when `min > max`, NaN in `x` propagates, and the
    gradient with respect to `x` is 1 wherever `min <= x <= max`.
    """
    if min is not None:
        x = _lower_bound(x, min)
    if max is not None:
        x = _upper_bound(x, max)
    return x


@register("aten.clamp_min.default", "aten.clamp_min.Tensor")
def clamp_min(x: Operand, min: Operand) -> Operand:  # noqa: A002
    """`clamp(x, min=min)`."""
    return _lower_bound(x, min)


@register("aten.clamp_max.default", "aten.clamp_max.Tensor")
def clamp_max(x: Operand, max: Operand) -> Operand:  # noqa: A002
    """`clamp(x, max=max)`."""
    return _upper_bound(x, max)


@register("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(condition: Operand, a: Operand, b: Operand) -> Operand:
    """`a` where `condition`, else `b`, broadcast."""
    return jnp.where(condition, a, b)


# --- comparisons and logic ---------------------------------------------------

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
def logical_not(x: Operand) -> Operand:
    """Elementwise NOT of `x != 0`, as bool."""
    return jnp.logical_not(x)


@register("aten.logical_and.default")
def logical_and(a: Operand, b: Operand) -> Operand:
    """Elementwise AND of truth values, as bool."""
    return jnp.logical_and(a, b)


@register("aten.logical_or.default")
def logical_or(a: Operand, b: Operand) -> Operand:
    """Elementwise OR of truth values, as bool."""
    return jnp.logical_or(a, b)


@register("aten.logical_xor.default")
def logical_xor(a: Operand, b: Operand) -> Operand:
    """Elementwise XOR of truth values, as bool."""
    return jnp.logical_xor(a, b)


@register("aten.bitwise_not.default")
def bitwise_not(x: Operand) -> Operand:
    """Bitwise NOT; logical NOT on bool."""
    return jnp.logical_not(x) if x.dtype == jnp.bool_ else jnp.invert(x)


@register("aten.bitwise_and.Tensor", "aten.bitwise_and.Scalar")
def bitwise_and(a: Operand, b: Operand) -> Operand:
    """Bitwise AND of integers or bools."""
    return jnp.bitwise_and(a, b)


@register("aten.bitwise_or.Tensor", "aten.bitwise_or.Scalar")
def bitwise_or(a: Operand, b: Operand) -> Operand:
    """Bitwise OR of integers or bools."""
    return jnp.bitwise_or(a, b)


@register("aten.bitwise_xor.Tensor", "aten.bitwise_xor.Scalar")
def bitwise_xor(a: Operand, b: Operand) -> Operand:
    """Bitwise XOR of integers or bools."""
    return jnp.bitwise_xor(a, b)


@register("aten.isnan.default")
def isnan(x: Operand) -> Operand:
    """Elementwise NaN test, as bool."""
    return jnp.isnan(x)


@register("aten.isinf.default")
def isinf(x: Operand) -> Operand:
    """Elementwise infinity test, as bool."""
    return jnp.isinf(x)


@register("aten.signbit.default")
def signbit(x: Operand) -> Operand:
    """Whether the sign bit is set (true for -0.0), as bool."""
    return jnp.signbit(x)


@register("aten.copysign.Tensor", "aten.copysign.Scalar")
def copysign(x: Operand, sign_of: Operand) -> Operand:
    """`|x|` with the sign of `sign_of` (-0.0 counts as negative); the gradient at `x = 0` is 0, as in torch."""
    x, sign_of = _float_scalar_promotes(as_float(x), as_float(sign_of))
    magnitude = abs_(jnp.asarray(x, jnp.result_type(x, sign_of)))
    return jnp.where(jnp.signbit(sign_of), -magnitude, magnitude)


@register("aten.searchsorted.Tensor", "aten.searchsorted.Scalar")
def searchsorted(
    sorted_sequence: Array,
    x: Operand,
    *,
    out_int32: bool = False,
    right: bool = False,
    side: str | None = None,
    sorter: Array | None = None,
) -> Array:
    """Where each entry of `x` would go in `sorted_sequence`, along its last axis.

    A 1-D sequence serves every entry; an N-D one pairs its leading axes with
    those of `x`. `side="right"` (or `right`) puts an entry equal to a value
    after it; `sorter` gives the order of an unsorted sequence.
    """
    if sorter is not None:
        sorted_sequence = jnp.take_along_axis(sorted_sequence, sorter, axis=-1)
    side = side or ("right" if right else "left")
    x = jnp.asarray(x)
    find = lambda sequence, values: jnp.searchsorted(sequence, values, side=side)  # noqa: E731
    for _ in range(sorted_sequence.ndim - 1):
        find = jax.vmap(find)
    index = find(sorted_sequence, x)
    return index.astype(jnp.int32 if out_int32 else jax.dtypes.canonicalize_dtype(jnp.int64))


@register("aten.bucketize.Tensor")
def bucketize(x: Array, boundaries: Array, *, out_int32: bool = False, right: bool = False) -> Array:
    """The bucket of each entry among sorted 1-D `boundaries`; `right` puts an entry equal to a boundary above it."""
    index = jnp.searchsorted(boundaries, x, side="right" if right else "left")
    return index.astype(jnp.int32 if out_int32 else jax.dtypes.canonicalize_dtype(jnp.int64))
