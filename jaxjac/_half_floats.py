"""Ops on bfloat16 and float16 values compute in float32 and round once, as torch's kernels do.

A forward may compute parts in a half float: inside `torch.autocast`, which
the exported graph records as casts to bfloat16 or float16, or after
`.half()`. torch's CPU and GPU kernels take such inputs to float32, compute
(a convolution sums its products, a softmax its exponentials, in float32) and
round the result once. XLA computes some ops in the half float itself: a
bfloat16 convolution summed in bfloat16 differed from torch in most entries,
a softmax by a relative 4e-3. So an op whose floating inputs are all in one
half float runs on float32 copies of them, and its float results are rounded
back to that half float.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Jaxpr, subjaxprs

from .converters.layout import ChannelsLast

_HALF_FLOATS = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# Ops whose result dtype is their argument, not their input's: run as they are.
_CASTS = frozenset({"aten._to_copy.default", "aten.view.dtype", "aten.to.dtype", "aten.to.dtype_layout"})


def half_float_of(op: str, args: list, kwargs: dict) -> jnp.dtype | None:
    """The half float that `op` computes in on these arguments, or None.

    That is the dtype of its floating array inputs when they are all the
    same half float (0-dim arrays count only when nothing else is floating:
    torch's promotion lets a dimensioned tensor decide), and the op sets no
    result dtype of its own (a cast, `dtype=`, a softmax's `half_to_float`).
    """
    if op in _CASTS or "dtype" in kwargs or (op.startswith(("aten._softmax.", "aten._log_softmax.")) and args[-1]):
        return None
    floats = [leaf for leaf in _leaves((args, kwargs)) if _is_float_array(leaf)]
    deciding = [leaf for leaf in floats if leaf.ndim > 0] or floats
    dtypes = {jnp.dtype(leaf.dtype) for leaf in deciding}
    if len(dtypes) != 1:
        return None
    (dtype,) = dtypes
    return dtype if dtype in _HALF_FLOATS else None


def computed_in_float32(call: Callable[[list, dict], Any], args: list, kwargs: dict, half: jnp.dtype) -> Any:
    """`call(args, kwargs)` on float32 copies of the `half` float arrays, its float32 results rounded to `half`."""
    up = lambda leaf: leaf.astype(jnp.float32) if _is_float_array(leaf) and leaf.dtype == half else leaf  # noqa: E731
    result = call(_mapped(up, args), _mapped(up, kwargs))
    down = lambda leaf: leaf.astype(half) if _is_float_array(leaf) and leaf.dtype == jnp.float32 else leaf  # noqa: E731
    return _mapped(down, result)


def _is_float_array(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)


# Op arguments and results: arrays, in tuples, lists and dicts, and channels-last arrays.
def _mapped(fn: Callable[[Any], Any], value: Any) -> Any:
    if isinstance(value, ChannelsLast):
        return ChannelsLast(fn(value.array))
    if isinstance(value, list | tuple):
        return type(value)(_mapped(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _mapped(fn, v) for k, v in value.items()}
    return fn(value)


def _leaves(value: Any) -> list:
    found: list = []
    _mapped(lambda leaf: found.append(leaf), value)
    return found


def half_floats_computed(fn: Callable[[Any], Any], x: Any) -> set[jnp.dtype]:
    """The half floats that `fn(x)` computes values in, found in its jaxpr (nested ones included).

    A value a constant holds in a half float and casts up before use does not
    count: only results of operations do.
    """
    found: set[jnp.dtype] = set()

    def walk(jaxpr: Jaxpr) -> None:
        for eqn in jaxpr.eqns:
            found.update(d for v in eqn.outvars if (d := jnp.dtype(v.aval.dtype)) in _HALF_FLOATS)
        for sub in subjaxprs(jaxpr):
            walk(sub)

    walk(jax.make_jaxpr(fn)(x).jaxpr)
    return found
