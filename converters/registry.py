"""The table from ATen op names to JAX lowering functions.

Every lowering is a small pure function of JAX arrays and static Python values
whose positional and keyword arguments mirror the ATen schema of the op it
lowers, so that the interpreter can call it with the arguments recorded in a
lowered graph. Keys are ATen op-name strings (``"aten.convolution.default"``),
which lets a saved model run with no torch installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LoweringFn = Callable[..., Any]

_LOWERINGS: dict[str, LoweringFn] = {}


def register(*ops: str) -> Callable[[LoweringFn], LoweringFn]:
    """Register `fn` as the lowering of each ATen op in `ops`.

    **Arguments:**

    - `ops`: full ATen overload names, for example ``"aten.relu.default"``.

    Registering the same op twice is a programming error and raises.
    """

    def decorate(fn: LoweringFn) -> LoweringFn:
        for op in ops:
            if op in _LOWERINGS:
                raise ValueError(f"ATen op {op!r} is already lowered by {_LOWERINGS[op].__qualname__}")
            _LOWERINGS[op] = fn
        return fn

    return decorate


def lookup(op: str) -> LoweringFn | None:
    """The lowering registered for `op`, or `None` when there is none."""
    return _LOWERINGS.get(op)


def supported_ops() -> list[str]:
    """Every ATen op name with a registered lowering, sorted."""
    return sorted(_LOWERINGS)
