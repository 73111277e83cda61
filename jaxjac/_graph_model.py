"""A converted model as plain data: its lowered graph, its spec and its tensors.

Everything that computes with a model (forward passes, Jacobians,
attributions, the streaming engine) needs only this, not Flax. `GraphModel`
holds it without Flax, so that `jaxjac jacobian` does not pay for importing
Flax at every start (about a third of a second, a few percent of a run);
`ConvertedModel`, the public Flax NNX module, offers the same interface.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import JaxjacError
from ._graph import Graph
from ._interpret import check_supported, complex_dtype, run_graph, with_default_numpy_rules
from ._xla_options import jit
from .converters.products import bfloat16_operands

SampleFn = Callable[[dict[str, jax.Array], jax.Array], jax.Array]

# jaxjac's names for the matmul/conv precisions, as JAX's default_matmul_precision.
# "float32" is true float32; "tf32" trades accuracy for speed on GPUs and TPUs;
# "bfloat16" also rounds the operands to bfloat16 itself, on every backend
# (converters/products.py); "default" leaves XLA's choice (TF32 on recent NVIDIA GPUs).
PRECISIONS: dict[str, str | None] = {
    "float32": "highest",
    "tf32": "tensorfloat32",
    "bfloat16": "bfloat16",
    "default": None,
}


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a converted model.

    `sample_shape` is the shape of one input sample and `output_shape` the
    shape of one sample's output (usually `(n_classes,)`). `metadata_json`
    holds conversion metadata as JSON text, so that the spec stays hashable;
    it takes no part in equality, so that two models of one structure share
    their compiled programs whatever their conversion reports say.
    """

    sample_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: str
    metadata_json: str = field(default="{}", compare=False)


class ModelInterface:
    """What the engines use of a model: `graph`, `spec`, `tensors()`, and the facts below.

    A subclass provides the `graph` and `spec` attributes and `tensors()`.
    """

    graph: Graph
    spec: ModelSpec

    def tensors(self) -> dict[str, Any]:
        """The parameters and buffers, by dotted torch name."""
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input sample, without the batch axis."""
        return self.spec.sample_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one sample's output, without the batch axis."""
        return self.spec.output_shape

    @property
    def n_outputs(self) -> int:
        """The number of scalar outputs per sample (rows of one Jacobian)."""
        return math.prod(self.spec.output_shape)

    @property
    def dtype(self) -> jnp.dtype:
        """The float dtype the model computes in."""
        return jnp.dtype(self.spec.dtype)

    @property
    def metadata(self) -> dict[str, Any]:
        """Conversion metadata: source, versions, the conversion check report."""
        return json.loads(self.spec.metadata_json)

    def sample_fn(self, precision: str = "float32") -> tuple[SampleFn, dict[str, jax.Array]]:
        """A pure per-sample forward and the tensors it takes.

        **Arguments:** `precision`: matmul and convolution precision, as for
        `jaxjac.jacobian_fn` (default true float32, as torch computes).

        **Returns:** `(fn, tensors)`, where `fn(tensors, x)` maps one sample
        `x` of shape `sample_shape` to its output of shape `output_shape`.
        `fn` is pure and can be jitted, vmapped and differentiated. `tensors`
        is a snapshot: read it again after changing the model's weights.
        """
        return with_precision(sample_fn(self.graph, self.spec), check_precision(precision)), self.tensors()


class GraphModel(ModelInterface):
    """A converted model without Flax: what `jaxjac.load` reads, before it builds the NNX module.

    `tensors` maps dotted torch names to arrays, in the artifact's order.
    """

    def __init__(self, graph: Graph, tensors: Mapping[str, np.ndarray], spec: ModelSpec) -> None:
        check_supported(graph)
        self.graph, self.spec = graph, spec
        float_dtype = jnp.dtype(spec.dtype)
        self._tensors = {name: np.asarray(a, tensor_dtype(a.dtype, float_dtype)) for name, a in tensors.items()}

    def tensors(self) -> dict[str, np.ndarray]:
        """The parameters and buffers, by dotted torch name (floats in the model's dtype)."""
        return dict(self._tensors)


def warn_float64_without_x64(tensors: Mapping[str, np.ndarray], what: str) -> bool:
    """Warn, and say so, when `tensors` hold a float64 tensor but 64-bit JAX is off, so that JAX computes in float32."""
    if jax.config.jax_enable_x64:
        return False
    # A 0-dim tensor does not widen the tensors with dimensions it meets, in torch.
    wide = [name for name, a in tensors.items() if a.dtype in (np.float64, np.complex128) and a.ndim]
    if wide:
        warnings.warn(
            f"{what} holds {wide[0]!r} in {tensors[wide[0]].dtype}, and torch computes with it so, but 64-bit JAX "
            "is off, so jaxjac computes with it in float32, unlike torch; enable it "
            "(jax.config.update('jax_enable_x64', True)) first",
            UserWarning,
            stacklevel=4,
        )
    return bool(wide)


def tensor_dtype(dtype: np.dtype, float_dtype: np.dtype) -> np.dtype:
    """The dtype a stored tensor takes in a model computing in `float_dtype`.

    Floats take the model's float dtype, unless they are narrower (a
    float32 constant of a float64 model, which torch computes with in
    float32) or wider (a float64 buffer of a float32 model, which torch
    computes with in float64), and complex tensors (spectral weights) its
    complex counterpart unless wider; other tensors, and the wider ones,
    what `jnp.asarray` makes of them (int64 becomes int32 and float64
    float32 unless 64-bit JAX is on).
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating) and dtype.itemsize < np.dtype(float_dtype).itemsize:
        return dtype
    if np.issubdtype(dtype, np.floating) and dtype.itemsize == np.dtype(float_dtype).itemsize:
        return np.dtype(float_dtype)
    if np.issubdtype(dtype, np.complexfloating) and dtype.itemsize <= complex_dtype(float_dtype).itemsize:
        return complex_dtype(float_dtype)
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else a `JaxjacError` that lists them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise JaxjacError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


@contextlib.contextmanager
def traced_at(precision: str) -> Iterator[None]:
    """Within, matmuls and convolutions are traced at jaxjac precision `precision` (see `PRECISIONS`)."""
    operands = bfloat16_operands() if precision == "bfloat16" else contextlib.nullcontext()
    with jax.default_matmul_precision(PRECISIONS[precision]), operands:
        yield


@functools.lru_cache(maxsize=64)
def with_precision(fn: SampleFn, precision: str) -> SampleFn:
    """`fn` tracing its matmuls and convolutions at jaxjac precision `precision`."""

    def at_precision(tensors: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        with traced_at(precision):
            return fn(tensors, x)

    return at_precision


def check_dtype_enabled(spec: ModelSpec) -> None:
    """Refuse to trace a float64 model while 64-bit JAX is off.

    JAX would quietly compute in float32 (or fail deep inside a lowering
    on a dtype mismatch); a model converted or loaded under `jax.enable_x64`
    must also be used under it.
    """
    if jnp.dtype(spec.dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise JaxjacError(
            "this model computes in float64 but 64-bit JAX is off here: call "
            "jax.config.update('jax_enable_x64', True) at start-up, or use the model inside "
            "`with jax.enable_x64(True):`, or convert it with dtype='float32'"
        )


@functools.lru_cache(maxsize=64)
def sample_fn(graph: Graph, spec: ModelSpec) -> SampleFn:
    """The pure per-sample forward of a model structure: `fn(tensors, x)`, `x` of `spec.sample_shape`."""
    float_dtype = jnp.dtype(spec.dtype)

    def fn(tensors: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        # Runs as the caller traces, so that every path (jacobian, attribute,
        # forward, a user's own jit) meets these checks before XLA does.
        check_dtype_enabled(spec)
        if tuple(jnp.shape(x)) != spec.sample_shape:
            raise JaxjacError(
                f"a sample has shape {tuple(jnp.shape(x))}; the model expects {spec.sample_shape} "
                "(fn takes one sample: vmap it over a batch)"
            )
        x = jnp.asarray(x, float_dtype).reshape((1, *spec.sample_shape))
        (y,) = run_graph(graph, tensors, x, float_dtype)
        return y.reshape(spec.output_shape)

    return fn


@functools.lru_cache(maxsize=64)
def batched_forward(graph: Graph, spec: ModelSpec) -> Callable[[dict[str, jax.Array], jax.Array], jax.Array]:
    """The jitted batch forward `(tensors, (N, *sample_shape)) -> (N, *output_shape)` of a model structure."""
    # One jitted function per model structure, shared by every instance with
    # that structure: eager op-by-op interpretation would be slow.
    batched = jax.vmap(sample_fn(graph, spec), in_axes=(None, 0))

    @with_default_numpy_rules
    def forward(tensors: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        # True float32 products, as torch computes them (JAX's GPU default is TF32).
        with jax.default_matmul_precision("highest"):
            return batched(tensors, x)

    return jit(forward)


def output_shape_of(
    graph: Graph, tensors: Mapping[str, np.ndarray], sample_shape: tuple[int, ...], dtype: str
) -> tuple[int, ...]:
    """The per-sample output shape of `graph`, found by abstract evaluation."""
    float_dtype = jnp.dtype(dtype)
    abstract = {name: jax.ShapeDtypeStruct(a.shape, tensor_dtype(a.dtype, float_dtype)) for name, a in tensors.items()}
    x = jax.ShapeDtypeStruct((1, *sample_shape), float_dtype)
    (y,) = jax.eval_shape(lambda t, x: run_graph(graph, t, x, float_dtype), abstract, x)
    return tuple(y.shape[1:]) if y.ndim >= 1 and y.shape[0] == 1 else tuple(y.shape)
