"""The pure batch formulations of per-sample Jacobians, and the checks of their options.

In eval mode every sample's output depends on that sample alone, so the
Jacobian of a batch is block-diagonal and each sample's block can be read
from batched vector-Jacobian products. Two formulations are offered and a
test proves them equal on every tested architecture:

- ``"vmap-jacrev"``: `jax.vmap(jax.jacrev(f))`, the textbook form.
- ``"batched-vjp"``: one batched forward, then one batched VJP per output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import JaxjacError
from ._graph import Graph
from ._graph_model import ModelSpec, check_precision, traced_at
from ._graph_model import sample_fn as _sample_fn
from ._interpret import with_default_numpy_rules

if TYPE_CHECKING:
    from ._model import ConvertedModel

Target = Literal["all", "predicted"] | int | np.ndarray | jax.Array
Output = Literal["logits", "probs", "log_probs"]
Method = Literal["vmap-jacrev", "batched-vjp"]

METHODS: tuple[str, ...] = ("vmap-jacrev", "batched-vjp")
DEFAULT_METHOD: Method = "vmap-jacrev"

_OUTPUT_TRANSFORMS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "logits": lambda y: y,
    "probs": jax.nn.softmax,
    "log_probs": jax.nn.log_softmax,
}


def output_transform(output: str) -> Callable[[jax.Array], jax.Array]:
    """The function of a sample's flat outputs `(K,)` that is differentiated: identity, softmax or log-softmax."""
    key = output.replace("-", "_")
    if key not in _OUTPUT_TRANSFORMS:
        raise JaxjacError(f"output must be one of 'logits', 'probs', 'log_probs'; got {output!r}")
    return _OUTPUT_TRANSFORMS[key]


def target_kind(target: Any) -> str:
    """``"all"``, ``"predicted"``, ``"index"`` (a class index) or ``"labels"`` (an array of labels)."""
    if isinstance(target, str):
        if target not in ("all", "predicted"):
            raise JaxjacError(f"target must be 'all', 'predicted', a class index or an array of labels; got {target!r}")
        return target
    if isinstance(target, bool | np.bool_):  # an int to Python, but surely not meant as class 0 or 1
        raise JaxjacError(f"target must be 'all', 'predicted', a class index or an array of labels; got {target!r}")
    if isinstance(target, int | np.integer):
        return "index"
    if isinstance(target, np.ndarray | jax.Array):
        return "labels"
    raise JaxjacError(
        f"target must be 'all', 'predicted', a class index or an array of labels; got {type(target).__name__}"
    )


def check_class_target(model: ConvertedModel, kind: str) -> None:
    """Refuse a target that names classes (``"predicted"``, ``"labels"``) on a model whose outputs are not `(K,)`."""
    if kind in ("predicted", "labels") and len(model.output_shape) != 1:
        # The argmax of a (C, L) segmentation map, flattened, is no class of the sample.
        what = "target='predicted' follows each sample's argmax class" if kind == "predicted" else "labels name classes"
        raise JaxjacError(
            f"{what}, which needs outputs (K,) per sample, but the model's per-sample output has shape "
            f"{model.output_shape}; use target='all', or an int index into its {model.n_outputs} flattened outputs"
        )


def validate_options(model: ConvertedModel, target: Any, output: str, method: str, precision: str) -> str:
    """Check the options of a Jacobian against `model`; returns `target_kind(target)`."""
    kind = target_kind(target)
    if not isinstance(output, str):
        raise JaxjacError(f"output must be one of 'logits', 'probs', 'log_probs'; got {output!r}")
    output_transform(output)
    if method not in METHODS:
        raise JaxjacError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_precision(precision)
    if output.replace("-", "_") != "logits":
        if len(model.output_shape) != 1:
            raise JaxjacError(
                f"output={output!r} applies a softmax over classes, but the model's per-sample output has "
                f"shape {model.output_shape}; use output='logits'"
            )
        if model.n_outputs == 1:
            # softmax of one logit is the constant 1: every Jacobian would be zero.
            raise JaxjacError(
                f"output={output!r} takes a softmax over the outputs, but the model has a single output, "
                "whose softmax is constantly 1 (a zero Jacobian); use output='logits'"
            )
    check_class_target(model, kind)
    if kind == "index" and not 0 <= int(target) < model.n_outputs:
        raise JaxjacError(f"target class {int(target)} is out of range for a model with {model.n_outputs} outputs")
    return kind


def batch_jacobian_core(
    model: ConvertedModel,
    *,
    target: Target = "all",
    output: Output = "logits",
    method: Method = DEFAULT_METHOD,
    precision: str = "float32",
) -> tuple[Callable[[dict[str, jax.Array], jax.Array, jax.Array | None], jax.Array], dict[str, jax.Array]]:
    """The un-jitted pure core of `jacobian_fn`, for callers that jit it themselves.

    **Returns:** `(core, tensors)` where `core(tensors, x, labels)` maps a batch
    `x` `(N, *sample_shape)` (and, for a labels target, `labels` `(N,)`; else
    `None`) to its Jacobians. Jit it with your own shardings to spread a batch
    over devices.
    """
    kind = validate_options(model, target, output, method, precision)
    index = int(target) if kind == "index" else None
    return _core(model.graph, model.spec, kind, index, output.replace("-", "_"), method, precision), model.tensors()


@functools.lru_cache(maxsize=64)
def _core(graph: Graph, spec: ModelSpec, kind: str, index: int | None, output: str, method: str, precision: str):
    # One function object per model structure and options, so that `jax.jit`
    # of it compiles once per batch shape however often `jacobian` is called.
    transform = output_transform(output)
    sample_fn = _sample_fn(graph, spec)
    dtype = jnp.dtype(spec.dtype)
    n_outputs = math.prod(spec.output_shape)

    def f(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return transform(sample_fn(params, x).reshape(-1))

    formulation = FORMULATIONS[(kind == "all", method)](f)

    @with_default_numpy_rules
    def core(params: dict[str, jax.Array], x: jax.Array, labels: jax.Array | None) -> jax.Array:
        x = jnp.asarray(x, dtype)
        with traced_at(precision):
            if kind == "all":
                return formulation(params, x)
            if kind == "predicted":
                return formulation(params, x, None)
            if kind == "index":
                return formulation(params, x, jnp.full((x.shape[0],), index))
            return nan_unless_valid(formulation(params, x, labels), labels, n_outputs)

    return core


def nan_unless_valid(rows: jax.Array, labels: jax.Array, n_outputs: int) -> jax.Array:
    """NaN rows where a label is not a class: one-hot of it would select nothing and give zeros.

    Eager callers check labels before they get here; this covers labels that
    are only known inside a jit.
    """
    valid = (labels >= 0) & (labels < n_outputs)
    return jnp.where(valid.reshape(-1, *([1] * (rows.ndim - 1))), rows, jnp.nan)


def _all_vmap_jacrev(f):
    return jax.vmap(jax.jacrev(f, argnums=1), in_axes=(None, 0))


def _all_batched_vjp(f):
    def all_rows(params, x):
        outputs, pullback = jax.vjp(lambda xb: jax.vmap(f, in_axes=(None, 0))(params, xb), x)
        eye = jnp.eye(outputs.shape[1], dtype=outputs.dtype)
        cotangents = jnp.broadcast_to(eye[:, None, :], (outputs.shape[1], *outputs.shape))
        (rows,) = jax.vmap(pullback)(cotangents)  # (K, N, *sample_shape)
        return jnp.moveaxis(rows, 0, 1)

    return all_rows


def _one_vmap_jacrev(f):
    def one_row(params, x, select):
        outputs, pullback = jax.vjp(lambda xs: f(params, xs), x)
        k = jnp.argmax(outputs) if select is None else select
        (row,) = pullback(jax.nn.one_hot(k, outputs.shape[0], dtype=outputs.dtype))
        return row

    def rows(params, x, select):
        return jax.vmap(one_row, in_axes=(None, 0, None if select is None else 0))(params, x, select)

    return rows


def _one_batched_vjp(f):
    def rows(params, x, select):
        outputs, pullback = jax.vjp(lambda xb: jax.vmap(f, in_axes=(None, 0))(params, xb), x)
        k = jnp.argmax(outputs, axis=1) if select is None else select
        (row,) = pullback(jax.nn.one_hot(k, outputs.shape[1], dtype=outputs.dtype))
        return row

    return rows


FORMULATIONS = {
    (True, "vmap-jacrev"): _all_vmap_jacrev,
    (True, "batched-vjp"): _all_batched_vjp,
    (False, "vmap-jacrev"): _one_vmap_jacrev,
    (False, "batched-vjp"): _one_batched_vjp,
}


def check_labels(labels: np.ndarray, n: int, n_outputs: int, name: str = "labels") -> np.ndarray:
    """Validate a label vector: integers, one per sample, each a valid class; returned as int32.

    Whole-number floats (labels saved as float arrays) are taken as integers.
    int32 holds any class index and is what JAX computes with unless 64-bit
    mode is on (recent JAX warns at an int64 argument spec otherwise).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise JaxjacError(f"{name}: expected a 1-D integer array of class labels; got {labels.dtype} {labels.shape}")
    if labels.shape[0] != n:
        raise JaxjacError(f"{name} holds {labels.shape[0]} labels; the data holds {n} samples: expected one per sample")
    if n and (labels.min() < 0 or labels.max() >= n_outputs):
        bad = int(np.flatnonzero((labels < 0) | (labels >= n_outputs))[0])
        raise JaxjacError(
            f"{name}[{bad}] = {int(labels[bad])} is not a class of a model with {n_outputs} outputs (0..{n_outputs - 1})"
        )
    return labels.astype(np.int32)
