"""The converted model: a Flax NNX module that mirrors the torch module tree.

Parameters are `nnx.Param` and buffers are `Buffer`, placed under the torch
names (`model.features[0].weight`), so they can be inspected and fine-tuned.
The forward pass interprets the lowered `Graph` with the registry.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._errors import JaxjacError
from ._graph import Graph
from ._interpret import check_supported, run_graph

SampleFn = Callable[[dict[str, jax.Array], jax.Array], jax.Array]


class Buffer(nnx.Variable):
    """A torch buffer: BatchNorm running statistics, registered buffers, constants."""


class TorchTree(nnx.Module):
    """One torch submodule in the mirrored tree; `tree[0]` reads child ``"0"``."""

    def __getitem__(self, key: int | str) -> Any:
        return getattr(self, str(key))


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a converted model.

    `sample_shape` is the shape of one input sample and `output_shape` the
    shape of one sample's output (usually `(n_classes,)`). `metadata_json`
    holds conversion metadata as JSON text, so that the spec stays hashable.
    """

    sample_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: str
    metadata_json: str = "{}"


_RESERVED = frozenset({"graph", "spec", "tensor_names", "parameter_names"})


class ConvertedModel(TorchTree):
    """A torch model converted to JAX.

    Calling it maps a batch `(N, *sample_shape)` to `(N, *output_shape)`.

    >>> model = jaxjac.load("net.jaxjac")                # doctest: +SKIP
    >>> model(jnp.zeros((8, 1, 224))).shape               # doctest: +SKIP
    (8, 3)
    """

    def __init__(
        self,
        graph: Graph,
        tensors: Mapping[str, np.ndarray],
        parameter_names: frozenset[str],
        spec: ModelSpec,
    ) -> None:
        check_supported(graph)
        self.graph = graph
        self.spec = spec
        self.tensor_names = tuple(tensors)
        float_dtype = jnp.dtype(spec.dtype)
        for name, array in tensors.items():
            parts = name.split(".")
            if parts[0] in _RESERVED:
                raise JaxjacError(f"torch tensor `{name}` clashes with a reserved attribute of the converted model")
            node: TorchTree = self
            for part in parts[:-1]:
                if not hasattr(node, part):
                    setattr(node, part, TorchTree())
                node = getattr(node, part)
            dtype = float_dtype if np.issubdtype(array.dtype, np.floating) else None
            kind = nnx.Param if name in parameter_names else Buffer
            setattr(node, parts[-1], kind(jnp.asarray(array, dtype=dtype)))

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

    def tensors(self) -> dict[str, jax.Array]:
        """The current parameters and buffers, by dotted torch name."""
        out = {}
        for name in self.tensor_names:
            node: Any = self
            for part in name.split("."):
                node = getattr(node, part)
            out[name] = node[...]
        return out

    def sample_fn(self) -> tuple[SampleFn, dict[str, jax.Array]]:
        """A pure per-sample forward and the tensors it takes.

        **Returns:** `(fn, tensors)`, where `fn(tensors, x)` maps one sample
        `x` of shape `sample_shape` to its output of shape `output_shape`.
        `fn` is pure and can be jitted, vmapped and differentiated.
        """
        return _sample_fn(self.graph, self.spec), self.tensors()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map a batch `(N, *sample_shape)` to outputs `(N, *output_shape)`."""
        x = jnp.asarray(x)
        if x.shape[1:] != self.sample_shape:
            raise JaxjacError(f"input batch has samples of shape {x.shape[1:]}; the model expects {self.sample_shape}")
        return _batched_forward(self.graph, self.spec)(self.tensors(), x)


@functools.lru_cache(maxsize=64)
def _sample_fn(graph: Graph, spec: ModelSpec) -> SampleFn:
    float_dtype = jnp.dtype(spec.dtype)

    def fn(tensors: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, float_dtype).reshape((1, *spec.sample_shape))
        (y,) = run_graph(graph, tensors, x, float_dtype)
        return y.reshape(spec.output_shape)

    return fn


@functools.lru_cache(maxsize=64)
def _batched_forward(graph: Graph, spec: ModelSpec) -> Callable[[dict[str, jax.Array], jax.Array], jax.Array]:
    # One jitted function per model structure, shared by every instance with
    # that structure: eager op-by-op interpretation would be slow.
    batched = jax.vmap(_sample_fn(graph, spec), in_axes=(None, 0))

    def forward(tensors: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        # True float32 products, as torch computes them (JAX's GPU default is TF32).
        with jax.default_matmul_precision("highest"):
            return batched(tensors, x)

    return jax.jit(forward)


def output_shape_of(
    graph: Graph, tensors: Mapping[str, np.ndarray], sample_shape: tuple[int, ...], dtype: str
) -> tuple[int, ...]:
    """The per-sample output shape of `graph`, found by abstract evaluation."""
    float_dtype = jnp.dtype(dtype)
    abstract = {
        name: jax.ShapeDtypeStruct(
            a.shape, float_dtype if np.issubdtype(a.dtype, np.floating) else jax.dtypes.canonicalize_dtype(a.dtype)
        )
        for name, a in tensors.items()
    }
    x = jax.ShapeDtypeStruct((1, *sample_shape), float_dtype)
    (y,) = jax.eval_shape(lambda t, x: run_graph(graph, t, x, float_dtype), abstract, x)
    return tuple(y.shape[1:]) if y.ndim >= 1 and y.shape[0] == 1 else tuple(y.shape)
