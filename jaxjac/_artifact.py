"""Save and load converted models as one safe file: safetensors weights plus JSON metadata.

The file is a plain safetensors file. Its tensors are the model's parameters
and buffers by dotted torch name; its `__metadata__` holds, as JSON strings,
the lowered graph, the model spec, which tensors are `nnx.Param`, and the
conversion metadata. Nothing is pickled, and loading needs neither torch nor
the model's Python code, and reading one as a `GraphModel` (what
`jaxjac jacobian` does) needs not even Flax.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from ._durable import fsync_path, path_kind
from ._errors import JaxjacError, first_line
from ._graph import Graph
from ._graph_model import GraphModel, ModelSpec, warn_float64_without_x64

if TYPE_CHECKING:
    from ._model import ConvertedModel

FORMAT = "jaxjac"
FORMAT_VERSION = 2  # 2 adds complex tensors; files without them are still written as version 1
# safetensors refuses headers above 100 MB; anything larger is not one of ours.
_MAX_HEADER_BYTES = 100_000_000


def save(model: ConvertedModel, path: str | PathLike, *, overwrite: bool = False) -> None:
    """Write `model` to `path` as one safetensors file, atomically.

    **Arguments:**

    - `model`: a converted model; its current tensors are written, so a
      fine-tuned model saves its new values.
    - `path`: the file to write (conventionally `*.jaxjac`).
    - `overwrite`: replace an existing file; by default an existing `path`
      is refused and left untouched.

    The bytes go to a temporary file in the same directory, are flushed and
    fsynced, then renamed over `path`: a crash leaves either the old file or
    the complete new one, never a half-written artifact.
    """
    from ._model import ConvertedModel

    path = Path(path)
    if not isinstance(model, ConvertedModel):
        raise JaxjacError(f"save() expects a jaxjac.ConvertedModel; got {type(model).__name__}")
    if not overwrite and path.exists():
        raise JaxjacError(f"{path} already exists; pass overwrite=True (`--force` on the command line) to replace it")
    if not path.parent.is_dir():
        raise JaxjacError(f"cannot write {path}: directory {path.parent} does not exist")
    tensors = {name: np.asarray(value) for name, value in model.tensors().items()}
    metadata = _header_metadata(model)
    complex_names = [name for name, value in tensors.items() if np.iscomplexobj(value)]
    if complex_names:
        # Stored as real (..., 2) pairs: not every safetensors release has complex dtypes.
        tensors.update({name: np.stack([tensors[name].real, tensors[name].imag], axis=-1) for name in complex_names})
        metadata.update(format_version="2", complex_tensors=json.dumps(complex_names))
    metadata[_DIGEST] = _content_digest(metadata, tensors)
    _write_atomically(path, _st_save(tensors, metadata=metadata), overwrite=overwrite)


def _header_metadata(model: ConvertedModel) -> dict[str, str]:
    parameters = [path_str for path_str in model.tensor_names if _is_param(model, path_str)]
    spec = model.spec
    return {
        "format": FORMAT,
        "format_version": "1",
        "graph": json.dumps(model.graph.to_json()),
        "spec": json.dumps(
            {"sample_shape": list(spec.sample_shape), "output_shape": list(spec.output_shape), "dtype": spec.dtype}
        ),
        # The order of tensor_names fixes the attribute order, hence the nnx state structure.
        "tensor_names": json.dumps(list(model.tensor_names)),
        "parameters": json.dumps(parameters),
        "metadata": spec.metadata_json,
    }


def _is_param(model: ConvertedModel, name: str) -> bool:
    from flax import nnx

    return isinstance(model.variable(name), nnx.Param)


def _write_atomically(path: Path, data: bytes, *, overwrite: bool) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile's private 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
        fsync_path(path.parent, best_effort=True)
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_clobber(tmp: Path, path: Path) -> None:
    # A hard link fails if `path` appeared since the check in save(): no race can clobber it.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise JaxjacError(
            f"{path} already exists; pass overwrite=True (`--force` on the command line) to replace it"
        ) from None
    except OSError:  # filesystems without hard links
        if path.exists():
            raise JaxjacError(f"{path} already exists; pass overwrite=True to replace it") from None
        os.replace(tmp, path)


_DIGEST = "content_sha256"


def _content_digest(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    """A sha256 of everything an artifact holds: its metadata and each tensor's name, dtype, shape and bytes.

    Stored in the file, it catches a flipped bit or an edited header that would
    still parse and silently change the numbers.
    """
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != _DIGEST):
        digest.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        digest.update(json.dumps([name, str(value.dtype), list(value.shape)]).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class StoredModel(NamedTuple):
    """The contents of an artifact: what `ConvertedModel(*stored)` takes."""

    graph: Graph
    tensors: dict[str, np.ndarray]  # by dotted torch name, in the saved order
    parameter_names: frozenset[str]
    spec: ModelSpec


def load(path: str | PathLike) -> ConvertedModel:
    """Rebuild a converted model from a file written by `save`, without torch.

    **Arguments:**

    - `path`: a `.jaxjac` file.

    **Returns:** a `ConvertedModel` equal to the saved one: the same graph,
    tensors, `nnx.Param`/`Buffer` split and metadata.
    """
    from ._model import ConvertedModel

    return ConvertedModel(*read_artifact(path))


def load_graph_model(path: str | PathLike) -> GraphModel:
    """Read a `.jaxjac` file as a `GraphModel`: everything `load` reads, without building the Flax module."""
    stored = read_artifact(path)
    return GraphModel(stored.graph, stored.tensors, stored.spec)


def read_artifact(path: str | PathLike) -> StoredModel:
    """Read and check a `.jaxjac` file; every problem is a one-line `JaxjacError` naming the file."""
    path = Path(path)
    kind = path_kind(path)
    if kind != "a file":
        raise JaxjacError(f"{path}: expected a jaxjac artifact file; found {kind}")
    data = path.read_bytes()
    meta = _read_metadata(path, data)
    try:
        stored = _st_load(data)
    except Exception as error:  # safetensors reports bad framing with its own error types
        raise JaxjacError(f"{path} is damaged: its tensors cannot be read ({first_line(error)})") from None
    if _DIGEST not in meta:
        raise JaxjacError(
            f"{path} has no checksum (`{_DIGEST}` in its metadata), which every artifact `jaxjac.save` writes "
            "carries: it was edited or written by another tool; convert the model again"
        )
    if _content_digest(meta, stored) != meta[_DIGEST]:
        raise JaxjacError(
            f"{path} is damaged: its contents do not match the checksum written with it (a changed byte or an "
            "edited header); convert the model again or restore the file"
        )
    try:
        graph = Graph.from_json(json.loads(meta["graph"]))
        spec_json = json.loads(meta["spec"])
        names = json.loads(meta["tensor_names"])
        parameters = frozenset(json.loads(meta["parameters"]))
        complex_names = set(json.loads(meta.get("complex_tensors", "[]")))
        metadata_json = meta["metadata"]
        json.loads(metadata_json)
    except (KeyError, ValueError, TypeError) as error:
        raise JaxjacError(f"{path}: the jaxjac metadata is damaged or incomplete ({error})") from error
    try:
        spec = ModelSpec(
            sample_shape=_shape(spec_json["sample_shape"]),
            output_shape=_shape(spec_json["output_shape"]),
            dtype=spec_json["dtype"],
            metadata_json=metadata_json,
        )
        if spec.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype {spec.dtype!r}")
    except (KeyError, ValueError, TypeError) as error:
        raise JaxjacError(f"{path}: the jaxjac metadata is damaged or incomplete (spec: {error})") from None
    if spec.dtype == "float64" and not jax.config.jax_enable_x64:
        raise JaxjacError(
            f"{path} holds a float64 model; enable 64-bit JAX before loading it: "
            "jax.config.update('jax_enable_x64', True), or load inside `with jax.enable_x64(True):`"
        )
    missing = [name for name in names if name not in stored]
    if missing:
        raise JaxjacError(f"{path}: the artifact lists tensor `{missing[0]}` but holds no such tensor")
    tensors = {
        name: _complex_from_pairs(path, name, stored[name]) if name in complex_names else stored[name] for name in names
    }
    _check_graph_fits(path, graph, tensors, parameters, spec)
    warn_float64_without_x64(tensors, str(path))
    return StoredModel(graph, tensors, parameters, spec)


def _check_graph_fits(
    path: Path, graph: Graph, tensors: dict[str, np.ndarray], parameters: frozenset[str], spec: ModelSpec
) -> None:
    """Refuse a graph that does not run on the file's own tensors to the output shape its spec records.

    The checksum already catches damage; this catches a file whose parts were
    made to disagree (edited, or written by another tool), or one that needs an
    op this jaxjac cannot run, before any output file is created. An abstract
    evaluation costs milliseconds.
    """
    from ._errors import LoweringError, UnsupportedOpError
    from ._graph_model import output_shape_of

    unknown = sorted((set(graph.tensors) | parameters) - set(tensors))
    if unknown:
        raise JaxjacError(f"{path}: the graph or its parameter list names tensor `{unknown[0]}`, which the file lacks")
    redo = "it was edited or written by another tool: convert the model again"
    try:
        found = output_shape_of(graph, tensors, spec.sample_shape, spec.dtype)
    except UnsupportedOpError as error:
        raise JaxjacError(
            f"{path} uses ATen op `{error.op}`, which this jaxjac cannot run: it was written by a newer jaxjac "
            "(upgrade: pip install -U jaxjac) or edited"
        ) from error
    except Exception as error:  # any failure of a graph that passed its checksum says the file is inconsistent
        cause = error.__cause__ if isinstance(error, LoweringError) and error.__cause__ else error
        at = f"at ATen op `{error.op}`: " if isinstance(error, LoweringError) else ""
        raise JaxjacError(
            f"{path}: its graph does not run on its own tensors ({at}{type(cause).__name__}: {first_line(cause)}); "
            f"{redo}"
        ) from error
    if found != spec.output_shape:
        raise JaxjacError(
            f"{path}: its graph gives outputs of shape {found}, but its spec records {spec.output_shape}; {redo}"
        )


def _complex_from_pairs(path: Path, name: str, pairs: np.ndarray) -> np.ndarray:
    """A complex tensor stored as real `(..., 2)` (real and imaginary parts) by `save`."""
    if pairs.dtype not in (np.float32, np.float64) or pairs.ndim == 0 or pairs.shape[-1] != 2:
        raise JaxjacError(
            f"{path}: complex tensor `{name}` should be stored as float32 or float64 (..., 2) pairs; "
            f"found {pairs.dtype} {pairs.shape}"
        )
    return pairs[..., 0] + 1j * pairs[..., 1].astype(np.result_type(pairs.dtype, np.complex64))


def needs_64bit_jax(path: Path) -> bool:
    """Whether the artifact at `path` computes in float64 anywhere: a float64 model, or float64 tensors in a float32 one.

    Raises what reading the header raises (`JaxjacError`, or `KeyError`/`ValueError` for damaged metadata).
    """
    header = _read_header(path, path.read_bytes())
    stores_float64 = any(isinstance(entry, dict) and entry.get("dtype") == "F64" for entry in header.values())
    return stores_float64 or json.loads(header["__metadata__"]["spec"])["dtype"] == "float64"


def _read_metadata(path: Path, data: bytes) -> dict[str, str]:
    """Validate the safetensors framing and the jaxjac marker; return `__metadata__`."""
    return _read_header(path, data)["__metadata__"]


def _read_header(path: Path, data: bytes) -> dict[str, Any]:
    """Validate the safetensors framing and the jaxjac marker; return the whole header, tensor entries and `__metadata__`."""
    not_safetensors = f"{path} is not a jaxjac artifact: expected a safetensors file"
    if data.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or its legacy pickle
        raise JaxjacError(
            f"{not_safetensors}; found what looks like a torch checkpoint: convert it first with "
            f"`jaxjac convert {path}` and pass the .jaxjac file it writes"
        )
    if len(data) < 8:
        raise JaxjacError(f"{not_safetensors}; found {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise JaxjacError(f"{not_safetensors}; found no safetensors header")
    if 8 + header_len > len(data):
        raise JaxjacError(f"{path} is truncated: its header needs {8 + header_len} bytes, the file holds {len(data)}")
    try:
        header = json.loads(data[8 : 8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError):
        raise JaxjacError(f"{not_safetensors}; found no safetensors header") from None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise JaxjacError(f"{path} is damaged: its safetensors metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise JaxjacError(
            f"{path} is a safetensors file but not a jaxjac artifact: expected metadata format 'jaxjac', "
            f"found {meta.get('format')!r}"
        )
    version = meta.get("format_version", "")
    if not isinstance(version, str) or not version.isdigit():
        raise JaxjacError(f"{path}: expected an integer artifact format version, found {version!r}")
    if int(version) > FORMAT_VERSION:
        raise JaxjacError(
            f"{path} was written by a newer jaxjac (artifact format version {version}); this jaxjac "
            f"reads version {FORMAT_VERSION}: upgrade jaxjac (pip install -U jaxjac)"
        )
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise JaxjacError(
            f"{path} is damaged: its safetensors header has a tensor entry without valid offsets"
        ) from None
    needed = 8 + header_len + max(ends, default=0)
    if needed > len(data):
        raise JaxjacError(f"{path} is truncated: its header needs {needed} bytes, the file holds {len(data)}")
    return header


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ValueError(f"expected a shape (a list of sizes), found {value!r}")
    return tuple(value)
