"""Finding a network's weights inside whatever a training script saved.

Training scripts save more than the weights: `{"state_dict": ..., "epoch": 7}`,
`{"net": ..., "optimizer": ...}`, `{"model": ..., "ema": ...}`, and keys with
the prefixes of the wrappers around the network (`module.`, `model.`,
`_orig_mod.`). `unwrap_state_dict` finds the flat `{name: tensor}` dict;
`match_key_prefix` finds the architecture's keys inside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._errors import JaxjacError

# Keys under which training scripts commonly nest the weights, preferred in
# this order when several nested dicts fit the architecture.
NESTING_KEYS = ("state_dict", "model_state_dict", "model")
# How deep to look: {"checkpoint": {"model": {"state_dict": ...}}} is the deepest seen.
_MAX_DEPTH = 3


def unwrap_state_dict(obj: Any, path: Path, wanted: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The flat `{name: tensor}` state_dict inside `obj`, and notes on what was unwrapped.

    **Arguments:**

    - `obj`: what `torch.load` returned.
    - `path`: the file, for messages.
    - `wanted`: the architecture's state_dict keys, when known.

    A dict of tensors is taken as it is. Otherwise the tensor dicts nested in
    `obj` (up to three levels deep) are the candidates: of those that hold
    every key of `wanted` (under some key prefix), or of all when none does,
    the one under a key of `NESTING_KEYS` at the top, else the only one, else
    without `wanted` the largest. Several that fit `wanted` alike raise,
    naming them.
    """
    import torch

    notes = []
    if not holds_weights(obj):
        candidates = list(_nested_tensor_dicts(obj, (), _MAX_DEPTH))
        if not candidates:
            found = f"a dict with keys {list(obj)[:5]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
            raise JaxjacError(
                f"{path}: expected a state_dict of tensors, alone or nested in a dict (as under 'state_dict', "
                f"'model_state_dict' or 'model'); found {found}, with no dict of tensors inside"
            )
        keys, state = _choose(candidates, wanted, path)
        others = [str(k) for k in obj if k != keys[0]]
        rest = f" (ignoring {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else ""
        notes.append(f"using the state_dict under {_label(keys)}{rest}")
        obj = state
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):
        notes.append("stripped the 'module.' prefix that DataParallel/DistributedDataParallel adds to every key")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, notes


def holds_weights(obj: Any) -> bool:
    """Whether `obj` is a state_dict: string keys, tensor values, no dicts among them.

    Some scripts keep numbers beside the weights; tensors are copied out later.
    """
    import torch

    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
        and not any(isinstance(v, Mapping) for v in obj.values())
    )


def match_key_prefix(state: dict[str, Any], wanted: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The entries of `state` under the one key prefix that holds every key in `wanted`, prefix removed.

    Training wrappers save the network's weights under a prefix: `model.` (a
    PyTorch Lightning module's attribute), `_orig_mod.` (`torch.compile`),
    `ema.` or `module.` combinations. When `state` does not match `wanted`
    as it is, look for one prefix under which every wanted key exists, and
    keep only those entries. Returns `state` unchanged when none fits.
    """
    if not wanted or set(wanted) <= set(state):
        return state, []
    first = wanted[0]
    prefixes = sorted({key[: -len(first)] for key in state if key.endswith("." + first)}, key=len)
    for prefix in prefixes:
        inner = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if set(wanted) <= set(inner):
            ignored = len(state) - len(inner)
            rest = f"; ignoring {ignored} entries outside it" if ignored else ""
            return inner, [f"using the state_dict entries under the key prefix {prefix!r}{rest}"]
    return state, []


def _nested_tensor_dicts(obj: Any, keys: tuple, depth: int) -> Iterator[tuple[tuple, Mapping]]:
    """`(keys, dict)` for each state_dict inside `obj`, `keys` the path to it, depth first."""
    if not isinstance(obj, Mapping) or depth == 0:
        return
    for key, value in obj.items():
        if holds_weights(value):
            yield (*keys, key), value
        else:
            yield from _nested_tensor_dicts(value, (*keys, key), depth - 1)


def _choose(candidates: list[tuple[tuple, Mapping]], wanted: list[str] | None, path: Path) -> tuple[tuple, Mapping]:
    fitting = [c for c in candidates if wanted and _fits(c[1], wanted)]
    pool = fitting or candidates
    for key in NESTING_KEYS:
        for candidate in pool:
            if candidate[0] == (key,):
                return candidate
    if len(pool) == 1 or not fitting:
        return max(pool, key=lambda c: len(c[1]))
    names = ", ".join(_label(keys) for keys, _ in pool[:4])
    first = _label(pool[0][0]).replace("checkpoint", "ckpt")
    raise JaxjacError(
        f"{path}: {len(pool)} state_dicts in it fit the architecture ({names}) and none is under "
        f"{', '.join(repr(k) for k in NESTING_KEYS)}; save the one to convert on its own, e.g. "
        f"torch.save({first}, 'weights.pt'), and convert that file"
    )


def _fits(state: Mapping, wanted: list[str]) -> bool:
    keys = {str(k) for k in state}
    if all(k.startswith("module.") for k in keys):
        keys = {k.removeprefix("module.") for k in keys}
    inner, _ = match_key_prefix(dict.fromkeys(keys), wanted)
    return set(wanted) <= set(inner)


def _label(keys: tuple) -> str:
    return "checkpoint" + "".join(f"[{k!r}]" for k in keys)
