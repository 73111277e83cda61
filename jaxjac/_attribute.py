"""`jaxjac.attribute` and `jaxjac.attribution_fn`: per-sample attributions of a dataset.

The methods themselves live in `_methods`; this module gives them the two
faces of `jaxjac.jacobian`: a pure jitted batch function for JAX code, and a
whole-dataset call streamed through the same engine as `jaxjac jacobian`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from ._arrays import ArrayWriter, array_reader, as_array, as_target, batch_labels, batch_size_for, check_samples
from ._batching import attribution_batch_size
from ._errors import JaxjacError
from ._graph_model import check_dtype_enabled
from ._methods import AttributionOptions, attribution_core, attribution_shape, check_options, resolve_baseline
from ._run import check_labels, run_stream
from ._xla_options import jit

if TYPE_CHECKING:
    from ._model import ConvertedModel


def attribution_fn(
    model: ConvertedModel,
    method: str = "gradient",
    *,
    target: Any = "predicted",
    output: str = "logits",
    baseline: Any = "zeros",
    steps: int = 32,
    rule: str = "riemann",
    noise: float = 0.15,
    samples: int = 32,
    seed: int = 0,
    formulation: str = "vmap-jacrev",
    precision: str = "float32",
) -> Callable[..., jax.Array]:
    """A jitted function from a batch to its per-sample attributions.

    **Arguments:** as for `attribute`; `baseline` must be ``"zeros"`` or an
    array here (there is no dataset to average). An array `target` is a
    default for each batch's labels, as with target ``"label"``.

    **Returns:** `fn(x, labels=None, rows=None)` mapping a batch `x`
    `(B, *sample_shape)` to `(B, *sample_shape)` (or `(B, K, *sample_shape)`
    for ``target="all"``). `labels` `(B,)` is required for ``target="label"``;
    `rows` `(B,)` are the rows' indices in your dataset, which seed the
    SmoothGrad noise (default `0..B-1`). `fn` is pure and jittable (under
    your own `jax.jit` on CPUs, pass `compiler_options=jaxjac.compiler_options()`); it reads
    the model's tensors at each call, so a fine-tuned model is seen at once.
    A batch's draws (integrated gradients' `steps`, SmoothGrad's `samples`)
    run as one batch of `B * steps` (or `B * samples`) rows, so size `B`
    for that many rows' memory.

    >>> fn = jaxjac.attribution_fn(model, "integrated-gradients", steps=64)  # doctest: +SKIP
    >>> fn(X[:256]).shape                                                    # doctest: +SKIP
    (256, 1, 224)
    """
    target, default_labels = split_target(as_target(target), None)
    options = check_options(
        model,
        AttributionOptions(method, target, output, steps, rule, noise, samples, seed, formulation, precision),
    )
    core, _ = attribution_core(model, options)
    start = resolve_baseline(model, baseline)
    run = _jit(core)

    def attribution_of_batch(x: Any, labels: Any = None, rows: Any = None):
        check_dtype_enabled(model.spec)  # before the core's own casts would warn or truncate
        x = check_samples(x, model.sample_shape, "input batch")
        if options.target == "label":
            labels = default_labels if labels is None else labels
            if labels is None:
                raise JaxjacError(f"target 'label' needs labels of shape ({x.shape[0]},), one per sample; got none")
            labels = batch_labels(labels, x.shape[0], model.n_outputs)
        elif labels is not None:
            raise JaxjacError(f"labels are used only with target 'label'; this function's target is {target!r}")
        rows = np.arange(x.shape[0], dtype=np.int32) if rows is None else rows
        return run(model.tensors(), x, labels, rows, start)

    return attribution_of_batch


def split_target(target: Any, labels: Any) -> tuple[Any, Any]:
    """`(target, labels)` with an array target taken as the labels (target ``"label"``)."""
    if isinstance(target, np.ndarray | jax.Array):
        if labels is not None:
            raise JaxjacError("give the labels once: as target=labels or as labels=, not both")
        return "label", target
    return target, labels


def target_and_labels(model: ConvertedModel, n: int, target: Any, labels: Any) -> tuple[str | int, Any]:
    """The target and checked labels `(n,)` of a whole-dataset call (`attribute`, `importance`).

    Labels may come as `target=` or `labels=`, as any array or a list; the
    default target is ``"label"`` with labels, else ``"predicted"``.
    """
    target, labels = split_target(as_target(target), labels)
    if labels is not None:
        labels = check_labels(np.asarray(as_array(labels)), n, model.n_outputs)
    if target is None:
        return ("label" if labels is not None else "predicted"), labels
    if isinstance(target, str) and target == "label" and labels is None:
        raise JaxjacError("target 'label' needs labels: pass labels=y, one per sample")
    return target, labels


@functools.lru_cache(maxsize=64)
def _jit(core: Callable) -> Callable:
    return jit(core)


def attribute(
    model: ConvertedModel,
    x: np.ndarray,
    method: str = "gradient",
    *,
    target: str | int | None = None,
    labels: np.ndarray | None = None,
    output: str = "logits",
    baseline: Any = "zeros",
    steps: int = 32,
    rule: str = "riemann",
    noise: float = 0.15,
    samples: int = 32,
    seed: int = 0,
    batch_size: int | None = None,
    formulation: str = "vmap-jacrev",
    precision: str = "float32",
) -> np.ndarray:
    """Per-sample attributions of a whole dataset, streamed in fixed-size batches over all local devices.

    **Arguments:**

    - `model`: a converted model.
    - `x`: samples `(N, *sample_shape)`: any array sliceable by rows (a
      memory-mapped `.npy`, an h5py dataset); batches are read as needed.
    - `method`: ``"gradient"``, ``"grad-x-input"``, ``"integrated-gradients"``,
      ``"smoothgrad"``, ``"smoothgrad-sq"`` or ``"vargrad"``.
    - `target`: ``"predicted"`` (argmax at the clean input), ``"label"``
      (with `labels`), ``"all"`` or a class index. Default: ``"label"`` when
      `labels` are given, else ``"predicted"``.
    - `labels`: `(N,)` true labels.
    - `output`: differentiate ``"logits"``, ``"probs"`` or ``"log_probs"``.
    - `baseline`: integrated gradients' start: ``"zeros"``, ``"mean"`` (the
      per-feature mean of `x`) or an array of one sample's shape.
    - `steps`, `rule`: integrated gradients' nodes and rule (``"riemann"``
      midpoint or ``"gauss-legendre"``).
    - `noise`, `samples`, `seed`: SmoothGrad's noise standard deviation as a
      fraction of each sample's range `max - min`, its draw count and seed.
    - `batch_size`: samples per compiled call. By default the size
      `jaxjac.jacobian` takes for rows, divided by the inputs each sample
      differentiates (`steps` for integrated gradients, `samples` for the
      SmoothGrad family), all of which run in one batch.
    - `formulation`, `precision`: as for `jaxjac.jacobian`.

    **Returns:** `(N, *sample_shape)`, or `(N, K, *sample_shape)` for
    ``target="all"``. Rows whose input holds NaN or Inf are NaN.

    >>> scores = jaxjac.attribute(model, X, "smoothgrad", target="predicted")  # doctest: +SKIP
    """
    reader = array_reader(model, x)
    target, labels = target_and_labels(model, reader.n_samples, target, labels)
    options = check_options(
        model,
        AttributionOptions(method, target, output, steps, rule, noise, samples, seed, formulation, precision),
    )
    start = resolve_baseline(model, baseline, mean=lambda: feature_mean(reader))
    out = ArrayWriter(attribution_shape(model.spec, reader.n_samples, options.target), model.dtype)
    if batch_size is None:
        batch_size = attribution_batch_size(model, options, reader.n_samples)
    size = batch_size_for(batch_size, reader.n_samples)
    stream_attributions(model, reader, out, options, start, labels=labels, batch_size=size)
    return out.array


def stream_attributions(
    model: ConvertedModel,
    reader: Any,
    writer: Any,
    options: AttributionOptions,
    baseline: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
    **run_options: Any,
):
    """Stream the attributions of every row of `reader` into `writer` (see `run_stream`)."""
    core, tensors = attribution_core(model, options)
    consts = {"params": tensors, "baseline": baseline}
    used = _used_labels(options, labels)
    program = _attribution_program(core)
    return run_stream(model, reader, writer, program, consts, labels=used, batch_size=batch_size, **run_options)


@functools.lru_cache(maxsize=64)
def _attribution_program(core: Callable) -> Callable:
    # One function object per core, so that the engine can reuse its compilation.
    def program(consts, x, batch_labels, rows):
        return core(consts["params"], x, batch_labels, rows, consts["baseline"])

    return program


def _used_labels(options: AttributionOptions, labels: np.ndarray | None) -> np.ndarray | None:
    if options.target == "label" and labels is None:
        raise JaxjacError("target 'label' needs labels, one per sample")
    return labels if options.target == "label" else None


def feature_mean(reader: Any, chunk: int = 65536) -> np.ndarray:
    """The per-feature mean `(*sample_shape)` of a reader's rows, skipping rows with NaN or Inf."""
    total = np.zeros(reader.sample_shape, np.float64)
    count = 0
    for start in range(0, reader.n_samples, chunk):
        block = reader.read(start, min(start + chunk, reader.n_samples))
        good = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        total += block[good].sum(axis=0, dtype=np.float64)
        count += int(good.sum())
    if count == 0:
        raise JaxjacError("baseline 'mean' needs at least one sample without NaN or Inf")
    return total / count
