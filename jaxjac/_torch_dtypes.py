"""Torch modules in another floating-point dtype for a block, without changing the caller's module for good."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

__all__ = ["in_dtype", "kept_wider"]


@contextlib.contextmanager
def in_dtype(net: torch.nn.Module, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """`net` with its float tensors in `dtype` and its complex ones in the matching complex dtype, for the block.

    A float64 (or complex128) tensor in a model that otherwise holds float32
    keeps its width when `dtype` is float32: its author made it wider on
    purpose (braindecode's SensingDynamics buffers), torch computes those
    steps in float64, and narrowing it would change the model rather than
    its dtype. A model whose main dtype is float64 is narrowed whole.

    A cast copy when the model can be copied; otherwise (non-leaf tensor
    attributes, as the old `weight_norm` hook keeps, cannot be deep-copied)
    the model itself, cast back when the block ends. `net.to(torch.float64)`
    would also drop the imaginary part of complex parameters.
    """
    complex_ = torch.complex128 if dtype == torch.float64 else torch.complex64
    main = _main_float_dtype(net)

    def cast(t: torch.Tensor) -> torch.Tensor:
        if _kept_wider(t, dtype, main):
            return t
        return t.to(dtype) if t.is_floating_point() else t.to(complex_) if t.is_complex() else t

    if all(cast(t).dtype == t.dtype for t in (*net.parameters(), *net.buffers())):
        yield net
        return
    try:
        copied = copy.deepcopy(net)
    except RuntimeError:
        copied = None
    if copied is not None:
        yield copied._apply(cast)
        return
    original = {key: t.dtype for key, t in _own_tensors(net)}
    net._apply(cast)
    try:
        yield net
    finally:
        with torch.no_grad():
            for key, t in _own_tensors(net):
                if t.dtype != original.get(key, t.dtype):
                    t.data = t.data.to(original[key])


def kept_wider(net: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """The names of `net`'s tensors that `in_dtype(net, dtype)` leaves wider than `dtype`."""
    main = _main_float_dtype(net)
    tensors = (*net.named_parameters(), *net.named_buffers())
    return [name for name, t in tensors if _kept_wider(t, dtype, main)]


def _kept_wider(t: torch.Tensor, dtype: torch.dtype, main: torch.dtype | None) -> bool:
    if not (t.is_floating_point() or t.is_complex()):
        return False
    width = dtype.itemsize * (2 if t.is_complex() else 1)
    return t.dtype.itemsize > width and t.dtype.to_real() != main


def _main_float_dtype(net: torch.nn.Module) -> torch.dtype | None:
    """The float dtype holding most of `net`'s parameter elements (of its buffers' when it has no float parameters)."""
    for tensors in (list(net.parameters()), list(net.buffers())):
        counts: dict[torch.dtype, int] = {}
        for t in tensors:
            if t.is_floating_point() or t.is_complex():
                real = t.dtype.to_real()
                counts[real] = counts.get(real, 0) + t.numel()
        if counts:
            return max(counts, key=counts.__getitem__)
    return None


def _own_tensors(net: torch.nn.Module) -> Iterator[tuple[tuple[str, str], torch.Tensor]]:
    for path, module in net.named_modules():
        for name, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            yield (path, name), t
