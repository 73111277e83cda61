"""The converted model: a Flax NNX module that mirrors the torch module tree.

Parameters are `nnx.Param` and buffers are `Buffer`, placed under the torch
names (`model.features[0].weight`), so they can be inspected and fine-tuned.
The forward pass interprets the lowered `Graph` with the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._errors import JaxjacError
from ._graph import Graph
from ._graph_model import ModelInterface, ModelSpec, batched_forward, tensor_dtype
from ._interpret import check_supported


class Buffer(nnx.Variable):
    """A torch buffer: BatchNorm running statistics, registered buffers, constants."""


class TorchTree(nnx.Module):
    """One torch submodule in the mirrored tree; `tree[0]` reads child ``"0"``."""

    def __getitem__(self, key: int | str) -> Any:
        return getattr(self, str(key))


_RESERVED = frozenset({"graph", "spec", "tensor_names", "parameter_names"})


class ConvertedModel(TorchTree, ModelInterface):
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
            kind = nnx.Param if name in parameter_names else Buffer
            setattr(node, parts[-1], kind(jnp.asarray(array, dtype=tensor_dtype(array.dtype, float_dtype))))

    def tensors(self) -> dict[str, jax.Array]:
        """The current parameters and buffers, by dotted torch name."""
        out = {}
        for name in self.tensor_names:
            node: Any = self
            for part in name.split("."):
                node = getattr(node, part)
            out[name] = node[...]
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map a batch `(N, *sample_shape)` to outputs `(N, *output_shape)`."""
        x = jnp.asarray(x)
        if x.shape[1:] != self.sample_shape:
            raise JaxjacError(f"input batch has samples of shape {x.shape[1:]}; the model expects {self.sample_shape}")
        return batched_forward(self.graph, self.spec)(self.tensors(), x)
