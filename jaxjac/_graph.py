"""The lowered program as plain data: nodes, ATen op names, arguments, references.

A `Graph` holds no torch types and no arrays. It is hashable, so it can live
in the static part of an NNX graphdef, and it round-trips through JSON, so it
can be stored in an artifact and run without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GRAPH_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Ref:
    """A reference to a value: a node output, a model tensor or the input.

    `kind` is ``"node"`` (the output of an earlier node), ``"tensor"`` (a
    parameter, buffer or constant, by its dotted torch name) or ``"input"``.
    """

    kind: str
    name: str


@dataclass(frozen=True)
class DType:
    """A torch dtype named by its short name, for example ``"float32"``."""

    name: str


@dataclass(frozen=True)
class Node:
    """One ATen call.

    `args` and `kwargs` mirror the op's schema; lists are stored as tuples
    and `kwargs` as sorted `(name, value)` pairs so that the node is hashable.
    `module_path` and `module_type` say which torch module the op came from.
    """

    name: str
    op: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()
    module_path: str = ""
    module_type: str = ""

    def where(self) -> str:
        """A human description of the torch module this node came from."""
        if not self.module_path and not self.module_type:
            return "the model's own forward"
        path = self.module_path or "<root>"
        return f"module `{path}` ({self.module_type})" if self.module_type else f"module `{path}`"


@dataclass(frozen=True)
class Graph:
    """A straight-line program over one input tensor.

    `input_name` names the single user input; `outputs` are references to the
    returned values; `tensors` lists the names of the model tensors it reads.
    """

    input_name: str
    nodes: tuple[Node, ...]
    outputs: tuple[Ref, ...]
    tensors: tuple[str, ...]

    def __hash__(self) -> int:
        # Kept: compiled functions are cached by graph, and hashing every node
        # on every call would cost more than an eager forward of a small model.
        try:
            return self.__dict__["_hash"]
        except KeyError:
            value = hash((self.input_name, self.nodes, self.outputs, self.tensors))
            object.__setattr__(self, "_hash", value)
            return value

    def ops(self) -> set[str]:
        """The set of ATen op names the graph calls."""
        return {node.op for node in self.nodes}

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; `Graph.from_json` inverts it."""
        return {
            "format_version": GRAPH_FORMAT_VERSION,
            "input_name": self.input_name,
            "tensors": list(self.tensors),
            "outputs": [_encode(ref) for ref in self.outputs],
            "nodes": [
                {
                    "name": node.name,
                    "op": node.op,
                    "args": [_encode(a) for a in node.args],
                    "kwargs": {k: _encode(v) for k, v in node.kwargs},
                    "module_path": node.module_path,
                    "module_type": node.module_type,
                }
                for node in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Graph:
        """Rebuild a graph written by `to_json`."""
        version = data.get("format_version")
        if version != GRAPH_FORMAT_VERSION:
            raise ValueError(
                f"lowered graph has format version {version!r}; this jaxjac reads version "
                f"{GRAPH_FORMAT_VERSION}. Re-run `jaxjac convert` with this jaxjac."
            )
        nodes = tuple(
            Node(
                name=n["name"],
                op=n["op"],
                args=tuple(_decode(a) for a in n["args"]),
                kwargs=tuple(sorted((k, _decode(v)) for k, v in n["kwargs"].items())),
                module_path=n.get("module_path", ""),
                module_type=n.get("module_type", ""),
            )
            for n in data["nodes"]
        )
        return cls(
            input_name=data["input_name"],
            nodes=nodes,
            outputs=tuple(_decode(o) for o in data["outputs"]),
            tensors=tuple(data["tensors"]),
        )


def _encode(value: Any) -> Any:
    if isinstance(value, Ref):
        return {"$" + value.kind: value.name}
    if isinstance(value, DType):
        return {"$dtype": value.name}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, complex):
        return {"$complex": [repr(value.real), repr(value.imag)]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a graph argument of type {type(value).__name__}: {value!r}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if isinstance(value, dict):
        ((key, payload),) = value.items()
        if key == "$dtype":
            return DType(payload)
        if key == "$float":
            return float(payload)
        if key == "$complex":
            return complex(float(payload[0]), float(payload[1]))
        return Ref(key[1:], payload)
    return value
