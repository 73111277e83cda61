"""A model whose forward changes its own state is run by the check from one state, and handed back as it came.

A streaming forward carries state from one call to the next (pytorch-tcn's
`TCN.inference` reassigns `self.buffer`; others `copy_` into a buffer). The
converted graph computes every sample from the state at conversion, so the
check must run torch from that same state each time, or it compares against
a moving target; and it must not leave the user's model advanced, or holding
autograd history that a later `convert` trips on.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

__all__ = ["before_forward", "restore_all", "state_kept"]


class _Snapshot:
    """The buffers of a module tree, as objects and as values."""

    def __init__(self, net: torch.nn.Module) -> None:
        # Buffers only: a plain tensor attribute that forward sets is a cache (tsai's attention
        # blocks keep their last attention map), which no output reads.
        self.entries = [
            [module, name, f"{path}.{name}" if path else name, tensor, tensor.detach().clone(), _version(tensor)]
            for path, module in net.named_modules()
            for name, tensor in module._buffers.items()
            if tensor is not None
        ]
        # What each module held, to hand it back as it came: tracing runs forward on fake tensors,
        # and a forward that caches a tensor (`if self.bias is None: self.register_buffer("bias",
        # ...)`, x-transformers' ALiBi) would keep a fake one, which torch cannot run on; the
        # numbers a cache is keyed by go back with it.
        self.held = [
            (module, dict(module._buffers), {k: v for k, v in vars(module).items() if _is_plain_state(k, v)})
            for _, module in net.named_modules()
            if not isinstance(module, torch.jit.ScriptModule)  # its state is TorchScript's, not a dict
        ]
        self.warned = False

    def changed(self) -> list[str]:
        """The names of the float buffers whose values changed since the snapshot.

        Integer ones are left out: a call counter changes on every call and
        changes no output. A buffer replaced by an equal one (a dtype cast
        there and back) is unchanged.
        """
        changed = []
        for module, name, path, tensor, value, version in self.entries:
            if not (tensor.is_floating_point() or tensor.is_complex()):
                continue
            held = module._buffers.get(name)
            if held is tensor and _version(tensor) == version:
                continue
            if not (isinstance(held, torch.Tensor) and held.dtype == value.dtype and _equal(held, value)):
                changed.append(path)
        return changed

    def restore(self) -> None:
        for module, buffers, attributes in self.held:
            for name in [n for n in module._buffers if n not in buffers]:
                del module._buffers[name]
            module._buffers.update({name: None for name, tensor in buffers.items() if tensor is None})
            for name in [n for n, v in vars(module).items() if n not in attributes and _is_plain_state(n, v)]:
                delattr(module, name)
            vars(module).update(attributes)
        for entry in self.entries:
            module, name, _, tensor, value, version = entry
            module._buffers[name] = tensor
            if _version(tensor) != version:
                with torch.no_grad():
                    tensor.copy_(value)
                entry[5] = _version(tensor)


def _is_plain_state(name: str, value: object) -> bool:
    """Whether attribute `name` holds state a forward may set: a tensor, a number, a string or None.

    Numbers count with the tensors they key (darts' TFT rebuilds `relative_index` when the batch
    size differs from `batch_size_last`); `training` is the eval-mode switch's, not forward's.
    """
    return name != "training" and (value is None or isinstance(value, torch.Tensor | bool | int | float | str))


def _equal(tensor: torch.Tensor, value: torch.Tensor) -> bool:
    with torch.no_grad():
        return tensor.shape == value.shape and bool(torch.allclose(tensor, value, rtol=0, atol=0, equal_nan=True))


def _version(tensor: torch.Tensor) -> int:
    """How many in-place writes `tensor` has had; -1 for an inference tensor, which does not count them."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


_active: list[dict[int, _Snapshot]] = []


@contextlib.contextmanager
def state_kept() -> Iterator[None]:
    """In the block, every forward run through `before_forward` starts from the model's state at its first run.

    On leaving, each model run is restored to that state, and a model whose
    forward changed it is warned about once.
    """
    snapshots: dict[int, _Snapshot] = {}
    _active.append(snapshots)
    try:
        yield
    finally:
        _active.pop()
        for snapshot in snapshots.values():
            _warn_if_changed(snapshot)
            snapshot.restore()


def before_forward(net: torch.nn.Module) -> None:
    """Restore `net` to its state at its first run in the `state_kept` block (outside one: nothing)."""
    if not _active:
        return
    snapshot = _active[-1].get(id(net))
    if snapshot is None:
        _active[-1][id(net)] = _Snapshot(net)
        return
    _warn_if_changed(snapshot)
    snapshot.restore()


def restore_all() -> None:
    """Restore every model run in the `state_kept` block to its state at its first run, before copying one, say."""
    for snapshot in _active[-1].values() if _active else ():
        snapshot.restore()


def _warn_if_changed(snapshot: _Snapshot) -> None:
    if snapshot.warned:
        return
    changed = snapshot.changed()
    if changed:
        snapshot.warned = True
        warnings.warn(
            f"forward changes the model's state on each call ({', '.join(f'`{n}`' for n in changed[:3])}"
            f"{' and more' if len(changed) > 3 else ''}); jaxjac computes every sample from the state the model "
            "had at conversion, as if each were forward's first call, and the check ran torch so",
            stacklevel=4,
        )
