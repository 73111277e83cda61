"""Runs a lowered `Graph` on JAX arrays with the lowerings in `jaxjac.converters`."""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import converters
from ._errors import JaxjacError, LoweringError, UnsupportedOpError, first_line
from ._graph import DType, Graph, Ref
from ._half_floats import computed_in_float32, half_float_of
from .converters.branches import BRANCH_GUARD, poisoned_unless
from .converters.layout import contains_channels_last, to_logical
from .converters.registry import ModelError, channels_last_rule

LAYOUTS = ("channels-last", "channels-first")
# Measured on XLA CPU (bench/layout_probe.py): see converters/layout.py.
DEFAULT_LAYOUT = "channels-last"

_INTEGER_DTYPES = {"int8", "int16", "int32", "int64", "uint8"}


def check_supported(graph: Graph) -> None:
    """Raise `UnsupportedOpError` for the first op of `graph` with no lowering."""
    missing = [node for node in graph.nodes if node.op != "getitem" and converters.lookup(node.op) is None]
    if missing:
        others = len({node.op for node in missing}) - 1
        # A random op, else a value-dependent shape, is the cause; the ops around it are symptoms.
        random = [node for node in missing if node.op.split(".")[1] in _RANDOM]
        # Python arithmetic in the graph works on numbers read from the input (.item()): sizes, shifts.
        data_dependent = [node for node in missing if node.op in _DATA_DEPENDENT or node.op.startswith(_SYMBOLIC)]
        if random:
            first, kind = random[0], "random"
        elif data_dependent:
            first, kind = data_dependent[0], "data-dependent"
        else:
            first, kind = missing[0], ""
        raise UnsupportedOpError(first.op, first.where(), others, kind=kind)


# Ops that draw random numbers (by their name after `aten.`): a forward with one is no function of its input.
_RANDOM = frozenset(
    {
        "randn",
        "rand",
        "randint",
        "randn_like",
        "rand_like",
        "randint_like",
        "randperm",
        "normal",
        "normal_",
        "uniform",
        "uniform_",
        "bernoulli",
        "bernoulli_",
        "multinomial",
        "poisson",
        "exponential",
        "exponential_",
        "cauchy_",
        "log_normal_",
        "geometric_",
        "random_",
        "binomial",
        "_standard_gamma",
        "_sample_dirichlet",
        # Dropout left on in eval mode, F.dropout(x, p, training=True) as Monte Carlo dropout calls it.
        "native_dropout",
        "dropout",
        "feature_dropout",
        "alpha_dropout",
        "feature_alpha_dropout",
        "_fused_dropout",
    }
)


_SYMBOLIC = ("_operator.", "torch.sym_", "math.", "torch._sym")

_DATA_DEPENDENT = frozenset(
    {
        "aten.nonzero.default",
        "aten.masked_select.default",
        "aten.sym_size.int",
        "aten.sym_constrain_range_for_size.default",
        "aten._assert_scalar.default",
    }
)


def complex_dtype(float_dtype) -> np.dtype:
    """The complex dtype of a model computing in `float_dtype`: complex128 for float64, else complex64."""
    return np.dtype(np.complex128 if np.dtype(float_dtype) == np.float64 else np.complex64)


def resolve_dtype(name: str) -> jnp.dtype:
    """The JAX dtype that stands for torch dtype `name`.

    Explicit float and complex dtypes are kept as torch has them: a graph is
    traced in the dtype it is converted to, so a float32 step inside a
    float64 model (`.float()`, a float32 `linspace`) rounds as it does in
    torch. Without 64-bit JAX, float64 and complex128 can only be float32 and
    complex64 (`convert` warns about such casts). Integer dtypes take JAX's
    default integer width, which is 32 bits unless x64 is enabled.
    """
    if name in ("float32", "float64", "complex64", "complex128", "float16", "bfloat16", "bool"):
        return jax.dtypes.canonicalize_dtype(jnp.dtype(name))
    if name in _INTEGER_DTYPES:
        return jnp.dtype(name) if name in ("int8", "int16", "uint8") else jax.dtypes.canonicalize_dtype(jnp.int64)
    raise ValueError(f"torch dtype {name!r} is not supported by jaxjac")


@contextlib.contextmanager
def default_numpy_rules() -> Iterator[None]:
    """JAX's default broadcasting and dtype promotion, for the block, whatever the caller set.

    The lowerings follow torch's rules, which broadcast across ranks and
    promote dtypes as JAX's "standard" mode does; a user's stricter settings
    (rank promotion "raise", dtype promotion "strict") are for their own
    code, and would otherwise fail inside ours.
    """
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def with_default_numpy_rules(fn: Callable) -> Callable:
    """`fn` traced under `default_numpy_rules`: for every program jaxjac builds."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with default_numpy_rules():
            return fn(*args, **kwargs)

    return wrapped


def run_graph(
    graph: Graph,
    tensors: Mapping[str, jax.Array],
    x: jax.Array,
    float_dtype: jnp.dtype,
    layout: str = DEFAULT_LAYOUT,
) -> tuple[jax.Array, ...]:
    """Evaluate `graph` on input `x`.

    **Arguments:**

    - `graph`: the lowered program.
    - `tensors`: the model's parameters and buffers by dotted torch name.
    - `x`: the input with the batch axis the graph was traced with, `(1, *sample_shape)`.
    - `float_dtype`: the float dtype the model computes in.
    - `layout`: ``"channels-last"`` carries convolution stacks with channels
      last, which XLA runs faster; ``"channels-first"`` runs every op in
      torch's layout. Both give the same numbers.

    **Returns:** the graph's outputs, in order, in torch's layout.
    """
    env: dict[str, Any] = {}

    def value(arg: Any) -> Any:
        if isinstance(arg, Ref):
            if arg.kind == "node":
                return env[arg.name]
            if arg.kind == "tensor":
                return tensors[arg.name]
            return x
        if isinstance(arg, DType):
            return resolve_dtype(arg.name)
        if isinstance(arg, tuple):
            return tuple(value(a) for a in arg)
        return arg

    with default_numpy_rules():
        for node in graph.nodes:
            fn = operator.getitem if node.op == "getitem" else converters.lookup(node.op)
            if fn is None:
                raise UnsupportedOpError(node.op, node.where())
            args = [value(a) for a in node.args]
            kwargs = {k: value(v) for k, v in node.kwargs}
            try:
                if fn is operator.getitem:
                    env[node.name] = fn(*args, **kwargs)
                    continue
                call = functools.partial(_call, node.op, fn, layout)
                half = half_float_of(node.op, args, kwargs)
                env[node.name] = call(args, kwargs) if half is None else computed_in_float32(call, args, kwargs, half)
            except (JaxjacError, MemoryError):
                raise
            except ModelError as error:
                raise JaxjacError(f"{node.where()}: {first_line(error)}") from error
            except jax.errors.NonConcreteBooleanIndexError as error:  # x[mask] for a mask of the data
                raise UnsupportedOpError(node.op, node.where(), kind="data-dependent") from error
            except jax.errors.ConcretizationTypeError as error:  # a value read with .item() used as a size
                raise JaxjacError(
                    f"ATen op `{node.op}` from {node.where()} takes a size or an index computed from the input's "
                    "values (read with .item()?); jaxjac needs every shape fixed by the input's shape: rewrite it "
                    "with torch.where or a multiplication by a mask"
                ) from error
            except Exception as error:
                # Samples were checked against the model's shape before this, so
                # a rule failing here is a case it does not handle: name it.
                raise LoweringError(node.op, node.where(), error) from error
        outputs = tuple(to_logical(value(ref)) for ref in graph.outputs)
        return poisoned_unless(outputs, [env[node.name] for node in graph.nodes if node.op == BRANCH_GUARD])


def _call(op: str, fn: Any, layout: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run one op's lowering `fn` in `layout`."""
    return _call_channels_last(op, fn, args, kwargs) if layout == "channels-last" else fn(*args, **kwargs)


def _call_channels_last(op: str, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run one op on possibly channels-last arguments: its rule if it has one, else in torch's layout."""
    rule = channels_last_rule(op)
    if rule is not None and (op == "aten.convolution.default" or contains_channels_last((*args, *kwargs.values()))):
        result = rule(fn, *args, **kwargs)
        if result is not NotImplemented:
            return result
    return fn(*[to_logical(a) for a in args], **{k: to_logical(v) for k, v in kwargs.items()})
