"""Gradient-based attributions of a converted model, batched, jitted and streamed.

Every method is built from one primitive: the gradient rows of the chosen
output(s) at a batch of (possibly perturbed) inputs, computed with the same
formulations as `jaxjac.jacobian`. The target class is fixed at the clean
input, so a perturbation never changes which output is explained.

- ``"gradient"``: the saliency map, `dF_t/dx`.
- ``"grad-x-input"``: `x * dF_t/dx`.
- ``"integrated-gradients"``: `(x - b) * integral_0^1 dF_t/dx(b + a (x - b)) da`,
  by a midpoint Riemann or Gauss-Legendre rule with `steps` nodes.
- ``"smoothgrad"``, ``"smoothgrad-sq"``, ``"vargrad"``: the mean, the mean of
  squares and the variance of `dF_t/dx(x + e)` over `samples` draws of
  Gaussian noise `e` whose standard deviation is `noise` times each sample's
  range `max(x) - min(x)`. The noise of row `i` comes from
  `fold_in(PRNGKey(seed), i)`, so it depends on the row, not on the batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import JaxjacError
from ._formulations import (
    DEFAULT_METHOD,
    FORMULATIONS,
    check_class_target,
    nan_unless_valid,
    output_transform,
    validate_options,
)
from ._graph import Graph
from ._graph_model import ModelSpec, traced_at
from ._graph_model import sample_fn as _sample_fn
from ._interpret import with_default_numpy_rules

if TYPE_CHECKING:
    from ._model import ConvertedModel

ATTRIBUTION_METHODS: tuple[str, ...] = (
    "gradient",
    "grad-x-input",
    "integrated-gradients",
    "smoothgrad",
    "smoothgrad-sq",
    "vargrad",
)
RULES: tuple[str, ...] = ("riemann", "gauss-legendre")
BASELINES: tuple[str, ...] = ("zeros", "mean")
TARGETS: tuple[str, ...] = ("predicted", "label", "all")
_NOISY = ("smoothgrad", "smoothgrad-sq", "vargrad")


@dataclass(frozen=True)
class AttributionOptions:
    """How an attribution is computed; hashable, so compiled programs are reused.

    - `method`: one of `ATTRIBUTION_METHODS`.
    - `target`: ``"predicted"`` (argmax at the clean input), ``"label"`` (each
      row's true label, passed with the batch), ``"all"`` (every output) or a
      class index.
    - `output`: ``"logits"``, ``"probs"`` or ``"log_probs"``.
    - `steps`, `rule`: integrated gradients' quadrature.
    - `noise`, `samples`, `seed`: the SmoothGrad family's noise.
    - `formulation`, `precision`: as for `jaxjac.jacobian`.
    """

    method: str = "gradient"
    target: str | int = "predicted"
    output: str = "logits"
    steps: int = 32
    rule: str = "riemann"
    noise: float = 0.15
    samples: int = 32
    seed: int = 0
    formulation: str = DEFAULT_METHOD
    precision: str = "float32"

    @property
    def draws(self) -> int:
        """Inputs differentiated per sample: the path nodes or noise draws, else 1."""
        if self.method == "integrated-gradients":
            return self.steps
        return self.samples if self.method in _NOISY else 1

    def describe(self) -> dict[str, Any]:
        """The options that matter for `method`, as JSON-able values."""
        out: dict[str, Any] = {"output": self.output, "precision": self.precision}
        if self.method == "integrated-gradients":
            out.update(steps=self.steps, rule=self.rule)
        if self.method in _NOISY:
            out.update(noise=self.noise, samples=self.samples, seed=self.seed)
        return out


def check_options(model: ConvertedModel, options: AttributionOptions) -> AttributionOptions:
    """Validate `options` against `model`; returns them with names normalised."""
    method = options.method.replace("_", "-") if isinstance(options.method, str) else options.method
    if method not in ATTRIBUTION_METHODS:
        raise JaxjacError(f"method must be one of {', '.join(ATTRIBUTION_METHODS)}; got {options.method!r}")
    target = options.target
    if isinstance(target, str) and target not in TARGETS:
        raise JaxjacError(f"target must be 'predicted', 'label', 'all' or a class index; got {target!r}")
    if isinstance(target, bool) or not isinstance(target, str | int | np.integer):
        raise JaxjacError(f"target must be 'predicted', 'label', 'all' or a class index; got {target!r}")
    if not isinstance(options.output, str):
        raise JaxjacError(f"output must be one of 'logits', 'probs', 'log_probs'; got {options.output!r}")
    output = options.output.replace("-", "_")
    # `validate_options` checks output, formulation, precision and a class index against the model.
    checked_target = "all" if target in ("all", "label") else target
    validate_options(model, checked_target, output, options.formulation, options.precision)
    if target == "label":
        check_class_target(model, "labels")
    if options.rule not in RULES:
        raise JaxjacError(f"rule must be one of {', '.join(RULES)}; got {options.rule!r}")
    for name in ("steps", "samples"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise JaxjacError(f"{name} must be a positive integer; got {value!r}")
    noise = options.noise
    if isinstance(noise, bool) or not isinstance(noise, int | float | np.number) or not (0 <= noise < np.inf):
        raise JaxjacError(f"noise must be a non-negative fraction of each sample's range; got {noise!r}")
    if isinstance(options.seed, bool) or not isinstance(options.seed, int | np.integer):
        raise JaxjacError(f"seed must be an integer; got {options.seed!r}")
    target = int(target) if not isinstance(target, str) else target
    changes = {
        "method": method,
        "output": output,
        "target": target,
        "steps": int(options.steps),
        "seed": int(options.seed),
    }
    return AttributionOptions(**{**options.__dict__, **changes, "samples": int(options.samples)})


def attribution_shape(spec: ModelSpec, n: int, target: str | int) -> tuple[int, ...]:
    """`(n, K, *sample_shape)` for target ``"all"``, else `(n, *sample_shape)`, for `model.spec`."""
    if target == "all":
        return (n, math.prod(spec.output_shape), *spec.sample_shape)
    return (n, *spec.sample_shape)


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1) and weights summing to 1 for integrated gradients' path integral.

    ``"riemann"`` is the midpoint rule (captum's ``"riemann_middle"``);
    ``"gauss-legendre"`` is exact for polynomials of degree `2 * steps - 1`.
    """
    if rule == "riemann":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def noise_draws(x: jax.Array, rows: jax.Array, options: AttributionOptions, j: jax.Array | int) -> jax.Array:
    """The `j`-th noise draw `(B, *sample_shape)` of the SmoothGrad family for a batch.

    Row `i` of the data gets `normal(fold_in(fold_in(PRNGKey(seed), i), j))`
    scaled by `noise * (max(x_i) - min(x_i))`: public so that a reference
    computation (the tests' torch one) can use the very same noise.
    """
    key = jax.random.PRNGKey(options.seed)
    flat = x.reshape(x.shape[0], -1)
    scale = options.noise * (flat.max(axis=1) - flat.min(axis=1))

    def one(row, s):
        k = jax.random.fold_in(jax.random.fold_in(key, row), j)
        return s * jax.random.normal(k, x.shape[1:], x.dtype)

    return jax.vmap(one)(rows, scale.astype(x.dtype))


def attribution_core(
    model: ConvertedModel, options: AttributionOptions
) -> tuple[Callable[..., jax.Array], dict[str, Any]]:
    """The un-jitted pure core of `attribution_fn`, for the streaming engine and custom jits.

    **Returns:** `(core, consts)`, where `core(consts, x, labels, rows, baseline)`
    maps a batch `x` `(B, *sample_shape)` to attributions of shape
    `attribution_shape(model.spec, B, target)`. `labels` `(B,)` is used by target
    ``"label"``; `rows` `(B,)` int32 (absolute row indices) seeds the noise;
    `baseline` `(*sample_shape)` is integrated gradients' starting point.
    `consts` holds the model's tensors.
    """
    options = check_options(model, options)
    return _attribution_only(model.graph, model.spec, options), model.tensors()


@functools.lru_cache(maxsize=64)
def _attribution_only(graph: Graph, spec: ModelSpec, options: AttributionOptions):
    core = attribution_and_outputs(graph, spec, options)

    def attribution(params, x, labels, rows, baseline):
        return core(params, x, labels, rows, baseline)[0]

    return attribution


@functools.lru_cache(maxsize=64)
def attribution_and_outputs(graph: Graph, spec: ModelSpec, options: AttributionOptions):
    """Like `attribution_core`'s core, but returns `(attributions, outputs)`.

    `outputs` `(B, K)` are the differentiated outputs (after `options.output`'s
    transform) at the clean inputs, which the target selection computes anyway;
    callers that reduce per predicted class use them. `options` must have
    passed `check_options`.
    """
    transform = output_transform(options.output)
    sample_fn = _sample_fn(graph, spec)
    dtype = jnp.dtype(spec.dtype)

    def f(params, x):
        return transform(sample_fn(params, x).reshape(-1))

    every = options.target == "all"
    formulation = FORMULATIONS[(every, options.formulation)](f)

    def gradient_rows(params, x, select):
        return formulation(params, x) if every else formulation(params, x, select)

    def per_row(values, g):
        # `values` (B, *S) times rows `g` (B, *S) or (B, K, *S) for target "all".
        return values[:, None] * g if every else values * g

    def every_draw(params, inputs, select):
        # Gradient rows `(D, B, ...)` of inputs `(D, B, *S)`: D draws (path nodes, noise) of a batch.
        # The draws are folded into one batch of D * B rows rather than looped over: XLA's CPU
        # backend runs a convolution in a loop body 10-25x slower than outside one
        # (jax-ml/jax#12868), and the batch size is chosen for the folded rows.
        draws, n = inputs.shape[:2]
        folded = inputs.reshape(draws * n, *inputs.shape[2:])
        g = gradient_rows(params, folded, None if select is None else jnp.tile(select, draws))
        return g.reshape(draws, n, *g.shape[1:])

    @with_default_numpy_rules
    def core(params, x, labels, rows, baseline):
        x = jnp.asarray(x, dtype)
        with traced_at(options.precision):
            outputs = jax.vmap(f, in_axes=(None, 0))(params, x)
            result = attribution(params, x, labels, rows, baseline, outputs)
            if options.target == "label":
                result = nan_unless_valid(result, labels, outputs.shape[1])
            return result, outputs

    def attribution(params, x, labels, rows, baseline, outputs):
        with traced_at(options.precision):
            if every:
                select = None
            elif options.target == "predicted":
                select = jnp.argmax(outputs, axis=1)
            elif options.target == "label":
                select = labels
            else:
                select = jnp.full((x.shape[0],), options.target)
            method = options.method
            if method == "gradient":
                return gradient_rows(params, x, select)
            if method == "grad-x-input":
                return per_row(x, gradient_rows(params, x, select))
            if method == "integrated-gradients":
                start = jnp.broadcast_to(jnp.asarray(baseline, dtype), x.shape)
                nodes, weights = quadrature(options.steps, options.rule)
                path = start + _along_first(jnp.asarray(nodes, dtype), x.ndim + 1) * (x - start)
                g = every_draw(params, path, select)
                total = jnp.sum(_along_first(jnp.asarray(weights, dtype), g.ndim) * g, axis=0)
                return per_row(x - start, total)
            draws = jax.vmap(lambda j: x + noise_draws(x, rows, options, j))(jnp.arange(options.samples))
            g = every_draw(params, draws, select)
            mean = jnp.mean(g, axis=0)
            # Two passes over the draws, which are all at hand: the variance stays accurate
            # in float32 even when the noise is small and E[g^2] - E[g]^2 would cancel.
            variance = jnp.mean(jnp.square(g - mean), axis=0)
            if method == "smoothgrad":
                return mean
            if method == "smoothgrad-sq":
                return variance + mean * mean
            return variance  # vargrad

    return core


def _along_first(values: jax.Array, ndim: int) -> jax.Array:
    """`values` `(D,)` shaped `(D, 1, ..., 1)` to broadcast along the first of `ndim` axes."""
    return values.reshape(values.shape + (1,) * (ndim - 1))


def resolve_baseline(model: ConvertedModel, baseline: Any, mean: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Integrated gradients' baseline `(*sample_shape)`: ``"zeros"``, ``"mean"`` or an array.

    `mean()` supplies the per-feature data mean when ``"mean"`` is asked for.
    """
    shape = model.sample_shape
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros(shape, model.dtype)
        if baseline == "mean":
            if mean is None:
                raise JaxjacError("baseline 'mean' needs the data to average over")
            return np.asarray(mean(), model.dtype).reshape(shape)
        raise JaxjacError(f"baseline must be 'zeros', 'mean' or an array of shape {shape}; got {baseline!r}")
    array = np.asarray(baseline)
    if array.size != int(np.prod(shape)) or array.ndim > len(shape) or not np.issubdtype(array.dtype, np.number):
        raise JaxjacError(
            f"baseline must have one sample's shape {shape} (or {int(np.prod(shape))} values); "
            f"got {array.dtype} {array.shape}"
        )
    if not np.isfinite(array).all():
        raise JaxjacError("baseline holds NaN or Inf; every attribution would be NaN")
    return array.astype(model.dtype).reshape(shape)
