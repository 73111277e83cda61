"""`y[mask] = f(x[mask])` as `torch.where(mask, f(x), y)`, and `x[mask].mean()` as a masked mean: shapes fixed by the input's.

A forward that computes on the positions a mask selects and writes the result
back (`out[x > 0] = torch.log(x[x > 0])`; torch.distributions' StudentT
variance, `m[df > 2] = scale[df > 2] ** 2 * df[df > 2] / (df[df > 2] - 2)`)
makes tensors whose length is the number of selected positions, which JAX
cannot trace. Where everything between the selections and the write is
elementwise, the same numbers come from computing at every position and
keeping the selected ones. At the positions left out, each selection holds
its value at the first selected position instead (`masked_operand`), a value
the mask admits, so a guarded `log` or division stays finite there and so do
the derivatives that `where` multiplies by zero. A selection reduced whole
(`x[m].mean()`, `.sum()`, `.max()`, `.amin()`) is reduced with the mask
instead (`masked_reduction`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["masked_operand", "masked_reduction", "rewrite_masked_assignments"]


def masked_operand(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x` where `mask` holds; elsewhere (without gradient) `x` at the first position it holds, or `x` if none."""
    flat = mask.reshape(-1)
    first = x.reshape(-1)[flat.to(torch.int8).argmax()].detach()
    return torch.where(mask, x, first if bool(flat.any()) else x.detach())


# The graph records the call by this name; converters/shape.py lowers it.
masked_operand.__module__, masked_operand.__qualname__ = "jaxjac", "masked_operand"

_INDEX = torch.ops.aten.index.Tensor
_INDEX_PUT = torch.ops.aten.index_put.default


def masked_reduction(x: torch.Tensor, mask: torch.Tensor, kind: str, keepdim: bool = False) -> torch.Tensor:
    """`x[mask]` reduced whole by `kind` (sum, mean, max or min), computed without selecting."""
    out = getattr(x[mask], "amax" if kind == "max" else "amin" if kind == "min" else kind)()
    return out.reshape(1) if keepdim else out


masked_reduction.__module__, masked_reduction.__qualname__ = "jaxjac", "masked_reduction"

# Reductions of a whole selection, which is 1-D: by name, with where their keepdim flag sits.
_REDUCTIONS = {
    torch.ops.aten.sum.default: ("sum", None),
    torch.ops.aten.mean.default: ("mean", None),
    torch.ops.aten.max.default: ("max", None),
    torch.ops.aten.min.default: ("min", None),
    torch.ops.aten.sum.dim_IntList: ("sum", 2),
    torch.ops.aten.mean.dim: ("mean", 2),
    torch.ops.aten.amax.default: ("max", 2),
    torch.ops.aten.amin.default: ("min", 2),
}


def rewrite_masked_assignments(graph: torch.fx.Graph) -> None:
    """Rewrite `graph` in place: each whole reduction of `index(x, [mask])` (`x[m].mean()`) as a masked one, then
    each elementwise `index_put(y, [mask], f(index(x, [mask]), ...))` as a `where`."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is _INDEX:
            _rewrite_reductions(graph, node)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is _INDEX_PUT:
            _rewrite(graph, node)


def _rewrite_reductions(graph: torch.fx.Graph, selection: torch.fx.Node) -> None:
    source, indices = selection.args[:2]
    if len(indices) != 1 or not isinstance(indices[0], torch.fx.Node) or _dtype(indices[0]) != torch.bool:
        return
    floating = _dtype(source) is not None and _dtype(source).is_floating_point
    if _shape(indices[0]) is None or _shape(indices[0]) != _shape(source) or not floating:
        return
    users = [user for user in selection.users if not _reads_size(user)]
    if not users or not all(user.op == "call_function" and user.target in _REDUCTIONS for user in users):
        return
    for user in users:
        kind, keepdim_at = _REDUCTIONS[user.target]
        if keepdim_at is not None:
            dims = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim")
            if dims not in (None, [], [0], [-1], (0,), (-1,)):
                return
        if "dtype" in user.kwargs and user.kwargs["dtype"] not in (None, _dtype(source)):
            return
    for user in users:
        kind, keepdim_at = _REDUCTIONS[user.target]
        keepdim = False
        if keepdim_at is not None:
            keepdim = bool(user.args[keepdim_at] if len(user.args) > keepdim_at else user.kwargs.get("keepdim", False))
        with graph.inserting_before(user):
            masked = graph.call_function(masked_reduction, (source, indices[0], kind, keepdim))
        masked.meta["val"] = user.meta.get("val")
        user.replace_all_uses_with(masked)
        graph.erase_node(user)
    _drop_size_reads(graph, selection)
    graph.erase_node(selection)


def _rewrite(graph: torch.fx.Graph, put: torch.fx.Node) -> None:
    y, indices, value = put.args[:3]
    accumulate = put.args[3] if len(put.args) > 3 else put.kwargs.get("accumulate", False)
    if accumulate or len(indices) != 1 or not isinstance(indices[0], torch.fx.Node):
        return
    mask = indices[0]
    shape = _shape(mask)
    if _dtype(mask) != torch.bool or shape is None or shape != _shape(y) or not isinstance(value, torch.fx.Node):
        return
    region, selections = _region(value, mask, shape)
    if region is None or not selections:
        return
    for node in region:
        if any(user not in region and user is not put and not _reads_size(user) for user in node.users):
            return  # a selection also used whole (`x[mask].sum()`): its length matters
    for selection in selections:
        with graph.inserting_before(selection):
            operand = graph.call_function(masked_operand, (selection.args[0], selection.args[1][0]))
        operand.meta["val"] = selection.args[0].meta.get("val")
        _drop_size_reads(graph, selection)
        selection.replace_all_uses_with(operand)
        graph.erase_node(selection)
    with graph.inserting_before(put):
        kept = value
        if _dtype(value) != _dtype(y):
            kept = graph.call_function(torch.ops.aten._to_copy.default, (value,), {"dtype": _dtype(y)})
        where = graph.call_function(torch.ops.aten.where.self, (mask, kept, y))
    where.meta["val"] = put.meta.get("val")
    put.replace_all_uses_with(where)
    graph.erase_node(put)
    for node in region - set(selections):
        _drop_size_reads(graph, node)


def _region(
    value: torch.fx.Node, mask: torch.fx.Node, shape: tuple[int, ...]
) -> tuple[set[torch.fx.Node] | None, list[torch.fx.Node]]:
    """The elementwise nodes computing `value` from selections `index(x, [mask])` of full-shape `x`, and those selections.

    `None` where something else feeds in: a tensor with dimensions that is no
    such selection, or a step that is not elementwise.
    """
    region: set[torch.fx.Node] = set()
    selections: list[torch.fx.Node] = []
    todo = [value]
    while todo:
        node = todo.pop()
        if node in region:
            continue
        if node.op != "call_function":
            return None, []
        if node.target is _INDEX:
            source, indices = node.args[:2]
            if len(indices) != 1 or not _same(indices[0], mask) or _shape(source) != shape:
                return None, []
            region.add(node)
            selections.append(node)
            continue
        if not isinstance(node.target, torch._ops.OpOverload) or torch.Tag.pointwise not in node.target.tags:
            return None, []
        region.add(node)
        for arg in torch.utils._pytree.tree_leaves((node.args, node.kwargs)):
            if isinstance(arg, torch.fx.Node):
                one = _shape(arg)
                if one is not None and math.prod(one) == 1 and len(one) <= len(shape):
                    continue  # one number broadcasts alike over the selection and the whole
                todo.append(arg)
    return region, selections


def _same(a: object, b: object) -> bool:
    """Whether `a` and `b` compute the same thing: torch.distributions' StudentT computes `df > 2` afresh for each use."""
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
        if a is b:
            return True
        pure = (
            a.op == b.op == "call_function"
            and isinstance(a.target, torch._ops.OpOverload)
            and torch.Tag.nondeterministic_seeded not in a.target.tags
        )
        return pure and a.target is b.target and _same(a.args, b.args) and _same(a.kwargs, b.kwargs)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _reads_size(node: torch.fx.Node) -> bool:
    """Whether `node` reads a length that only torch.export's own checks use (`u0 >= 0`, `Eq(u0, u1)`)."""
    return node.op == "call_function" and node.target is torch.ops.aten.sym_size.int and _only_checks(node)


_CHECKS = frozenset(
    {
        torch.ops.aten._assert_scalar.default,
        torch.ops.aten.sym_constrain_range.default,
        torch.ops.aten.sym_constrain_range_for_size.default,
    }
)


def _only_checks(node: torch.fx.Node) -> bool:
    """Whether all that uses `node` is arithmetic on lengths ending in torch.export's checks."""
    for user in node.users:
        arithmetic = user.op == "call_function" and getattr(user.target, "__module__", None) == "_operator"
        if not (user.op == "call_function" and user.target in _CHECKS) and not (arithmetic and _only_checks(user)):
            return False
    return True


def _drop_size_reads(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    """Erase the reads of `node`'s length and the checks and arithmetic on them."""
    for user in [u for u in node.users if _reads_size(u)]:
        _erase_with_users(graph, user)


def _erase_with_users(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    for user in list(node.users):
        _erase_with_users(graph, user)
    graph.erase_node(node)


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    try:
        return tuple(int(n) for n in val.shape)
    except Exception:  # noqa: BLE001  (a length that depends on the data: torch raises its own types)
        return None


def _dtype(node: object) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None
