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


class ModelError(ValueError):
    """A problem a rule found in the model itself (a failed assertion, a layer left in training mode).

    The model's user can fix it, unlike any other exception a rule raises,
    which is a gap in the rule; the interpreter reports the two differently.
    """


_LOWERINGS: dict[str, LoweringFn] = {}

# Optional second lowerings that take and give channels-last values; see `layout.py`.
_CHANNELS_LAST: dict[str, Callable[..., Any]] = {}


def register(*ops: str) -> Callable[[LoweringFn], LoweringFn]:
    """Register `fn` as the lowering of each ATen op in `ops`.

    **Arguments:**

    - `ops`: full ATen overload names, for example ``"aten.relu.default"``.

    Registering the same op twice is a programming error and raises.
    """

    return _registrar(_LOWERINGS, ops, "is already lowered by")


def _registrar(table: dict[str, Callable[..., Any]], ops: tuple[str, ...], clash: str) -> Callable:
    """A decorator that files its function under each of `ops` in `table`, refusing duplicates."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for op in ops:
            if op in table:
                raise ValueError(f"ATen op {op!r} {clash} {table[op].__qualname__}")
            table[op] = fn
        return fn

    return decorate


def lookup(op: str) -> LoweringFn | None:
    """The lowering registered for `op`, or `None` when there is none."""
    return _LOWERINGS.get(op)


def supported_ops() -> list[str]:
    """Every ATen op name with a registered lowering, sorted."""
    return sorted(_LOWERINGS)


def register_channels_last(*ops: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `rule(lowering, *args, **kwargs)` as the channels-last form of each op in `ops`.

    The rule receives the op's plain lowering and its arguments, some of which
    may be `ChannelsLast` values; it returns the result (channels-last or
    plain) or `NotImplemented` to have the interpreter fall back to the plain
    lowering on channels-first arguments.
    """

    return _registrar(_CHANNELS_LAST, ops, "already has the channels-last rule")


def channels_last_rule(op: str) -> Callable[..., Any] | None:
    """The channels-last rule registered for `op`, or `None`."""
    return _CHANNELS_LAST.get(op)
