"""Turns a core-ATen `torch.export.ExportedProgram` into a `Graph` and named tensors.

This module imports torch; nothing that runs a converted model needs it.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch

from ._branches import GUARD_PREFIX
from ._errors import JaxjacError
from ._graph import DType, Graph, Node, Ref
from ._interpret import check_supported, complex_dtype
from ._masked_regions import rewrite_masked_assignments
from .converters.branches import BRANCH_GUARD

# Arguments that say where or how torch lays out memory: meaningless in JAX.
_PLACEMENT_KWARGS = frozenset({"device", "layout", "pin_memory", "memory_format", "non_blocking"})


def op_name(target: Any) -> str:
    """The registry key for an FX call target, such as ``"aten.convolution.default"``."""
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__name__', repr(target))}"


def _module_of(node: torch.fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    for path, kind in reversed(list(stack.values())):
        kind = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
        # torch.export wraps a TorchScript module in a module of its own: not the user's layer.
        if not kind.startswith("torch.export."):
            return path, kind
    return "", ""


def _tensor_to_numpy(t: torch.Tensor, float_dtype: np.dtype, *, constant: bool = False) -> np.ndarray:
    t = t.detach().cpu()
    if constant and t.dtype == torch.float32 and np.dtype(float_dtype).itemsize > 4:
        # A constant forward makes in torch's default dtype (`torch.tensor(24.0)`)
        # is float32 in a float64 model too, and torch computes with it so.
        return t.numpy().copy()
    if t.dtype in (torch.float64, torch.complex128):
        # `in_dtype` left it wider than the model on purpose; torch computes with it so.
        return t.resolve_conj().numpy().copy()
    if t.is_floating_point():
        return t.to(torch.float64).numpy().astype(float_dtype)
    if t.is_complex():
        return t.resolve_conj().to(torch.complex128).numpy().astype(complex_dtype(float_dtype))
    if t.dtype == torch.bool:
        return t.numpy().copy()
    return t.numpy().copy()


def lower_program(
    program: torch.export.ExportedProgram,
    *,
    float_dtype: np.dtype,
    output_index: int | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """Lower a decomposed ExportedProgram.

    **Arguments:**

    - `program`: a program from `torch.export`, already decomposed to core ATen.
    - `float_dtype`: the numpy float dtype the tensors are stored in.
    - `output_index`: which output to keep when `forward` returns several.

    **Returns:** the graph and its tensors by dotted torch name.

    Raises `UnsupportedOpError` for an op with no lowering, naming the op and
    the torch module it came from.
    """
    rewrite_masked_assignments(program.graph)
    signature = program.graph_signature
    refs: dict[str, Any] = {}
    dropped: set[str] = set()  # effect tokens and the nodes that only pass them on
    tensors: dict[str, np.ndarray] = {}
    user_inputs: list[str] = []
    for spec in signature.input_specs:
        name = spec.arg.name
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            user_inputs.append(name)
            refs[name] = Ref("input", name)
            continue
        if spec.kind == torch.export.graph_signature.InputKind.TOKEN:  # orders side effects: see _DROPPED_EFFECTS
            dropped.add(name)
            continue
        target = spec.target
        value = program.state_dict.get(target)
        constant = value is None
        if constant:
            value = program.constants.get(target)
        if not isinstance(value, torch.Tensor):
            raise JaxjacError(
                f"model input `{target}` is a {type(value).__name__}, not a tensor; jaxjac converts "
                "models whose parameters, buffers and constants are tensors"
            )
        tensors[target] = _tensor_to_numpy(value, float_dtype, constant=constant)
        refs[name] = Ref("tensor", target)
    if len(user_inputs) != 1:
        raise JaxjacError(
            f"the model's forward takes {len(user_inputs)} tensor inputs; jaxjac differentiates "
            "models of one input tensor. Wrap the model so that forward(x) takes one batch."
        )

    def convert_arg(arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            if arg.name in dropped:
                raise JaxjacError(f"forward computes with `{arg.name}`, the state of an error check jaxjac leaves out")
            return refs[arg.name]
        if isinstance(arg, list | tuple):
            return tuple(convert_arg(a) for a in arg)
        if isinstance(arg, torch.dtype):
            return DType(str(arg).removeprefix("torch."))
        if arg is None or isinstance(arg, bool | int | float | complex | str):
            return arg
        raise JaxjacError(f"cannot lower an argument of type {type(arg).__name__} ({arg!r})")

    nodes: list[Node] = []
    outputs: tuple[Ref, ...] = ()
    for fx_node in program.graph.nodes:
        if fx_node.op == "call_function" and _drops(fx_node, dropped):
            dropped.add(fx_node.name)
            continue
        if fx_node.op == "call_function":
            kwargs = {k: v for k, v in fx_node.kwargs.items() if k not in _PLACEMENT_KWARGS}
            val = fx_node.meta.get("val")
            if "dtype" in kwargs and kwargs["dtype"] is None and isinstance(val, torch.Tensor):
                kwargs["dtype"] = val.dtype
            kwargs.update(_memory_layout(fx_node))
            path, kind = _module_of(fx_node)
            op, args = _branch_guard(fx_node) or (op_name(fx_node.target), fx_node.args)
            nodes.append(
                Node(
                    name=fx_node.name,
                    op=op,
                    args=tuple(convert_arg(a) for a in args),
                    kwargs=tuple(sorted((k, convert_arg(v)) for k, v in kwargs.items())),
                    module_path=path,
                    module_type=kind,
                )
            )
            refs[fx_node.name] = Ref("node", fx_node.name)
        elif fx_node.op == "output":
            # Forward's own outputs; the others are the new values of buffers or parameters it
            # updates in place (`self.beta.data.clamp_(min=0)`), which no call's result depends on.
            user = torch.export.graph_signature.OutputKind.USER_OUTPUT
            kinds = [spec.kind for spec in signature.output_specs]
            outputs = tuple(convert_arg(a) for a, kind in zip(fx_node.args[0], kinds, strict=True) if kind == user)
    outputs = _pick_output(outputs, output_index, _output_names(program, len(outputs)))
    graph = Graph(input_name=user_inputs[0], nodes=tuple(nodes), outputs=outputs, tensors=tuple(tensors))
    check_supported(graph)
    return graph, tensors


def _branch_guard(fx_node: torch.fx.Node) -> tuple[str, tuple[Any, ...]] | None:
    """`(op, args)` of the `jaxjac.branch_guard` that a traced branch's assertion stands for, else None (see `_branches`)."""
    if fx_node.target is not torch.ops.aten._assert_async.msg:
        return None
    condition, message = fx_node.args
    if not (isinstance(message, str) and message.startswith(GUARD_PREFIX)):
        return None
    return BRANCH_GUARD, (condition, message.removeprefix(GUARD_PREFIX))


# Ops whose values depend on how torch laid out their input in memory: the
# lowering records the input's strides (from the export's metadata) for them.
_STRIDED_OPS = frozenset({torch.ops.aten.as_strided.default, torch.ops.aten.as_strided_copy.default})


def _memory_layout(fx_node: torch.fx.Node) -> dict[str, Any]:
    """Extra static arguments for an op that reads its input's memory layout; none for any other op."""
    if fx_node.target not in _STRIDED_OPS:
        return {}
    source = fx_node.args[0].meta.get("val") if isinstance(fx_node.args[0], torch.fx.Node) else None
    if not isinstance(source, torch.Tensor) or source.storage_offset() != 0:
        return {}  # the rule then says it cannot run without them
    return {"input_strides": [int(s) for s in source.stride()]}


# Effects torch.export orders with tokens that change no value: the checks that
# torch.linalg.solve, inv and cholesky make of their results, to raise on a
# singular matrix. jaxjac's solve gives inf or NaN there instead, like JAX's.
_DROPPED_EFFECTS = frozenset({"aten._linalg_check_errors.default"})


def _drops(node: torch.fx.Node, dropped: set[str]) -> bool:
    """Whether `node` is a dropped effect, or only reads one (the token it passes on)."""
    if node.target is torch.ops.higher_order.with_effects:
        return op_name(node.args[1]) in _DROPPED_EFFECTS
    return node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node) and node.args[0].name in dropped


def output_position(program: torch.export.ExportedProgram, choice: int | str | None) -> int | None:
    """The flat position of the output `choice` names: an index as it is, or a name from what forward returns.

    A name is a dict key or a path as jaxjac lists the outputs: ``"logits"``,
    ``"out['logits']"``, ``"[1]['pred']"``. A key matches wherever it is last
    on a path, if it is on one path only.
    """
    if not isinstance(choice, str):
        return choice
    user = torch.export.graph_signature.OutputKind.USER_OUTPUT
    n = sum(spec.kind == user for spec in program.graph_signature.output_specs)
    names = _output_names(program, n)
    wanted = choice.strip()
    matches = [
        i
        for i, name in enumerate(names)
        if wanted in (name, name.removeprefix("out")) or name.endswith(f"[{wanted!r}]")
    ]
    listing = ", ".join(f"{i}: {name}" for i, name in enumerate(names)) or f"{n} unnamed values"
    if not matches:
        raise JaxjacError(
            f"output {choice!r} (`--output-index` on the command line) names none of the model's outputs "
            f"({listing}); pass one of those names or its number"
        )
    if len(matches) > 1:
        raise JaxjacError(
            f"output {choice!r} (`--output-index` on the command line) names {len(matches)} of the model's outputs "
            f"({', '.join(names[i] for i in matches)}); pass the whole path or the number"
        )
    return matches[0]


def _output_names(program: torch.export.ExportedProgram, n: int) -> list[str]:
    """Where each of forward's `n` flat outputs sits in what it returns: `out['logits']`, `out[1]`."""
    try:
        tree = torch.utils._pytree.tree_unflatten(list(range(n)), program.call_spec.out_spec)
    except Exception:  # an unusual output container: the indices alone will do
        return []
    names: dict[int, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}[{key!r}]")
        elif isinstance(node, list | tuple):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, int):
            names[node] = path

    walk(tree, "out")
    return [names.get(i, "?") for i in range(n)] if len(names) == n else []


def _pick_output(outputs: tuple[Any, ...], output_index: int | None, names: list[str]) -> tuple[Ref, ...]:
    if output_index is None:
        if len(outputs) != 1:
            listing = f" ({', '.join(f'{i}: {name}' for i, name in enumerate(names))})" if names else ""
            raise JaxjacError(
                f"the model's forward returns {len(outputs)} values{listing}; pass output_index, a number or a "
                "name from that list (`--output-index` on the command line), to choose the one to differentiate"
            )
        output_index = 0
    if not -len(outputs) <= output_index < len(outputs):
        raise JaxjacError(
            f"output_index {output_index} (`--output-index` on the command line) is out of range: the model's "
            f"forward returns {len(outputs)} value{'s' if len(outputs) != 1 else ''}, numbered from 0"
        )
    chosen = outputs[output_index]
    if not isinstance(chosen, Ref):
        raise JaxjacError(f"output {output_index} of the model's forward is {chosen!r}, not a tensor")
    return (chosen,)
