"""The values of traced tensors that do not depend on the input, kept beside the trace so that forward can read them back.

A forward may fill a tensor with one number and read it back as a Python
value: torchaudio's Conformer takes lengths, `torch.full((batch,), steps)`,
and reads `lengths.max().item()`; torch_ecg's CRF asserts on
`x.new_ones(...)[0].all()`. torch.export traces such a tensor as a fake tensor
with no value and fails as data-dependent. The tensor stays traced here (so a
forward may still fill it in place from the input, the usual way to build an
output); its value is computed beside it, on real tensors, for as long as it
depends on nothing but such values.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map

# Fillers with one number; the `_like` and `new_` forms take a shape, dtype or device
# from another tensor but none of its values.
_FILLS = {torch.full: None, torch.ones: 1, torch.zeros: 0}
_FILLS_LIKE = {torch.ones_like: 1, torch.zeros_like: 0, torch.full_like: None}
_FILLS_NEW = {torch.Tensor.new_ones: 1, torch.Tensor.new_zeros: 0, torch.Tensor.new_full: None}
_MADE_FROM_NUMBERS = frozenset({torch.eye})
# Beyond this a value is not kept: nothing this large is read back as Python numbers.
_MAX_KEPT_ELEMENTS = 1 << 20


def filled_as_full(func: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """The `torch.full` arguments that make what `func(*args, **kwargs)` makes, if that fills a tensor with one number."""
    if func in _FILLS:
        if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves((args, kwargs))):
            return None
        rest, fill = list(args), _FILLS[func]
        template = None
    elif (func in _FILLS_LIKE or func in _FILLS_NEW) and args and isinstance(args[0], torch.Tensor):
        template, rest = args[0], list(args[1:])
        fill = _FILLS_LIKE.get(func, _FILLS_NEW.get(func))
    else:
        return None
    if fill is None:
        fill = kwargs.get("fill_value", rest.pop() if rest else None)
    if func in _FILLS_LIKE:
        size: Any = tuple(template.shape)
    elif rest and all(isinstance(n, int) for n in rest):
        size = tuple(rest)
    else:
        size = rest[0] if rest else kwargs.get("size")
    if not isinstance(fill, (bool, int, float)) or size is None:
        return None
    made = {key: kwargs[key] for key in ("dtype", "device") if kwargs.get(key) is not None}
    if template is not None:
        made.setdefault("dtype", template.dtype)
        made.setdefault("device", template.device)
    return (tuple(size), fill), made


def _mutates(func: Any, kwargs: dict) -> bool:
    """Whether `func` writes into a tensor it is given: `add_`, `__iadd__`, `__setitem__`, `out=`."""
    name = getattr(func, "__name__", "")
    in_place = name.endswith("_") and not name.startswith("__") or name.startswith("__i") or name == "__setitem__"
    return in_place or kwargs.get("out") is not None


class KnownValues:
    """The real values of some traced tensors, looked up by tensor identity."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def value_of(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """`tensor`'s real value, if known."""
        entry = self._values.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def follow(self, func: Any, args: tuple, kwargs: dict, result: Any, is_traced: Any) -> None:
        """Learn the values of `result`, computed by `func` from `args` and `kwargs`, where they are known.

        `is_traced(tensor)` tells a traced tensor from a real constant. The
        value of a traced tensor is known if it was filled with one number or
        computed from known values and constants alone. Writing an unknown
        value into a tensor forgets every value: another tensor may view it.
        """
        from torch.utils._python_dispatch import _disable_current_modes

        filled = filled_as_full(func, args, kwargs)
        if filled is not None:
            real_args, real_kwargs, real_func = filled[0], filled[1], torch.full
        elif func in _MADE_FROM_NUMBERS and not any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(args)):
            real_args, real_kwargs, real_func = args, kwargs, func
        else:
            traced = [
                leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor) and is_traced(leaf)
            ]
            known = bool(traced) and all(self.value_of(leaf) is not None for leaf in traced)
            if not known:
                if _mutates(func, kwargs) and self._values:
                    self._values.clear()
                return
            real_args, real_kwargs = tree_map(self._real, (args, kwargs))
            real_func = func
        try:
            with _disable_current_modes():
                real_result = real_func(*real_args, **real_kwargs)
        except Exception:  # noqa: BLE001  (a value not known is only a read-back that still fails, as before)
            if _mutates(func, kwargs):
                self._values.clear()
            return
        traced_leaves, _ = tree_flatten(result)
        real_leaves, _ = tree_flatten(real_result)
        for leaf, value in zip(traced_leaves, real_leaves, strict=False):
            if (
                isinstance(leaf, torch.Tensor)
                and isinstance(value, torch.Tensor)
                and value.numel() <= _MAX_KEPT_ELEMENTS
            ):
                self._values[id(leaf)] = (weakref.ref(leaf), value)

    def _real(self, leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor):
            value = self.value_of(leaf)
            return leaf if value is None else value
        return leaf
