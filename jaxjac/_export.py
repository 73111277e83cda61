"""Traces a torch module with `torch.export` in eval semantics, at batch size 1.

The graph is traced for one sample, `(1, *sample_shape)`, which is exactly
what the per-sample reference `torch.autograd.functional.jacobian(net,
X[i:i+1])` evaluates; JAX's `vmap` then batches it. Tracing at batch 1 also
keeps every shape static.
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint

from . import _decompositions
from ._branches import BranchesAsTaken, record_branches
from ._errors import JaxjacError
from ._known_values import KnownValues
from ._module_state import restore_all


@contextlib.contextmanager
def eval_mode(net: torch.nn.Module, *, warn: bool = True) -> Iterator[None]:
    """Put `net` in eval mode for the block, warning (with `warn`) if it was training, then restore it."""
    modes = {name: m.training for name, m in net.named_modules()}
    training = [name or "<root>" for name, was in modes.items() if was]
    if training and warn:
        warnings.warn(
            f"the model was handed over in train mode ({len(training)} modules, e.g. `{training[0]}`); "
            "jaxjac converts it in eval mode: BatchNorm uses running statistics and Dropout is the identity",
            stacklevel=3,
        )
    try:
        net.eval()
    except NotImplementedError:
        # Modules unlifted from an ExportedProgram (`program.module()`) refuse
        # eval(); their graph fixed train/eval semantics at export time, so
        # the flags only need to read "eval" for the checks above.
        for m in net.modules():
            m.training = False
    try:
        yield
    finally:
        for name, m in net.named_modules():
            m.training = modes[name]


def _warn_batch_statistics(net: torch.nn.Module) -> None:
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            warnings.warn(
                f"BatchNorm `{name}` keeps no running statistics, so torch normalises it with the "
                "statistics of the whole batch even in eval mode; jaxjac converts the per-sample "
                "(batch of one) behaviour, which is what a per-sample Jacobian differentiates",
                stacklevel=3,
            )


def _refuse_untraceable_layers(net: torch.nn.Module) -> None:
    """Name the first quantized layer, or TorchScript layer inside an eager model, which torch.export cannot trace."""
    for name, m in net.named_modules():
        kind = type(m).__module__ + "." + type(m).__qualname__
        if kind.startswith(("torch.ao.nn.quantized.", "torch.nn.quantized.", "torch.ao.nn.intrinsic.quantized.")):
            raise JaxjacError(
                f"module `{name}` ({kind}) is a quantized layer (torch.ao.quantization), whose integer weights "
                "have no exact Jacobian; convert the float model, before quantization"
            )
        if name and isinstance(m, torch.jit.ScriptModule):
            raise JaxjacError(
                f"module `{name}` is TorchScript ({type(m).__name__}) inside an eager model, which torch.export "
                "cannot trace; build that layer unscripted, or script the whole model (torch.jit.script(net)) "
                "and convert that"
            )


def export_one_sample(net: torch.nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    """Export `net` on a batch of one, decomposed to the core ATen op set.

    **Arguments:**

    - `net`: any module whose forward `torch.export` can trace.
    - `sample`: one input batch `(1, *sample_shape)`.
    """
    if not isinstance(net, torch.nn.Module):
        raise JaxjacError(f"expected a torch.nn.Module to convert, got {type(net).__name__}")
    _refuse_untraceable_layers(net)
    _warn_batch_statistics(net)
    program, decomposed, failure = _traced_and_decomposed(net, sample)
    if decomposed is None and _caches_on_first_call(net, sample):
        # Traced from the state after its first call, as the model runs in inference; the
        # check runs torch from the state at conversion, so a cache forward would not rebuild shows.
        program, decomposed, failure = _traced_and_decomposed(net, sample)
    branches = None
    if decomposed is None and program is None and "data-dependent" in str(failure):
        branches = _branches_taken(net, sample)
        retry = _traced_and_decomposed(net, sample, branches=branches)
        if retry[0] is not None:  # it got further: what stops it now is the news
            program, decomposed, failure = retry
    if decomposed is None:
        # Tensors made from Python numbers are real constants under `_RealConstants`, and
        # torch refuses a forward that edits one in place (x-transformers' dynamic position
        # bias: `indices += j - 1` on an arange): traced as torch traces, it may convert.
        retry = _traced_and_decomposed(net, sample, real_constants=False, branches=branches)
        if retry[1] is not None:
            return retry[1]
    if decomposed is not None:
        return decomposed
    if program is not None:  # traced, but not decomposed: once more without the tracing aids
        try:
            with eval_mode(net, warn=False), torch.enable_grad(), _quiet_export():
                return _decompositions.decompose(program)
        except Exception:
            raise JaxjacError(
                f"torch could not decompose the traced forward into core ATen ops: {_gist(failure)}"
            ) from failure
    eager_failure = _eager_failure(net, sample)
    if eager_failure is not None and _eager_failure(net, torch.cat([sample, sample])) is None:
        raise JaxjacError(
            f"the model's forward fails in torch itself on a batch of one sample, shape {tuple(sample.shape)}, "
            f"which is how jaxjac traces it, and runs on a batch of two: {_gist(eager_failure)}. A forward that "
            "calls `x.squeeze()` drops the batch axis of a batch of one: squeeze only the axes you mean "
            "(`x.squeeze(-1)`)"
        ) from failure
    if eager_failure is not None:
        raise JaxjacError(
            f"the model's forward fails in torch itself on an input of shape {tuple(sample.shape)}: "
            f"{_gist(eager_failure)}. Is that the shape of one sample, with a batch axis in front?"
        ) from failure
    raise JaxjacError(
        f"torch.export could not trace the model's forward on an input of shape {tuple(sample.shape)}: {_gist(failure)}"
    ) from failure


def _eager_failure(net: torch.nn.Module, sample: torch.Tensor) -> Exception | None:
    """What torch's own forward raises on `sample`, a batch of one, or `None` if it runs."""
    try:
        with eval_mode(net, warn=False), torch.no_grad():
            net(sample)
    except Exception as error:  # whatever the user's forward raises
        return error
    return None


def _branches_taken(net: torch.nn.Module, sample: torch.Tensor) -> dict[str, list[bool]] | None:
    """What each `bool(tensor)` in forward comes out as on `sample` (see `_branches`), or None if forward fails."""
    try:
        with eval_mode(net, warn=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warned already
            return record_branches(net, sample)
    except Exception:  # noqa: BLE001  (a forward that fails eagerly is reported by the caller)
        return None


def _export(net: torch.nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    try:
        with _integer_buffers_as_constants(net):
            return _export_buffers_kept(net, sample)
    except Exception as error:
        if "is mutated in the forward method" not in str(error):
            raise
    return _export_buffers_kept(net, sample)  # forward updates an integer buffer (a counter): a buffer it stays


def _traced_and_decomposed(
    net: torch.nn.Module,
    sample: torch.Tensor,
    real_constants: bool = True,
    branches: dict[str, list[bool]] | None = None,
) -> tuple[torch.export.ExportedProgram | None, torch.export.ExportedProgram | None, Exception | None]:
    """`(traced, decomposed, failure)`: the traced program, or None, decomposed, or None, and why not.

    `real_constants`: trace under `_RealConstants`, which keeps the values of tensors made from numbers.
    `branches`: trace each branch on the data as recorded (`_branches_taken`), guarded.
    """
    as_taken = BranchesAsTaken(branches) if branches else None
    # Traced with gradients on, so that a `with torch.no_grad():` block inside forward
    # shows in the graph (as a `wrap_with_set_grad_enabled` call) and can stop gradients.
    # torch.export prints a failed trace's partial graph to stderr (dozens of lines before
    # the one-line error); it is kept for `--debug`, and anything else passed on.
    printed = io.StringIO()
    with (
        eval_mode(net),
        torch.enable_grad(),
        _quiet_export(),
        _causal_masks_taken_as_given(),
        _distribution_arguments_unvalidated(),
        _custom_backwards_noted(),
        checkpoints_inlined(),
        _RealConstants() if real_constants else contextlib.nullcontext(),
        as_taken or contextlib.nullcontext(),
    ):
        try:
            with contextlib.redirect_stderr(printed):
                program = _export(net, sample)
        except Exception as error:  # torch raises many types here, with long messages
            if printed.getvalue().strip():
                error.add_note(f"torch printed while tracing:\n{printed.getvalue()}")
            return None, None, error
        sys.stderr.write(printed.getvalue())
        _detach_no_grad_blocks(program)
        try:
            decomposed = _decompositions.decompose(program)
        except Exception as error:  # torch's own assertion (torch.linalg.solve under _RealConstants)
            return program, None, error
    if as_taken is not None and as_taken.sites:
        warnings.warn(
            f"forward branches on the input's values (at {', '.join(as_taken.sites)}), so no one program "
            "computes it for every input: jaxjac traced the branches the example input takes, and gives NaN "
            "outputs and Jacobian rows for any sample that takes another. Convert with an example (--check-data) "
            "whose first sample takes the branches your data takes",
            UserWarning,
            stacklevel=4,
        )
    return program, decomposed, None


@contextlib.contextmanager
def checkpoints_inlined() -> Iterator[None]:
    """In the block, `torch.utils.checkpoint(fn, *args, use_reentrant=True)` calls `fn(*args)`.

    Activation checkpointing, left in a forward from training, saves memory
    and computes the same values. Its reentrant form runs `fn` without
    gradients inside an `autograd.Function`: traced, that read as a stop of
    the gradient (a Jacobian of zeros), and torch's own check refuses
    `torch.autograd.grad` through it.
    """

    class Inlined:
        @staticmethod
        def apply(function: Callable, preserve_rng_state: bool, *args: Any) -> Any:
            return function(*args)

    module = torch.utils.checkpoint
    original, module.CheckpointFunction = module.CheckpointFunction, Inlined
    try:
        yield
    finally:
        module.CheckpointFunction = original


def _caches_on_first_call(net: torch.nn.Module, sample: torch.Tensor) -> bool:
    """Run forward once; whether it stored a tensor where there was none (a lazily built cache), kept in place.

    torch.export traces `if self.bias is None: self.register_buffer("bias",
    ...)` (x-transformers' ALiBi) into a copy onto the wrong tensor, and
    fails; traced after one call, the cache is a tensor like any other.
    """

    def empty_slots() -> set[tuple[int, str]]:
        return {
            (id(m), name)
            for m in net.modules()
            for name in (*m._buffers, *vars(m))
            if not isinstance(m._buffers.get(name, vars(m).get(name)), torch.Tensor)
        }

    before = empty_slots()
    try:
        with eval_mode(net, warn=False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warned already
            net(sample)
    except Exception:  # noqa: BLE001  (a forward that fails eagerly is reported by the caller)
        return False
    return bool(before - empty_slots())


def _traced(net: torch.nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    """`torch.export.export(net, (sample,))`, after which `net` holds what it held before (see `_module_state`)."""
    try:
        return torch.export.export(net, (sample,))
    finally:
        restore_all()


def _export_buffers_kept(net: torch.nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    try:
        return _traced(net, sample)
    except Exception as error:
        if _ASSIGNS_TO_DATA not in str(error):
            raise
        return _export_with_constraints_applied(net, sample, error)


# What torch.export says when forward assigns to a parameter's `.data`.
_ASSIGNS_TO_DATA = "fake tensor in the exported program constant"


def _export_with_constraints_applied(
    net: torch.nn.Module, sample: torch.Tensor, error: Exception
) -> torch.export.ExportedProgram:
    """Export a forward that rewrites its own weights (`self.weight.data = renorm(...)`).

    Weight constraints such as max-norm (braindecode's `Conv2dWithConstraint`,
    used by EEGNet) project the weights at every forward call. Such a
    projection is idempotent, so jaxjac runs forward once, as torch's own
    inference does, which leaves the projected weights in place, and traces
    forward with `.data` assignments ignored. The conversion check compares
    with torch's forward, which still projects, so a projection that is not
    idempotent is caught.
    """
    with torch.no_grad():
        net(sample)
    with _data_assignments_ignored():
        try:
            program = _traced(net, sample)
        except Exception:
            raise error from None
    warnings.warn(
        "forward assigns to a parameter's `.data` (a weight constraint such as max-norm): jaxjac ran forward "
        "once to apply it to the weights, as torch's inference does, and converted forward without the "
        "assignment; the conversion check compares the result with torch",
        UserWarning,
        stacklevel=4,
    )
    return program


@contextlib.contextmanager
def _data_assignments_ignored() -> Iterator[None]:
    """`tensor.data = value` does nothing in the block, and reading `.data` is `detach()`.

    A `.data` read would lift the weight into the program as a constant that
    torch.export cannot hold; `detach()` is the same value, traced as an op.
    """
    saved = torch.Tensor.__dict__.get("data")
    torch.Tensor.data = property(torch.Tensor.detach, lambda self, value: None)
    try:
        yield
    finally:
        if saved is None:
            del torch.Tensor.data
        else:
            torch.Tensor.data = saved


# Causes torch.export names obscurely, and what to do about them.
# torch.jit.trace records the ops one input runs through, whatever Python computed around them.
_TRACE_INSTEAD = (
    "convert `torch.jit.trace(net, x)` instead (its recording follows the path that input took, so it is right "
    "only where every input takes that path; jaxjac's check compares the conversion with the recording, not "
    "with your model)"
)

_EXPORT_HINTS = (
    (
        _ASSIGNS_TO_DATA,
        "forward seems to assign to a parameter or buffer in a way jaxjac could not set aside (a weight "
        "constraint's `self.weight.data = ...` is handled); compute the new value outside forward, once",
    ),
    (
        ".numpy() is not supported",
        "forward turns a tensor into Python values (.numpy(), .item(), .tolist()), so what it computes depends on "
        "the data; jaxjac needs one program for every input",
    ),
    (
        "data-dependent expression",
        "forward reads a tensor's values as Python numbers (float(t) or int(t), or .item() or .tolist() for a "
        "shape or a size; a branch on a tensor or on .item() is traced as the example took it, with a guard), so "
        f"what it computes may depend on the data; where they are the same for every input, {_TRACE_INSTEAD}",
    ),
    (
        "Unexpected key",
        "forward calls a submodule in a way torch.export cannot follow, such as a call abandoned by an exception "
        f"inside try/except; {_TRACE_INSTEAD}",
    ),
)


_PACKED_HINT = (
    "a recurrent layer runs on a PackedSequence (`pack_padded_sequence`), whose batch sizes torch.export cannot "
    "trace; a per-sample Jacobian is of one sample, which has one length, so pass the RNN the padded tensor itself"
)


def _runs_a_packed_sequence(error: BaseException) -> bool:
    """Whether `error` arose inside torch's RNN forward while it ran on a PackedSequence (speechbrain packs when given lengths)."""
    rnn_source = os.path.join("nn", "modules", "rnn.py")
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.endswith(rnn_source) and frame.f_locals.get("batch_sizes") is not None:
            return True
        tb = tb.tb_next
    return False


def _gist(error: BaseException) -> str:
    """Torch's message in one line: its first line, the line of forward that failed, its last when that adds the cause, plus a hint."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    gist = lines[0] if len(lines[0]) <= 300 else lines[0][:300] + " ..."
    where = _failing_call(lines) or _user_frame(error)
    if where:
        gist += f" at {where}"
    if len(lines) > 1 and lines[-1] not in gist and not lines[-1].startswith(_EXPORT_BOILERPLATE):
        gist += f" ... {lines[-1][:300]}"
    for pattern, hint in _EXPORT_HINTS:
        if pattern in str(error):
            gist += f" ({hint})"
    if _runs_a_packed_sequence(error):
        gist += f" ({_PACKED_HINT})"
    return gist + "; --debug shows torch's full message" if len(lines) > 1 else gist


# torch's closing advice on every failed export, which names no cause.
_EXPORT_BOILERPLATE = "The error above occurred when calling torch.export"


def _failing_call(lines: list[str]) -> str | None:
    """`file:line (code)` of the user's code that torch's message blames, if it names any."""
    for i, line in enumerate(lines[:-2]):
        if line.startswith("The following call raised this error"):
            frame = re.match(r'File "(.+)", line (\d+)', lines[i + 1])
            if frame:
                return f"{os.path.basename(frame[1])}:{frame[2]} ({lines[i + 2][:200]})"
    for line in lines:
        cause = re.match(r"Caused by: \((.+):(\d+) in (\w+)\)", line)
        # torch names its own files relative to its package: those are not the user's.
        if cause and not os.path.exists(os.path.join(os.path.dirname(torch.__file__), cause[1])):
            return f"{os.path.basename(cause[1])}:{cause[2]} (in {cause[3]})"
    return None


# Frames in these folders are torch's, jaxjac's or Python's, not the model's.
_NOT_USER_CODE = tuple(
    os.path.dirname(module.__file__) + os.sep for module in (torch, contextlib, sys.modules[__package__])
)


def _user_frame(error: BaseException) -> str | None:
    """`file:line (code)` of the innermost frame of `error`'s traceback outside torch, jaxjac and Python.

    That is where the model's own code called what failed (its forward, or a
    library's module it uses).
    """
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not os.path.abspath(frame.filename).startswith(_NOT_USER_CODE) and not frame.filename.startswith("<")
    ]
    if not frames:
        return None
    frame = frames[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno} ({(frame.line or '').strip()[:200]})"


def _detach_no_grad_blocks(program: torch.export.ExportedProgram) -> None:
    """Put a `detach` on every output of each `torch.no_grad()` block of the graph, in place.

    Decomposition inlines the blocks and forgets that they computed without
    gradients; the `detach`es it keeps (see `_decompositions.core_aten_table`) remember.
    """
    graph = program.graph
    no_grad_blocks = [
        node
        for node in graph.nodes
        if node.op == "call_function"
        and node.target is torch.ops.higher_order.wrap_with_set_grad_enabled
        and node.args[0] is False
    ]
    for block in no_grad_blocks:
        for user in list(block.users):
            if user.target is not operator.getitem:
                continue
            with graph.inserting_after(user):
                detached = graph.call_function(torch.ops.aten.detach.default, (user,))
            detached.meta = dict(user.meta)
            user.replace_all_uses_with(detached, delete_user_cb=lambda node, detached=detached: node is not detached)
    if no_grad_blocks:
        program.graph_module.recompile()


@contextlib.contextmanager
def _custom_backwards_noted() -> Iterator[None]:
    """Warn when forward calls a `torch.autograd.Function` of the user's, whose backward jaxjac cannot keep.

    torch.export records the Function's forward only; jaxjac differentiates
    that, which is the true derivative. A hand-written backward that is not
    (a straight-through estimator, a gradient reversal, an approximate adjoint)
    gives torch's autograd other numbers, and the user should hear why.
    """
    function = torch.autograd.Function
    original = function.__dict__["apply"]
    called: dict[str, None] = {}

    def apply(cls, *args, **kwargs):
        if not cls.__module__.startswith("torch."):
            called[f"{cls.__module__}.{cls.__qualname__}"] = None
        return original.__func__(cls, *args, **kwargs)

    function.apply = classmethod(apply)
    try:
        yield
    finally:
        function.apply = original
    if called:
        names = ", ".join(f"`{name}`" for name in called)
        warnings.warn(
            f"forward calls torch.autograd.Function {names} with a hand-written backward, which jaxjac does not "
            "use: it differentiates the function's forward. Where that backward is not the forward's derivative "
            "(a straight-through estimator, a gradient reversal), jaxjac's Jacobians differ from torch's autograd "
            "there",
            stacklevel=4,
        )


@contextlib.contextmanager
def _causal_masks_taken_as_given() -> Iterator[None]:
    """nn.Transformer* layers given a mask without `is_causal`, traced without asking whether it is causal.

    They compare the mask with a causal one (`_detect_is_causal_mask`), a
    branch on tensor values that torch.export cannot trace. The answer only
    picks a kernel: with "not causal" the mask is applied as given, which
    computes the same attention.
    """
    from torch.nn.modules import transformer

    detect = getattr(transformer, "_detect_is_causal_mask", None)
    if detect is None:
        yield
        return

    def as_given(mask: torch.Tensor | None, is_causal: bool | None = None, size: int | None = None) -> bool:
        return is_causal is True

    transformer._detect_is_causal_mask = as_given
    try:
        yield
    finally:
        transformer._detect_is_causal_mask = detect


@contextlib.contextmanager
def _distribution_arguments_unvalidated() -> Iterator[None]:
    """torch.distributions skips checking its arguments in the block, as after `set_default_validate_args(False)`.

    The check (`if not constraint.check(scale).all(): raise`) reads the
    data's values, so it cannot be traced: transformers' TimeSeriesTransformer
    builds its output distribution in forward. It computes nothing the
    outputs depend on, and the conversion's check runs torch with it on.
    """
    distribution = torch.distributions.Distribution
    validating = distribution._validate_args
    distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        distribution.set_default_validate_args(validating)


# Factories whose tensors a forward reads back as Python numbers, such as the
# dims of asteroid's global layer norm, `torch.arange(1, x.dim()).tolist()`.
_CONSTANT_FACTORIES = frozenset(
    {torch.arange, torch.linspace, torch.logspace, torch.tensor, torch.as_tensor, torch.from_numpy}
)


_READ_BACKS = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__bool__,
        torch.Tensor.__index__,
    }
)


class _RealConstants(torch.overrides.TorchFunctionMode):
    """Tensors made from Python numbers alone, and what is computed from them alone, hold real values while traced.

    torch.export traces with fake tensors, which have shapes but no values,
    so reading one back (`.tolist()`, `int(t[0])`) fails as data-dependent
    even where, as here, nothing depends on the data: asteroid's DCUNet
    reads `int(torch.from_numpy(strides)[0])`. jaxjac traces one fixed
    shape, so such a tensor is the same for every input; the ops that make
    it are still recorded. Tensors filled with one number stay traced, with
    their values known beside them (`KnownValues`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._known = KnownValues()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204  (torch's protocol)
        kwargs = kwargs or {}
        if func in _READ_BACKS and args and isinstance(args[0], torch.Tensor):
            value = self._known.value_of(args[0])
            if value is not None:
                from torch.utils._python_dispatch import _disable_current_modes

                with _disable_current_modes():
                    return func(value, *args[1:], **kwargs)
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1:
            args = (args[0], _constant_masks_as_positions(args[1]), *args[2:])
        if func in (torch.masked_select, torch.Tensor.masked_select) and len(args) == 2 and _is_constant_mask(args[1]):
            return _selected_by_constant_mask(*args)
        tensors = [leaf for leaf in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        made_here = func in _CONSTANT_FACTORIES and not tensors
        constant = bool(tensors) and not any(_is_traced(t) for t in tensors)
        if constant and (func in _READ_BACKS or _integer_arithmetic(tensors)):
            # Integer arithmetic on constants (padding from `stride` buffers, say) is
            # computed untraced: a real number torch reads back inside ops like F.pad.
            # The tracer refuses to read any tensor it records; this one's value is known.
            from torch.utils._python_dispatch import _disable_current_modes

            with _disable_current_modes():
                return func(*args, **kwargs)
        if made_here or constant:
            from torch._subclasses.fake_tensor import unset_fake_temporarily

            with unset_fake_temporarily():
                return func(*args, **kwargs)
        result = func(*args, **kwargs)
        self._known.follow(func, args, kwargs, result, _is_traced)
        return result


def _constant_masks_as_positions(index: Any) -> Any:
    """`index` with each constant boolean mask replaced by the positions it holds, as torch itself reads it.

    Indexing by a mask makes a shape that depends on the mask's values, which
    the tracer cannot know (nnAudio's iSTFT: `real[:, self.mask] = ...`); a
    constant mask's positions are known, so the shape is fixed.
    """
    entries = index if isinstance(index, tuple) else (index,)
    if not any(_is_constant_mask(entry) for entry in entries):
        return index
    from torch.utils._python_dispatch import _disable_current_modes

    expanded: list[Any] = []
    for entry in entries:
        if _is_constant_mask(entry):
            with _disable_current_modes():
                expanded.extend(torch.nonzero(entry, as_tuple=True))
        else:
            expanded.append(entry)
    return tuple(expanded)


def _selected_by_constant_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`torch.masked_select(x, mask)` for a constant `mask`, as an index by the positions it holds.

    The selection's length is the mask's count, known while traced (a band
    selection by a bool buffer, say); torch.export refuses the op itself as
    data-dependent whatever the mask.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    shape = torch.broadcast_shapes(x.shape, mask.shape)
    with _disable_current_modes():
        positions = torch.nonzero(mask.expand(shape), as_tuple=True)
    return x.expand(shape)[positions]


def _is_constant_mask(entry: Any) -> bool:
    return isinstance(entry, torch.Tensor) and entry.dtype == torch.bool and entry.ndim > 0 and not _is_traced(entry)


@contextlib.contextmanager
def _integer_buffers_as_constants(net: torch.nn.Module) -> Iterator[None]:
    """Integer and bool buffers are plain tensor attributes in the block, so they keep real values while traced.

    torch.export makes every buffer a fake tensor, with no value. Integer
    buffers are not differentiated and are the same for every input, but
    forward may read them back: transformers' Encodec and Mimi compute their
    padding from `stride` and `kernel_size` buffers, tsai's MiniRocketPlus
    branches on a `fitted` flag, nnAudio's iSTFT indexes by a bool `mask`. As
    plain attributes they are constants of the program, which `_RealConstants`
    computes with.
    """
    saved = []
    for module in net.modules():
        integer = {
            name: buffer for name, buffer in module._buffers.items() if buffer is not None and _is_read_back(buffer)
        }
        if integer:
            saved.append((module, module._buffers.copy()))
            for name, buffer in integer.items():
                del module._buffers[name]
                module.__dict__[name] = buffer
    try:
        yield
    finally:
        for module, buffers in saved:
            for name in buffers:
                module.__dict__.pop(name, None)
            module._buffers.clear()
            module._buffers.update(buffers)


def _is_read_back(buffer: torch.Tensor) -> bool:
    """An integer or bool buffer: a flag forward branches on (`if not self.fitted:`), or a mask it indexes with."""
    return _is_integer(buffer) or buffer.dtype == torch.bool


def _is_integer(tensor: torch.Tensor) -> bool:
    # Not bool: bool buffers are masks, which forward applies to the data rather than reads back.
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _integer_arithmetic(tensors: list[torch.Tensor]) -> bool:
    return all(_is_integer(t) and t.numel() <= 64 for t in tensors)


def _is_traced(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is one of the trace's (an input, a parameter, or computed from one), not a real constant."""
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(tensor) or isinstance(tensor, torch.nn.Parameter)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence torch.export's internal notices that say nothing about the user's model."""
    with warnings.catch_warnings():
        # nn.LSTM/GRU reassign their flattened weight lists, and the old
        # weight_norm hook its weight, while being traced; harmless.
        warnings.filterwarnings(
            "ignore", message=r".*tensor attributes? .* (was|were) assigned during export.*", category=UserWarning
        )
        # torch's own pytree internals use an API it has deprecated.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
        # Its shape solver logs warnings about its own bookkeeping ("Unable to find user code
        # corresponding to {u0}") beside a failed trace, whose cause jaxjac's error gives.
        # Fake tensors log the traceback of a failing op's shape function at ERROR,
        # before raising the same error, which jaxjac's message then gives.
        quieted = {
            "torch.fx.experimental.symbolic_shapes": logging.ERROR,
            "torch._subclasses.fake_tensor": logging.CRITICAL,
        }
        levels = {name: logging.getLogger(name).level for name in quieted}
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
