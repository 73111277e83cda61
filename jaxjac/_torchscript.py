"""TorchScript modules (`torch.jit.script`/`trace`/`load`) as modules `torch.export` can trace."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.fx.node import map_arg

from ._errors import JaxjacError, first_line


def from_torchscript(scripted: torch.jit.ScriptModule, sample_shape: tuple[int, ...], where: str) -> torch.nn.Module:
    """`scripted` rebuilt by torch's TorchScript-to-export converter, traced on a zero batch of one.

    **Arguments:** `sample_shape`, the shape of one sample; `where` names the
    module in errors (a file, or "the TorchScript module").

    **Returns:** an `nn.Module` whose parameters are the scripted module's
    parameters (the converter lifts every tensor as a buffer).
    """
    from torch._export.converter import TS2EPConverter

    training = scripted.training
    scripted.eval()
    dtype = next((t.dtype for t in (*scripted.parameters(), *scripted.buffers()) if t.is_floating_point()), None)
    sample = torch.zeros((1, *sample_shape), dtype=dtype or torch.float32)
    printed = io.StringIO()  # a failed conversion prints its partial graph, hundreds of lines
    try:
        with quiet_converter(), contextlib.redirect_stderr(printed):
            module = TS2EPConverter(scripted, (sample,)).convert().module()
    except Exception as error:  # the converter raises many types; keep its first line
        if printed.getvalue().strip():
            error.add_note(f"torch printed while converting:\n{printed.getvalue()}")
        raise JaxjacError(
            f"{where}: could not convert the TorchScript module to torch.export on an input of shape "
            f"{tuple(sample.shape)}: {first_line(error)}. Convert the original nn.Module (a state_dict with "
            "--arch on the command line) instead"
        ) from error
    finally:
        scripted.train(training)
    sys.stderr.write(printed.getvalue())
    _fold_size_arithmetic(module, sample)
    _restore_parameters(module, [name for name, _ in scripted.named_parameters()])
    # Traced in eval mode; the flags say whether the user handed over a training module. Set
    # directly: a module unlifted from an ExportedProgram refuses train() and eval().
    for m in module.modules():
        m.training = training
    return module


def _fold_size_arithmetic(module: torch.fx.GraphModule, sample: torch.Tensor) -> None:
    """Compute in place the graph's arithmetic on sizes and constants, for the shape of `sample`.

    TorchScript's tracer records arithmetic on sizes (`c // 2` for a reshape)
    as tensor ops, which the converted graph reads back with `.item()`:
    torch.export then sees a shape that depends on data. jaxjac traces one
    fixed shape, so these values are constants: each is computed here, its
    users take the number, and the assertions about it that hold are dropped.
    """
    graph = module.graph
    inputs = {node for node in graph.nodes if node.op == "placeholder"}
    known: dict[torch.fx.Node, Any] = {}
    folded: list[torch.fx.Node] = []
    for node in graph.nodes:
        if node.op == "get_attr":
            value = _attribute(module, node.target)
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                known[node] = value  # a constant; parameters may be fine-tuned later
            continue
        if node.op != "call_function" or not _foldable(node.target):
            continue
        if node.target is torch.ops.aten.sym_size.int and node.args[0] in inputs:
            known[node] = sample.shape[node.args[1]]
        elif all(arg in known for arg in node.all_input_nodes):
            try:
                known[node] = node.target(*map_arg(node.args, known.get), **map_arg(node.kwargs, known.get))
            except Exception:  # noqa: BLE001  (left for torch.export to trace)
                continue
        else:
            continue
        if node.target is torch.ops.aten._assert_scalar.default:
            if node.args[0] in known and known[node.args[0]] is True:
                folded.append(node)
        elif isinstance(known[node], bool | int | float):
            for user in list(node.users):
                user.args = map_arg(user.args, lambda arg, node=node: known[node] if arg is node else arg)
                user.kwargs = map_arg(user.kwargs, lambda arg, node=node: known[node] if arg is node else arg)
            folded.append(node)
    for node in reversed(folded):
        _erase_with_unused_inputs(graph, node, known)
    module.recompile()


def _foldable(target: Any) -> bool:
    tags = getattr(target, "tags", ())
    return callable(target) and torch.Tag.nondeterministic_seeded not in tags


def _attribute(module: torch.nn.Module, dotted: str) -> Any:
    value: Any = module
    for name in dotted.split("."):
        value = getattr(value, name, None)
    return value


def _erase_with_unused_inputs(graph: torch.fx.Graph, node: torch.fx.Node, known: dict) -> None:
    """Erase `node` if nothing uses it, then each computed input it leaves unused."""
    if node.users or getattr(node, "_erased", False):
        return
    inputs = [arg for arg in node.all_input_nodes if arg in known and arg.op == "call_function"]
    graph.erase_node(node)
    for arg in inputs:
        _erase_with_unused_inputs(graph, arg, known)


def _restore_parameters(module: torch.nn.Module, names: list[str]) -> None:
    # Re-registered as parameters so that they become nnx.Param, not Buffer, in JAX. The
    # converter drops submodules that forward never uses (an auxiliary head): nothing to restore.
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name)
        except AttributeError:
            continue
        if leaf in owner._buffers:
            tensor = owner._buffers.pop(leaf)
            owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Silence torch.export's logging, and the warnings of its TorchScript converter about its own internals."""
    logger = logging.getLogger("torch._export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Manually populate .* never used by the ExportedProgram")
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
