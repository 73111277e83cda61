"""Decomposes a traced program into core ATen ops, the op set the converters lower.

`ExportedProgram.run_decompositions` spends most of its time, about half a
second per call, on bookkeeping for every CompositeImplicitAutograd (CIA) op
torch knows (some 500): it collects them all, then patches and restores each
one's Python kernels, whether or not the graph calls it. For all but about a
dozen of them the patch only has the op decomposed by its own CIA kernel,
below autograd, which torch's dispatcher does unpatched too (at the autograd
level, which is the same for the ops the graph does not call itself).
`decompose` hands torch only the CIA ops whose treatment differs (those kept
whole or given a Python decomposition of their own) and those the graph
calls: the same program (`tests/test_decompositions.py` compares them node
for node) without the fixed cost, which leaves the retrace itself (0.1 s for
a small model, 0.3-0.5 s for the test zoo's, against 0.55-0.76 s before).
Where torch's internals are not as expected, it calls `run_decompositions`
as it is.
"""

from __future__ import annotations

import functools
import threading

import torch

# Ops whose own backward torch defines at the kinks (hardswish'(-3) = 0, std's
# gradient 0 on a constant slice, sinc'(0) = 0): decomposing them into
# clamp/mul/div, sqrt(var) or sin/div would change the Jacobian there.
KEEP_WHOLE = (
    "hardswish.default",
    "hardsigmoid.default",
    "std.correction",
    "std.dim",
    "std_mean.correction",
    "sinc.default",
    # Its p = 2 product form decomposes into sqrt(clamp(...)), NaN in the gradient at distance 0.
    "cdist.default",
    # Recurrences, scanned in `converters/recurrent.py`: decomposed, they unroll into every step.
    "lstm.input",
    "gru.input",
    "rnn_tanh.input",
    "rnn_relu.input",
)

_PATCHING = threading.Lock()


def decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program.run_decompositions(core_aten_table())`, computed faster where torch allows (see above)."""
    fast = _fast_path()
    if fast is None:
        return decompose_as_torch_does(program)
    from torch.export import exported_program

    table, by_own_kernel, treated_otherwise = fast
    # The graph's own CIA ops are decomposed as torch does, below autograd: some
    # C++ kernels choose their decomposition by `requires_grad` (matmul folds
    # a batch into `mm` for a weight that requires it, and calls `bmm` below).
    called = _ops_called(program) & by_own_kernel
    table = {op: fn for op, fn in table.items() if op not in by_own_kernel - called}
    with _PATCHING:  # torch's module, patched for the call: one conversion at a time
        collect = exported_program._collect_all_valid_cia_ops
        exported_program._collect_all_valid_cia_ops = lambda: set(treated_otherwise | called)
        try:
            return program.run_decompositions(table)
        finally:
            exported_program._collect_all_valid_cia_ops = collect


def _ops_called(program: torch.export.ExportedProgram) -> set:
    """The ops the program's graph, and the graphs nested in it, call."""
    return {
        node.target
        for module in program.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
        if node.op == "call_function"
    }


def decompose_as_torch_does(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program.run_decompositions(core_aten_table())` as torch runs it: the reference for `decompose`."""
    return program.run_decompositions(core_aten_table())


def core_aten_table() -> dict:
    """torch.export's default (core ATen) decomposition table, less the ops jaxjac lowers whole."""
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        packet, overload = name.split(".")
        table.pop(getattr(getattr(torch.ops.aten, packet), overload), None)
    # The default table turns `detach` into `alias`, an identity: the gradient
    # that `x.mean().detach()` (RevIN normalisation, say) stops would flow again.
    table.pop(torch.ops.aten.detach.default, None)
    return dict(table.items())  # torch's table object collects every CIA op again whenever it is read


@functools.cache
def _fast_path() -> tuple[dict, frozenset, frozenset] | None:
    """`(table, by_own_kernel, treated_otherwise)` for `decompose`; None where torch's internals are not as expected.

    `by_own_kernel`: the CIA ops `core_aten_table` decomposes by their own CIA kernel,
    which torch's dispatcher does unasked. `treated_otherwise`: the other CIA
    ops, kept whole or decomposed their own way. A custom op library
    registered later is decomposed by its CIA kernel, as the default table does.
    """
    try:
        from torch._export.utils import _collect_all_valid_cia_ops
        from torch.export import exported_program
    except ImportError:  # pragma: no cover  (torch versions without these internals)
        return None
    if not hasattr(exported_program, "_collect_all_valid_cia_ops"):  # pragma: no cover
        return None
    table = core_aten_table()
    cia_ops = _collect_all_valid_cia_ops()
    by_own_kernel = frozenset(op for op in cia_ops if _by_own_cia_kernel(op, table.get(op)))
    return table, by_own_kernel, frozenset(cia_ops - by_own_kernel)


def _by_own_cia_kernel(op: torch._ops.OpOverload, decomposition: object) -> bool:
    """Whether `decomposition` is torch's stand-in for `op`'s own CIA kernel (`_get_decomp_for_cia`)."""
    if decomposition is None:
        return False
    own_python_kernel = op.py_kernels.get(torch._C.DispatchKey.CompositeImplicitAutograd)
    if decomposition is own_python_kernel:
        return True
    return (
        isinstance(decomposition, functools.partial)
        and getattr(decomposition.func, "__name__", "") == "_special_op_to_decompose_cia"
        and decomposition.keywords.get("kernel") is op
    )
