"""Per-sample input Jacobians of a converted model, as pure jitted functions.

In eval mode every sample's output depends on that sample alone, so the
Jacobian of a batch is block-diagonal and each sample's block can be read
from batched vector-Jacobian products. Two formulations are offered and a
test proves them equal on every tested architecture:

- ``"vmap-jacrev"``: `jax.vmap(jax.jacrev(f))`, the textbook form.
- ``"batched-vjp"``: one batched forward, then one batched VJP per output.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import JaxjacError
from ._graph import Graph
from ._graph_model import ModelSpec
from ._graph_model import sample_fn as _sample_fn

if TYPE_CHECKING:
    from ._model import ConvertedModel

Target = Literal["all", "predicted"] | int | np.ndarray | jax.Array
Output = Literal["logits", "probs", "log_probs"]
Method = Literal["vmap-jacrev", "batched-vjp"]

METHODS: tuple[str, ...] = ("vmap-jacrev", "batched-vjp")
DEFAULT_METHOD: Method = "vmap-jacrev"

# jaxjac's names for the matmul/conv precisions JAX offers. "float32" is true
# float32; "tf32" and "bfloat16" trade accuracy for speed on GPUs and TPUs;
# "default" leaves XLA's choice (TF32 on recent NVIDIA GPUs).
PRECISIONS: dict[str, str | None] = {
    "float32": "highest",
    "tf32": "tensorfloat32",
    "bfloat16": "bfloat16",
    "default": None,
}

_OUTPUT_TRANSFORMS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "logits": lambda y: y,
    "probs": jax.nn.softmax,
    "log_probs": jax.nn.log_softmax,
}


def _output_transform(output: str) -> Callable[[jax.Array], jax.Array]:
    key = output.replace("-", "_")
    if key not in _OUTPUT_TRANSFORMS:
        raise JaxjacError(f"output must be one of 'logits', 'probs', 'log_probs'; got {output!r}")
    return _OUTPUT_TRANSFORMS[key]


def _target_kind(target: Any) -> str:
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


def _validate(model: ConvertedModel, target: Any, output: str, method: str, precision: str) -> str:
    kind = _target_kind(target)
    _output_transform(output)
    if method not in METHODS:
        raise JaxjacError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if precision not in PRECISIONS:
        raise JaxjacError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if output != "logits" and len(model.output_shape) != 1:
        raise JaxjacError(
            f"output={output!r} applies a softmax over classes, but the model's per-sample output has "
            f"shape {model.output_shape}; use output='logits'"
        )
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
    kind = _validate(model, target, output, method, precision)
    index = int(target) if kind == "index" else None
    return _core(model.graph, model.spec, kind, index, output, method, precision), model.tensors()


@functools.lru_cache(maxsize=64)
def _core(graph: Graph, spec: ModelSpec, kind: str, index: int | None, output: str, method: str, precision: str):
    # One function object per model structure and options, so that `jax.jit`
    # of it compiles once per batch shape however often `jacobian` is called.
    transform = _output_transform(output)
    sample_fn = _sample_fn(graph, spec)
    dtype = jnp.dtype(spec.dtype)

    def f(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return transform(sample_fn(params, x).reshape(-1))

    formulation = _FORMULATIONS[(kind == "all", method)](f)

    def core(params: dict[str, jax.Array], x: jax.Array, labels: jax.Array | None) -> jax.Array:
        x = jnp.asarray(x, dtype)
        with jax.default_matmul_precision(PRECISIONS[precision]):
            if kind == "all":
                return formulation(params, x)
            if kind == "predicted":
                select = None
            elif kind == "index":
                select = jnp.full((x.shape[0],), index)
            else:
                select = labels
            return formulation(params, x, select)

    return core


def jacobian_fn(
    model: ConvertedModel,
    *,
    target: Target = "all",
    output: Output = "logits",
    method: Method = DEFAULT_METHOD,
    precision: str = "float32",
) -> Callable[..., jax.Array]:
    """A jitted function from a batch to its per-sample Jacobians.

    **Arguments:**

    - `model`: a converted model.
    - `target`: ``"all"`` for every output row; ``"predicted"`` for the row of
      each sample's argmax output; an `int` for a fixed output; an array of
      labels (any array: the returned function then takes the batch's labels
      as its second argument).
    - `output`: differentiate ``"logits"`` (the raw outputs), ``"probs"``
      (softmax) or ``"log_probs"`` (log-softmax).
    - `method`: ``"vmap-jacrev"`` or ``"batched-vjp"``; both give the same numbers.
    - `precision`: matmul and convolution precision: ``"float32"`` (exact,
      the default), ``"tf32"``, ``"bfloat16"`` or ``"default"`` (XLA's
      choice, TF32 on recent NVIDIA GPUs). Only accelerators differ.

    **Returns:** `fn(x)` (or `fn(x, labels)` for a labels target) mapping a
    batch `x` of shape `(N, *sample_shape)` to `(N, K, *sample_shape)` for
    ``"all"`` and `(N, *sample_shape)` for a single target. `fn` is pure: the
    model's tensors are passed to the jitted core as arguments, not baked in.

    >>> fn = jaxjac.jacobian_fn(model, target="predicted")   # doctest: +SKIP
    >>> fn(X[:256]).shape                                    # doctest: +SKIP
    (256, 1, 224)
    """
    core, tensors = batch_jacobian_core(model, target=target, output=output, method=method, precision=precision)
    kind = _target_kind(target)
    run = _jit(core)
    sample_shape = model.sample_shape

    def jacobian_of_batch(x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        if tuple(x.shape[1:]) != sample_shape:
            raise JaxjacError(
                f"input batch has samples of shape {tuple(x.shape[1:])}; the model expects {sample_shape}"
            )
        if kind == "labels":
            labels = target if labels is None else labels
            if labels.shape != (x.shape[0],):
                raise JaxjacError(f"labels have shape {tuple(labels.shape)}; expected ({x.shape[0]},), one per sample")
        return run(tensors, x, labels)

    return jacobian_of_batch


def _as_samples(x: Any) -> np.ndarray:
    """`x` as a real-valued numpy array; a torch tensor may still require grad."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise JaxjacError(f"input must hold real numbers; got an array of dtype {x.dtype}")
    return x


@functools.lru_cache(maxsize=64)
def _jit(core: Callable) -> Callable:
    return jax.jit(core)


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


_FORMULATIONS = {
    (True, "vmap-jacrev"): _all_vmap_jacrev,
    (True, "batched-vjp"): _all_batched_vjp,
    (False, "vmap-jacrev"): _one_vmap_jacrev,
    (False, "batched-vjp"): _one_batched_vjp,
}


def check_labels(labels: np.ndarray, n: int, n_outputs: int, name: str = "labels") -> np.ndarray:
    """Validate a label vector: integers, one per sample, each a valid class.

    Whole-number floats (labels saved as float arrays) are taken as integers.
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
    return labels


def jacobian(
    model: ConvertedModel,
    x: np.ndarray | jax.Array,
    *,
    target: Target = "all",
    output: Output = "logits",
    batch_size: int = 1024,
    method: Method = DEFAULT_METHOD,
    precision: str = "float32",
) -> np.ndarray:
    """Per-sample Jacobians of a whole dataset, in fixed-size batches.

    **Arguments:**

    - `model`: a converted model.
    - `x`: samples `(N, *sample_shape)`.
    - `target`: ``"all"``, ``"predicted"``, a class index, or an array of `N` labels.
    - `output`: ``"logits"``, ``"probs"`` or ``"log_probs"``.
    - `batch_size`: samples per compiled call; the last batch is padded, so
      there is one compilation.
    - `method`, `precision`: see `jacobian_fn`.

    **Returns:** a numpy array `(N, K, *sample_shape)` for ``target="all"``,
    else `(N, *sample_shape)`. Row `i` equals torch's
    `jacobian(net, X[i:i+1])` with its singleton batch axes removed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise JaxjacError(f"batch_size must be a positive integer; got {batch_size!r}")
    x = _as_samples(x)
    if x.ndim < 1 or tuple(x.shape[1:]) != model.sample_shape:
        raise JaxjacError(f"input has samples of shape {tuple(x.shape[1:])}; the model expects {model.sample_shape}")
    labels = None
    if _target_kind(target) == "labels":
        labels = np.asarray(target)
        if labels.shape != (x.shape[0],):
            raise JaxjacError(f"labels have shape {labels.shape}; expected ({x.shape[0]},), one per sample")
        # A label outside 0..K-1 would pick no output and give a silent row of zeros.
        labels = check_labels(labels, x.shape[0], model.n_outputs)
    fn = jacobian_fn(
        model, target=target if labels is None else labels[:0], output=output, method=method, precision=precision
    )
    n = x.shape[0]
    size = min(batch_size, max(n, 1))
    chunks = []
    for start in range(0, n, size):
        batch = x[start : start + size]
        pad = size - batch.shape[0]
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
        batch_labels = None
        if labels is not None:
            batch_labels = labels[start : start + size]
            batch_labels = np.concatenate([batch_labels, np.zeros(pad, batch_labels.dtype)]) if pad else batch_labels
        chunks.append(np.asarray(fn(batch, batch_labels))[: size - pad])
    if not chunks:
        shape = (0, model.n_outputs, *model.sample_shape) if _target_kind(target) == "all" else (0, *model.sample_shape)
        return np.zeros(shape, model.dtype)
    return np.concatenate(chunks)
