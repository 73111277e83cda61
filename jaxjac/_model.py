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


def attribute_path(name: str) -> list[str]:
    """The attribute path of torch tensor `name` in a `ConvertedModel`.

    The same as the torch path, except that a part that would hide an
    attribute or method of the converted module (`spec`, `tensors`, `eval`)
    gets trailing underscores (`model.spec_.conv.weight`).
    """
    path = []
    for depth, part in enumerate(name.split(".")):
        taken = _ROOT_NAMES if depth == 0 else _TREE_NAMES
        while part in taken:
            part += "_"
        path.append(part)
    return path


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
        self.tensor_shapes = tuple(tuple(np.shape(a)) for a in tensors.values())
        self._tensor_paths = tuple(tuple(attribute_path(name)) for name in tensors)
        float_dtype = jnp.dtype(spec.dtype)
        for name, array in tensors.items():
            parts = attribute_path(name)
            node: TorchTree = self
            for part in parts[:-1]:
                if not hasattr(node, part):
                    setattr(node, part, TorchTree())
                node = getattr(node, part)
            kind = nnx.Param if name in parameter_names else Buffer
            setattr(node, parts[-1], kind(jnp.asarray(array, dtype=tensor_dtype(array.dtype, float_dtype))))

    def tensors(self) -> dict[str, jax.Array]:
        """The current parameters and buffers, by dotted torch name.

        Raises `JaxjacError` if one was replaced by an array of another
        shape, which the lowered graph would silently broadcast or reject
        deep inside a lowering.
        """
        out = {}
        for name, path, shape in zip(self.tensor_names, self._tensor_paths, self.tensor_shapes, strict=True):
            node: Any = self
            for part in path:
                node = getattr(node, part)
            # The raw value skips Variable.get_value's copy, a few microseconds a tensor on every call.
            value = node.get_raw_value()
            if not isinstance(value, jax.Array | np.ndarray):
                value = node.get_value()
            if tuple(value.shape) != shape:
                raise JaxjacError(
                    f"model.{'.'.join(path)} has shape {tuple(value.shape)}, but the converted model's tensor "
                    f"{name!r} has shape {shape}: replace weights with arrays of the same shape"
                )
            out[name] = value
        return out

    def variable(self, name: str) -> nnx.Variable:
        """The `nnx.Param` or `Buffer` that holds torch tensor `name` (see `attribute_path`)."""
        node: Any = self
        for part in attribute_path(name):
            node = getattr(node, part)
        return node

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map a batch `(N, *sample_shape)` to outputs `(N, *output_shape)`."""
        x = jnp.asarray(x)
        if x.shape[1:] != self.sample_shape:
            raise JaxjacError(f"input batch has samples of shape {x.shape[1:]}; the model expects {self.sample_shape}")
        return batched_forward(self.graph, self.spec)(self.tensors(), x)


# Names a torch module or tensor must not take as an attribute: they would hide the module's own.
_TREE_NAMES = frozenset(dir(TorchTree))
_ROOT_NAMES = frozenset(dir(ConvertedModel)) | {"graph", "spec", "tensor_names", "tensor_shapes", "_tensor_paths"}
