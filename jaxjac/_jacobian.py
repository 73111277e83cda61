"""Per-sample input Jacobians of a converted model: a pure jitted batch function, and whole datasets.

The formulations themselves live in `_formulations`; the streaming engine
that runs them over a dataset in `_run`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from ._arrays import ArrayWriter, array_reader, as_target, batch_labels, batch_size_for, check_samples
from ._batching import library_batch_size
from ._errors import JaxjacError
from ._formulations import (
    DEFAULT_METHOD,
    METHODS,
    Method,
    Output,
    Target,
    batch_jacobian_core,
    check_labels,
    target_kind,
    validate_options,
)
from ._graph_model import check_dtype_enabled
from ._run import output_shape, run_jacobian
from ._xla_options import jit

if TYPE_CHECKING:
    from ._model import ConvertedModel

__all__ = ["DEFAULT_METHOD", "METHODS", "jacobian", "jacobian_fn"]


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
      labels (the returned function then takes each batch's labels as its
      second argument, by default these).
    - `output`: differentiate ``"logits"`` (the raw outputs), ``"probs"``
      (softmax) or ``"log_probs"`` (log-softmax).
    - `method`: ``"vmap-jacrev"`` or ``"batched-vjp"``; both give the same numbers.
    - `precision`: matmul and convolution precision: ``"float32"`` (exact,
      the default), ``"tf32"`` (TF32 on GPUs; float32 on CPUs),
      ``"bfloat16"`` (operands rounded to bfloat16 and products summed in
      float32, on every backend; float64 models are not rounded) or
      ``"default"`` (XLA's choice, TF32 on recent NVIDIA GPUs).

    **Returns:** `fn(x)` (or `fn(x, labels)` for a labels target) mapping a
    batch `x` of shape `(N, *sample_shape)` to `(N, K, *sample_shape)` for
    ``"all"`` and `(N, *sample_shape)` for a single target. `fn` is pure and
    may be called under your own `jax.jit` (on CPUs pass it
    `compiler_options=jaxjac.compiler_options()`). The model's tensors are read at
    each call and passed to the jitted core as arguments, so a fine-tuned
    model is seen at once and new weights do not recompile. Labels that are
    not classes raise an error, or give NaN rows when they are only known
    inside a jit.

    >>> fn = jaxjac.jacobian_fn(model, target="predicted")   # doctest: +SKIP
    >>> fn(X[:256]).shape                                    # doctest: +SKIP
    (256, 1, 224)
    """
    target = as_target(target)
    core, _ = batch_jacobian_core(model, target=target, output=output, method=method, precision=precision)
    kind = target_kind(target)  # valid: batch_jacobian_core has checked every option
    run = _jit(core)

    def jacobian_of_batch(x: Any, labels: Any = None) -> jax.Array:
        check_dtype_enabled(model.spec)  # before the core's own casts would warn or truncate
        x = check_samples(x, model.sample_shape, "input batch")
        if kind == "labels":
            labels = batch_labels(target if labels is None else labels, x.shape[0], model.n_outputs)
        elif labels is not None:
            raise JaxjacError(f"labels are used only with a labels target; this function's target is {target!r}")
        return run(model.tensors(), x, labels)

    return jacobian_of_batch


@functools.lru_cache(maxsize=64)
def _jit(core: Callable) -> Callable:
    return jit(core)


def jacobian(
    model: ConvertedModel,
    x: Any,
    *,
    target: Target = "all",
    output: Output = "logits",
    batch_size: int | None = None,
    method: Method = DEFAULT_METHOD,
    precision: str = "float32",
) -> np.ndarray:
    """Per-sample Jacobians of a whole dataset, streamed in fixed-size batches over all local devices.

    **Arguments:**

    - `model`: a converted model.
    - `x`: samples `(N, *sample_shape)`: a numpy, JAX or torch array, or any
      array sliceable by rows (a memory-mapped `.npy`, an h5py dataset);
      batches are read as needed.
    - `target`: ``"all"``, ``"predicted"``, a class index, or `N` labels.
    - `output`: ``"logits"``, ``"probs"`` or ``"log_probs"``.
    - `batch_size`: samples per compiled call; the last batch is padded, so
      there is one compilation. Less data takes a smaller batch. By default
      as `jaxjac jacobian --batch-size auto`: on GPUs and TPUs the largest
      that fits the device's memory while one batch of results stays within
      24 MiB on the host; on CPUs the largest whose working set stays within
      32 MiB, so in cache (8 to 512 rows; fewer where 8 would take half the
      host's memory). Sizing compiles a probe once per model and options,
      except on CPUs for up to 64 rows of small results (16 MiB), which run
      as one batch.
    - `method`, `precision`: see `jacobian_fn`.

    **Returns:** a numpy array `(N, K, *sample_shape)` for ``target="all"``,
    else `(N, *sample_shape)`. Row `i` equals torch's
    `jacobian(net, X[i:i+1])` with its singleton batch axes removed. Rows
    whose input holds NaN or Inf are NaN.
    """
    target = as_target(target)
    kind = validate_options(model, target, output, method, precision)
    reader = array_reader(model, x)
    n = reader.n_samples
    labels = check_labels(np.asarray(target), n, model.n_outputs) if kind == "labels" else None
    if batch_size is None:
        batch_size = library_batch_size(
            model, target=target, output=output, method=method, precision=precision, n_rows=n
        )
    out = ArrayWriter(output_shape(model, n, "all" if kind == "all" else "predicted"), model.dtype)
    run_jacobian(
        model,
        reader,
        out,
        target="predicted" if labels is not None else target,
        labels=labels,
        output=output,
        method=method,
        precision=precision,
        batch_size=batch_size_for(batch_size, n),
    )
    return out.array
