"""Torch modules in another floating-point dtype for a block, without changing the caller's module for good."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

__all__ = ["in_dtype"]


@contextlib.contextmanager
def in_dtype(net: torch.nn.Module, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """`net` with its float tensors in `dtype` and its complex ones in the matching complex dtype, for the block.

    A cast copy when the model can be copied; otherwise (non-leaf tensor
    attributes, as the old `weight_norm` hook keeps, cannot be deep-copied)
    the model itself, cast back when the block ends. `net.to(torch.float64)`
    would also drop the imaginary part of complex parameters.
    """
    complex_ = torch.complex128 if dtype == torch.float64 else torch.complex64

    def cast(t: torch.Tensor) -> torch.Tensor:
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


def _own_tensors(net: torch.nn.Module) -> Iterator[tuple[tuple[str, str], torch.Tensor]]:
    for path, module in net.named_modules():
        for name, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            yield (path, name), t
