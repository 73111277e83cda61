"""Branches on the data: recorded on the example input, then traced that way with a guard.

torch.export traces with fake tensors, which have shapes but no values, so a
forward that branches on its input (`if torch.isnan(x).any():`, `if
mask.sum() == 0:`, `assert (x >= 0).all()`) cannot be traced. jaxjac runs
forward once on the example input, records what each such condition was,
then traces with each condition taken as it was and records the condition
itself in the graph (a `torch._assert_async` that `_lower` turns into a
`jaxjac.branch_guard`). A sample whose conditions come out otherwise gets
NaN rows (`converters.branches`), so taking the wrong branch never passes
for a result.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import torch
from torch._subclasses.fake_tensor import is_fake

# The message of the assertion a guard is traced as, followed by its site ("model.py:42").
GUARD_PREFIX = "jaxjac branch guard at "

_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
_TORCH_OVERRIDES = os.path.join(_TORCH, "overrides.py")
_FAKE_TENSOR = os.path.join(_TORCH, "_subclasses", "fake_tensor.py")
_THIS = os.path.abspath(__file__)


def _site() -> str:
    """`file:line` of the code that asked for a tensor's truth: the first frame outside jaxjac and torch."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not (filename.startswith(_HERE) or filename.startswith(_TORCH)):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<torch>"


def _called_from_forward() -> bool:
    """Whether the op being dispatched was called by the user's code, not by torch's own (`Tensor.__format__`)."""
    frame = sys._getframe(1)
    # Past this module, the modes the call went through (torch.export's own, while tracing) and
    # the fake tensor's stand-ins for the methods forward called (its `tolist` calls `item`).
    while frame is not None and (
        frame.f_code.co_name == "__torch_function__"
        or os.path.abspath(frame.f_code.co_filename) in (_THIS, _TORCH_OVERRIDES, _FAKE_TENSOR)
    ):
        frame = frame.f_back
    if frame is None:
        return False
    filename = os.path.abspath(frame.f_code.co_filename)
    return not (filename.startswith(_HERE) or filename.startswith(_TORCH))


def _numbers_as_tensors(func, args: tuple, kwargs: dict | None):  # noqa: ANN001, ANN202
    """`t.item()` from forward as a detached 0-dim tensor, `t.tolist()` as lists of them; None for other calls.

    A Python number read from a traced tensor has no value to compare, so
    `if x.max().item() > 1:` cannot be traced; a 0-dim tensor compares into a
    tensor, whose `bool()` the modes below record and guard. Detached, as
    the numbers are: torch's gradient does not flow through them either.
    Arithmetic on them (`x / x.abs().max().item()`) computes the same values.
    """
    if func not in (torch.Tensor.item, torch.Tensor.tolist) or not _called_from_forward():
        return None
    value = args[0].detach()
    return value.reshape(()) if func is torch.Tensor.item else _nested(value)


def _nested(t: torch.Tensor) -> torch.Tensor | list:
    return t if t.ndim == 0 else [_nested(row) for row in t.unbind(0)]


class _NumbersAsTensors(torch.overrides.TorchFunctionMode):
    """In the block, forward's `t.item()` gives a 0-dim tensor and `t.tolist()` lists of them
    (`_numbers_as_tensors`); every other call goes to `_call`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204  (torch's protocol)
        item = _numbers_as_tensors(func, args, kwargs)
        return item if item is not None else self._call(func, args, kwargs or {})

    def _call(self, func, args: tuple, kwargs: dict):  # noqa: ANN001, ANN202
        return func(*args, **kwargs)


class BranchRecorder(_NumbersAsTensors):
    """In the block, records each `bool(tensor)` forward asks for: `taken[site]` lists its values in order.

    A branch on a number read with `.item()` or `.tolist()` is recorded as
    one on a tensor, as it is traced (`_NumbersAsTensors`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.taken: dict[str, list[bool]] = defaultdict(list)

    def _call(self, func, args: tuple, kwargs: dict):  # noqa: ANN001, ANN202
        result = func(*args, **kwargs)
        if func is torch.Tensor.__bool__:
            self.taken[_site()].append(bool(result))
        return result


class BranchesAsTaken(_NumbersAsTensors):
    """In the block, `bool(t)` of a traced tensor `t` is what it was at the same site and turn when recorded.

    Each such condition is traced as an assertion that it comes out that way
    again; `sites` lists where (`file:line`). Entered after (inside) the other
    tracing aids, so that it counts every `bool()` forward asks for, as the
    recorder did, and a constant's reaches them.
    """

    def __init__(self, taken: dict[str, list[bool]]) -> None:
        super().__init__()
        self._taken = taken
        self._turns: dict[str, int] = defaultdict(int)
        self.sites: list[str] = []

    def _call(self, func, args: tuple, kwargs: dict):  # noqa: ANN001, ANN202
        if func is not torch.Tensor.__bool__:
            return func(*args, **kwargs)
        site = _site()
        turn = self._turns[site]
        self._turns[site] += 1
        condition = args[0]
        if not is_fake(condition):
            return func(*args, **kwargs)
        recorded = self._taken.get(site, [])
        if turn >= len(recorded):  # the trace went where the example did not: no value to take
            return func(*args, **kwargs)
        taken = recorded[turn]
        holds = condition.bool() if taken else condition.logical_not()
        torch._assert_async(holds, GUARD_PREFIX + site)
        if site not in self.sites:
            self.sites.append(site)
        return taken


def record_branches(net: torch.nn.Module, sample: torch.Tensor) -> dict[str, list[bool]]:
    """Run `net(sample)` (no gradients) and return what each `bool(tensor)` in it came out as, by site."""
    recorder = BranchRecorder()
    with torch.no_grad(), recorder:
        net(sample)
    return dict(recorder.taken)
